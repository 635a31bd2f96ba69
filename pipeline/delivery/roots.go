package delivery

import (
	"fmt"
	"path/filepath"
	"strings"

	"audiencematch/consent/audit"
)

// Roots says where the published runs of each destination are read from:
// the one place that turns a record's published directory, relative to
// its destination's delivery root (record v2), into a location. A record
// of v1 names an absolute path of the machine that ran it; it is read
// there, unless Override re-roots it.
//
// Delivery roots are local directories today; a root of another kind (an
// object store's URL) is resolved here too, so that every reader of
// published runs goes through RunDir.
type Roots struct {
	// Override, when set, is the delivery root of every destination: a
	// copy of the delivered files (audit verify --delivery DIR), laid out
	// as the job lays them out, "<destination>/dt=<date>/run=<id>".
	Override string
	// ByDestination maps a destination id to its delivery root, as the
	// registry gives it.
	ByDestination map[string]string
}

// RootsFor is the Roots of a run: its destination's delivery root.
func RootsFor(destination, root string) Roots {
	return Roots{ByDestination: map[string]string{destination: root}}
}

// Root is the delivery root of destination, or "" when none is known.
func (r Roots) Root(destination string) string {
	if r.Override != "" {
		return r.Override
	}
	return r.ByDestination[destination]
}

// RunDir is the published run directory of rec, a committed run.
func (r Roots) RunDir(rec *audit.Record) (string, error) {
	if rec.Version == audit.RecordVersionV1 && r.Override == "" {
		return rec.Published, nil
	}
	root := r.Root(rec.Destination)
	if root == "" {
		return "", fmt.Errorf("the delivery root of %s is not known (no registry entry): pass --delivery DIR, the directory holding %s", rec.Destination, rec.PublishedRel())
	}
	return filepath.Join(root, filepath.FromSlash(rec.PublishedRel())), nil
}

// RunDirs lists the published run directories under the delivery root of
// destination ("" root: none), whatever the log says, by run id.
func (r Roots) RunDirs(destination string) (map[string]string, error) {
	root := r.Root(destination)
	if root == "" {
		return nil, nil
	}
	dirs, err := filepath.Glob(filepath.Join(root, destination, "dt=*", "run=*"))
	if err != nil {
		return nil, err
	}
	out := make(map[string]string, len(dirs))
	for _, d := range dirs {
		out[strings.TrimPrefix(filepath.Base(d), "run=")] = d
	}
	return out, nil
}
