// Package retention enforces each destination's retention_days (the
// registry's GDPR Art. 30 time limit for erasure) on what the job keeps,
// and records what it removes in the audit log.
//
// A committed run of a destination is expired when retention_days days
// have passed since it was recorded (the record's time: what was sent is
// kept that long after it was sent), and since its cutoff (as_of), the rule
// `audit verify` applies to a run whose published directory is gone
// (package auditor); a cutoff is never later than the run, so in practice
// the record's time decides. Of an expired run, prune removes, whichever
// are there:
//
//   - its published directory <delivery>/<destination>/dt=<date>/run=<id>/
//     under the destination's current delivery root, a directory or an
//     object store's location (delivery.Roots), _SUCCESS first so that a
//     run half removed is never taken for a whole one (delivery.RemoveRun;
//     locally the dt=<date> directory goes too once empty);
//   - STATE/runs/<id>/evidence.parquet (user and consent event behind each
//     identifier);
//   - STATE/runs/<id>/rejects.csv (raw input rows).
//
// It keeps STATE/runs/<id>/manifest.json and record.json (counts and
// digests, no personal data) and never touches a record: a pruned run stays
// in the log, and the prune record after it names it (pruned_runs).
//
// The delivery chain keeps what its deltas need: a chain run (a committed
// run that is not a backfill) is not pruned while it is the chain's head
// (the next run computes its removes from the head's identifiers) or while
// the next chain run is not expired (audit verify recomputes that run's
// deltas from this run's identifiers). It is pruned with the first prune
// after neither holds. A backfill is outside the chain and expires like any
// run. Whatever the log says, the run the destination's _LATEST names is
// never removed: consumers follow it.
//
// A failed run's directory STATE/failed/<name>/ (the rejects and manifest
// of a run over its reject rate, with raw input rows) expires
// retention_days after it was written (its modification time), under the
// destination its manifest names, or the shortest retention of the
// registry when it names none the registry holds; the prune record names
// it (pruned_failed).
//
// Each prune appends one prune record per destination it removes anything
// of, with the retention it enforces, before it removes anything: a
// removal is never unrecorded, and one interrupted is completed, and
// recorded again, by the next prune.
package retention

import (
	"context"
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
	"audiencematch/internal/objstore"
	"audiencematch/pipeline/delivery"
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
	// Now is the instant retention is measured against.
	Now time.Time
	// DryRun finds what would be removed and removes and records nothing.
	DryRun      bool
	ToolVersion string
	Signer      note.Signer // appends the prune records; nil: none written
}

// Removal is what a prune removes of one destination.
type Removal struct {
	Destination   string
	RetentionDays int
	Runs          []string // committed runs pruned (the record's pruned_runs)
	Failed        []string // STATE/failed/<name> directories (pruned_failed)
	// Paths are the files and directories removed, for the operator (an
	// object store's location without its query).
	Paths []string

	runs  []string // published run directories: paths or URLs
	files []string // private files and directories under STATE
}

func (rm *Removal) empty() bool { return len(rm.Runs)+len(rm.Failed) == 0 }

// Prune removes, for each destination, what its retention has expired, and
// appends a prune record for each destination it removes anything of. It
// runs under the run lock, with l the recovered audit log.
func Prune(ctx context.Context, l *audit.Log, o Options) ([]Removal, error) {
	var out []Removal
	for i := range o.Registry.Destinations {
		d := &o.Registry.Destinations[i]
		if o.Destination != "" && d.ID != o.Destination {
			continue
		}
		rm, err := plan(ctx, l, o, d)
		if err != nil {
			return out, err
		}
		if err := failedRuns(o, d, &rm); err != nil {
			return out, err
		}
		if rm.empty() {
			continue
		}
		if !o.DryRun {
			if o.Signer != nil {
				rec := &audit.Record{Type: audit.TypePrune, ToolVersion: o.ToolVersion, Destination: d.ID,
					RetentionDays: int64(d.RetentionDays), PrunedRuns: rm.Runs, PrunedFailed: rm.Failed}
				// The record's time is when it is appended; Now (prune --now)
				// only moves the instant retention is measured against.
				if err := l.Append(rec, o.Signer, time.Now()); err != nil {
					return out, fmt.Errorf("record the prune of %s: %w", d.ID, err)
				}
			}
			if err := remove(ctx, &rm); err != nil {
				return out, err
			}
		}
		out = append(out, rm)
	}
	return out, nil
}

// plan lists what d's retention expires of its committed runs.
func plan(ctx context.Context, l *audit.Log, o Options, d *destinations.Destination) (Removal, error) {
	rm := Removal{Destination: d.ID, RetentionDays: d.RetentionDays}
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
		asOf, err1 := time.Parse(time.RFC3339Nano, rec.AsOf)
		at, err2 := time.Parse(time.RFC3339Nano, rec.Time)
		if err1 != nil || err2 != nil {
			return false
		}
		return !o.Now.Before(asOf.AddDate(0, 0, d.RetentionDays)) && !o.Now.Before(at.AddDate(0, 0, d.RetentionDays))
	}
	needed := map[string]bool{}
	for i, rec := range chain {
		if i == len(chain)-1 || !expired(chain[i+1]) {
			needed[rec.RunID] = true
		}
	}
	// Runs are looked for under the destination's current delivery root,
	// a v1 record's too (by its last three path elements).
	roots := delivery.Roots{Override: d.Delivery}
	latest, err := delivery.Latest(ctx, d.Delivery, d.ID)
	if err != nil {
		return rm, fmt.Errorf("prune %s: %w", d.ID, err)
	}
	done := map[string]bool{}
	for _, rec := range runs {
		if !expired(rec) || needed[rec.RunID] || done[rec.RunID] || (latest != "" && rec.PublishedRel() == latest) {
			continue
		}
		done[rec.RunID] = true
		loc, err := roots.Location(rec)
		if err != nil {
			return rm, err
		}
		stored, err := delivery.RunStored(ctx, loc)
		if err != nil {
			return rm, fmt.Errorf("prune %s: %w", d.ID, err)
		}
		var files []string
		runDir := statedir.Run(o.State, rec.RunID)
		for _, p := range []string{filepath.Join(runDir, "evidence.parquet"), filepath.Join(runDir, "rejects.csv")} {
			if exists(p) {
				files = append(files, p)
			}
		}
		if !stored && len(files) == 0 {
			continue
		}
		rm.Runs = append(rm.Runs, rec.RunID)
		if stored {
			rm.runs = append(rm.runs, loc)
			rm.Paths = append(rm.Paths, objstore.Redact(loc))
		}
		rm.files = append(rm.files, files...)
		rm.Paths = append(rm.Paths, files...)
	}
	return rm, nil
}

// failedRuns adds the expired STATE/failed/<name>/ directories of d (see the
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
			rm.Failed = append(rm.Failed, e.Name())
			rm.files = append(rm.files, dir)
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

// remove removes rm's published runs (delivery.RemoveRun), then its
// private files and directories.
func remove(ctx context.Context, rm *Removal) error {
	for _, loc := range rm.runs {
		if err := delivery.RemoveRun(ctx, loc); err != nil {
			return fmt.Errorf("prune %s: %w", objstore.Redact(loc), err)
		}
	}
	for _, p := range rm.files {
		if err := os.RemoveAll(p); err != nil {
			return fmt.Errorf("prune %s: %w", p, err)
		}
	}
	return nil
}

func exists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}
