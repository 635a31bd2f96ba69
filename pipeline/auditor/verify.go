package auditor

import (
	"bytes"
	"cmp"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/mod/sumdb/note"

	"audiencematch/consent/audit"
	"audiencematch/consent/audit/witness"
	"audiencematch/hashing"
	"audiencematch/internal/fsutil"
	"audiencematch/internal/objstore"
	"audiencematch/pipeline/delivery"
	"audiencematch/pipeline/errkind"
	"audiencematch/pipeline/idfile"
	"audiencematch/pipeline/manifest"
	"audiencematch/pipeline/statedir"
)

// VerifyOptions are what an auditor brings to VerifyAudit.
type VerifyOptions struct {
	// Trusted is a checkpoint saved on an earlier visit (nil: none): the
	// log must extend it.
	Trusted []byte
	// Roots locates each destination's published runs: the registry's
	// delivery roots, or a copy of the delivered files (--delivery).
	Roots delivery.Roots
	// Retention is each destination's retention_days from the registry,
	// for records of v1, which do not carry it.
	Retention map[string]int64
	// Witnesses are the witnesses' verifier keys the auditor requires
	// cosignatures of, at least MinWitnesses of them, on the checkpoint.
	Witnesses    []*witness.CosignatureVerifier
	MinWitnesses int
	// Configured are the witnesses of the state's configuration, whose
	// cosignatures are reported, not required.
	Configured []witness.Witness
	// Now is the time retention is measured against; zero: time.Now().
	Now time.Time
}

// VerifyReport is what `audit verify` found when everything held.
type VerifyReport struct {
	Records    int64
	Committed  int
	Checkpoint []byte // the verified checkpoint, for --save-checkpoint
	Root       string
	// Pruned are the committed runs whose published files were removed
	// under their destination's retention, verified from what is left.
	Pruned []PrunedRun
	// Cosigned maps each witness (required or configured) whose valid
	// cosignature the checkpoint carries to its UNIX time; Uncosigned
	// lists the configured witnesses it lacks (down, or refusing: the next
	// run asks them again).
	Cosigned   map[string]uint64
	Uncosigned []string
}

// PrunedRun is a run verified without its published files.
type PrunedRun struct {
	Record      int64  `json:"record"` // the run's leaf index in the log
	RunID       string `json:"run_id"`
	Destination string `json:"destination"`
	// Unchecked says what can no longer be checked.
	Unchecked string `json:"unchecked"`
}

// VerifyAudit checks the audit log under state and everything it points to:
// the checkpoint's signature and the witnesses' cosignatures, the records'
// tree against it, consistency with a checkpoint saved earlier, and for
// every committed run its manifest, files, identifier tree, evidence tree
// and counts, and its place in the delivery chain; a run whose published
// directory was removed under its retention is verified from its record,
// evidence and the delta chain, and reported as pruned. The error names the
// first broken thing; it wraps errkind.ErrData.
func VerifyAudit(state string, verifier note.Verifier, opts VerifyOptions) (*VerifyReport, error) {
	l, cp, err := audit.VerifyLog(statedir.Audit(state), verifier, opts.Trusted)
	if err != nil {
		return nil, fmt.Errorf("%w: audit verify: %w", errkind.ErrData, err)
	}
	rep := &VerifyReport{Records: l.Size(), Root: hex.EncodeToString(cp.Hash)}
	rep.Checkpoint, err = os.ReadFile(filepath.Join(statedir.Audit(state), audit.CheckpointFile))
	if err != nil {
		return nil, err
	}
	if err := checkWitnesses(rep, verifier, opts); err != nil {
		return nil, fmt.Errorf("%w: audit verify: %w", errkind.ErrData, err)
	}
	if opts.Now.IsZero() {
		opts.Now = time.Now()
	}
	prunedBy := pruneRecords(l.Records())
	heads := map[string]*audit.Record{} // each destination's delivery chain so far
	gone := map[string]bool{}           // runs whose snapshot can no longer be read
	// A run published to an object store is read from a local copy
	// (Roots.Copies), kept while the run heads its chain (the next run's
	// deltas are checked against it).
	roots, done := opts.Roots.Copying("")
	defer done()
	opts.Roots = roots
	for i, rec := range l.Records() {
		if rec.Type != audit.TypeRunCommitted {
			continue
		}
		rep.Committed++
		pr, err := verifyCommitted(state, rec, int64(i), prunedBy, opts)
		if err == nil && pr != nil {
			rep.Pruned = append(rep.Pruned, pr.PrunedRun)
			gone[rec.RunID] = pr.noSnapshot
		}
		if err == nil {
			head := heads[rec.Destination]
			if head != nil && (gone[head.RunID] || gone[rec.RunID]) && !rec.Backfill {
				// One of the two snapshots is gone with its evidence: the
				// link is checked, the deltas no longer can be.
				err = delivery.VerifyLink(head, rec)
			} else {
				err = delivery.VerifyDelivery(state, opts.Roots, head, rec)
			}
		}
		// The previous head's copy goes once this run's deltas are
		// checked against it; a backfill's at once (it heads nothing).
		if rec.Backfill {
			roots.Release(rec)
		} else if head := heads[rec.Destination]; head != nil {
			roots.Release(head)
		}
		if re := (*delivery.ReadError)(nil); errors.As(err, &re) {
			// The store could not be read: no finding about the run.
			return nil, fmt.Errorf("audit verify: record %d, run %s (%s): %w", i, rec.RunID, rec.Destination, re)
		}
		if err != nil {
			return nil, fmt.Errorf("%w: audit verify: record %d, run %s (%s): %w", errkind.ErrData, i, rec.RunID, rec.Destination, err)
		}
		if !rec.Backfill {
			heads[rec.Destination] = rec
		}
	}
	if err := delivery.VerifyNothingUnrecorded(l, opts.Roots); err != nil {
		if errors.Is(err, errkind.ErrConfig) || errors.Is(err, errkind.ErrTempFail) {
			// An object store that could not be listed: no finding.
			return nil, fmt.Errorf("audit verify: %w", err)
		}
		return nil, fmt.Errorf("%w: audit verify: %w", errkind.ErrData, err)
	}
	return rep, nil
}

// checkWitnesses counts the valid cosignatures of the required witnesses
// and of the configured ones on the verified checkpoint.
func checkWitnesses(rep *VerifyReport, verifier note.Verifier, opts VerifyOptions) error {
	vs := []note.Verifier{verifier}
	for _, w := range opts.Witnesses {
		vs = append(vs, w)
	}
	for i := range opts.Configured {
		vs = append(vs, opts.Configured[i].Verifier())
	}
	got, err := witness.CosignersOf(rep.Checkpoint, dedupe(vs)...)
	if err != nil {
		return fmt.Errorf("checkpoint cosignatures: %w", err)
	}
	rep.Cosigned = got
	var missing []string
	for _, w := range opts.Witnesses {
		if _, ok := got[w.Name()]; !ok {
			missing = append(missing, w.Name())
		}
	}
	for i := range opts.Configured {
		if _, ok := got[opts.Configured[i].Name]; !ok {
			rep.Uncosigned = append(rep.Uncosigned, opts.Configured[i].Name)
		}
	}
	if n := len(opts.Witnesses) - len(missing); n < opts.MinWitnesses {
		return fmt.Errorf("the checkpoint carries valid cosignatures of %d of the witnesses you require, fewer than --min-witnesses %d (missing: %s): a witness was down at the last run, or refused the log's history",
			n, opts.MinWitnesses, strings.Join(missing, ", "))
	}
	return nil
}

// dedupe drops repeated verifiers (a required witness also configured):
// note refuses a list naming one key twice.
func dedupe(vs []note.Verifier) []note.Verifier {
	seen := map[string]bool{}
	var out []note.Verifier
	for _, v := range vs {
		k := fmt.Sprintf("%s+%08x", v.Name(), v.KeyHash())
		if !seen[k] {
			seen[k] = true
			out = append(out, v)
		}
	}
	return out
}

// pruneRecords maps each run a prune record names to the record's index.
func pruneRecords(recs []*audit.Record) map[string]int64 {
	out := map[string]int64{}
	for i, rec := range recs {
		if rec.Type == audit.TypePrune {
			for _, id := range rec.PrunedRuns {
				out[id] = int64(i)
			}
		}
	}
	return out
}

// prunedRun is a PrunedRun, and whether its snapshot is gone with its
// evidence.
type prunedRun struct {
	PrunedRun
	noSnapshot bool
}

// verifyCommitted checks a committed run from its published files, or,
// when its published directory is gone and it is past its retention (or a
// later prune record names it), from what is left.
func verifyCommitted(state string, rec *audit.Record, i int64, prunedBy map[string]int64, opts VerifyOptions) (*prunedRun, error) {
	dir, err := opts.Roots.RunDir(rec)
	if err != nil {
		return nil, err
	}
	// A run in an object store is named by its location, not its copy's.
	where := dir
	if loc, err := opts.Roots.Location(rec); err == nil && loc != dir {
		where = objstore.Redact(loc)
	}
	if _, err := os.Stat(dir); !errors.Is(err, fs.ErrNotExist) {
		if err := verifyRun(state, dir, rec); err != nil {
			if where != dir {
				return nil, fmt.Errorf("%s (read into %s): %w", where, dir, err)
			}
			return nil, err
		}
		return nil, nil
	}
	why, err := pruneReason(rec, i, prunedBy, opts)
	if err != nil {
		return nil, fmt.Errorf("the published directory %s is missing: %w", where, err)
	}
	pr := &prunedRun{PrunedRun: PrunedRun{Record: i, RunID: rec.RunID, Destination: rec.Destination}}
	if _, err := os.Stat(statedir.Evidence(state, rec.RunID)); errors.Is(err, fs.ErrNotExist) {
		pr.noSnapshot = true
		pr.Unchecked = why + "; its private evidence was removed too: only the record's place in the signed log is checked, the identifiers sent and the consent behind them no longer can be"
		return pr, nil
	}
	if err := verifyFromEvidence(state, dir, rec); err != nil {
		return nil, fmt.Errorf("published files removed (%s), and what is left does not match the record: %w", why, err)
	}
	pr.Unchecked = why + "; the identifiers sent were checked from the private evidence against the record's identifier tree; the published bytes (manifest, parts, deltas, their digests) and the manifest's counts no longer can be"
	return pr, nil
}

// pruneReason says why rec's published directory may be gone, or errors
// when nothing allows it.
func pruneReason(rec *audit.Record, i int64, prunedBy map[string]int64, opts VerifyOptions) (string, error) {
	if p, ok := prunedBy[rec.RunID]; ok && p > i {
		return fmt.Sprintf("pruned by record %d", p), nil
	}
	days := opts.Retention[rec.Destination]
	if rec.Authorization != nil {
		days = rec.Authorization.RetentionDays
	}
	if days <= 0 {
		return "", errors.New("no prune record names the run, and its retention_days is not known (a v1 record: pass --registry with the destination's entry)")
	}
	asOf, err := time.Parse(time.RFC3339Nano, rec.AsOf)
	if err != nil {
		return "", err
	}
	until := asOf.AddDate(0, 0, int(days))
	if opts.Now.Before(until) {
		return "", fmt.Errorf("the run is within its retention of %d days (until %s) and no prune record names it", days, until.UTC().Format(time.DateOnly))
	}
	return fmt.Sprintf("past its retention of %d days since %s", days, asOf.UTC().Format(time.DateOnly)), nil
}

// verifyFromEvidence checks a pruned run's evidence against its record:
// the evidence tree, and the identifier tree of its primary rows.
func verifyFromEvidence(state, dir string, rec *audit.Record) error {
	if err := verifyEvidence(state, rec); err != nil {
		return err
	}
	scheme, err := hashing.ParseScheme(rec.Scheme)
	if err != nil {
		return err
	}
	it, fromEvidence, err := idfile.SentIDs(state, dir, rec, scheme)
	if err != nil {
		return err
	}
	defer it.Close()
	if !fromEvidence {
		return errors.New("its published files are present after all")
	}
	for {
		_, ok, err := it.Next()
		if err != nil || !ok {
			return err
		}
	}
}

func verifyRun(state, dir string, rec *audit.Record) error {
	sum, body, err := fsutil.ReadFileSHA256(filepath.Join(dir, rec.Manifest.Path))
	if err != nil {
		return fmt.Errorf("manifest: %w", err)
	}
	if sum != rec.Manifest.SHA256 {
		return fmt.Errorf("%s: SHA-256 %s, the log says %s", filepath.Join(dir, rec.Manifest.Path), sum, rec.Manifest.SHA256)
	}
	m, err := manifest.ReadManifest(body)
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
	if err := delivery.SameFiles(dir, rec); err != nil {
		return err
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
	if err := audit.SameTree(tree.Summary(), rec.IDs, "identifier"); err != nil {
		return err
	}
	return verifyEvidence(state, rec)
}

// verifyParts checks published parts against the log's and the manifest's
// entries: SHA-256, rows, identifiers of the scheme's shape, sorted and
// distinct across the parts; with a tree, it adds them as leaves.
func verifyParts(dir string, files []audit.File, listed []manifest.OutputFile, scheme hashing.Scheme, tree *audit.TreeRoot) error {
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
		sum, err := fsutil.SHA256File(path)
		if err != nil {
			return err
		}
		if sum != f.SHA256 {
			return fmt.Errorf("%s: SHA-256 %s, the log says %s", path, sum, f.SHA256)
		}
		var rows int64
		var bad error
		err = idfile.EachPublishedID(path, scheme, func(_ int64, id []byte) bool {
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
	path := statedir.Evidence(state, rec.RunID)
	er, err := idfile.OpenEvidence(path)
	if err != nil {
		return fmt.Errorf("evidence: %w", err)
	}
	defer er.Close()
	var tree audit.TreeRoot
	var primaries int64
	for {
		e, err := er.Next()
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
	return audit.SameTree(tree.Summary(), rec.Evidence, "evidence")
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
