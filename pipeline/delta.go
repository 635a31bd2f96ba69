package pipeline

import (
	"path/filepath"

	"audiencematch/consent/audit"
	"audiencematch/hashing"
	"audiencematch/pipeline/delivery"
	"audiencematch/pipeline/idfile"
	"audiencematch/pipeline/manifest"
)

// deltaMerge writes adds/ and removes/ beside the snapshot by merging the
// sorted identifiers of this run, as they are written, with those of the
// previous one, read back from its published files (checked against its
// audit record first): memory does not grow with the audience.
type deltaMerge struct {
	r             *run
	prev          *audit.Record
	prevScheme    hashing.Scheme
	old           idfile.Iter
	b             string // the previous run's next identifier, when bok
	bok           bool
	sameKey       bool
	adds, removes *idfile.PartWriter
}

// startDeltas returns nil for a destination's first run.
func (r *run) startDeltas(pub string) (*deltaMerge, error) {
	prev := r.base
	if prev == nil {
		return nil, nil
	}
	d := &deltaMerge{r: r, prev: prev, sameKey: prev.KeyID == r.m.KeyID && prev.Scheme == r.m.Scheme}
	var err error
	if d.prevScheme, err = hashing.ParseScheme(prev.Scheme); err != nil {
		return nil, err
	}
	if d.old, err = r.previousIDs(prev, d.prevScheme); err != nil {
		return nil, err
	}
	if d.adds, err = idfile.NewPartWriter(filepath.Join(pub, "adds"), r.pages, r.cfg.layout(), r.cfg.Scheme, r.cfg.KeyID()); err == nil {
		d.removes, err = idfile.NewPartWriter(filepath.Join(pub, "removes"), r.pages, r.cfg.layout(), d.prevScheme, prev.KeyID)
	}
	if err == nil {
		d.adds.Later, d.removes.Later = &r.later, &r.later
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

// previousIDs streams the identifiers the previous run sent: from its
// published files, checked against its audit record; or, when they are gone
// (a retention policy, an operator), from its private evidence, checked
// against the record's identifier tree, so that removes still reach the
// platform.
func (r *run) previousIDs(prev *audit.Record, scheme hashing.Scheme) (idfile.Iter, error) {
	dir, err := delivery.RootsFor(r.cfg.Destination, r.cfg.Out).RunDir(prev)
	if err != nil {
		return nil, err
	}
	it, fromEvidence, err := idfile.SentIDs(r.cfg.State, dir, prev, scheme)
	if fromEvidence {
		r.cfg.Log.Info("previous run's output is gone; its identifiers for removes come from its evidence", "previous_run_id", prev.RunID)
	}
	return it, err
}

func deltaSet(w *idfile.PartWriter, dir string, scheme hashing.Scheme, keyID string) (*manifest.DeltaSet, error) {
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
