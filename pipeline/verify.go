package pipeline

import (
	"bytes"
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"

	"github.com/parquet-go/parquet-go"
	"github.com/parquet-go/parquet-go/encoding"
	"golang.org/x/mod/sumdb/note"

	"audiencematch/consent/audit"
	"audiencematch/hashing"
	"audiencematch/pipeline/errkind"
)

// VerifyReport is what `audit verify` found when everything held.
type VerifyReport struct {
	Records    int64
	Committed  int
	Checkpoint []byte // the verified checkpoint, for --save-checkpoint
	Root       string
}

// VerifyAudit checks the audit log under state and everything it points to:
// the checkpoint's signature, the records' tree against it, consistency with
// a checkpoint saved earlier (trusted may be nil), and for every committed
// run its manifest, files, identifier tree, evidence tree and counts. The
// error names the first broken thing; it wraps errkind.ErrData.
func VerifyAudit(state string, verifier note.Verifier, trusted []byte) (*VerifyReport, error) {
	l, cp, err := audit.VerifyLog(AuditDir(state), verifier, trusted)
	if err != nil {
		return nil, fmt.Errorf("%w: audit verify: %w", errkind.ErrData, err)
	}
	rep := &VerifyReport{Records: l.Size(), Root: hex.EncodeToString(cp.Hash)}
	rep.Checkpoint, err = os.ReadFile(filepath.Join(AuditDir(state), audit.CheckpointFile))
	if err != nil {
		return nil, err
	}
	heads := map[string]*audit.Record{} // each destination's delivery chain so far
	for i, rec := range l.Records() {
		if rec.Type != audit.TypeRunCommitted {
			continue
		}
		rep.Committed++
		err := verifyRun(state, rec)
		if err == nil {
			err = verifyDelivery(state, heads[rec.Destination], rec)
		}
		if err != nil {
			return nil, fmt.Errorf("%w: audit verify: record %d, run %s (%s): %w", errkind.ErrData, i, rec.RunID, rec.Destination, err)
		}
		if !rec.Backfill {
			heads[rec.Destination] = rec
		}
	}
	if err := verifyNothingUnrecorded(l); err != nil {
		return nil, fmt.Errorf("%w: audit verify: %w", errkind.ErrData, err)
	}
	return rep, nil
}

// sha256File is the hex SHA-256 of a small file and its contents (a
// manifest, a checkpoint); sha256Stream hashes large ones in pieces.
func sha256File(path string) (string, []byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", nil, err
	}
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:]), b, nil
}

// sha256Stream is the SHA-256 of a file, read without holding it.
func sha256Stream(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func verifyRun(state string, rec *audit.Record) error {
	dir := rec.Published
	sum, body, err := sha256File(filepath.Join(dir, rec.Manifest.Path))
	if err != nil {
		return fmt.Errorf("manifest: %w", err)
	}
	if sum != rec.Manifest.SHA256 {
		return fmt.Errorf("%s: SHA-256 %s, the log says %s", filepath.Join(dir, rec.Manifest.Path), sum, rec.Manifest.SHA256)
	}
	m, err := ReadManifest(body)
	if err != nil {
		return err
	}
	if err := m.Reconcile(); err != nil {
		return fmt.Errorf("manifest counts: %w", err)
	}
	if m.RunID != rec.RunID || m.Destination != rec.Destination || m.Scheme != rec.Scheme || m.KeyID != rec.KeyID ||
		m.ConfigDigest != rec.ConfigDigest || m.AsOf != rec.AsOf || m.Purpose != rec.Purpose {
		return fmt.Errorf("manifest names run %s/%s/%s/%s, the log another", m.RunID, m.Destination, m.Scheme, m.KeyID)
	}
	c := rec.Counts
	if c.UserRows != m.Users.Rows || c.Exported != m.Users.Exported || c.EventRows != m.ConsentEvents.Rows ||
		!mapsEqual(c.Excluded, m.Users.Excluded) || !mapsEqual(c.Events, m.ConsentEvents.ByClass) {
		return fmt.Errorf("the manifest's counts differ from the log's")
	}
	if c.Exported != rec.IDs.Size {
		return fmt.Errorf("%d users exported but %d identifiers committed", c.Exported, rec.IDs.Size)
	}
	// Exactly the recorded files, nothing planted beside them.
	want := []string{rec.Manifest.Path}
	for _, f := range slices.Concat(rec.Files, rec.Adds, rec.Removes) {
		want = append(want, f.Path)
	}
	var have []string
	err = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		have = append(have, filepath.ToSlash(rel))
		return nil
	})
	if err != nil {
		return err
	}
	slices.Sort(want)
	slices.Sort(have)
	if !slices.Equal(have, want) {
		return fmt.Errorf("%s holds %v, the log lists %v", dir, have, want)
	}
	scheme, err := hashing.ParseScheme(rec.Scheme)
	if err != nil {
		return err
	}
	var tree audit.TreeRoot
	if err := verifyParts(dir, rec.Files, m.Files, scheme, &tree); err != nil {
		return err
	}
	if (m.Adds == nil) != (len(rec.Adds) == 0 && len(rec.Removes) == 0) || m.PreviousRunID != rec.PreviousRunID {
		return fmt.Errorf("the manifest's deltas differ from the log's")
	}
	if m.Adds != nil {
		rs, err := hashing.ParseScheme(rec.RemovesScheme)
		if err != nil {
			return err
		}
		if m.Removes.KeyID != rec.RemovesKeyID || m.Removes.Scheme != rec.RemovesScheme {
			return fmt.Errorf("the manifest's removes key differs from the log's")
		}
		if err := verifyParts(dir, rec.Adds, m.Adds.Files, scheme, nil); err != nil {
			return err
		}
		if err := verifyParts(dir, rec.Removes, m.Removes.Files, rs, nil); err != nil {
			return err
		}
	}
	if err := sameRoot(tree.Summary(), rec.IDs, "identifier"); err != nil {
		return err
	}
	return verifyEvidence(state, rec)
}

// verifyParts checks published parts against the log's and the manifest's
// entries: SHA-256, rows, identifiers of the scheme's shape, sorted and
// distinct across the parts; with a tree, it adds them as leaves.
func verifyParts(dir string, files []audit.File, listed []OutputFile, scheme hashing.Scheme, tree *audit.TreeRoot) error {
	if len(listed) != len(files) {
		return fmt.Errorf("the manifest lists %d files where the log lists %d", len(listed), len(files))
	}
	var prev []byte // the last identifier, across the parts
	started := false
	for i, f := range files {
		path := filepath.Join(dir, filepath.FromSlash(f.Path))
		if listed[i].Path != f.Path || listed[i].SHA256 != f.SHA256 || listed[i].Rows != f.Rows {
			return fmt.Errorf("%s: the manifest's entry differs from the log's", f.Path)
		}
		sum, err := sha256Stream(path)
		if err != nil {
			return err
		}
		if sum != f.SHA256 {
			return fmt.Errorf("%s: SHA-256 %s, the log says %s", path, sum, f.SHA256)
		}
		var rows int64
		var bad error
		err = eachPublishedID(path, scheme, func(_ int64, id []byte) bool {
			switch {
			case !scheme.ValidID(id):
				bad = fmt.Errorf("an identifier does not have the shape of %s", scheme)
			case started && bytes.Compare(prev, id) >= 0:
				bad = errors.New("identifiers are not sorted and distinct")
			}
			if bad != nil {
				return false
			}
			prev, started = append(prev[:0], id...), true
			rows++
			if tree != nil {
				tree.Append(id)
			}
			return true
		})
		if err = cmp.Or(err, bad); err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		if rows != f.Rows {
			return fmt.Errorf("%s: %d rows, the log says %d", path, rows, f.Rows)
		}
	}
	return nil
}

func verifyEvidence(state string, rec *audit.Record) error {
	path := filepath.Join(state, "runs", rec.RunID, "evidence.parquet")
	er, err := openEvidence(path)
	if err != nil {
		return fmt.Errorf("evidence: %w", err)
	}
	defer er.Close()
	var tree audit.TreeRoot
	var primaries int64
	for {
		e, err := er.next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("evidence %s: %w", path, err)
		}
		if e.Primary {
			primaries++
		}
		tree.Append(audit.EvidenceLeaf(e.ID, e.UserID, e.EventID, e.Primary))
	}
	if primaries != rec.IDs.Size {
		return fmt.Errorf("evidence %s: %d identifiers with a primary holder, %d committed", path, primaries, rec.IDs.Size)
	}
	return sameRoot(tree.Summary(), rec.Evidence, "evidence")
}

// evidenceReader streams a run's evidence rows in file order, a batch at
// a time, so that reading them does not hold the run in memory (at 10M
// identifiers parquet.ReadFile held about 1.5 GiB of rows).
type evidenceReader struct {
	f    *os.File
	rd   *parquet.GenericReader[EvidenceRow]
	rows []EvidenceRow
	i, n int
	eof  bool
}

func openEvidence(path string) (*evidenceReader, error) {
	f, pf, err := openParquet(path)
	if err != nil {
		return nil, err
	}
	return &evidenceReader{f: f, rd: parquet.NewGenericReader[EvidenceRow](pf), rows: make([]EvidenceRow, 1024)}, nil
}

// openParquet opens a Parquet file and reads its footer; the caller closes
// the file.
func openParquet(path string) (*os.File, *parquet.File, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, err
	}
	st, err := f.Stat()
	if err == nil {
		var pf *parquet.File
		if pf, err = parquet.OpenFile(f, st.Size()); err == nil {
			return f, pf, nil
		}
		err = fmt.Errorf("%s: %w", path, err)
	}
	f.Close()
	return nil, nil, err
}

// next returns the next row, valid until the next call, or io.EOF after
// the last.
func (er *evidenceReader) next() (*EvidenceRow, error) {
	for er.i == er.n {
		if er.eof {
			return nil, io.EOF
		}
		n, err := er.rd.Read(er.rows)
		if err == io.EOF {
			er.eof = true
		} else if err != nil {
			return nil, err
		}
		er.i, er.n = 0, n
	}
	er.i++
	return &er.rows[er.i-1], nil
}

// Close closes the file; a second Close is a no-op.
func (er *evidenceReader) Close() error {
	if er.f == nil {
		return nil
	}
	err := errors.Join(er.rd.Close(), er.f.Close())
	er.f = nil
	return err
}

// sameRoot compares a tree rebuilt with the one a record holds.
func sameRoot(got, want *audit.Tree, what string) error {
	if *got != *want {
		return fmt.Errorf("%s tree: %d leaves, root %s; the log says %d, %s", what, got.Size, got.Root, want.Size, want.Root)
	}
	return nil
}

func mapsEqual(a, b map[string]int64) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// ReadPublishedIDs reads one published part's identifiers as leaf bytes.
func ReadPublishedIDs(path string, scheme hashing.Scheme) ([][]byte, error) {
	var out [][]byte
	err := eachPublishedID(path, scheme, func(_ int64, id []byte) bool {
		out = append(out, bytes.Clone(id))
		return true
	})
	return out, err
}

// eachPublishedID streams one published part's identifiers to fn, which
// must not keep id, until fn returns false.
func eachPublishedID(path string, scheme hashing.Scheme, fn func(i int64, id []byte) bool) error {
	r, err := openIDPages(path, scheme)
	if err != nil {
		return err
	}
	defer r.Close()
	i := int64(0)
	for {
		data, offs, err := r.next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		for k := range r.count(data, offs) {
			if !fn(i, r.value(data, offs, k)) {
				return nil
			}
			i++
		}
	}
}

// idPages reads a published part's identifiers a page at a time, decoding
// the column's pages itself: several times faster than parquet-go's row
// reader, which reconstructs every row. So it accepts only the shape the
// part writer produces: one required column "id", FIXED_LEN_BYTE_ARRAY(32)
// in a binary scheme and BYTE_ARRAY otherwise, with no dictionary and no
// nulls; anything else is an error, never a silently skipped value.
type idPages struct {
	f     *os.File
	path  string
	size  int // 32 in a binary scheme, else 0
	rgs   []parquet.RowGroup
	pages parquet.Pages
	page  parquet.Page // handed out by next, released by the one after
	row   int64        // the ids of the pages handed out so far
}

func openIDPages(path string, scheme hashing.Scheme) (*idPages, error) {
	f, pf, err := openParquet(path)
	if err != nil {
		return nil, err
	}
	r := &idPages{f: f, path: path}
	if err := r.open(pf, scheme); err != nil {
		f.Close()
		return nil, err
	}
	return r, nil
}

func (r *idPages) open(pf *parquet.File, scheme hashing.Scheme) error {
	kind, want := parquet.ByteArray, "BYTE_ARRAY"
	if scheme.Binary() {
		kind, r.size, want = parquet.FixedLenByteArray, 32, "FIXED_LEN_BYTE_ARRAY(32)"
	}
	cols := pf.Schema().Fields()
	if len(cols) != 1 || cols[0].Name() != "id" || !cols[0].Leaf() || !cols[0].Required() ||
		cols[0].Type().Kind() != kind || (r.size > 0 && cols[0].Type().Length() != r.size) {
		return fmt.Errorf("%s: not the schema of a %s part: want one required column id of %s", r.path, scheme, want)
	}
	r.rgs = pf.RowGroups()
	return nil
}

// groups is the number of row groups left to read.
func (r *idPages) groups() int { return len(r.rgs) }

// only restricts the reader to row group k, before the first next.
func (r *idPages) only(k int) { r.rgs = r.rgs[k : k+1] }

// next returns the next page's values: the ids end to end, and in a text
// scheme their offsets (one more than the ids). They are valid until the
// next call. It returns io.EOF after the last page.
func (r *idPages) next() (data []byte, offs []uint32, err error) {
	r.release()
	for {
		if r.pages == nil {
			if len(r.rgs) == 0 {
				return nil, nil, io.EOF
			}
			r.pages, r.rgs = r.rgs[0].ColumnChunks()[0].Pages(), r.rgs[1:]
		}
		p, err := r.pages.ReadPage()
		if err == io.EOF {
			r.pages.Close()
			r.pages = nil
			continue
		}
		if err != nil {
			return nil, nil, fmt.Errorf("%s: %w", r.path, err)
		}
		r.page = p
		if data, offs, err = r.values(p); err != nil {
			return nil, nil, fmt.Errorf("%s: page at row %d: %w", r.path, r.row, err)
		}
		r.row += p.NumValues()
		return data, offs, nil
	}
}

func (r *idPages) values(p parquet.Page) (data []byte, offs []uint32, err error) {
	if p.Dictionary() != nil || p.NumNulls() != 0 {
		return nil, nil, errors.New("dictionary-encoded or with nulls")
	}
	v := p.Data()
	switch {
	case r.size > 0 && v.Kind() == encoding.FixedLenByteArray:
		data, n := v.FixedLenByteArray()
		if n != r.size || len(data)%r.size != 0 || int64(len(data)/r.size) != p.NumValues() {
			return nil, nil, fmt.Errorf("%d bytes of %d-byte values for %d values", len(data), n, p.NumValues())
		}
		return data, nil, nil
	case r.size == 0 && v.Kind() == encoding.ByteArray:
		data, offs := v.ByteArray()
		if int64(len(offs)) != p.NumValues()+1 {
			return nil, nil, fmt.Errorf("%d offsets for %d values", len(offs), p.NumValues())
		}
		for k := 1; k < len(offs); k++ {
			if offs[k-1] > offs[k] || int(offs[k]) > len(data) {
				return nil, nil, errors.New("bad value offsets")
			}
		}
		return data, offs, nil
	}
	return nil, nil, fmt.Errorf("values of encoding kind %d", v.Kind())
}

// count is the number of ids in a page next returned.
func (r *idPages) count(data []byte, offs []uint32) int {
	if r.size > 0 {
		return len(data) / r.size
	}
	return len(offs) - 1
}

// value is the k-th id of a page next returned.
func (r *idPages) value(data []byte, offs []uint32, k int) []byte {
	if r.size > 0 {
		return data[k*r.size : (k+1)*r.size : (k+1)*r.size]
	}
	return data[offs[k]:offs[k+1]:offs[k+1]]
}

func (r *idPages) release() {
	if r.page != nil {
		parquet.Release(r.page)
		r.page = nil
	}
}

func (r *idPages) Close() error {
	r.release()
	if r.pages != nil {
		r.pages.Close()
		r.pages = nil
	}
	return r.f.Close()
}
