package delivery

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"gocloud.dev/gcerrors"

	"audiencematch/consent/audit"
	"audiencematch/internal/fsutil"
	"audiencematch/internal/objstore"
	"audiencematch/pipeline/errkind"
)

// The delivery layout: what a destination's platform reads under the
// delivery root (the registry's delivery, a directory or an object-store
// location; docs/CONSUMERS.md):
//
//	ROOT/DEST/_LATEST                      the relative directory of the latest committed run
//	ROOT/DEST/dt=DATE/run=ID/manifest.json
//	ROOT/DEST/dt=DATE/run=ID/snapshot/part-NNNNN.parquet   the audience
//	ROOT/DEST/dt=DATE/run=ID/adds/part-NNNNN.parquet       since the previous run
//	ROOT/DEST/dt=DATE/run=ID/removes/part-NNNNN.parquet
//	ROOT/DEST/dt=DATE/run=ID/_SUCCESS                      the run is whole
//
// A run's location is the root joined with its relative directory
// (RunDir). One glob, ROOT/DEST/dt=DATE/run=ID/snapshot/*.parquet, reads
// one snapshot and nothing else; the deltas are beside it, not under it.
// _SUCCESS is written last and _LATEST after the run's audit record, so a
// consumer that follows _LATEST, or reads only directories with _SUCCESS,
// never sees a run in part nor one the log does not hold.
const (
	SuccessMarker = "_SUCCESS"
	LatestPointer = "_LATEST"
	SnapshotDir   = "snapshot"
)

// DefaultDirMode is the mode of a published run's directories: the
// consumer's account reads them through its group; nobody else does.
const DefaultDirMode fs.FileMode = 0o750

// RunDir is the directory of a run relative to the delivery root.
func RunDir(destination string, asOf time.Time, runID string) string {
	return path.Join(destination, "dt="+asOf.UTC().Format(time.DateOnly), "run="+runID)
}

// Location is where a run directory relative to root is: a path or a URL.
func Location(root, rel string) string { return objstore.Join(localRoot(root), rel) }

// localRoot is root with a file:// URL turned into its path: the local
// functions below join paths to it.
func localRoot(root string) string {
	if p, ok := objstore.LocalPath(root); ok {
		return p
	}
	return root
}

// Published tells whether the run directory rel under root is published
// whole: locally, the directory exists (it appears with one rename); in an
// object store, its _SUCCESS marker does.
func Published(ctx context.Context, root, rel string) (bool, error) {
	root = localRoot(root)
	if !objstore.IsURL(root) {
		_, err := os.Stat(filepath.Join(root, filepath.FromSlash(rel)))
		return err == nil, nil
	}
	s, err := objstore.Open(ctx, root)
	if err != nil {
		return false, err
	}
	defer s.Close()
	ok, err := s.Exists(ctx, s.Key(rel+"/"+SuccessMarker))
	return ok, objstore.Err(err, "read", Location(root, rel+"/"+SuccessMarker))
}

// Publish delivers the staged run directory staged to rel under root, its
// directories of mode dirMode, _SUCCESS last. It reports already when the
// run was published whole before (the same run: nothing is changed).
//
// Locally, staged is renamed into place whole (fsutil.PublishDir). In an
// object store, which has no rename, each file is written create-only
// with its SHA-256 checked (objstore.Put): the parts, then the manifest,
// then _SUCCESS. An interrupted upload leaves no _SUCCESS, and the next
// attempt at the same run completes it (what it finds stored is what it
// would write); another run's leftovers are removed by CleanIncomplete.
// digests gives each staged file's SHA-256 by its relative path.
func Publish(ctx context.Context, root, rel, staged string, dirMode fs.FileMode, digests map[string]string) (already bool, err error) {
	root = localRoot(root)
	if err := fsutil.WriteFileDurable(filepath.Join(staged, SuccessMarker), nil, 0o644); err != nil {
		return false, err
	}
	if !objstore.IsURL(root) {
		if err := chmodDirs(staged, dirMode); err != nil {
			return false, err
		}
		return false, fsutil.PublishDir(staged, filepath.Join(root, filepath.FromSlash(rel)))
	}
	if ok, err := Published(ctx, root, rel); err != nil || ok {
		return ok, err
	}
	s, err := objstore.Open(ctx, root)
	if err != nil {
		return false, err
	}
	defer s.Close()
	var files []string
	err = filepath.WalkDir(staged, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		r, _ := filepath.Rel(staged, p)
		if r = filepath.ToSlash(r); r != "manifest.json" && r != SuccessMarker {
			files = append(files, r)
		}
		return nil
	})
	if err != nil {
		return false, err
	}
	slices.Sort(files)
	for _, f := range append(files, "manifest.json") {
		digest, ok := digests[f]
		if !ok {
			return false, fmt.Errorf("publish: %s was staged but is not listed in the record", f)
		}
		if err := s.Put(ctx, s.Key(rel+"/"+f), filepath.Join(staged, filepath.FromSlash(f)), digest); err != nil {
			return false, putErr(err, Location(root, rel+"/"+f))
		}
		if afterPut != nil {
			if err := afterPut(f); err != nil {
				return false, err
			}
		}
	}
	if err := s.PutBytes(ctx, s.Key(rel+"/"+SuccessMarker), nil); err != nil {
		return false, putErr(err, Location(root, rel+"/"+SuccessMarker))
	}
	return false, nil
}

// afterPut, when set (SetAfterPut, SetUploadHook), is called after each
// object a publish to an object store writes: a test interrupts the
// upload there.
var afterPut func(rel string) error

// SetUploadHook makes every publish to an object store call fn after each
// file it writes, for the life of the process: the crash tests kill the
// binary there (pipeline.CrashEnv "uploading").
func SetUploadHook(fn func(rel string) error) { afterPut = fn }

func putErr(err error, loc string) error {
	if errors.Is(err, objstore.ErrConflict) {
		return fmt.Errorf("%w: publish %s: %w: another writer publishes to the same place, or the object was changed; nothing is overwritten: find the other writer (each destination has one state directory), then remove the run's objects and run again", errkind.ErrData, objstore.Redact(loc), err)
	}
	return objstore.Err(err, "publish", loc)
}

// chmodDirs sets the mode of dir and every directory under it.
func chmodDirs(dir string, mode fs.FileMode) error {
	return filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return err
		}
		return os.Chmod(p, mode)
	})
}

// PointLatest makes ROOT/DEST/_LATEST name rel, the latest committed run of
// the destination's delivery chain. It is written after the run's audit
// record, and replaced whole (a rename locally; one object write in a
// store), so that it always names a whole, recorded run.
func PointLatest(ctx context.Context, root, destination, rel string) error {
	root = localRoot(root)
	body := []byte(strings.TrimPrefix(rel, destination+"/") + "\n")
	if !objstore.IsURL(root) {
		return fsutil.WriteFileDurable(filepath.Join(root, destination, LatestPointer), body, 0o644)
	}
	s, err := objstore.Open(ctx, root)
	if err != nil {
		return err
	}
	defer s.Close()
	key := s.Key(destination + "/" + LatestPointer)
	return objstore.Err(s.WriteAll(ctx, key, body, nil), "write", Location(root, destination+"/"+LatestPointer))
}

// PointLatestHead points _LATEST at the head of the destination's delivery
// chain in l (DeltaBase), if it has one and it is published under root.
func PointLatestHead(ctx context.Context, l *audit.Log, root, destination string) error {
	head := DeltaBase(l, destination)
	if head == nil {
		return nil
	}
	at, err := time.Parse(time.RFC3339Nano, head.AsOf)
	if err != nil {
		return fmt.Errorf("%w: audit log: run %s has the cutoff %q", errkind.ErrConfig, head.RunID, head.AsOf)
	}
	rel := RunDir(destination, at, head.RunID)
	// A v2 record names its directory relative to the delivery root; a v1
	// record its absolute path, which points here only when it is under
	// root (a run under another root has that root's pointer).
	if head.Version == audit.RecordVersionV1 {
		if objstore.Redact(head.Published) != objstore.Redact(Location(root, rel)) {
			return nil
		}
	} else if head.PublishedRel() != rel {
		return nil
	}
	return PointLatest(ctx, root, destination, rel)
}

// runDirs lists the run directories of destination under root, relative to
// it: locally every dt=*/run=* directory (each appeared whole); in an
// object store those with _SUCCESS (whole), and apart those without
// (interrupted uploads).
func runDirs(ctx context.Context, root, destination string) (whole, partial []string, err error) {
	root = localRoot(root)
	if !objstore.IsURL(root) {
		dirs, err := filepath.Glob(filepath.Join(root, destination, "dt=*", "run=*"))
		for _, d := range dirs {
			rel, _ := filepath.Rel(root, d)
			whole = append(whole, filepath.ToSlash(rel))
		}
		return whole, nil, err
	}
	s, err := objstore.Open(ctx, root)
	if err != nil {
		return nil, nil, err
	}
	defer s.Close()
	keys, err := s.List(ctx, s.Key(destination))
	if err != nil {
		return nil, nil, objstore.Err(err, "list", Location(root, destination))
	}
	seen := map[string]bool{}
	done := map[string]bool{}
	var order []string
	for _, k := range keys {
		parts := strings.SplitN(k, "/", 3)
		if len(parts) < 3 || !strings.HasPrefix(parts[0], "dt=") || !strings.HasPrefix(parts[1], "run=") {
			continue
		}
		dir := destination + "/" + parts[0] + "/" + parts[1]
		if !seen[dir] {
			seen[dir] = true
			order = append(order, dir)
		}
		if parts[2] == SuccessMarker {
			done[dir] = true
		}
	}
	for _, d := range order {
		if done[d] {
			whole = append(whole, d)
		} else {
			partial = append(partial, d)
		}
	}
	return whole, partial, nil
}

// CleanIncomplete removes from an object store the objects of the
// destination's interrupted uploads (run directories without _SUCCESS)
// other than keep's: no consumer reads them, and the run that left them
// was not this one. It runs under the run lock, after the run's own
// publish. Locally there is nothing to do: a run appears with one rename.
func CleanIncomplete(ctx context.Context, root, destination, keep string) ([]string, error) {
	if !objstore.IsURL(root) {
		return nil, nil
	}
	_, partial, err := runDirs(ctx, root, destination)
	if err != nil {
		return nil, err
	}
	s, err := objstore.Open(ctx, root)
	if err != nil {
		return nil, err
	}
	defer s.Close()
	var removed []string
	for _, d := range partial {
		if d == keep {
			continue
		}
		keys, err := s.List(ctx, s.Key(d))
		if err != nil {
			return removed, objstore.Err(err, "list", Location(root, d))
		}
		for _, k := range keys {
			if err := s.Delete(ctx, s.Key(d+"/"+k)); err != nil {
				return removed, objstore.Err(err, "remove", Location(root, d+"/"+k))
			}
		}
		removed = append(removed, d)
	}
	return removed, nil
}

// localCopy gives a local directory holding the run directory loc: loc
// itself when it is local, else a copy of its objects in a temporary
// directory under tmp that done removes.
func localCopy(ctx context.Context, loc, tmp string) (dir string, done func(), err error) {
	if !objstore.IsURL(loc) {
		return loc, func() {}, nil
	}
	d, err := os.MkdirTemp(tmp, "published-")
	if err != nil {
		return "", nil, err
	}
	if err := objstore.Fetch(ctx, loc, d); err != nil {
		os.RemoveAll(d)
		return "", nil, err
	}
	return d, func() { os.RemoveAll(d) }, nil
}

// Latest is the run directory ROOT/DEST/_LATEST names, relative to the
// root ("DEST/dt=DATE/run=ID"), or "" when there is no _LATEST.
func Latest(ctx context.Context, root, destination string) (string, error) {
	root = localRoot(root)
	var body []byte
	if !objstore.IsURL(root) {
		b, err := os.ReadFile(filepath.Join(root, destination, LatestPointer))
		if errors.Is(err, fs.ErrNotExist) {
			return "", nil
		}
		if err != nil {
			return "", err
		}
		body = b
	} else {
		s, err := objstore.Open(ctx, root)
		if err != nil {
			return "", err
		}
		defer s.Close()
		b, err := s.ReadAll(ctx, s.Key(destination+"/"+LatestPointer))
		if gcerrors.Code(err) == gcerrors.NotFound {
			return "", nil
		}
		if err != nil {
			return "", objstore.Err(err, "read", Location(root, destination+"/"+LatestPointer))
		}
		body = b
	}
	rel := strings.TrimSpace(string(body))
	if rel == "" {
		return "", nil
	}
	return destination + "/" + rel, nil
}

// RunStored tells whether anything of the run directory at loc (a path, a
// file:// URL or an object store's URL) is still stored: locally the
// directory or what a removal of it left (removing); in an object store
// any object under it, _SUCCESS or not (a removal that was interrupted
// leaves objects without it).
func RunStored(ctx context.Context, loc string) (bool, error) {
	loc = localRoot(loc)
	if !objstore.IsURL(loc) {
		for _, p := range []string{loc, removing(loc)} {
			if _, err := os.Lstat(p); err == nil {
				return true, nil
			} else if !errors.Is(err, fs.ErrNotExist) {
				return false, err
			}
		}
		return false, nil
	}
	s, err := objstore.Open(ctx, loc)
	if err != nil {
		return false, err
	}
	defer s.Close()
	keys, err := s.List(ctx, s.Prefix)
	if err != nil {
		return false, objstore.Err(err, "list", loc)
	}
	return len(keys) > 0, nil
}

// removing is where a local run directory is moved to be removed: a hidden
// name beside it, which a glob on run=* never matches.
func removing(dir string) string {
	return filepath.Join(filepath.Dir(dir), ".removing-"+filepath.Base(dir))
}

// RemoveRun removes the published run directory at loc (a path, a file://
// URL or an object store's URL) so that a run whose removal is interrupted
// is never taken for a whole one, and the next removal completes it.
// Locally the directory is first renamed to a hidden name (removing), which
// is then removed, with the dt=DATE directory once empty. In an object
// store, which has no rename, _SUCCESS is removed first (Published and the
// listing of runs need it), then every other object. A run that is not
// there is no error.
func RemoveRun(ctx context.Context, loc string) error {
	loc = localRoot(loc)
	if !objstore.IsURL(loc) {
		gone := removing(loc)
		if err := os.Rename(loc, gone); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		if err := os.RemoveAll(gone); err != nil {
			return err
		}
		if parent := filepath.Dir(loc); strings.HasPrefix(filepath.Base(parent), "dt=") {
			os.Remove(parent) // only when empty
		}
		return nil
	}
	s, err := objstore.Open(ctx, loc)
	if err != nil {
		return err
	}
	defer s.Close()
	if err := s.Delete(ctx, s.Key(SuccessMarker)); err != nil && gcerrors.Code(err) != gcerrors.NotFound {
		return objstore.Err(err, "remove", objstore.Join(loc, SuccessMarker))
	}
	keys, err := s.List(ctx, s.Prefix)
	if err != nil {
		return objstore.Err(err, "list", loc)
	}
	for _, k := range keys {
		if err := s.Delete(ctx, s.Key(k)); err != nil && gcerrors.Code(err) != gcerrors.NotFound {
			return objstore.Err(err, "remove", objstore.Join(loc, k))
		}
	}
	return nil
}
