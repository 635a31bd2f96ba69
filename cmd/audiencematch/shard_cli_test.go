package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"audiencematch/fixtures"
)

// relFiles maps the files under dir, by path relative to dir, to their bytes.
func relFiles(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			b, _ := os.ReadFile(p)
			rel, _ := filepath.Rel(dir, p)
			out[rel] = b
		}
		return nil
	})
	return out
}

// TestShardedCLI: shards by --shard and by a Kubernetes Indexed Job's
// $JOB_COMPLETION_INDEX, then commit, publish what one run publishes.
func TestShardedCLI(t *testing.T) {
	whole := newEnv(t, vectorUsers, vectorEvents)
	st, err := fixtures.WriteFiles(filepath.Join(whole.dir, "fx"), fixtures.Options{Users: 3000, Seed: 3})
	if err != nil {
		t.Fatal(err)
	}
	whole.users, whole.events = st.UsersPath, st.EventsPath
	if _, stderr, code := execute(t, whole.args()...); code != 0 {
		t.Fatalf("unsharded run: exit %d: %s", code, stderr)
	}
	sharded := newEnv(t, vectorUsers, vectorEvents)
	sharded.users, sharded.events = st.UsersPath, st.EventsPath
	// The commit shares the shards' config file, inputs included: it
	// ignores them, and reads nothing but the shards.
	shared := writeFile(t, filepath.Join(sharded.dir, "shared.yaml"),
		"users: "+filepath.Join(sharded.dir, "no-such-users.csv")+"\nconsent: "+filepath.Join(sharded.dir, "no-such-events.csv")+"\n", 0o600)
	commit := []string{"commit", "--key", sharded.key, "--destination", "meta-ads", "--out", sharded.out,
		"--state", sharded.state, "--as-of", "2026-11-01T00:00:00Z", "--log-format", "json", "--shards", "3", "--config", shared}
	for _, i := range []string{"0/3", "1/3"} {
		if _, stderr, code := execute(t, sharded.args("--shard", i)...); code != 0 {
			t.Fatalf("shard %s: exit %d: %s", i, code, stderr)
		}
	}
	if len(sharded.published(t)) != 0 {
		t.Fatal("a shard published files")
	}
	_, stderr, code := execute(t, commit...)
	if code != 75 || !strings.Contains(stderr, "missing: 2") || len(sharded.published(t)) != 0 {
		t.Fatalf("commit with shard 2 missing: exit %d, %d files published: %s", code, len(sharded.published(t)), stderr)
	}
	t.Setenv(JobIndexEnv, "2")
	if _, stderr, code := execute(t, sharded.args("--shards", "3")...); code != 0 {
		t.Fatalf("shard from $%s: exit %d: %s", JobIndexEnv, code, stderr)
	}
	if _, stderr, code := execute(t, commit...); code != 0 {
		t.Fatalf("commit: exit %d: %s", code, stderr)
	}
	want, got := relFiles(t, whole.out), relFiles(t, sharded.out)
	if len(want) == 0 || len(got) != len(want) {
		t.Fatalf("%d files published by the shards, %d by the unsharded run", len(got), len(want))
	}
	for name, b := range want {
		if !bytes.Equal(got[name], b) {
			t.Errorf("%s differs from the unsharded run's", name)
		}
	}
	// A second commit finds the run committed: nothing to do.
	if _, stderr, code := execute(t, commit...); code != 0 {
		t.Errorf("second commit: exit %d: %s", code, stderr)
	}
}

func TestShardUsageErrors(t *testing.T) {
	e := newEnv(t, vectorUsers, vectorEvents)
	noAsOf := []string{"run", "--users", e.users, "--consent", e.events, "--key", e.key, "--destination", "meta-ads", "--state", e.state}
	for name, args := range map[string][]string{
		"index out of range":   e.args("--shard", "3/3"),
		"both flags":           e.args("--shard", "0/3", "--shards", "3"),
		"no job index":         e.args("--shards", "3"),
		"no cutoff":            append(noAsOf, "--shard", "0/2"),
		"commit without count": {"commit", "--destination", "meta-ads", "--state", e.state, "--as-of", "2026-11-01T00:00:00Z"},
		"commit without as-of": {"commit", "--destination", "meta-ads", "--state", e.state, "--shards", "2"},
		"commit with inputs":   {"commit", "--destination", "meta-ads", "--state", e.state, "--shards", "2", "--as-of", "2026-11-01T00:00:00Z", "--users", e.users},
		"commit with a source": {"commit", "--destination", "meta-ads", "--state", e.state, "--shards", "2", "--as-of", "2026-11-01T00:00:00Z", "--source", "postgres://localhost/x"},
	} {
		if name == "no job index" {
			t.Setenv(JobIndexEnv, "") // restored after the test
			os.Unsetenv(JobIndexEnv)
		}
		if _, stderr, code := execute(t, args...); code != 64 {
			t.Errorf("%s: exit %d, want 64: %s", name, code, stderr)
		}
	}
}
