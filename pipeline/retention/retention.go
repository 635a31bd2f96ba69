// Package retention enforces each destination's retention_days (the
// registry's GDPR Art. 30 time limit for erasure) on what the job keeps,
// and records what it removed in the audit log.
//
// A committed run of a destination is expired when its audit record was
// appended more than retention_days before now. Of an expired run, prune
// removes:
//
//   - published: its directory OUT/<destination>/dt=<date>/run=<id>/ (and
//     the dt=<date> directory once empty);
//   - evidence: STATE/runs/<id>/evidence.parquet (user and consent event
//     behind each identifier);
//   - rejects: STATE/runs/<id>/rejects.csv (raw input rows).
//
// It keeps STATE/runs/<id>/manifest.json and record.json (counts and
// digests, no personal data) and never touches the audit log's records: a
// pruned run stays in the log, with a prune record after it naming what is
// gone.
//
// The delivery chain keeps what its deltas need. A chain run (a committed
// run that is not a backfill) is needed while it is the chain's head (the
// next run computes its removes from the head's identifiers) or while the
// next chain run is not expired (whose adds and removes are checked against
// this run's identifiers). Of a needed expired run, prune removes only the
// rejects, and the evidence when the published snapshot is still there
// (the snapshot's identifiers are what the deltas need; the evidence is
// their fallback when the snapshot is gone). A backfill is outside the
// chain and expires like any run.
//
// A failed run's directory STATE/failed/<id>/ (the rejects and manifest of
// a run over its reject rate, with raw input rows) expires retention_days
// after it was written (its modification time), under its own
// destination's retention, or the shortest of the registry's when its
// manifest does not name a registered destination.
//
// Each prune appends one prune record per destination it removes anything
// of, with the retention it enforced and, for each run, what it removes,
// before it removes it: a removal is never unrecorded, and one interrupted
// is completed, and recorded again, by the next prune.
package retention

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"time"

	"golang.org/x/mod/sumdb/note"

	"audiencematch/consent/audit"
	"audiencematch/pipeline/destinations"
	"audiencematch/pipeline/statedir"
)

// Options say what a prune looks at.
type Options struct {
	State    string
	Registry *destinations.Registry
	// Destination limits the prune to one destination and its failed runs;
	// empty: every destination of the registry.
	Destination string
	Now         time.Time
	// DryRun finds what would be removed and removes and records nothing.
	DryRun      bool
	ToolVersion string
	Signer      note.Signer // appends the prune records; nil: none written
}

// Removal is what a prune removes of one destination.
type Removal struct {
	Destination   string
	RetentionDays int
	Pruned        []audit.Pruned
	// Paths are the files and directories removed, for the operator.
	Paths []string
}

// Prune removes, for each destination, what its retention has expired, and
// appends a prune record for each destination it removed anything of. It
// runs under the run lock, with l the recovered audit log.
func Prune(l *audit.Log, o Options) ([]Removal, error) {
	var out []Removal
	for i := range o.Registry.Destinations {
		d := &o.Registry.Destinations[i]
		if o.Destination != "" && d.ID != o.Destination {
			continue
		}
		rm := plan(l, o, d)
		if err := failedRuns(o, d, &rm); err != nil {
			return out, err
		}
		if len(rm.Pruned) == 0 {
			continue
		}
		if !o.DryRun {
			// The record first: a removal is never unrecorded. A prune
			// interrupted after it leaves files the next prune removes,
			// and records, again.
			if o.Signer != nil {
				rec := &audit.Record{Type: audit.TypePrune, ToolVersion: o.ToolVersion, Destination: d.ID,
					RetentionDays: d.RetentionDays, Pruned: rm.Pruned}
				if err := l.Append(rec, o.Signer, o.Now); err != nil {
					return out, fmt.Errorf("record the prune of %s: %w", d.ID, err)
				}
			}
			if err := remove(rm.Paths); err != nil {
				return out, err
			}
		}
		out = append(out, rm)
	}
	return out, nil
}

// plan lists what d's retention expires of its committed runs.
func plan(l *audit.Log, o Options, d *destinations.Destination) Removal {
	rm := Removal{Destination: d.ID, RetentionDays: d.RetentionDays}
	cutoff := o.Now.Add(-time.Duration(d.RetentionDays) * 24 * time.Hour)
	var runs, chain []*audit.Record
	for _, rec := range l.Records() {
		if rec.Type != audit.TypeRunCommitted || rec.Destination != d.ID {
			continue
		}
		runs = append(runs, rec)
		if !rec.Backfill {
			chain = append(chain, rec)
		}
	}
	expired := func(rec *audit.Record) bool {
		t, err := time.Parse(time.RFC3339Nano, rec.Time)
		return err == nil && t.Before(cutoff)
	}
	needed := map[string]bool{}
	for i, rec := range chain {
		if i == len(chain)-1 || !expired(chain[i+1]) {
			needed[rec.RunID] = true
		}
	}
	done := map[string]bool{}
	for _, rec := range runs {
		if !expired(rec) || done[rec.RunID] {
			continue
		}
		done[rec.RunID] = true
		var removed []string
		add := func(what, path string) {
			if exists(path) {
				removed = append(removed, what)
				rm.Paths = append(rm.Paths, path)
			}
		}
		published := publishedDir(d.Delivery, d.ID, rec.RunID)
		runDir := statedir.Run(o.State, rec.RunID)
		if needed[rec.RunID] {
			if published != "" {
				add(audit.PrunedEvidence, filepath.Join(runDir, "evidence.parquet"))
			}
		} else {
			if published != "" {
				add(audit.PrunedPublished, published)
			}
			add(audit.PrunedEvidence, filepath.Join(runDir, "evidence.parquet"))
		}
		add(audit.PrunedRejects, filepath.Join(runDir, "rejects.csv"))
		if len(removed) > 0 {
			rm.Pruned = append(rm.Pruned, audit.Pruned{RunID: rec.RunID, Removed: removed})
		}
	}
	return rm
}

// publishedDir is the run's published directory under the delivery
// directory, or "" when there is none.
func publishedDir(delivery, destination, runID string) string {
	m, _ := filepath.Glob(filepath.Join(delivery, destination, "dt=*", "run="+runID))
	if len(m) == 0 {
		return ""
	}
	return m[0]
}

// failedRuns adds the expired STATE/failed/<id>/ directories of d (see the
// package doc) to rm.
func failedRuns(o Options, d *destinations.Destination, rm *Removal) error {
	dirs, err := os.ReadDir(filepath.Join(o.State, "failed"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	shortest := slices.MinFunc(o.Registry.Destinations, func(a, b destinations.Destination) int {
		return a.RetentionDays - b.RetentionDays
	})
	for _, e := range dirs {
		if !e.IsDir() {
			continue
		}
		dir := filepath.Join(o.State, "failed", e.Name())
		owner := failedDestination(dir)
		days := 0
		switch {
		case owner == d.ID:
			days = d.RetentionDays
		case o.Registry.Lookup(owner) == nil && d.ID == shortest.ID:
			days = shortest.RetentionDays
		default:
			continue // another destination's
		}
		info, err := e.Info()
		if err != nil {
			return err
		}
		if info.ModTime().Before(o.Now.Add(-time.Duration(days) * 24 * time.Hour)) {
			rm.Pruned = append(rm.Pruned, audit.Pruned{RunID: e.Name(), Removed: []string{audit.PrunedFailed}})
			rm.Paths = append(rm.Paths, dir)
		}
	}
	return nil
}

// failedDestination is the destination a failed run's manifest names, or "".
func failedDestination(dir string) string {
	b, err := os.ReadFile(filepath.Join(dir, "manifest.json"))
	if err != nil {
		return ""
	}
	var m struct {
		Destination string `json:"destination"`
	}
	if json.Unmarshal(b, &m) != nil {
		return ""
	}
	return m.Destination
}

// remove removes each path, then a dt=<date> parent left empty.
func remove(paths []string) error {
	for _, p := range paths {
		if err := os.RemoveAll(p); err != nil {
			return fmt.Errorf("prune %s: %w", p, err)
		}
		parent := filepath.Dir(p)
		if m, _ := filepath.Match("dt=*", filepath.Base(parent)); m {
			os.Remove(parent) // only when empty
		}
	}
	return nil
}

func exists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}
