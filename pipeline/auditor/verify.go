package auditor

import (
	"bytes"
	"cmp"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"golang.org/x/mod/sumdb/note"

	"audiencematch/consent/audit"
	"audiencematch/hashing"
	"audiencematch/internal/fsutil"
	"audiencematch/internal/objstore"
	"audiencematch/pipeline/delivery"
	"audiencematch/pipeline/errkind"
	"audiencematch/pipeline/idfile"
	"audiencematch/pipeline/manifest"
	"audiencematch/pipeline/statedir"
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
	l, cp, err := audit.VerifyLog(statedir.Audit(state), verifier, trusted)
	if err != nil {
		return nil, fmt.Errorf("%w: audit verify: %w", errkind.ErrData, err)
	}
	rep := &VerifyReport{Records: l.Size(), Root: hex.EncodeToString(cp.Hash)}
	rep.Checkpoint, err = os.ReadFile(filepath.Join(statedir.Audit(state), audit.CheckpointFile))
	if err != nil {
		return nil, err
	}
	heads := map[string]*audit.Record{} // each destination's delivery chain so far
	// A run published to an object store is read from a local copy, kept
	// while the run heads its chain (the next run's deltas are checked
	// against it).
	copies := map[string]func(){}
	defer func() {
		for _, done := range copies {
			done()
		}
	}()
	for i, rec := range l.Records() {
		if rec.Type != audit.TypeRunCommitted {
			continue
		}
		rep.Committed++
		rec, done, err := readable(rec)
		if err != nil {
			return nil, fmt.Errorf("%w: audit verify: record %d, run %s (%s): %w", errkind.ErrData, i, rec.RunID, rec.Destination, err)
		}
		release := done
		if !rec.Backfill {
			release = func() {}
			if old := copies[rec.Destination]; old != nil {
				release = old
			}
			copies[rec.Destination] = done
		}
		err = verifyRun(state, rec)
		if err == nil {
			err = delivery.VerifyDelivery(state, heads[rec.Destination], rec)
		}
		release() // the previous head, once this run's deltas are checked against it
		if err != nil {
			return nil, fmt.Errorf("%w: audit verify: record %d, run %s (%s): %w", errkind.ErrData, i, rec.RunID, rec.Destination, err)
		}
		if !rec.Backfill {
			heads[rec.Destination] = rec
		}
	}
	if err := delivery.VerifyNothingUnrecorded(l); err != nil {
		return nil, fmt.Errorf("%w: audit verify: %w", errkind.ErrData, err)
	}
	return rep, nil
}

// readable is rec as the checks read it: a run published to an object
// store is copied into a temporary directory, which rec's copy names as
// published and done removes.
func readable(rec *audit.Record) (*audit.Record, func(), error) {
	if !objstore.IsURL(rec.Published) {
		return rec, func() {}, nil
	}
	dir, done, err := delivery.LocalCopy(context.Background(), rec.Published)
	if err != nil {
		return rec, nil, fmt.Errorf("read the published run: %w", err)
	}
	c := *rec
	c.Published = dir
	return &c, done, nil
}

func verifyRun(state string, rec *audit.Record) error {
	dir := rec.Published
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
