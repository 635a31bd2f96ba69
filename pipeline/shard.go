package pipeline

import (
	"bufio"
	"cmp"
	"container/heap"
	"context"
	"crypto/sha256"
	"encoding/csv"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/gofrs/flock"

	"audiencematch/internal/fsutil"
	"audiencematch/pipeline/delivery"
	"audiencematch/pipeline/errkind"
	"audiencematch/pipeline/leakguard"
	"audiencematch/pipeline/manifest"
	"audiencematch/pipeline/source"
	"audiencematch/pipeline/spill"
)

// Shard is one partition of a sharded run: the users whose user_id hashes
// (FNV-1a 64, modulo Count) to Index, with their consent events. A row with
// no usable user id (a malformed row) belongs to the shard of its line
// number modulo Count. Every shard reads both whole tables, so every shard
// computes the same input digests, and line numbers stay the file's own.
type Shard struct{ Index, Count int }

// MaxShards bounds --shard's N.
const MaxShards = 4096

// ErrShardsIncomplete: Commit found shards missing; run it again when they
// are done (exit 75, like any temporary failure).
var ErrShardsIncomplete = fmt.Errorf("%w: shards incomplete", errkind.ErrTempFail)

// ParseShard reads "I/N" (0 <= I < N).
func ParseShard(s string) (Shard, error) {
	i, n, ok := strings.Cut(s, "/")
	idx, err1 := strconv.Atoi(i)
	cnt, err2 := strconv.Atoi(n)
	if !ok || err1 != nil || err2 != nil || cnt < 1 || cnt > MaxShards || idx < 0 || idx >= cnt {
		return Shard{}, fmt.Errorf("%w: shard %q: want I/N with 0 <= I < N <= %d", errkind.ErrUsage, s, MaxShards)
	}
	return Shard{idx, cnt}, nil
}

func (s Shard) String() string { return fmt.Sprintf("%d/%d", s.Index, s.Count) }

// owns reports whether the row is this shard's; with Count 0 every row is.
func (s Shard) owns(userID string, line int64) bool {
	if s.Count == 0 {
		return true
	}
	if userID == "" {
		return line%int64(s.Count) == int64(s.Index)
	}
	return fnv1a(fnvOffset, userID)%uint64(s.Count) == uint64(s.Index)
}

// runKey names the shards of one run: the cutoff and the configuration
// digest (the inputs' digests are only known once they are read; the
// commit checks every shard read the same inputs).
func runKey(cfg *Config) string {
	return cfg.Rules.AsOf.UTC().Format(runKeyTime) + "-" + cfg.Digest()[:16]
}

// runKeyTime is the layout of the cutoff in a run key.
const runKeyTime = "20060102T150405Z"

// FNV-1a 64: the shard partition.
const fnvOffset, fnvPrime = 14695981039346656037, 1099511628211

// fnv1a continues an FNV-1a 64 hash h over s.
func fnv1a(h uint64, s string) uint64 {
	for i := 0; i < len(s); i++ {
		h = (h ^ uint64(s[i])) * fnvPrime
	}
	return h
}

// ShardsDir is where the shards of a run wait for their commit.
func ShardsDir(cfg *Config) string { return filepath.Join(cfg.State, "shards", runKey(cfg)) }

func shardName(i, n int) string { return fmt.Sprintf("shard-%05d-of-%05d", i, n) }

// shardVersion is the first field of shard.json, so that a commit refuses
// the shards an earlier version left, by their version, before reading
// them. v9: a holder's status may be consent_unreadable, which blocks its
// number like withdrawn (MATCHING.md section 2, amendment 1), and is counted
// under its own exclusion reason; a v8 commit would export the number. v8:
// the leak guard's prefix needles hold a hash of the string's first 8 bytes
// rather than the bytes, in 16 parts (v7's were in 64). v7:
// the leak guard's prefix needles keep 32 bits of their hash (v6's kept
// 64). v6: the leak guard's hashes are XXH3 (v5's were FNV-1a). v5: 256
// buckets of holders and snapshot lines (v4 had 1,024).
const shardVersion = "audiencematch.shard/v9"

// shardInfo is a finished shard's shard.json, written last.
type shardInfo struct {
	Version       string                 `json:"version"`
	RunKey        string                 `json:"run_key"`
	Index         int                    `json:"index"`
	Count         int                    `json:"count"`
	ConfigDigest  string                 `json:"config_digest"`
	Inputs        []manifest.InputFile   `json:"inputs"` // rows: the rows this shard owns
	Users         manifest.UserCounts    `json:"users"`
	ConsentEvents manifest.EventCounts   `json:"consent_events"`
	Rejects       manifest.RejectSummary `json:"rejects"`
	GuardMaxLen   int                    `json:"guard_max_len"` // the longest string in guard.spill
	Files         map[string]string      `json:"files"`         // name → SHA-256
	Finished      string                 `json:"finished"`
}

// RunShard reads the inputs, keeps the shard's users, decides their
// consent and normalizes their numbers, and leaves the result under
// ShardsDir for Commit. It publishes nothing and appends nothing to the
// audit log (the commit does both); shards of one run may run at the same
// time on different machines sharing the state directory. A destination
// the registry refuses is refused here too.
func RunShard(ctx context.Context, cfg Config) (res *Result, err error) {
	if err := cfg.check(); err != nil {
		return nil, err
	}
	if err := authorize(&cfg, false); err != nil {
		return nil, err
	}
	if err := ensureStateDirs(cfg.State); err != nil {
		return nil, err
	}
	set := ShardsDir(&cfg)
	if err := os.MkdirAll(set, 0o700); err != nil {
		return nil, fmt.Errorf("%w: %w", errkind.ErrConfig, err)
	}
	name := shardName(cfg.Shard.Index, cfg.Shard.Count)
	fl := flock.New(filepath.Join(set, name+".lock"), flock.SetPermissions(0o600))
	if ok, err := fl.TryLock(); err != nil || !ok {
		return nil, fmt.Errorf("%w: shard %s is already running (lock %s)", errkind.ErrTempFail, cfg.Shard, fl.Path())
	}
	defer fl.Unlock()
	l, err := delivery.OpenLog(cfg.State)
	if err != nil {
		return nil, err
	}
	if !cfg.Force {
		if rec := committedOn(l, &cfg); rec != nil {
			return &Result{Skipped: rec}, nil
		}
	}
	// The commit applies the backfill rule again, under the run lock; a
	// shard refuses early so that its work is not wasted.
	if err := delivery.CheckCutoff(cfg.Destination, cfg.Rules.AsOf, cfg.Backfill, delivery.DeltaBase(l, cfg.Destination)); err != nil {
		return nil, err
	}
	stale, _ := filepath.Glob(filepath.Join(set, ".tmp-"+name+"-*"))
	for _, d := range stale {
		if err := os.RemoveAll(d); err != nil {
			return nil, err
		}
	}
	r := newRun(cfg)
	if r.staging, err = os.MkdirTemp(set, ".tmp-"+name+"-"); err != nil {
		return nil, fmt.Errorf("%w: %w", errkind.ErrConfig, err)
	}
	r.guard.SetDir(r.staging)
	defer os.RemoveAll(r.staging)
	defer r.closeSpills()
	defer r.closeIDCache()
	if r.rejects, err = newRejectWriter(filepath.Join(r.staging, "rejects.csv")); err != nil {
		return nil, err
	}
	defer r.rejects.Close()
	if err := r.runSteps(ctx, []step{
		{"consent", r.readConsent},
		{"users", r.readUsers},
		{"join", r.join},
	}); err != nil {
		return nil, err
	}
	// The shard's own identifier cache is written and its spill gone
	// before the staging directory becomes the shard.
	r.closeIDCache()
	if err := r.writeShard(); err != nil {
		return nil, fmt.Errorf("write shard %s: %w", cfg.Shard, err)
	}
	final := filepath.Join(set, name)
	if err := os.RemoveAll(final); err != nil {
		return nil, err
	}
	if err := os.Rename(r.staging, final); err != nil {
		return nil, err
	}
	if err := fsutil.SyncDir(set); err != nil {
		return nil, err
	}
	return &Result{Manifest: r.m, ShardDir: final, Stages: r.stages}, nil
}

// writeShard leaves the shard's files in its staging directory: the
// join's spills of holders and snapshot lines with their indexes, the leak
// guard's needles and the rejects; each file's digest goes into
// shard.json, written last.
func (r *run) writeShard() error {
	if err := r.rejects.Close(); err != nil {
		return err
	}
	info := shardInfo{
		Version: shardVersion, RunKey: runKey(&r.cfg), Index: r.cfg.Shard.Index, Count: r.cfg.Shard.Count,
		ConfigDigest: r.m.ConfigDigest, Inputs: r.m.Inputs, Users: r.m.Users, ConsentEvents: r.m.ConsentEvents,
		Rejects: r.m.Rejects, GuardMaxLen: r.guard.MaxLen(), Files: map[string]string{},
		Finished: time.Now().UTC().Format(time.RFC3339),
	}
	if err := errors.Join(r.guard.Open(), r.guard.Finish()); err != nil {
		return err
	}
	info.GuardMaxLen = r.guard.MaxLen()
	for _, s := range []*spill.Spill{r.ids, r.snap, r.guard.Spill()} {
		if err := errors.Join(s.Sync(), s.Close()); err != nil {
			return err
		}
		info.Files[filepath.Base(s.Path())] = s.Sum()
	}
	writers := []struct {
		name  string
		write func(*bufio.Writer) error
	}{
		{"ids.idx", func(w *bufio.Writer) error { _, err := w.Write(r.ids.Index()); return err }},
		{"snapshot.idx", func(w *bufio.Writer) error { _, err := w.Write(r.snap.Index()); return err }},
		{"guard.idx", func(w *bufio.Writer) error { _, err := w.Write(r.guard.Spill().Index()); return err }},
	}
	for _, f := range writers {
		sum, err := writeFileSum(filepath.Join(r.staging, f.name), f.write)
		if err != nil {
			return err
		}
		info.Files[f.name] = sum
	}
	rej, err := fsutil.SHA256File(filepath.Join(r.staging, "rejects.csv"))
	if err != nil {
		return err
	}
	info.Files["rejects.csv"] = rej
	body, err := json.MarshalIndent(info, "", "  ")
	if err != nil {
		return err
	}
	return fsutil.WriteFileDurable(filepath.Join(r.staging, "shard.json"), append(body, '\n'), 0o600)
}

// writeFileSum writes an owner-only file through fn, durably, and returns
// its SHA-256.
func writeFileSum(path string, fn func(*bufio.Writer) error) (string, error) {
	f, err := fsutil.CreateHashing(path, 0o600)
	if err != nil {
		return "", err
	}
	w := bufio.NewWriterSize(f, 1<<20)
	if err := errors.Join(fn(w), w.Flush()); err != nil {
		f.Close()
		return "", err
	}
	if err := f.Close(); err != nil {
		return "", err
	}
	return f.Sum(), nil
}

// Commit publishes the shards of a run as one run, exactly as the unsharded
// run would have: it checks that all count shards are complete, intact and
// read the same inputs under the same configuration, then applies the
// shared-number rule across them, hashes, writes, checks and publishes
// atomically, appends one audit record and removes the shards. With shards
// missing it returns ErrShardsIncomplete and changes nothing. When the run
// is committed already (a commit killed after its audit record, run again)
// it publishes nothing and removes the shards: they can only make that run.
func Commit(ctx context.Context, cfg Config, count int) (*Result, error) {
	if count < 1 || count > MaxShards {
		return nil, fmt.Errorf("%w: --shards %d: want 1 to %d", errkind.ErrUsage, count, MaxShards)
	}
	cfg.Shard, cfg.commit = Shard{}, true
	if cfg.Log == nil { // for the removals below, as check does for the run
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	res, err := execute(ctx, cfg, func(r *run) []step {
		return []step{
			{"shards", func(context.Context) error { return r.loadShards(count) }},
			{"write", r.writeOutputs},
		}
	})
	if err == nil && (res.Skipped == nil || res.Skipped.ConfigDigest == cfg.Digest()) {
		if rmErr := os.RemoveAll(ShardsDir(&cfg)); rmErr != nil {
			cfg.Log.Warn("could not remove the committed shards", "error", rmErr.Error())
		}
	}
	if err == nil {
		removed, rmErr := removeAbandonedShards(&cfg)
		for _, name := range removed {
			cfg.Log.Info("removed the shards of a run never committed", "shards", name, "retention_days", int(ShardRetention.Hours()/24))
		}
		if rmErr != nil {
			cfg.Log.Warn("could not remove the shards of a run never committed", "error", rmErr.Error())
		}
	}
	return res, err
}

// ShardRetention is how long the shards of a run nobody committed are kept:
// they hold user ids and identifiers, personal data that must not outlive
// its use, and would otherwise stay on disk for good (a shard that failed
// one night leaves its set; the next night's cutoff names a new one). A
// successful commit removes every set under STATE/shards whose cutoff is
// older than its own by more than this.
const ShardRetention = 7 * 24 * time.Hour

// removeAbandonedShards removes the shard sets (named by runKey) under
// STATE/shards whose cutoff is more than ShardRetention before cfg's.
// Anything else there is left alone. It returns the sets it removed.
func removeAbandonedShards(cfg *Config) ([]string, error) {
	dir := filepath.Join(cfg.State, "shards")
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var removed []string
	var errs []error
	for _, e := range entries {
		stamp, _, ok := strings.Cut(e.Name(), "-")
		at, perr := time.Parse(runKeyTime, stamp)
		if !e.IsDir() || !ok || perr != nil || cfg.Rules.AsOf.Sub(at) <= ShardRetention {
			continue
		}
		if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
			errs = append(errs, err)
			continue
		}
		removed = append(removed, e.Name())
	}
	return removed, errors.Join(errs...)
}

// loadShards merges the shards into the run: counts, leak guard needles
// and rejects; and opens their spills of holders and snapshot lines, which
// the write stage reads bucket by bucket.
func (r *run) loadShards(count int) error {
	set := ShardsDir(&r.cfg)
	var missing []string
	infos := make([]shardInfo, count)
	for i := range count {
		b, err := os.ReadFile(filepath.Join(set, shardName(i, count), "shard.json"))
		if errors.Is(err, os.ErrNotExist) {
			missing = append(missing, strconv.Itoa(i))
			continue
		}
		if err != nil {
			return fmt.Errorf("%w: shard %d/%d: %w", errkind.ErrConfig, i, count, err)
		}
		if err := json.Unmarshal(b, &infos[i]); err != nil {
			return fmt.Errorf("%w: shard %d/%d: shard.json: %w", errkind.ErrData, i, count, err)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("%w: %d of %d shards are not finished in %s (missing: %s); run commit again when they are",
			ErrShardsIncomplete, len(missing), count, set, strings.Join(missing, ", "))
	}
	first := &infos[0]
	for i := range infos {
		in := &infos[i]
		switch {
		case in.Version != shardVersion:
			return fmt.Errorf("%w: shard %d/%d: version %q, want %q", errkind.ErrData, i, count, in.Version, shardVersion)
		case in.Index != i || in.Count != count || in.RunKey != runKey(&r.cfg) || in.ConfigDigest != r.m.ConfigDigest:
			return fmt.Errorf("%w: shard %d/%d was made for another run or configuration", errkind.ErrData, i, count)
		case len(in.Inputs) != len(first.Inputs):
			return fmt.Errorf("%w: shard %d/%d read other tables than shard 0", errkind.ErrData, i, count)
		}
		for j := range in.Inputs {
			if a, b := in.Inputs[j], first.Inputs[j]; a.Table != b.Table || a.Name != b.Name || a.SHA256 != b.SHA256 {
				return fmt.Errorf("%w: the inputs changed between shards: %s read by shard %d/%d differs from shard 0's; run every shard again", errkind.ErrData, a.Table, i, count)
			}
		}
	}
	m := r.m
	for j, in := range first.Inputs {
		total := int64(0)
		for i := range infos {
			total += infos[i].Inputs[j].Rows
		}
		m.AddInput(in.Table, in.Name, in.SHA256, total)
	}
	rejects := make([]*shardRejects, 0, count)
	defer func() {
		for _, sr := range rejects {
			sr.Close()
		}
	}()
	for i := range infos {
		in := &infos[i]
		m.Users.Rows += in.Users.Rows
		m.Users.Exported += in.Users.Exported
		addCounts(m.Users.Excluded, in.Users.Excluded)
		m.ConsentEvents.Rows += in.ConsentEvents.Rows
		addCounts(m.ConsentEvents.ByClass, in.ConsentEvents.ByClass)
		addCounts(m.Rejects.Users, in.Rejects.Users)
		addCounts(m.Rejects.ConsentEvents, in.Rejects.ConsentEvents)
		dir := filepath.Join(set, shardName(i, count))
		err := errors.Join(
			r.openShardSpill(dir, "ids", bucketParts, in.Files, &r.idSrc),
			r.openShardSpill(dir, "snapshot", bucketParts, in.Files, &r.snapSrc),
			r.openShardGuard(dir, in),
		)
		if err == nil {
			var sr *shardRejects
			if sr, err = openShardRejects(dir, in.Files["rejects.csv"], fmt.Sprintf("shard %d/%d", i, count)); err == nil {
				rejects = append(rejects, sr)
			}
		}
		if err != nil {
			return fmt.Errorf("%w: shard %d/%d: %w", errkind.ErrData, i, count, err)
		}
	}
	// The unsharded run writes rejects as it reads: consent events, then
	// users, each in line order. Each shard's are in that order already, so
	// they are merged as they are read, not held.
	if err := mergeRejects(rejects, r.rejects.Write); err != nil {
		return fmt.Errorf("%w: %w", errkind.ErrData, err)
	}
	return nil
}

func addCounts(dst, src map[string]int64) {
	for k, v := range src {
		dst[k] += v
	}
}

// readShardFile reads a shard's file, checks it against shard.json's
// digest and hands it to fn.
func readShardFile(dir, name string, sums map[string]string, fn func([]byte) error) error {
	sum, b, err := fsutil.ReadFileSHA256(filepath.Join(dir, name))
	if err != nil {
		return err
	}
	if sum != sums[name] {
		return fmt.Errorf("%s does not match its digest in shard.json", name)
	}
	if err := fn(b); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	return nil
}

var errCorrupt = errors.New("corrupt")

// openShardSpill checks a shard's spill NAME.spill against shard.json's
// digest, opens it with its index NAME.idx and adds it to srcs.
func (r *run) openShardSpill(dir, name string, parts int, sums map[string]string, srcs *[]*spill.Spill) error {
	path := filepath.Join(dir, name+".spill")
	sum, err := fsutil.SHA256File(path)
	if err != nil {
		return err
	}
	if sum != sums[name+".spill"] {
		return fmt.Errorf("%s.spill does not match its digest in shard.json", name)
	}
	return readShardFile(dir, name+".idx", sums, func(index []byte) error {
		s, err := spill.Open(path, index)
		if err != nil {
			return err
		}
		*srcs = append(*srcs, s)
		if s.Parts() != parts {
			return fmt.Errorf("%s.spill: %d buckets, want %d", name, s.Parts(), parts)
		}
		return nil
	})
}

// openShardGuard adds a shard's leak guard needles.
func (r *run) openShardGuard(dir string, in *shardInfo) error {
	var srcs []*spill.Spill
	if err := r.openShardSpill(dir, "guard", leakguard.Parts, in.Files, &srcs); err != nil {
		return err
	}
	r.guard.AddShard(srcs[0], in.GuardMaxLen)
	return nil
}

type rejectRow struct {
	table  string
	line   int64
	reason string
	raw    string
}

// shardRejects reads a shard's rejects.csv a row at a time, in the order
// the shard wrote it, checking that order and, at the end, the file's
// digest against shard.json's: the commit's output is only published
// after every file has been read to its end.
type shardRejects struct {
	name string // the shard, for errors
	f    *os.File
	sum  hash.Hash
	want string
	cr   *csv.Reader
	row  rejectRow // the current row, when ok
	ok   bool
}

func openShardRejects(dir, want, name string) (*shardRejects, error) {
	f, err := os.Open(filepath.Join(dir, "rejects.csv"))
	if err != nil {
		return nil, err
	}
	sr := &shardRejects{name: name, f: f, sum: sha256.New(), want: want}
	sr.cr = csv.NewReader(io.TeeReader(f, sr.sum))
	sr.cr.FieldsPerRecord = 4
	if _, err := sr.cr.Read(); err != nil { // the header
		f.Close()
		return nil, fmt.Errorf("rejects.csv: %w (%w)", errCorrupt, err)
	}
	if err := sr.next(); err != nil {
		f.Close()
		return nil, err
	}
	return sr, nil
}

// next reads the next row into sr.row; at the end, ok is false and the
// digest has been checked.
func (sr *shardRejects) next() error {
	rec, err := sr.cr.Read()
	if err == io.EOF {
		sr.ok = false
		if hex.EncodeToString(sr.sum.Sum(nil)) != sr.want {
			return errors.New("rejects.csv does not match its digest in shard.json")
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("rejects.csv: %w", err)
	}
	line, err := strconv.ParseInt(rec[1], 10, 64)
	if err != nil {
		return fmt.Errorf("rejects.csv: %w", err)
	}
	row := rejectRow{rec[0], line, rec[2], rec[3]}
	if sr.ok && rejectOrder(sr.row, row) >= 0 {
		return fmt.Errorf("rejects.csv: %w: rows out of order", errCorrupt)
	}
	sr.row, sr.ok = row, true
	return nil
}

// Close closes the file; a second Close is a no-op.
func (sr *shardRejects) Close() {
	if sr.f != nil {
		sr.f.Close()
		sr.f = nil
	}
}

// rejectOrder is the order a run writes rejects in: consent events, then
// users, each by line.
func rejectOrder(a, b rejectRow) int {
	rank := func(t string) int {
		if t == source.TableConsent {
			return 0
		}
		return 1
	}
	return cmp.Or(cmp.Compare(rank(a.table), rank(b.table)), cmp.Compare(a.line, b.line))
}

// mergeRejects writes the shards' rejects in rejectOrder, reading each
// shard's file once, to its end: a heap of the shards by their next row.
func mergeRejects(srcs []*shardRejects, write func(table string, line int64, reason, raw string)) error {
	h := &rejectHeap{}
	for _, sr := range srcs {
		if sr.ok {
			h.s = append(h.s, sr)
		}
	}
	heap.Init(h)
	for h.Len() > 0 {
		first := h.s[0]
		x := first.row
		write(x.table, x.line, x.reason, x.raw)
		if err := first.next(); err != nil {
			return fmt.Errorf("%s: %w", first.name, err)
		}
		if first.ok {
			heap.Fix(h, 0)
		} else {
			heap.Pop(h)
		}
	}
	return nil
}

// rejectHeap orders shards by their next reject.
type rejectHeap struct{ s []*shardRejects }

func (h *rejectHeap) Len() int           { return len(h.s) }
func (h *rejectHeap) Less(i, j int) bool { return rejectOrder(h.s[i].row, h.s[j].row) < 0 }
func (h *rejectHeap) Swap(i, j int)      { h.s[i], h.s[j] = h.s[j], h.s[i] }
func (h *rejectHeap) Push(x any)         { h.s = append(h.s, x.(*shardRejects)) }
func (h *rejectHeap) Pop() any {
	x := h.s[len(h.s)-1]
	h.s = h.s[:len(h.s)-1]
	return x
}
