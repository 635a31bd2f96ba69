// Package delivery keeps the promise that the platform holds exactly the
// latest consented audience. The delivery chain of a destination is the
// sequence of its committed runs that are not backfills, in the order of
// the audit log, which is the order in which they were published. Its
// invariant:
//
//	applying every run's removes, then its adds, in chain order, to the
//	first run's snapshot gives exactly the latest run's snapshot
//
// and every run's deltas are computed against what the platform actually
// received: the chain's head (DeltaBase). Three rules keep it:
//
//   - heal: before anything else, under the run lock, a published run
//     directory that the log does not record (a crash between the publish
//     and the record) is checked against its prepared record and recorded,
//     so that the log order stays the delivery order (Heal);
//   - backfill: a cutoff earlier than the head's is refused unless the
//     operator asks for a backfill, which publishes a snapshot without
//     deltas, is recorded as such, and never becomes the head (CheckCutoff);
//   - audit verify recomputes every run's deltas from its own and its
//     predecessor's identifiers and checks previous_run_id against the log
//     (VerifyDelivery).
//
// A fourth rule guards against a mass removal that is more likely a
// mistake than a decision: the drop guard (CheckDrop).
package delivery

import (
	"cmp"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path"
	"path/filepath"
	"slices"
	"time"

	"golang.org/x/mod/sumdb/note"

	"audiencematch/consent/audit"
	"audiencematch/hashing"
	"audiencematch/internal/fsutil"
	"audiencematch/pipeline/errkind"
	"audiencematch/pipeline/idfile"
	"audiencematch/pipeline/manifest"
	"audiencematch/pipeline/statedir"
)

// DeltaBase is the head of the destination's delivery chain in l: its last
// committed run, in log order, that is not a backfill; nil for none.
func DeltaBase(l *audit.Log, destination string) *audit.Record {
	recs := l.Records()
	for i := len(recs) - 1; i >= 0; i-- {
		if rec := recs[i]; isChainRun(rec, destination) {
			return rec
		}
	}
	return nil
}

// isChainRun reports whether rec is a run of destination's delivery chain.
func isChainRun(rec *audit.Record, destination string) bool {
	return rec != nil && rec.Type == audit.TypeRunCommitted && rec.Destination == destination && !rec.Backfill
}

// OpenLog opens the audit log under state; a log not created yet is empty.
func OpenLog(state string) (*audit.Log, error) {
	l, err := audit.Open(statedir.Audit(state))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w: audit log: %w", errkind.ErrConfig, err)
	}
	if l == nil {
		l = &audit.Log{}
	}
	return l, nil
}

// CheckCutoff applies the backfill rule: a run whose cutoff is earlier than
// the chain head's would compute its deltas against a future the platform
// has already received (a user who withdrew between the two would never be
// removed), so it runs only as a backfill; and a backfill is only for such
// a cutoff.
func CheckCutoff(destination string, asOf time.Time, backfill bool, head *audit.Record) error {
	if head == nil {
		if backfill {
			return fmt.Errorf("%w: --backfill: %s has no committed run yet, so there is nothing to backfill behind; run without --backfill", errkind.ErrUsage, destination)
		}
		return nil
	}
	headAt, err := time.Parse(time.RFC3339Nano, head.AsOf)
	if err != nil {
		return fmt.Errorf("%w: audit log: run %s has the cutoff %q", errkind.ErrConfig, head.RunID, head.AsOf)
	}
	earlier := asOf.Before(headAt)
	switch {
	case earlier && !backfill:
		return fmt.Errorf("%w: --as-of %s is earlier than the cutoff %s of %s's latest committed run %s: its deltas would be computed against a state the platform has moved past; pass --backfill to publish a snapshot for that cutoff with no adds or removes, outside the delivery chain",
			errkind.ErrUsage, asOf.UTC().Format(time.RFC3339), head.AsOf, destination, head.RunID)
	case !earlier && backfill:
		return fmt.Errorf("%w: --backfill is for a cutoff earlier than %s's latest committed one (%s, run %s); --as-of %s is not: run without --backfill",
			errkind.ErrUsage, destination, head.AsOf, head.RunID, asOf.UTC().Format(time.RFC3339))
	}
	return nil
}

// unrecorded is a published run directory that the log does not record.
type unrecorded struct {
	dir string
	rec *audit.Record
}

// Heal finds the destination's published run directories that the
// audit log does not record (a run killed between its publish and its
// record) and records each, from the record it prepared before publishing,
// once its files are checked against it, appending to l. It runs under the
// run lock, with l read after the log's recovery (audit.Recover), before
// any delta is computed, so that the next run's deltas start from what the
// platform holds. A directory that cannot be checked is refused, naming
// it: it is never silently skipped, and never recorded unchecked.
func Heal(l *audit.Log, state, out, destination string, signer note.Signer) ([]string, error) {
	dirs, err := RootsFor(destination, out).RunDirs(destination)
	if err != nil || len(dirs) == 0 {
		return nil, err
	}
	var pending []unrecorded
	for _, runID := range slices.Sorted(maps.Keys(dirs)) {
		dir := dirs[runID]
		if l.Committed(runID) >= 0 {
			continue
		}
		rec, err := preparedRecord(state, destination, runID, dir)
		if err != nil {
			return nil, fmt.Errorf("%w: %s is published but the audit log does not record it, and it cannot be recorded now: %w; the platform may have loaded it: have it dropped there, move the directory out of %s, and run again (docs/OPERATIONS.md, \"Recovery\")",
				errkind.ErrData, dir, err, out)
		}
		pending = append(pending, unrecorded{dir, rec})
	}
	// Record them in the order they were delivered: each names the chain
	// head of its time as previous_run_id, so the one that extends the
	// current head goes first (backfills are outside the chain).
	var healed []string
	for len(pending) > 0 {
		head := DeltaBase(l, destination)
		i := slices.IndexFunc(pending, func(u unrecorded) bool {
			return u.rec.Backfill || (head == nil && u.rec.PreviousRunID == "") || (head != nil && u.rec.PreviousRunID == head.RunID)
		})
		if i < 0 {
			return healed, fmt.Errorf("%w: %s is published but not recorded, and its previous run %q is not the latest recorded run of %s: it cannot be placed in the delivery chain; move it out of %s and run again",
				errkind.ErrData, pending[0].dir, pending[0].rec.PreviousRunID, destination, out)
		}
		u := pending[i]
		pending = slices.Delete(pending, i, i+1)
		if err := l.Append(u.rec, signer, time.Now()); err != nil {
			return healed, fmt.Errorf("record the published run %s: %w", u.rec.RunID, err)
		}
		healed = append(healed, u.rec.RunID)
	}
	return healed, nil
}

// preparedRecord reads the record a run prepared before publishing dir and
// checks that dir holds exactly the files it lists, with their digests.
func preparedRecord(state, destination, runID, dir string) (*audit.Record, error) {
	file := filepath.Join(statedir.Run(state, runID), "record.json")
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("its prepared record: %w", err)
	}
	rec, err := audit.ParseRecord(b)
	if err != nil {
		return nil, fmt.Errorf("its prepared record %s: %w", file, err)
	}
	if rec.Type != audit.TypeRunCommitted || rec.RunID != runID || rec.Destination != destination ||
		path.Base(rec.PublishedRel()) != filepath.Base(dir) {
		return nil, fmt.Errorf("its prepared record %s names another run", file)
	}
	if err := checkPublishedFiles(dir, rec); err != nil {
		return nil, err
	}
	return rec, nil
}

// SameFiles checks that dir holds exactly rec's manifest and files, nothing
// missing and nothing planted beside them.
func SameFiles(dir string, rec *audit.Record) error {
	want := []string{rec.Manifest.Path}
	for _, f := range slices.Concat(rec.Files, rec.Adds, rec.Removes) {
		want = append(want, f.Path)
	}
	var have []string
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
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
	return nil
}

// checkPublishedFiles checks that dir holds exactly rec's manifest and
// files, each with the digest rec gives: nothing missing, changed or
// planted beside them.
func checkPublishedFiles(dir string, rec *audit.Record) error {
	if err := SameFiles(dir, rec); err != nil {
		return err
	}
	want := map[string]string{rec.Manifest.Path: rec.Manifest.SHA256}
	for _, f := range slices.Concat(rec.Files, rec.Adds, rec.Removes) {
		want[f.Path] = f.SHA256
	}
	for p, digest := range want {
		sum, err := fsutil.SHA256File(filepath.Join(dir, p))
		if err != nil {
			return err
		}
		if sum != digest {
			return fmt.Errorf("%s: SHA-256 %s, the record says %s", filepath.Join(dir, p), sum, digest)
		}
	}
	return nil
}

// VerifyDelivery checks rec's place in its destination's delivery chain,
// whose head before rec is head (nil for none): a backfill stands outside
// it; any other run names head as its previous run, and its removes and
// adds are exactly head's snapshot minus its own and the reverse (all of
// head's, and all of its own, after a key or scheme change), recomputed by
// a streamed merge of the two snapshots. The caller has checked both runs'
// published files against their records (their digests and identifier
// trees, as audit verify does for every run in log order), so they are read
// here without being digested again.
func VerifyDelivery(state string, roots Roots, head, rec *audit.Record) error {
	if err := VerifyLink(head, rec); err != nil || rec.Backfill || head == nil {
		return err
	}
	prevScheme, err := hashing.ParseScheme(head.Scheme)
	if err != nil {
		return err
	}
	scheme, err := hashing.ParseScheme(rec.Scheme)
	if err != nil {
		return err
	}
	prev, err := snapshotIDs(state, roots, head, prevScheme)
	if err != nil {
		return fmt.Errorf("the previous run's identifiers: %w", err)
	}
	defer prev.Close()
	cur, err := snapshotIDs(state, roots, rec, scheme)
	if err != nil {
		return fmt.Errorf("its identifiers: %w", err)
	}
	defer cur.Close()
	dir, err := roots.RunDir(rec)
	if err != nil {
		return err
	}
	adds, removes := publishedIDs(dir, rec.Adds, scheme), publishedIDs(dir, rec.Removes, prevScheme)
	if adds == nil || removes == nil {
		// A retention policy removed the delta files: their digests were
		// checked while they existed; what is left to check is their sizes.
		adds, removes = &countingIter{}, &countingIter{}
	}
	defer adds.Close()
	defer removes.Close()
	sameKey := head.KeyID == rec.KeyID && head.Scheme == rec.Scheme
	nAdds, nRemoves, err := MergeDelta(prev, cur, sameKey, adds, removes)
	if err != nil {
		return err
	}
	if want := rowsOf(rec.Adds); nAdds != want {
		return fmt.Errorf("adds: the snapshots differ by %d new identifiers, the record lists %d", nAdds, want)
	}
	if want := rowsOf(rec.Removes); nRemoves != want {
		return fmt.Errorf("removes: the snapshots differ by %d dropped identifiers, the record lists %d", nRemoves, want)
	}
	return nil
}

// VerifyLink checks rec's place in its destination's delivery chain, whose
// head before rec is head (nil for none), without reading either snapshot:
// a backfill stands outside the chain, behind the head's cutoff; a first
// run has no deltas; any other run names head as its previous run, and its
// removes are under head's scheme and key_id.
func VerifyLink(head, rec *audit.Record) error {
	if rec.Backfill {
		if head == nil {
			return errors.New("a backfill, but the destination has no earlier committed run in the log")
		}
		if !cutoffBefore(rec.AsOf, head.AsOf) {
			return fmt.Errorf("a backfill, but its cutoff %s is not earlier than the cutoff %s of the latest run %s", rec.AsOf, head.AsOf, head.RunID)
		}
		return nil
	}
	if head == nil {
		if rec.PreviousRunID != "" || len(rec.Adds) != 0 || len(rec.Removes) != 0 || rec.RemovesScheme != "" {
			return fmt.Errorf("previous_run_id is %q, but the log has no earlier committed run of the destination", rec.PreviousRunID)
		}
		return nil
	}
	if rec.PreviousRunID != head.RunID {
		return fmt.Errorf("previous_run_id is %q, but the destination's preceding committed run in the log is %s: a run is missing from the delivery chain", rec.PreviousRunID, head.RunID)
	}
	if rec.RemovesScheme != head.Scheme || rec.RemovesKeyID != head.KeyID {
		return fmt.Errorf("its removes are under %s/%s, but the previous run %s sent %s/%s", rec.RemovesScheme, rec.RemovesKeyID, head.RunID, head.Scheme, head.KeyID)
	}
	return nil
}

// cutoffBefore compares two RFC 3339 cutoffs as instants.
func cutoffBefore(a, b string) bool {
	ta, errA := time.Parse(time.RFC3339Nano, a)
	tb, errB := time.Parse(time.RFC3339Nano, b)
	return errA == nil && errB == nil && ta.Before(tb)
}

func rowsOf(files []audit.File) int64 {
	n := int64(0)
	for _, f := range files {
		n += f.Rows
	}
	return n
}

// snapshotIDs streams a checked run's snapshot: from its published parts,
// or, where they are gone, from its evidence, checked against its record
// as it is read (idfile.SentIDs).
func snapshotIDs(state string, roots Roots, rec *audit.Record, scheme hashing.Scheme) (idfile.Iter, error) {
	dir, err := roots.RunDir(rec)
	if err != nil {
		return nil, err
	}
	if it := publishedIDs(dir, rec.Files, scheme); it != nil {
		return it, nil
	}
	it, _, err := idfile.SentIDs(state, dir, rec, scheme)
	return it, err
}

// publishedIDs streams the identifiers of a run's published files, a
// snapshot's or a delta's; nil when any is gone.
func publishedIDs(dir string, files []audit.File, scheme hashing.Scheme) idfile.Iter {
	paths := make([]string, len(files))
	for i, f := range files {
		paths[i] = filepath.Join(dir, filepath.FromSlash(f.Path))
		if _, err := os.Stat(paths[i]); err != nil {
			return nil
		}
	}
	return idfile.NewPublishedIter(paths, scheme)
}

// countingIter stands for a delta whose files are gone: mergeDelta counts
// what it should hold, and the caller compares the count with the record.
type countingIter struct{}

func (*countingIter) Next() (string, bool, error) { return "", false, nil }
func (*countingIter) Close()                      {}

// MergeDelta walks the previous snapshot and this one in order and checks
// that removes and adds hold exactly what the walk says they must, in
// order; it returns how many each must hold. Positions, not identifiers,
// name a mismatch: identifiers are personal data.
func MergeDelta(prev, cur idfile.Iter, sameKey bool, adds, removes idfile.Iter) (nAdds, nRemoves int64, err error) {
	_, counting := adds.(*countingIter)
	expect := func(it idfile.Iter, what string, n *int64, id string) error {
		*n++
		if counting {
			return nil
		}
		got, ok, err := it.Next()
		switch {
		case err != nil:
			return fmt.Errorf("%s: %w", what, err)
		case !ok:
			return fmt.Errorf("%s ends after %d identifiers, but the snapshots say it must hold more (a withdrawal or a grant never reached the platform)", what, *n-1)
		case got != id:
			return fmt.Errorf("%s: identifier %d is not the one the snapshots say it must be (an identifier is missing or planted)", what, *n)
		}
		return nil
	}
	a, aok, err := prev.Next()
	if err != nil {
		return 0, 0, err
	}
	b, bok, err := cur.Next()
	if err != nil {
		return 0, 0, err
	}
	for (aok || bok) && err == nil {
		switch {
		case aok && (!bok || !sameKey || a < b):
			if err = expect(removes, "removes", &nRemoves, a); err == nil {
				a, aok, err = prev.Next()
			}
		case bok && (!aok || (sameKey && b < a)):
			if err = expect(adds, "adds", &nAdds, b); err == nil {
				b, bok, err = cur.Next()
			}
		default: // in both snapshots: in neither delta
			if a, aok, err = prev.Next(); err == nil {
				b, bok, err = cur.Next()
			}
		}
	}
	if err != nil {
		return 0, 0, err
	}
	for _, d := range []struct {
		it   idfile.Iter
		what string
	}{{removes, "removes"}, {adds, "adds"}} {
		if _, more, err := d.it.Next(); err != nil || more {
			return 0, 0, cmp.Or(err, fmt.Errorf("%s holds identifiers beyond what the snapshots say (an identifier is planted)", d.what))
		}
	}
	return nAdds, nRemoves, nil
}

// VerifyNothingUnrecorded checks that every run directory published under
// the delivery root of each destination the log names is one the log
// records: a directory the platform may have loaded but the log does not
// show (a run killed between its publish and its record, not yet healed by
// a later run) fails.
func VerifyNothingUnrecorded(l *audit.Log, roots Roots) error {
	dests := map[string]bool{}
	committed := map[string]bool{}
	for _, rec := range l.Records() {
		if rec.Type == audit.TypeRunCommitted {
			dests[rec.Destination] = true
			committed[rec.RunID] = true
		}
	}
	for _, dest := range slices.Sorted(maps.Keys(dests)) {
		dirs, err := roots.RunDirs(dest)
		if err != nil {
			return err
		}
		for _, id := range slices.Sorted(maps.Keys(dirs)) {
			if !committed[id] {
				return fmt.Errorf("%s is published but the log does not record it: the next run of the job checks and records it (or refuses it, naming the problem)", dirs[id])
			}
		}
	}
	return nil
}

// CheckDrop is the drop guard: a run publishes nothing when its input has
// no rows, or when its snapshot is smaller than the previous run's by more
// than the destination's max_drop_percent (the caller skips it when the operator
// allowed the drop).
// A truncated export, an empty table or a mistyped cutoff otherwise
// "withdraws" most of the audience, and the removes would reach the
// platform the same night. The error names the figures.
func CheckDrop(m *manifest.Manifest, maxDrop float64) error {
	if m.Users.Rows == 0 || m.ConsentEvents.Rows == 0 {
		return fmt.Errorf("%w: drop guard: the input has %d user rows and %d consent event rows; an empty table is far more likely a failed export than a real audience: nothing published; check the inputs, or pass --allow-drop if it is real",
			errkind.ErrData, m.Users.Rows, m.ConsentEvents.Rows)
	}
	if m.PreviousRunID == "" || m.PreviousTotalRows == 0 || m.TotalRows >= m.PreviousTotalRows {
		return nil
	}
	drop := float64(m.PreviousTotalRows-m.TotalRows) / float64(m.PreviousTotalRows)
	if drop <= maxDrop {
		return nil
	}
	return fmt.Errorf("%w: drop guard: this run would publish %d identifiers against %d in run %s, %.1f%% fewer, over %s's max_drop_percent of %.1f%%: nothing published; check the inputs and --as-of, or pass --allow-drop if the drop is real",
		errkind.ErrData, m.TotalRows, m.PreviousTotalRows, m.PreviousRunID, 100*drop, m.Destination, 100*maxDrop)
}
