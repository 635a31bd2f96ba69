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
	// The shards and the commit hold meta-ads's own key, not the master
	// key, and publish the same bytes, key_id included.
	destKey := filepath.Join(sharded.dir, "meta-ads.key")
	keyID, stderr, code := execute(t, "keys", "derive", "--key", sharded.key, "--state", sharded.state, "--destination", "meta-ads", "--out", destKey)
	if code != 0 || len(strings.TrimSpace(keyID)) != 16 {
		t.Fatalf("keys derive: exit %d, key_id %q: %s", code, keyID, stderr)
	}
	sharded.key = destKey
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
	_, stderr, code = execute(t, commit...)
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

// TestDestinationKey: keys derive writes a destination's key, owner-only,
// never over a file; a run refuses another destination's key.
func TestDestinationKey(t *testing.T) {
	e := newEnv(t, vectorUsers, vectorEvents)
	other := filepath.Join(e.dir, "other.key")
	if _, stderr, code := execute(t, "keys", "derive", "--state", e.state, "--destination", "mailer", "--out", other); code != 0 {
		t.Fatalf("keys derive from STATE/keys/master.key: exit %d: %s", code, stderr)
	}
	if st, err := os.Stat(other); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("derived key file: %v, %v", st, err)
	}
	for name, c := range map[string]struct {
		args []string
		code int
		says string
	}{
		"another destination's key": {e.args("--key", other), 78, "mailer"},
		"overwrite":                 {[]string{"keys", "derive", "--key", e.key, "--state", e.state, "--destination", "mailer", "--out", other}, 78, "refusing to overwrite"},
		"from a destination key":    {[]string{"keys", "derive", "--key", other, "--state", e.state, "--destination", "meta-ads", "--out", other + "2"}, 64, "needs the master key"},
		"no out":                    {[]string{"keys", "derive", "--key", e.key, "--destination", "x"}, 64, "--out"},
		"bad destination":           {[]string{"keys", "derive", "--key", e.key, "--destination", "Bad Dest", "--out", other + "3"}, 64, "destination"},
		// A key for a recipient no run may send to is never made.
		"not in the registry": {[]string{"keys", "derive", "--key", e.key, "--state", e.state, "--destination", "meta-adz", "--out", other + "4"}, 77, `"meta-adz" is not in the registry`},
		"did you mean":        {[]string{"keys", "derive", "--key", e.key, "--state", e.state, "--destination", "meta-adz", "--out", other + "4"}, 77, "did you mean meta-ads?"},
		"a third party":       {[]string{"keys", "derive", "--key", e.key, "--state", e.state, "--destination", "google-cm", "--out", other + "4"}, 77, "third party"},
		"no registry given":   {[]string{"keys", "derive", "--key", e.key, "--destination", "meta-ads", "--out", other + "4"}, 64, "--destinations FILE"},
	} {
		_, stderr, code := execute(t, c.args...)
		if code != c.code || !strings.Contains(stderr, c.says) {
			t.Errorf("%s: exit %d, want %d saying %q: %s", name, code, c.code, c.says, stderr)
		}
	}
	if len(e.published(t)) != 0 {
		t.Error("a run with another destination's key published")
	}
	if fileExists(other + "4") {
		t.Error("keys derive wrote a key for a destination it refused")
	}
}
