package source

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"audiencematch/internal/objstore"
	"audiencematch/pipeline/errkind"
)

// Part is one file of a table given as a directory, a glob or an object
// prefix, as the manifest and the audit record list it.
type Part struct {
	// Name is the part's path relative to the directory (or to the glob's
	// or prefix's fixed leading directories), slash-separated.
	Name   string `json:"name"`
	SHA256 string `json:"sha256"`
}

// PartLister is a RowReader of a table given in parts. Parts is complete,
// like Digest, once the table has been read to its end.
type PartLister interface {
	Parts() []Part
}

// partRef is one file of an input, where it is and what it is called.
type partRef struct {
	name  string
	path  string          // a local file (or FIFO)
	stdin bool            // standard input
	store *objstore.Store // an object, its key in key
	key   string
	size  int64 // -1: unknown
}

// input is a table's input resolved into its files.
type input struct {
	parts []partRef
	// listed is set for a directory, glob or prefix, whose parts the
	// manifest lists one by one.
	listed bool
	store  *objstore.Store // to close
}

func (in *input) close() {
	if in.store != nil {
		in.store.Close()
	}
}

// hasGlob reports whether s has a metacharacter of path.Match.
func hasGlob(s string) bool { return strings.ContainsAny(s, "*?[") }

// skipped reports whether a directory entry is no part: hidden files and
// the markers and work directories of Spark, Hadoop and Hive (_SUCCESS,
// _committed_*, _temporary/), which all start with "." or "_".
func skipped(name string) bool { return strings.HasPrefix(name, ".") || strings.HasPrefix(name, "_") }

// resolveInput finds the files of the input spec (see the package doc,
// "Inputs").
func resolveInput(ctx context.Context, spec string) (*input, error) {
	switch {
	case spec == "-":
		return &input{parts: []partRef{{name: "-", stdin: true, size: -1}}}, nil
	case objstore.IsURL(spec):
		return resolveObjects(ctx, spec)
	}
	p, ok := objstore.LocalPath(spec)
	if !ok {
		return nil, fmt.Errorf("%w: %q: an input is a file, a directory, a glob, \"-\" or an s3://, gs://, azblob:// or file:// URL", errkind.ErrUsage, objstore.Redact(spec))
	}
	st, err := os.Stat(p)
	if err != nil && hasGlob(p) {
		return resolveGlob(p)
	}
	if err != nil {
		return nil, fmt.Errorf("open %q: %w: %w", p, errkind.ErrNoInput, err)
	}
	if !st.IsDir() {
		return &input{parts: []partRef{{name: filepath.Base(p), path: p, size: st.Size()}}}, nil
	}
	parts, err := walkParts(p)
	if err != nil {
		return nil, err
	}
	if len(parts) == 0 {
		return nil, fmt.Errorf("%w: the directory %q holds no part file (hidden files and those starting with _ are skipped): give the directory the export wrote its parts to", errkind.ErrNoInput, p)
	}
	return &input{parts: parts, listed: true}, nil
}

// walkParts lists the part files under dir in name order, descending into
// Hive-style key=value directories.
func walkParts(dir string) ([]partRef, error) {
	var parts []partRef
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return fmt.Errorf("%w: %w", errkind.ErrNoInput, err)
		}
		if p == dir {
			return nil
		}
		if skipped(d.Name()) {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		rel, _ := filepath.Rel(dir, p)
		if d.IsDir() {
			if !strings.Contains(d.Name(), "=") {
				return fmt.Errorf("%w: %q holds the directory %q, which is neither a part nor a Hive-style key=value partition: move it out, or give the directory of parts itself", errkind.ErrData, dir, rel)
			}
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return fmt.Errorf("%w: %w", errkind.ErrNoInput, err)
		}
		parts = append(parts, partRef{name: filepath.ToSlash(rel), path: p, size: info.Size()})
		return nil
	})
	slices.SortFunc(parts, func(a, b partRef) int { return strings.Compare(a.name, b.name) })
	return parts, err
}

// resolveGlob expands a glob into its files (a directory it matches gives
// its parts), named relative to the glob's fixed leading directories.
func resolveGlob(pattern string) (*input, error) {
	matches, err := filepath.Glob(pattern)
	if err != nil {
		return nil, fmt.Errorf("%w: the glob %q: %w", errkind.ErrUsage, pattern, err)
	}
	base := globBase(filepath.ToSlash(pattern))
	var parts []partRef
	for _, m := range matches {
		if skipped(filepath.Base(m)) {
			continue
		}
		st, err := os.Stat(m)
		if err != nil {
			return nil, fmt.Errorf("open %q: %w: %w", m, errkind.ErrNoInput, err)
		}
		rel := strings.TrimPrefix(filepath.ToSlash(m), base)
		if !st.IsDir() {
			parts = append(parts, partRef{name: rel, path: m, size: st.Size()})
			continue
		}
		sub, err := walkParts(m)
		if err != nil {
			return nil, err
		}
		for _, s := range sub {
			s.name = rel + "/" + s.name
			parts = append(parts, s)
		}
	}
	if len(parts) == 0 {
		return nil, fmt.Errorf("%w: the glob %q matches no file: check the path, and quote the glob so that the shell leaves it to audiencematch", errkind.ErrNoInput, pattern)
	}
	slices.SortFunc(parts, func(a, b partRef) int { return strings.Compare(a.name, b.name) })
	return &input{parts: parts, listed: true}, nil
}

// globBase is the fixed leading directories of a slash-separated glob,
// with their trailing slash: what its matches' names are relative to.
func globBase(pattern string) string {
	i := strings.IndexAny(pattern, "*?[")
	if i < 0 {
		return path.Dir(pattern) + "/"
	}
	j := strings.LastIndex(pattern[:i], "/")
	return pattern[:j+1]
}

// resolveObjects finds the objects of an object-store input: the object
// the URL names, or the objects under it (a prefix, like a directory of
// parts), or the objects its key's glob matches.
func resolveObjects(ctx context.Context, spec string) (*input, error) {
	s, err := objstore.Open(ctx, spec)
	if err != nil {
		return nil, err
	}
	in := &input{store: s}
	key := s.Prefix
	if hasGlob(key) {
		base := strings.TrimSuffix(globBase(key), "/")
		keys, err := s.List(ctx, base)
		if err != nil {
			in.close()
			return nil, objstore.Err(err, "list", spec)
		}
		for _, k := range keys {
			full := path.Join(base, k)
			if ok, _ := path.Match(key, full); ok && !hiddenKey(k) {
				in.parts = append(in.parts, partRef{name: k, store: s, key: full, size: -1})
			}
		}
		if len(in.parts) == 0 {
			in.close()
			return nil, fmt.Errorf("%w: the glob %s matches no object", errkind.ErrNoInput, objstore.Redact(spec))
		}
		in.listed = true
		return in, nil
	}
	if ok, err := s.Exists(ctx, key); err != nil {
		in.close()
		return nil, objstore.Err(err, "read", spec)
	} else if ok && key != "" {
		in.parts = []partRef{{name: path.Base(key), store: s, key: key, size: -1}}
		return in, nil
	}
	keys, err := s.List(ctx, key)
	if err != nil {
		in.close()
		return nil, objstore.Err(err, "list", spec)
	}
	for _, k := range keys {
		if hiddenKey(k) {
			continue
		}
		if dir := path.Dir(k); dir != "." {
			for _, seg := range strings.Split(dir, "/") {
				if !strings.Contains(seg, "=") {
					in.close()
					return nil, fmt.Errorf("%w: %s holds %q, under a directory that is neither a part nor a Hive-style key=value partition", errkind.ErrData, objstore.Redact(spec), k)
				}
			}
		}
		in.parts = append(in.parts, partRef{name: k, store: s, key: s.Key(k), size: -1})
	}
	if len(in.parts) == 0 {
		in.close()
		return nil, fmt.Errorf("%w: no object %s, nor any part under it", errkind.ErrNoInput, objstore.Redact(spec))
	}
	in.listed = true
	return in, nil
}

// hiddenKey reports whether any segment of a relative key is skipped.
func hiddenKey(k string) bool {
	for seg := range strings.SplitSeq(k, "/") {
		if skipped(seg) {
			return true
		}
	}
	return false
}

// open opens one part as a table. tmp is where a Parquet object is copied
// to be read from its footer ("" for the system's temporary directory).
func (p *partRef) open(ctx context.Context, columns []string, tmp string) (RowReader, Format, error) {
	switch {
	case p.stdin:
		return openStream("-", io.NopCloser(os.Stdin), columns)
	case p.store != nil:
		return p.openObject(ctx, columns, tmp)
	}
	f, err := DetectFormat(p.path)
	if err != nil {
		return nil, "", err
	}
	r, err := OpenTable(p.path, columns)
	return r, f, err
}

// detect tells the part's format from its first bytes.
func (p *partRef) detect(ctx context.Context) (Format, error) {
	switch {
	case p.stdin:
		return FormatCSV, nil
	case p.store == nil:
		return DetectFormat(p.path)
	}
	r, err := p.store.NewRangeReader(ctx, p.key, 0, 4, nil)
	if err != nil {
		return "", objstore.Err(err, "read", objstore.Join(p.store.Loc, strings.TrimPrefix(p.key, p.store.Prefix)))
	}
	defer r.Close()
	head := make([]byte, 4)
	n, _ := io.ReadFull(r, head)
	return formatOf(p.key, head[:n])
}

// openObject streams a CSV object; a Parquet object, which is read from
// its footer, is first copied to a temporary file that Close removes.
func (p *partRef) openObject(ctx context.Context, columns []string, tmp string) (RowReader, Format, error) {
	loc := objstore.Join(p.store.Loc, strings.TrimPrefix(p.key, p.store.Prefix))
	r, err := p.store.NewReader(ctx, p.key, nil)
	if err != nil {
		return nil, "", objstore.Err(err, "read", loc)
	}
	br := bufio.NewReaderSize(r, 1<<16)
	head, _ := br.Peek(4)
	if format, err := formatOf(p.key, head); err != nil || format == FormatCSV {
		if err != nil {
			r.Close()
			return nil, "", err
		}
		t, _, err := openStream(objstore.Redact(loc), struct {
			io.Reader
			io.Closer
		}{br, r}, columns)
		return t, FormatCSV, err
	}
	f, err := os.CreateTemp(tmp, "input-*.parquet")
	if err != nil {
		r.Close()
		return nil, "", err
	}
	_, err = io.Copy(f, br)
	r.Close()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(f.Name())
		return nil, "", objstore.Err(err, "read", loc)
	}
	t, err := openParquetTable(f.Name(), columns, false)
	if err != nil {
		os.Remove(f.Name())
		return nil, "", fmt.Errorf("%s: %w", objstore.Redact(loc), err)
	}
	return &removeOnClose{RowReader: t, batches: Batches(t), path: f.Name()}, FormatParquet, nil
}

// removeOnClose removes a temporary copy of a Parquet object with its table.
type removeOnClose struct {
	RowReader
	batches BatchReader
	path    string
}

func (r *removeOnClose) Close() error {
	return errors.Join(r.RowReader.Close(), os.Remove(r.path))
}

// NextBatch and Release pass through to the table's batches, so that the
// copy is read in parallel as a file is.
func (r *removeOnClose) NextBatch(b *Batch) error { return r.batches.NextBatch(b) }
func (r *removeOnClose) Release(b *Batch)         { r.batches.Release(b) }

// listDigest is the digest of a table given in parts: the SHA-256 of its
// parts' digests, in hex, each followed by a line feed, in name order
// (`sha256sum PARTS | cut -c1-64 | sha256sum`). It depends only on the
// parts' contents and order, not on where they are kept or what they are
// called; a single part's digest is its own.
func listDigest(parts []Part) string {
	if len(parts) == 1 {
		return parts[0].SHA256
	}
	h := sha256.New()
	for _, p := range parts {
		io.WriteString(h, p.SHA256+"\n")
	}
	return hex.EncodeToString(h.Sum(nil))
}

// multiTable reads a table given in parts as one: the parts in name order,
// each opened when the one before is finished, so that one part's file is
// open at a time. Batches keep their order across parts (Batch.Seq counts
// on), and so do lines: a part's Row.Line is its own plus the last line
// of the parts before it. Every part must be in one format: a directory
// holding CSV and Parquet files, or a file that is neither, is an error
// that names the part.
type multiTable struct {
	ctx     context.Context
	in      *input
	columns []string
	tmp     string
	cursor  batchCursor

	mu   sync.Mutex
	cond *sync.Cond
	i    int         // the part being read
	cur  RowReader   // its table; nil before it is opened
	curB BatchReader // its batches
	// format is the first part's: every part must have it.
	format Format
	// seqBase and lineBase are what the current part's batch numbers and
	// lines are shifted by; maxSeq and maxLine its greatest seen so far.
	seqBase, maxSeq   int
	lineBase, maxLine int64
	ahead             chan openedPart // the next part, opening; nil for none
	inflight          int             // NextBatch calls on the current part's reader
	draining          bool            // the current part has ended: waiting for inflight
	parts             []Part
	err               error
}

func newMultiTable(ctx context.Context, in *input, columns []string, tmp string) *multiTable {
	t := &multiTable{ctx: ctx, in: in, columns: columns, tmp: tmp, maxSeq: -1}
	t.cond = sync.NewCond(&t.mu)
	return t
}

// openedPart is a part opened, or why it could not be.
type openedPart struct {
	r   RowReader
	f   Format
	err error
}

// openAt tells part i's format and opens it.
func (t *multiTable) openAt(i int) openedPart {
	p := &t.in.parts[i]
	f, err := p.detect(t.ctx)
	if err != nil {
		return openedPart{err: fmt.Errorf("part %q: %w", p.name, err)}
	}
	r, _, err := p.open(t.ctx, t.columns, t.tmp)
	if err != nil {
		return openedPart{f: f, err: fmt.Errorf("part %q: %w", p.name, err)}
	}
	return openedPart{r: r, f: f}
}

// openPart opens part t.i, with t.mu held, and starts opening the next one
// in the background: opening a part (its digest, its footer) then overlaps
// the reading of the one before, rather than stopping every reader at each
// part's end.
func (t *multiTable) openPart() error {
	var o openedPart
	if t.ahead != nil {
		o, t.ahead = <-t.ahead, nil
	} else {
		o = t.openAt(t.i)
	}
	p := &t.in.parts[t.i]
	if o.f != "" && t.i > 0 && o.f != t.format { // the format's error, not the reader's, says what is wrong
		if o.r != nil {
			o.r.Close()
		}
		o.err = fmt.Errorf("%w: part %q is %s, but %q is %s: the parts of a table share one format; move it out of the input", errkind.ErrData, p.name, o.f, t.in.parts[0].name, t.format)
	}
	if o.err != nil {
		return o.err
	}
	if t.i == 0 {
		t.format = o.f
	}
	t.cur, t.curB = o.r, Batches(o.r)
	if next := t.i + 1; next < len(t.in.parts) {
		ch := make(chan openedPart, 1)
		go func() { ch <- t.openAt(next) }()
		t.ahead = ch
	}
	return nil
}

// NextBatch gives the next batch of the current part, moving to the next
// part once every batch of this one is handed out and returned.
func (t *multiTable) NextBatch(b *Batch) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	for {
		for t.draining {
			t.cond.Wait()
		}
		if t.err != nil {
			return t.err
		}
		if t.cur == nil {
			if t.i == len(t.in.parts) {
				t.err = io.EOF
				return t.err
			}
			if err := t.openPart(); err != nil {
				t.err = err
				return err
			}
		}
		part, br := t.i, t.curB
		t.inflight++
		t.mu.Unlock()
		err := br.NextBatch(b)
		t.mu.Lock()
		t.inflight--
		if t.draining {
			t.cond.Broadcast() // the caller that saw the end waits for this one
		}
		if err == nil {
			t.maxSeq = max(t.maxSeq, b.Seq)
			for i := range b.Rows {
				t.maxLine = max(t.maxLine, b.Rows[i].Line)
				b.Rows[i].Line += t.lineBase
			}
			b.Seq += t.seqBase
			b.part = part + 1
			return nil
		}
		if part != t.i || t.draining {
			continue // another caller saw the end first, and moves on
		}
		if err != io.EOF {
			t.err = fmt.Errorf("part %q: %w", t.in.parts[part].name, err)
			return t.err
		}
		// The part has ended: once every call on it has returned, its
		// batches are all numbered and its digest is complete.
		t.draining = true
		for t.inflight > 0 {
			t.cond.Wait()
		}
		t.parts = append(t.parts, Part{Name: t.in.parts[part].name, SHA256: t.cur.Digest()})
		cerr := t.cur.Close()
		t.cur, t.curB = nil, nil
		t.seqBase += t.maxSeq + 1
		t.lineBase += t.maxLine
		t.maxSeq, t.maxLine = -1, 0
		t.i++
		t.draining = false
		t.cond.Broadcast()
		if cerr != nil {
			t.err = fmt.Errorf("part %q: %w", t.in.parts[part].name, cerr)
			return t.err
		}
	}
}

// Release hands a batch's memory back to the part that filled it, if that
// part is still being read.
func (t *multiTable) Release(b *Batch) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if b.part == t.i+1 && t.curB != nil && !t.draining {
		t.curB.Release(b)
	}
}

// Next gives the rows one at a time, through the batches.
func (t *multiTable) Next() (*Row, error) { return t.cursor.next(t) }

// Digest is listDigest of the parts.
func (t *multiTable) Digest() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return listDigest(t.parts)
}

// Parts lists the parts read, with their digests.
func (t *multiTable) Parts() []Part {
	t.mu.Lock()
	defer t.mu.Unlock()
	return slices.Clone(t.parts)
}

// Close closes the part being read and the store.
func (t *multiTable) Close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	var err error
	if t.cur != nil {
		err = t.cur.Close()
		t.cur, t.curB = nil, nil
	}
	if t.ahead != nil {
		if o := <-t.ahead; o.r != nil {
			err = errors.Join(err, o.r.Close())
		}
		t.ahead = nil
	}
	if t.err == nil {
		t.err = errors.New("table closed")
	}
	t.in.close()
	return err
}

// storeCloser closes an object's store with its table.
type storeCloser struct {
	RowReader
	batches BatchReader
	in      *input
}

func (s *storeCloser) Close() error             { err := s.RowReader.Close(); s.in.close(); return err }
func (s *storeCloser) NextBatch(b *Batch) error { return s.batches.NextBatch(b) }
func (s *storeCloser) Release(b *Batch)         { s.batches.Release(b) }

// openInput opens the table an input spec names (see the package doc,
// "Inputs").
func openInput(ctx context.Context, spec string, columns []string, tmp string) (RowReader, error) {
	if p, ok := objstore.LocalPath(spec); ok && spec != "-" && !hasGlob(p) {
		if st, err := os.Stat(p); err == nil && !st.IsDir() {
			return OpenTable(p, columns) // one file, as always
		}
	}
	in, err := resolveInput(ctx, spec)
	if err != nil {
		return nil, err
	}
	if in.listed {
		return newMultiTable(ctx, in, columns, tmp), nil
	}
	r, _, err := in.parts[0].open(ctx, columns, tmp)
	if err != nil {
		in.close()
		return nil, err
	}
	if in.store == nil {
		return r, nil
	}
	return &storeCloser{RowReader: r, batches: Batches(r), in: in}, nil
}
