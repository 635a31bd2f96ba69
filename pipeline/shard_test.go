package pipeline_test

import (
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"io/fs"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"audiencematch/consent"
	"audiencematch/consent/audit"
	"audiencematch/fixtures"
	"audiencematch/hashing"
	"audiencematch/pipeline"
	"audiencematch/pipeline/auditor"
	"audiencematch/pipeline/errkind"
	"audiencematch/pipeline/idfile"
	"audiencematch/pipeline/source"
	"audiencematch/pipeline/statedir"
)

func TestParseShard(t *testing.T) {
	for in, want := range map[string]pipeline.Shard{"0/1": {0, 1}, "2/3": {2, 3}, "4095/4096": {4095, 4096}} {
		if got, err := pipeline.ParseShard(in); err != nil || got != want {
			t.Errorf("ParseShard(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "1", "3/3", "-1/3", "0/0", "a/b", "0/4097", "1/2/3", " 1/2"} {
		if _, err := pipeline.ParseShard(in); !errors.Is(err, errkind.ErrUsage) {
			t.Errorf("ParseShard(%q): err = %v, want a usage error", in, err)
		}
	}
}

// shardConfig is a run of the shared fixture inputs into its own state and
// output directories.
func shardConfig(t *testing.T, dir string, st fixtures.Stats) pipeline.Config {
	s, v := signer(t)
	return pipeline.Config{
		Users: st.UsersPath, Consent: st.EventsPath, Destination: "meta-ads", Scheme: hashing.HMACSHA256,
		Key: destKey(t, "meta-ads"), Out: filepath.Join(dir, "out"), State: filepath.Join(dir, "state"),
		Registry:      testRegistry(filepath.Join(dir, "out"), "meta-ads", hashing.HMACSHA256),
		Rules:         fixtureRules(fixtures.DefaultAsOf),
		MaxRejectRate: 0.01, RowsPerFile: 3000, RowsPerGroup: 1000, ToolVersion: "test",
		AuditSigner: s, AuditVerifier: v,
	}
}

// shardFixtures writes fixture inputs under a new temporary directory,
// which it returns with them.
func shardFixtures(t *testing.T, o fixtures.Options) (string, fixtures.Stats) {
	t.Helper()
	dir := t.TempDir()
	st, err := fixtures.WriteFiles(filepath.Join(dir, "in"), o)
	if err != nil {
		t.Fatal(err)
	}
	return dir, st
}

// runShard runs shard i of n of cfg.
func runShard(ctx context.Context, cfg pipeline.Config, i, n int) (*pipeline.Result, error) {
	cfg.Shard = pipeline.Shard{Index: i, Count: n}
	return pipeline.Run(ctx, cfg)
}

// filesUnder maps every file under dir (relative path) to its bytes.
func filesUnder(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		rel, _ := filepath.Rel(dir, p)
		out[rel] = b
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// privateFiles is a run's private files under state but record.json,
// which carries the time it was prepared.
func privateFiles(t *testing.T, state, runID string) map[string][]byte {
	files := filesUnder(t, filepath.Join(state, "runs", runID))
	delete(files, "record.json")
	return files
}

// sameFiles reports files of want missing from got or different in it,
// and a different number of files.
func sameFiles(t *testing.T, what string, got, want map[string][]byte) {
	t.Helper()
	if len(got) != len(want) {
		t.Errorf("%s: %d files, want %d", what, len(got), len(want))
	}
	for name, b := range want {
		if !bytes.Equal(got[name], b) {
			t.Errorf("%s %s differs from the reference run's", what, name)
		}
	}
}

// committedRecord is the log's only record as JSON, without its time, and
// with the publish path relative to the output directory.
func committedRecord(t *testing.T, state, out string) string {
	t.Helper()
	l, err := audit.Open(statedir.Audit(state))
	if err != nil {
		t.Fatal(err)
	}
	recs := l.Records()
	if len(recs) != 1 || recs[0].Type != audit.TypeRunCommitted {
		t.Fatalf("audit log has %d records (want one run_committed)", len(recs))
	}
	rec := *recs[0]
	rec.Time = ""
	if rel, err := filepath.Rel(out, rec.Published); err == nil && !strings.HasPrefix(rel, "..") {
		rec.Published = rel
	}
	b, _ := json.Marshal(rec)
	return string(b)
}

// TestShardedIdenticalToUnsharded: N shards (run in any order, some at the
// same time) and a commit publish byte for byte what one unsharded run
// publishes, keep the same evidence and rejects, and append the same record.
func TestShardedIdenticalToUnsharded(t *testing.T) {
	dir, st := shardFixtures(t, fixtures.Options{Users: 20000, Seed: 42})
	ctx := context.Background()
	base, err := pipeline.Run(ctx, shardConfig(t, filepath.Join(dir, "whole"), st))
	if err != nil {
		t.Fatal(err)
	}
	if base.Manifest.Users.Excluded[consent.ReasonDuplicateNumber] == 0 || base.Manifest.Users.Excluded[consent.ReasonSharedNumberWithdrawn] == 0 ||
		base.Manifest.Rejects.Users[consent.ReasonMalformedRow]+base.Manifest.Rejects.ConsentEvents["broken_csv_quoting"] == 0 {
		t.Fatalf("the fixtures lack shared numbers or malformed rows: %+v", base.Manifest.Users.Excluded)
	}
	wholeState := filepath.Join(dir, "whole", "state")
	want := filesUnder(t, base.PublishedDir)
	wantPrivate := privateFiles(t, wholeState, base.Manifest.RunID)
	wantRecord := committedRecord(t, wholeState, filepath.Join(dir, "whole", "out"))
	for _, n := range []int{1, 3, 8} {
		t.Run(string(rune('0'+n)), func(t *testing.T) {
			sdir := filepath.Join(dir, "sharded", string(rune('0'+n)))
			cfg := shardConfig(t, sdir, st)
			order := rand.Perm(n)
			last := order[n-1]
			var wg sync.WaitGroup
			errs := make([]error, n)
			for _, i := range order[:n-1] { // all but one at the same time
				wg.Go(func() { _, errs[i] = runShard(ctx, cfg, i, n) })
			}
			wg.Wait()
			if err := errors.Join(errs...); err != nil {
				t.Fatal(err)
			}
			// Not yet complete: the commit refuses and publishes nothing.
			_, err := pipeline.Commit(ctx, cfg, n)
			if !errors.Is(err, pipeline.ErrShardsIncomplete) || !errors.Is(err, errkind.ErrTempFail) {
				t.Fatalf("commit with shard %d missing: %v", last, err)
			}
			if _, serr := os.Stat(cfg.Out); !os.IsNotExist(serr) {
				t.Fatalf("an incomplete commit created %s", cfg.Out)
			}
			sres, err := runShard(ctx, cfg, last, n)
			if err != nil {
				t.Fatal(err)
			}
			if sres.ShardDir == "" || sres.PublishedDir != "" {
				t.Fatalf("a shard run returned %+v", sres)
			}
			res, err := pipeline.Commit(ctx, cfg, n)
			if err != nil {
				t.Fatal(err)
			}
			if res.Manifest.RunID != base.Manifest.RunID {
				t.Errorf("run id %s, unsharded %s", res.Manifest.RunID, base.Manifest.RunID)
			}
			sameFiles(t, "published", filesUnder(t, res.PublishedDir), want)
			sameFiles(t, "private", privateFiles(t, cfg.State, res.Manifest.RunID), wantPrivate)
			if rec := committedRecord(t, cfg.State, cfg.Out); rec != wantRecord {
				t.Errorf("audit record differs:\n%s\nunsharded:\n%s", rec, wantRecord)
			}
			if _, err := os.Stat(pipeline.ShardsDir(&cfg)); !os.IsNotExist(err) {
				t.Errorf("the shards were not removed after the commit: %v", err)
			}
			if _, err := auditor.VerifyAudit(cfg.State, cfg.AuditVerifier, verifyOpts(cfg.State, nil)); err != nil {
				t.Errorf("verify: %v", err)
			}
		})
	}
}

// TestShardCommitRefusesMismatch: inputs that change between shards, a
// shard file changed after it was written, and a shard of another format
// version stop the commit.
func TestShardCommitRefusesMismatch(t *testing.T) {
	dir, st := shardFixtures(t, fixtures.Options{Users: 2000, Seed: 5})
	ctx := context.Background()
	cfg := shardConfig(t, filepath.Join(dir, "run"), st)
	shard := func(i int) {
		t.Helper()
		if _, err := runShard(ctx, cfg, i, 2); err != nil {
			t.Fatal(err)
		}
	}
	// refused: the commit stops with errkind.ErrData naming want, and publishes nothing.
	refused := func(what, want string) {
		t.Helper()
		_, err := pipeline.Commit(ctx, cfg, 2)
		if !errors.Is(err, errkind.ErrData) || !strings.Contains(err.Error(), want) {
			t.Fatalf("commit over %s: %v", what, err)
		}
		if _, serr := os.Stat(cfg.Out); !os.IsNotExist(serr) {
			t.Fatalf("a commit refused over %s created %s", what, cfg.Out)
		}
	}
	shard(0)
	users, _ := os.ReadFile(st.UsersPath)
	if err := os.WriteFile(st.UsersPath, append(users, []byte("late-user,+16502530000,US\n")...), 0o600); err != nil {
		t.Fatal(err)
	}
	shard(1)
	refused("changed inputs", "inputs changed between shards")
	shard(0) // both now read the same inputs
	ids := filepath.Join(pipeline.ShardsDir(&cfg), "shard-00001-of-00002", "ids.spill")
	b, _ := os.ReadFile(ids)
	b[len(b)/2] ^= 1
	if err := os.WriteFile(ids, b, 0o600); err != nil {
		t.Fatal(err)
	}
	refused("a changed shard file", "does not match its digest")
	shard(1)
	// A reject's reason changed: well-formed and in order, but not what the
	// shard wrote (the commit reads rejects as it merges them).
	rej := filepath.Join(pipeline.ShardsDir(&cfg), "shard-00001-of-00002", "rejects.csv")
	orig, _ := os.ReadFile(rej)
	rows, err := csv.NewReader(bytes.NewReader(orig)).ReadAll()
	if err != nil || len(rows) < 2 {
		t.Fatalf("shard 1 has %d reject rows (%v): the fixtures should have some", len(rows)-1, err)
	}
	rows[len(rows)-1][2] += "x"
	var changed bytes.Buffer
	w := csv.NewWriter(&changed)
	w.WriteAll(rows)
	if err := os.WriteFile(rej, changed.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	refused("changed rejects", "rejects.csv does not match its digest")
	shard(1)
	info := filepath.Join(pipeline.ShardsDir(&cfg), "shard-00000-of-00002", "shard.json")
	b, _ = os.ReadFile(info)
	old := regexp.MustCompile(`"audiencematch\.shard/v\d+"`).ReplaceAll(b, []byte(`"audiencematch.shard/v4"`))
	if bytes.Equal(old, b) {
		t.Fatal("shard.json has no version to change")
	}
	if err := os.WriteFile(info, old, 0o600); err != nil {
		t.Fatal(err)
	}
	refused("a shard of an earlier version", `version "audiencematch.shard/v4"`)
	shard(0)
	if _, err := pipeline.Commit(ctx, cfg, 2); err != nil {
		t.Fatal(err)
	}
}

// TestParallelIngestIdentical: inputs cut into hundreds of small blocks and
// read by eight workers, spilled in groups of files, publish byte for byte
// what one worker reading one block at a time without groups publishes,
// with the same evidence, rejects and record; and so do Parquet inputs,
// cut into batches by rowBatcher.
func TestParallelIngestIdentical(t *testing.T) {
	for _, format := range []string{"csv", "parquet"} {
		t.Run(format, func(t *testing.T) { testParallelIngest(t, format) })
	}
}

func testParallelIngest(t *testing.T, format string) {
	dir, st := shardFixtures(t, fixtures.Options{Users: 20000, Seed: 7, Format: format})
	ctx := context.Background()
	run := func(name string, workers, block int, split, group int64, evidenceBatch int) (map[string][]byte, map[string][]byte, string) {
		source.SetCSVBlockSize(t, block)
		idfile.SetEvidenceBatch(t, evidenceBatch)
		cfg := shardConfig(t, filepath.Join(dir, name), st)
		cfg.Workers = workers
		pipeline.SetSpillThresholds(&cfg, split, group)
		res, err := pipeline.Run(ctx, cfg)
		if err != nil {
			t.Fatal(err)
		}
		return filesUnder(t, res.PublishedDir), privateFiles(t, cfg.State, res.Manifest.RunID), committedRecord(t, cfg.State, cfg.Out)
	}
	wantPub, wantPriv, wantRec := run("one", 1, 64<<20, 64<<20, math.MaxInt64, 64<<10)
	if format == "csv" && len(wantPriv["rejects.csv"]) < 200 {
		t.Fatalf("the fixtures have too few rejects to check their order")
	}
	// Many workers, small CSV blocks, spills in groups of files, every join
	// partition, bucket of holders and bucket of snapshot lines split in
	// sub-partitions, and the evidence written 128 rows at most at a time.
	gotPub, gotPriv, gotRec := run("many", 8, 4096, 1, 0, 128)
	sameFiles(t, "published", gotPub, wantPub)
	sameFiles(t, "private", gotPriv, wantPriv)
	if gotRec != wantRec {
		t.Errorf("audit record differs:\n%s\nwant\n%s", gotRec, wantRec)
	}
}

// TestCommitRemovesAbandonedShards: a commit removes the shard sets of runs
// never committed whose cutoff is more than ShardRetention before its own,
// and nothing else under STATE/shards.
func TestCommitRemovesAbandonedShards(t *testing.T) {
	dir, st := shardFixtures(t, fixtures.Options{Users: 300, Seed: 9})
	ctx := context.Background()
	cfg := shardConfig(t, filepath.Join(dir, "run"), st)
	shards := filepath.Join(cfg.State, "shards")
	asOf := cfg.Rules.AsOf
	stale := asOf.Add(-pipeline.ShardRetention-time.Hour).UTC().Format("20060102T150405Z") + "-0123456789abcdef"
	recent := asOf.Add(-pipeline.ShardRetention+time.Hour).UTC().Format("20060102T150405Z") + "-0123456789abcdef"
	for _, d := range []string{stale + "/shard-00000-of-00002", recent + "/shard-00000-of-00002", "not-a-set", "notes"} {
		if err := os.MkdirAll(filepath.Join(shards, d), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(shards, stale, "shard-00000-of-00002", "ids.spill"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := pipeline.Commit(ctx, cfg, 1); !errors.Is(err, pipeline.ErrShardsIncomplete) {
		t.Fatalf("commit with no shards: %v", err)
	}
	if _, err := os.Stat(filepath.Join(shards, stale)); err != nil {
		t.Fatalf("a commit that failed removed shards: %v", err)
	}
	if _, err := runShard(ctx, cfg, 0, 1); err != nil {
		t.Fatal(err)
	}
	if _, err := pipeline.Commit(ctx, cfg, 1); err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir(shards)
	if err != nil {
		t.Fatal(err)
	}
	var left []string
	for _, e := range entries {
		left = append(left, e.Name())
	}
	want := []string{recent, "not-a-set", "notes"} // ReadDir sorts by name
	if !slices.Equal(left, want) {
		t.Errorf("left under shards: %q, want %q (the stale set removed, the committed one too)", left, want)
	}
}
