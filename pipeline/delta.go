package pipeline

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path/filepath"

	"audiencematch/consent/audit"
	"audiencematch/hashing"
	"audiencematch/pipeline/errkind"
	"audiencematch/pipeline/fsutil"
	"audiencematch/pipeline/manifest"
)

// previousRun is the run this run's deltas are computed against: the head
// of the destination's delivery chain (chain.go), whatever its cutoff, since
// it is what the platform holds. A backfill has none: it carries no deltas.
func (r *run) previousRun() (*audit.Record, error) {
	if r.cfg.Backfill {
		return nil, nil
	}
	l, err := openLog(r.cfg.State)
	if err != nil {
		return nil, err
	}
	return deltaBase(l, r.cfg.Destination), nil
}

// deltaMerge writes adds/ and removes/ beside the snapshot by merging the
// sorted identifiers of this run, as they are written, with those of the
// previous one, read back from its published files (checked against its
// audit record first): memory does not grow with the audience.
type deltaMerge struct {
	r             *run
	prev          *audit.Record
	prevScheme    hashing.Scheme
	old           idIter
	b             string // the previous run's next identifier, when bok
	bok           bool
	sameKey       bool
	adds, removes *partWriter
}

// startDeltas returns nil for a destination's first run.
func (r *run) startDeltas(pub string) (*deltaMerge, error) {
	prev, err := r.previousRun()
	if err != nil || prev == nil {
		return nil, err
	}
	d := &deltaMerge{r: r, prev: prev, sameKey: prev.KeyID == r.m.KeyID && prev.Scheme == r.m.Scheme}
	if d.prevScheme, err = hashing.ParseScheme(prev.Scheme); err != nil {
		return nil, err
	}
	if d.old, err = r.previousIDs(prev, d.prevScheme); err != nil {
		return nil, err
	}
	if d.adds, err = newPartWriter(filepath.Join(pub, "adds"), r.pages, &r.cfg, r.cfg.Scheme, r.cfg.KeyID()); err == nil {
		d.removes, err = newPartWriter(filepath.Join(pub, "removes"), r.pages, &r.cfg, d.prevScheme, prev.KeyID)
	}
	if err == nil {
		d.adds.later, d.removes.later = &r.later, &r.later
		d.b, d.bok, err = d.old.Next()
	}
	if err != nil {
		d.old.Close()
		return nil, err
	}
	return d, nil
}

// add takes this run's next identifier, a: identifiers of the previous run
// before it are removes, and a is an add unless the previous run sent it.
// After a key or scheme change, everything sent is removed and everything
// sent now is added.
func (d *deltaMerge) add(a string) error {
	var err error
	for d.bok && (!d.sameKey || d.b < a) {
		if err := d.removes.Add(d.b); err != nil {
			return err
		}
		if d.b, d.bok, err = d.old.Next(); err != nil {
			return err
		}
	}
	if d.bok && d.b == a { // in both: nothing to send
		d.b, d.bok, err = d.old.Next()
		return err
	}
	return d.adds.Add(a)
}

// finish removes what is left of the previous run and closes the deltas.
func (d *deltaMerge) finish() error {
	var err error
	for d.bok {
		if err := d.removes.Add(d.b); err != nil {
			return err
		}
		if d.b, d.bok, err = d.old.Next(); err != nil {
			return err
		}
	}
	r := d.r
	r.m.PreviousRunID, r.m.PreviousTotalRows = d.prev.RunID, d.prev.IDs.Size
	if r.m.Adds, err = deltaSet(d.adds, "adds", r.cfg.Scheme, r.cfg.KeyID()); err != nil {
		return err
	}
	r.m.Removes, err = deltaSet(d.removes, "removes", d.prevScheme, d.prev.KeyID)
	return err
}

// idIter streams sorted identifiers; ok is false at the end.
type idIter interface {
	Next() (id string, ok bool, err error)
	Close() // closes what is open, if it did not reach the end
}

// previousIDs streams the identifiers the previous run sent: from its
// published files, checked against its audit record; or, when they are gone
// (a retention policy, an operator), from its private evidence, checked
// against the record's identifier tree, so that removes still reach the
// platform.
func (r *run) previousIDs(prev *audit.Record, scheme hashing.Scheme) (idIter, error) {
	it, fromEvidence, err := sentIDs(r.cfg.State, prev, scheme)
	if fromEvidence {
		r.cfg.Log.Info("previous run's output is gone; its identifiers for removes come from its evidence", "previous_run_id", prev.RunID)
	}
	return it, err
}

// sentIDs streams the identifiers of a committed run's snapshot, in order:
// from its published files, checked against its record, or from its
// evidence (fromEvidence) when the files are gone.
func sentIDs(state string, prev *audit.Record, scheme hashing.Scheme) (it idIter, fromEvidence bool, err error) {
	var paths []string
	missing := false
	for _, f := range prev.Files {
		p := filepath.Join(prev.Published, f.Path)
		sum, err := fsutil.SHA256File(p)
		if errors.Is(err, fs.ErrNotExist) {
			missing = true
			break
		}
		if err != nil {
			return nil, false, fmt.Errorf("%w: the previous run %s is needed for removes: %w", errkind.ErrNoInput, prev.RunID, err)
		}
		if sum != f.SHA256 {
			return nil, false, fmt.Errorf("%w: previous run %s: %s does not match its audit record; run audit verify", errkind.ErrData, prev.RunID, p)
		}
		paths = append(paths, p)
	}
	if !missing {
		return &publishedIter{paths: paths, scheme: scheme}, false, nil
	}
	path := filepath.Join(state, "runs", prev.RunID, "evidence.parquet")
	er, err := openEvidence(path)
	if err != nil {
		return nil, false, fmt.Errorf("%w: the previous run %s's output is gone and its evidence unreadable, so removes cannot be computed: %w", errkind.ErrNoInput, prev.RunID, err)
	}
	return &evidenceIter{r: er, path: path, prev: prev, scheme: scheme}, true, nil
}

// evidenceIter streams the identifiers a previous run sent from its
// evidence (its primary rows), in order, checking that they are strictly
// increasing, when its published parts are gone. They make its identifier
// tree, which must match its audit record: the last Next checks it before
// reporting the end, so a run never finishes on evidence that does not
// match (every delta merge reads to the end before it is closed).
type evidenceIter struct {
	r      *evidenceReader
	path   string
	prev   *audit.Record
	scheme hashing.Scheme
	tree   audit.TreeRoot
	last   string
	err    error
}

func (it *evidenceIter) Next() (string, bool, error) {
	if it.err == nil {
		id, ok, err := it.next()
		if ok || err == nil {
			return id, ok, nil
		}
		it.err = err
		it.Close()
	}
	return "", false, it.err
}

func (it *evidenceIter) next() (string, bool, error) {
	for {
		e, err := it.r.next()
		if err == io.EOF {
			if err := sameRoot(it.tree.Summary(), it.prev.IDs, "previous run's identifier"); err != nil {
				return "", false, fmt.Errorf("%w: previous run %s: its evidence does not match its audit record (%v); run audit verify", errkind.ErrData, it.prev.RunID, err)
			}
			it.Close()
			return "", false, nil
		}
		if err != nil {
			return "", false, fmt.Errorf("%w: previous run %s's evidence %s: %w", errkind.ErrNoInput, it.prev.RunID, it.path, err)
		}
		if !e.Primary {
			continue
		}
		id := evidenceLeafID(it.scheme, e.ID)
		if id == nil || !it.scheme.ValidID(id) {
			return "", false, fmt.Errorf("%w: previous run %s's evidence %s: an identifier does not have the shape of %s", errkind.ErrData, it.prev.RunID, it.path, it.scheme)
		}
		it.tree.Append(id)
		if it.last != "" && string(id) <= it.last {
			return "", false, fmt.Errorf("%w: previous run %s's evidence %s: its identifiers are not sorted", errkind.ErrData, it.prev.RunID, it.path)
		}
		it.last = string(id)
		return it.last, true, nil
	}
}

// Close closes the evidence file, if still open.
func (it *evidenceIter) Close() { it.r.Close() }

func deltaSet(w *partWriter, dir string, scheme hashing.Scheme, keyID string) (*manifest.DeltaSet, error) {
	files, err := w.Close()
	if err != nil {
		return nil, err
	}
	d := &manifest.DeltaSet{Scheme: string(scheme), KeyID: keyID}
	for _, f := range files {
		f.Path = dir + "/" + f.Path
		d.Files = append(d.Files, f)
		d.Rows += f.Rows
	}
	return d, nil
}

// publishedIter streams the identifiers of published parts, in order,
// checking that they are strictly increasing. An id is a substring of its
// page's values, copied once per page: one allocation per page, not per id.
type publishedIter struct {
	paths  []string
	scheme hashing.Scheme
	r      *idPages
	vals   string   // the current page's ids, end to end
	offs   []uint32 // where they start, and the end, in a text scheme
	size   int      // of every id, in a binary scheme
	i, n   int
	last   string
}

// Next returns the next identifier; ok is false at the end or on error.
// The last file is closed at the end; Close closes it before.
func (it *publishedIter) Next() (id string, ok bool, err error) {
	for it.i == it.n {
		if err := it.fill(); err == io.EOF {
			return "", false, nil
		} else if err != nil {
			it.Close()
			return "", false, err
		}
	}
	if it.size > 0 {
		id = it.vals[it.i*it.size : (it.i+1)*it.size]
	} else {
		id = it.vals[it.offs[it.i]:it.offs[it.i+1]]
	}
	it.i++
	if it.last != "" && id <= it.last {
		it.Close()
		return "", false, fmt.Errorf("%w: previous run's identifiers are not sorted", errkind.ErrData)
	}
	it.last = id
	return id, true, nil
}

func (it *publishedIter) fill() error {
	for {
		if it.r == nil {
			if len(it.paths) == 0 {
				return io.EOF
			}
			r, err := openIDPages(it.paths[0], it.scheme)
			if err != nil {
				return err
			}
			it.r, it.paths = r, it.paths[1:]
		}
		data, offs, err := it.r.next()
		if err == io.EOF {
			it.Close()
			continue
		}
		if err != nil {
			return err
		}
		it.vals, it.size = string(data), it.r.size
		it.offs = append(it.offs[:0], offs...) // their page is released on the next read
		if it.i, it.n = 0, it.r.count(data, offs); it.n > 0 {
			return nil
		}
	}
}

// Close closes the file being read, if any.
func (it *publishedIter) Close() {
	if it.r != nil {
		it.r.Close()
		it.r = nil
	}
}
