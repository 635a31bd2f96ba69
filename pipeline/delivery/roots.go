package delivery

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"audiencematch/consent/audit"
	"audiencematch/internal/objstore"
)

// Roots says where the published runs of each destination are read from:
// the one place that turns a record's published directory, relative to
// its destination's delivery root (record v2), into a location. A record
// of v1 names an absolute path of the machine that ran it; it is read
// there, unless Override re-roots it.
//
// A delivery root is a local directory (a file:// URL is one) or an object
// store's location (s3://, gs://, azblob://; package objstore). The readers
// of published runs read local files: a run in an object store is copied,
// as it is first asked for, into Copies, and RunDir names the copy. A run
// whose objects are all gone (a retention policy) gives a directory that
// does not exist, as a removed local directory does.
type Roots struct {
	// Override, when set, is the delivery root of every destination: a
	// copy of the delivered files (audit verify --delivery DIR or URL),
	// laid out as the job lays them out, "<destination>/dt=<date>/run=<id>".
	Override string
	// ByDestination maps a destination id to its delivery root, as the
	// registry gives it.
	ByDestination map[string]string
	// Copies holds the local copies of runs read from an object store;
	// nil: a Roots that meets one refuses it (Copying gives one).
	Copies *Copies
}

// RootsFor is the Roots of a run: its destination's delivery root.
func RootsFor(destination, root string) Roots {
	return Roots{ByDestination: map[string]string{destination: root}}
}

// Copying is r with Copies under tmp ("": the system's temporary
// directory) when it has none, and what removes the copies it made.
func (r Roots) Copying(tmp string) (Roots, func()) {
	if r.Copies != nil {
		return r, func() {}
	}
	r.Copies = &Copies{tmp: tmp}
	return r, func() { r.Copies.Close() }
}

// Root is the delivery root of destination, or "" when none is known: a
// local path (a file:// URL's) or an object store's URL.
func (r Roots) Root(destination string) string {
	root := r.Override
	if root == "" {
		root = r.ByDestination[destination]
	}
	if p, ok := objstore.LocalPath(root); ok {
		return p
	}
	return root
}

// Location is where the published run directory of rec, a committed run,
// is: a local path or an object store's URL, not copied.
func (r Roots) Location(rec *audit.Record) (string, error) {
	if rec.Version == audit.RecordVersionV1 && r.Override == "" {
		return rec.Published, nil
	}
	root := r.Root(rec.Destination)
	if root == "" {
		return "", fmt.Errorf("the delivery root of %s is not known (no registry entry): pass --delivery DIR (or URL), the place holding %s", rec.Destination, rec.PublishedRel())
	}
	return objstore.Join(root, rec.PublishedRel()), nil
}

// RunDir is the local directory of the published run of rec, a committed
// run: where it is published, or a copy of it from its object store.
func (r Roots) RunDir(rec *audit.Record) (string, error) {
	loc, err := r.Location(rec)
	if err != nil || !objstore.IsURL(loc) {
		return loc, err
	}
	if r.Copies == nil {
		return "", fmt.Errorf("run %s is published in an object store (%s), and this reader makes no local copies", rec.RunID, objstore.Redact(loc))
	}
	return r.Copies.get(context.Background(), loc)
}

// Release removes the local copy of rec's run, if one was made: the next
// RunDir copies it again.
func (r Roots) Release(rec *audit.Record) {
	if r.Copies == nil {
		return
	}
	if loc, err := r.Location(rec); err == nil {
		r.Copies.release(loc)
	}
}

// RunDirs lists the published run directories under the delivery root of
// destination ("" root: none), whatever the log says, by run id: their
// locations, paths or URLs (not copied). In an object store a run is
// published once its _SUCCESS marker is (an interrupted upload is not).
func (r Roots) RunDirs(destination string) (map[string]string, error) {
	root := r.Root(destination)
	if root == "" {
		return nil, nil
	}
	rels, _, err := runDirs(context.Background(), root, destination)
	if err != nil {
		return nil, err
	}
	out := make(map[string]string, len(rels))
	for _, rel := range rels {
		_, run, _ := strings.Cut(rel[strings.LastIndex(rel, "/")+1:], "run=")
		out[run] = Location(root, rel)
	}
	return out, nil
}

// ReadError is a failure to read a run from its object store (credentials,
// an unreachable store): not a finding about the run, and of the kind
// objstore gives it (errkind), which a verifier reports as it is.
type ReadError struct{ Err error }

func (e *ReadError) Error() string { return e.Err.Error() }
func (e *ReadError) Unwrap() error { return e.Err }

// Copies are local copies of runs published to an object store, each made
// once, in a temporary directory that Close removes.
type Copies struct {
	tmp string

	mu    sync.Mutex
	dir   string            // made on the first copy
	byLoc map[string]string // a run's location -> its copy
	n     int
}

// get is the copy of the run directory at loc, made now if need be. A
// location holding no object gives a path that does not exist.
func (c *Copies) get(ctx context.Context, loc string) (string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if d, ok := c.byLoc[loc]; ok {
		return d, nil
	}
	if c.dir == "" {
		d, err := os.MkdirTemp(c.tmp, "published-")
		if err != nil {
			return "", err
		}
		c.dir, c.byLoc = d, map[string]string{}
	}
	c.n++
	d := filepath.Join(c.dir, strconv.Itoa(c.n))
	if err := objstore.Fetch(ctx, loc, d); err != nil {
		os.RemoveAll(d)
		return "", &ReadError{Err: fmt.Errorf("read the published run: %w", err)}
	}
	c.byLoc[loc] = d
	return d, nil
}

func (c *Copies) release(loc string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if d, ok := c.byLoc[loc]; ok {
		os.RemoveAll(d)
		delete(c.byLoc, loc)
	}
}

// Close removes every copy.
func (c *Copies) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.dir == "" {
		return nil
	}
	err := os.RemoveAll(c.dir)
	c.dir, c.byLoc = "", nil
	return err
}
