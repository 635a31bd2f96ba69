package main

import (
	"bytes"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/note"

	"audiencematch/consent/audit"
	"audiencematch/internal/objstore"
	"audiencematch/pipeline"
	"audiencematch/pipeline/auditor"
	"audiencematch/pipeline/delivery"
	"audiencematch/pipeline/statedir"
)

// crashEnv is a state directory with keys (shared by every scenario, so
// that runs are comparable) and a registry delivering to its own OUT.
type crashEnv struct {
	bin, in, dir, state, out string
}

// The binary the tests that run it as a process share: built once per test
// binary (each build links the whole program again, the slowest step of
// these tests), removed by TestMain.
var (
	binOnce sync.Once
	binDir  string
	binPath string
	binErr  error
)

func buildBinary(t *testing.T) string {
	t.Helper()
	binOnce.Do(func() {
		if binDir, binErr = os.MkdirTemp("", "audiencematch-test-"); binErr != nil {
			return
		}
		binPath = filepath.Join(binDir, "audiencematch")
		if out, err := exec.Command("go", "build", "-o", binPath, ".").CombinedOutput(); err != nil {
			binErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return binPath
}

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

func newCrashEnv(t *testing.T, bin, in, keys string) crashEnv {
	t.Helper()
	d := t.TempDir()
	return newCrashEnvAt(t, bin, in, keys, d, filepath.Join(d, "out"))
}

// newCrashEnvAt is newCrashEnv delivering to out, a directory or a URL.
func newCrashEnvAt(t *testing.T, bin, in, keys, d, out string) crashEnv {
	t.Helper()
	e := crashEnv{bin: bin, in: in, dir: d, state: filepath.Join(d, "state"), out: out}
	if err := os.MkdirAll(statedir.Keys(e.state), 0o700); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"master.key", audit.SignerFile, audit.VerifierFile} {
		b, err := os.ReadFile(filepath.Join(keys, f))
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(statedir.Keys(e.state), f), b, 0o600)
	}
	env{state: e.state, out: e.out}.writeRegistry(t, "hmac-sha256")
	return e
}

func (e crashEnv) command(crashAt string) *exec.Cmd {
	c := exec.Command(e.bin, "run", "--users", filepath.Join(e.in, "users.csv"), "--consent", filepath.Join(e.in, "consent_events.csv"),
		"--destination", "meta-ads", "--state", e.state, "--as-of", "2026-11-01T00:00:00Z",
		"--min-policy-version", "3", "--max-consent-age", "395d")
	c.Env = append(os.Environ(), pipeline.CrashEnv+"="+crashAt)
	return c
}

// tree maps every file under dir (relative path) to its content.
func tree(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	if objstore.IsURL(dir) { // a copy of the objects under it
		tmp := t.TempDir()
		if err := objstore.Fetch(t.Context(), dir, tmp); err != nil {
			t.Fatal(err)
		}
		dir = tmp
	}
	m := map[string][]byte{}
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			rel, _ := filepath.Rel(dir, p)
			m[rel], _ = os.ReadFile(p)
		}
		return nil
	})
	return m
}

// runFiles is a delivery tree without its _LATEST pointer, which a run
// writes after its audit record: a run killed between its publish and its
// record has published the run's files, and the next run, recording it,
// writes the pointer (finish compares the whole tree).
func runFiles(m map[string][]byte) map[string][]byte {
	out := maps.Clone(m)
	for k := range out {
		if filepath.Base(k) == "_LATEST" {
			delete(out, k)
		}
	}
	return out
}

func sameTree(t *testing.T, got, want map[string][]byte) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("OUT holds %d files, the uninterrupted run %d", len(got), len(want))
	}
	for k, v := range want {
		if !bytes.Equal(got[k], v) {
			t.Fatalf("%s differs from the uninterrupted run's", k)
		}
	}
}

func committed(t *testing.T, state string) int {
	t.Helper()
	l, err := audit.Open(statedir.Audit(state))
	if err != nil {
		t.Fatalf("audit log unreadable after a crash: %v", err)
	}
	n := 0
	for _, r := range l.Records() {
		if r.Type == audit.TypeRunCommitted {
			n++
		}
	}
	return n
}

func killedBySIGKILL(err error) bool {
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		return false
	}
	ws, ok := ee.Sys().(syscall.WaitStatus)
	return ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL
}

// finish runs once more, uninterrupted, and checks the result against the
// reference: identical OUT, one committed record, nothing left in staging,
// and a log that verifies.
func (e crashEnv) finish(t *testing.T, want map[string][]byte) {
	t.Helper()
	if out, err := e.command("").CombinedOutput(); err != nil {
		t.Fatalf("run after the crash: %v\n%s", err, out)
	}
	e.checkRecovered(t, want)
}

// checkRecovered checks a recovered state against the reference.
func (e crashEnv) checkRecovered(t *testing.T, want map[string][]byte) {
	t.Helper()
	sameTree(t, tree(t, e.out), want)
	if n := committed(t, e.state); n != 1 {
		t.Fatalf("%d committed records after recovery, want 1", n)
	}
	if ents, _ := os.ReadDir(filepath.Join(e.state, "staging")); len(ents) != 0 {
		t.Errorf("staging not cleaned: %d entries", len(ents))
	}
	// The delivery root, a directory or the bucket's URL (--delivery).
	opts := auditor.VerifyOptions{Roots: delivery.Roots{Override: e.out}}
	if _, err := auditor.VerifyAudit(e.state, mustVerifier(t, e.state), opts); err != nil {
		t.Fatalf("audit verify after recovery: %v", err)
	}
}

// killRandomly starts c and kills it after a random part of d; c must
// end killed or, if it was quicker, successfully.
func killRandomly(t *testing.T, c *exec.Cmd, rng *rand.Rand, d time.Duration) {
	t.Helper()
	var stderr bytes.Buffer
	c.Stderr = &stderr
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	delay := time.Duration(rng.Int64N(int64(d)))
	time.Sleep(delay)
	c.Process.Kill()
	if err := c.Wait(); err != nil && !killedBySIGKILL(err) {
		t.Fatalf("killed after %v: %v\n%s", delay, err, stderr.String())
	}
}

func mustVerifier(t *testing.T, state string) note.Verifier {
	t.Helper()
	v, err := audit.LoadVerifier(filepath.Join(statedir.Keys(state), audit.VerifierFile))
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// crashRef is what every crash scenario shares: the binary, fixtures of
// 20k users, keys, and what an uninterrupted run publishes (want), and how
// long it took.
type crashRef struct {
	bin, in, keys string
	want          map[string][]byte
	took          time.Duration
}

func newCrashRef(t *testing.T) crashRef {
	t.Helper()
	bin := buildBinary(t)
	base := t.TempDir()
	in := filepath.Join(base, "in")
	if out, err := exec.Command(bin, "fixtures", "--users", "20000", "--out", in).CombinedOutput(); err != nil {
		t.Fatalf("fixtures: %v %s", err, out)
	}
	keys := filepath.Join(base, "state")
	if out, err := exec.Command(bin, "keys", "init", "--state", keys).CombinedOutput(); err != nil {
		t.Fatalf("keys init: %v %s", err, out)
	}
	keys = statedir.Keys(keys)
	ref := newCrashEnv(t, bin, in, keys)
	start := time.Now()
	if out, err := ref.command("").CombinedOutput(); err != nil {
		t.Fatalf("reference run: %v\n%s", err, out)
	}
	c := crashRef{bin: bin, in: in, keys: keys, want: tree(t, ref.out), took: time.Since(start)}
	if len(c.want) < 2 {
		t.Fatalf("the reference run published %d files", len(c.want))
	}
	return c
}

func TestCrashSafety(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary many times")
	}
	ref := newCrashRef(t)
	bin, in, keys, want, refDuration := ref.bin, ref.in, ref.keys, ref.want, ref.took

	stages := []string{"consent", "users", "join", "write", "staged", "evidence", "published", "committed"}
	for i, stage := range stages {
		t.Run("kill at "+stage, func(t *testing.T) {
			e := newCrashEnv(t, bin, in, keys)
			err := e.command(stage).Run()
			if !killedBySIGKILL(err) {
				t.Fatalf("the run was not killed at %s: %v", stage, err)
			}
			published := i >= slices.Index(stages, "published") // killed after the rename into OUT
			if got := tree(t, e.out); published {
				sameTree(t, runFiles(got), runFiles(want))
			} else if len(got) != 0 {
				t.Fatalf("killed at %s, OUT holds %d files", stage, len(got))
			}
			if n := committed(t, e.state); n != 0 && stage != "committed" {
				t.Fatalf("killed at %s, the log has %d committed records", stage, n)
			}
			e.finish(t, want)
		})
	}

	t.Run("kill at random moments", func(t *testing.T) {
		e := newCrashEnv(t, bin, in, keys)
		rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1))
		for range 8 {
			killRandomly(t, e.command(""), rng, refDuration)
			// Between kills: nothing partial is ever visible in OUT.
			if got := tree(t, e.out); len(got) != 0 {
				sameTree(t, runFiles(got), runFiles(want))
			}
		}
		e.finish(t, want)
	})
}

// shardCommand runs shard i of n, or with i < 0 the commit of n shards.
func (e crashEnv) shardCommand(crashAt string, i, n int) *exec.Cmd {
	args := []string{"run", "--users", filepath.Join(e.in, "users.csv"), "--consent", filepath.Join(e.in, "consent_events.csv"),
		"--shard", fmt.Sprintf("%d/%d", i, n)}
	if i < 0 {
		args = []string{"commit", "--shards", strconv.Itoa(n)}
	}
	c := exec.Command(e.bin, append(args, "--destination", "meta-ads", "--state", e.state,
		"--as-of", "2026-11-01T00:00:00Z", "--min-policy-version", "3", "--max-consent-age", "395d")...)
	c.Env = append(os.Environ(), pipeline.CrashEnv+"="+crashAt)
	return c
}

// finishShards runs every shard of n, uninterrupted, then the commit, and
// checks the result as finish does, and that the shards are gone.
func (e crashEnv) finishShards(t *testing.T, n int, want map[string][]byte) {
	t.Helper()
	for i := range n {
		if out, err := e.shardCommand("", i, n).CombinedOutput(); err != nil {
			t.Fatalf("shard %d/%d after the crash: %v\n%s", i, n, err, out)
		}
	}
	e.commitAndCheck(t, n, want)
}

func (e crashEnv) commitAndCheck(t *testing.T, n int, want map[string][]byte) {
	t.Helper()
	if out, err := e.shardCommand("", -1, n).CombinedOutput(); err != nil {
		t.Fatalf("commit after the crash: %v\n%s", err, out)
	}
	e.checkRecovered(t, want)
	if ents, _ := os.ReadDir(filepath.Join(e.state, "shards")); len(ents) != 0 {
		t.Errorf("the committed shards were not removed: %d entries under STATE/shards", len(ents))
	}
}

// TestShardCrashSafety: a shard killed at any stage or moment (a
// preempted pod) leaves nothing the commit would take, and running it
// again completes the run; a commit killed at any stage publishes nothing
// partial, and running it again publishes what the unsharded run publishes,
// records it once and removes the shards.
func TestShardCrashSafety(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary many times")
	}
	const n = 3
	ref := newCrashRef(t)
	bin, in, keys, want, shardDuration := ref.bin, ref.in, ref.keys, ref.want, ref.took

	for _, stage := range []string{"consent", "users", "join"} {
		t.Run("kill shard at "+stage, func(t *testing.T) {
			e := newCrashEnv(t, bin, in, keys)
			if err := e.shardCommand(stage, 1, n).Run(); !killedBySIGKILL(err) {
				t.Fatalf("the shard was not killed at %s: %v", stage, err)
			}
			// The killed shard is missing: the commit waits (exit 75)
			// and changes nothing.
			for _, i := range []int{0, 2} {
				if out, err := e.shardCommand("", i, n).CombinedOutput(); err != nil {
					t.Fatalf("shard %d/%d: %v\n%s", i, n, err, out)
				}
			}
			err := e.shardCommand("", -1, n).Run()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != exitTempFail {
				t.Fatalf("commit with a killed shard: %v, want exit %d", err, exitTempFail)
			}
			if got := tree(t, e.out); len(got) != 0 {
				t.Fatalf("commit with a killed shard published %d files", len(got))
			}
			e.finishShards(t, n, want)
		})
	}

	stages := []string{"shards", "write", "staged", "evidence", "published", "committed"}
	for i, stage := range stages {
		t.Run("kill commit at "+stage, func(t *testing.T) {
			e := newCrashEnv(t, bin, in, keys)
			for s := range n {
				if out, err := e.shardCommand("", s, n).CombinedOutput(); err != nil {
					t.Fatalf("shard %d/%d: %v\n%s", s, n, err, out)
				}
			}
			if err := e.shardCommand(stage, -1, n).Run(); !killedBySIGKILL(err) {
				t.Fatalf("the commit was not killed at %s: %v", stage, err)
			}
			if got := tree(t, e.out); i >= slices.Index(stages, "published") {
				sameTree(t, runFiles(got), runFiles(want))
			} else if len(got) != 0 {
				t.Fatalf("commit killed at %s, OUT holds %d files", stage, len(got))
			}
			e.commitAndCheck(t, n, want)
		})
	}

	t.Run("kill shards at random moments", func(t *testing.T) {
		e := newCrashEnv(t, bin, in, keys)
		rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 2))
		for k := range 6 {
			killRandomly(t, e.shardCommand("", k%n, n), rng, shardDuration)
		}
		e.finishShards(t, n, want)
	})
}

// TestCrashSafetyObjectStore kills runs publishing to the S3 server: after
// the upload's first object (no _SUCCESS: consumers see nothing whole) and
// between the publish and the audit record (the run's objects whole,
// _LATEST not yet moved); the next run completes or records it, and the
// bucket then holds exactly what an uninterrupted run publishes.
func TestCrashSafetyObjectStore(t *testing.T) {
	u := os.Getenv("AUDIENCEMATCH_TEST_S3_URL")
	if u == "" {
		t.Skip("AUDIENCEMATCH_TEST_S3_URL is not set: run scripts/test.sh, or eval \"$(scripts/s3.sh start)\" first")
	}
	bin := buildBinary(t)
	base := t.TempDir()
	in := filepath.Join(base, "in")
	if out, err := exec.Command(bin, "fixtures", "--users", "3000", "--out", in).CombinedOutput(); err != nil {
		t.Fatalf("fixtures: %v %s", err, out)
	}
	keys := filepath.Join(base, "state")
	if out, err := exec.Command(bin, "keys", "init", "--state", keys).CombinedOutput(); err != nil {
		t.Fatalf("keys init: %v %s", err, out)
	}
	keys = statedir.Keys(keys)
	prefix := fmt.Sprintf("crash%d", time.Now().UnixNano())
	ref := newCrashEnvAt(t, bin, in, keys, t.TempDir(), objstore.Join(u, prefix+"/ref"))
	if out, err := ref.command("").CombinedOutput(); err != nil {
		t.Fatalf("reference run: %v\n%s", err, out)
	}
	want := tree(t, ref.out)
	if len(want) < 4 {
		t.Fatalf("the reference run published %d objects", len(want))
	}
	for _, stage := range []string{"uploading", "published"} {
		t.Run("kill at "+stage, func(t *testing.T) {
			e := newCrashEnvAt(t, bin, in, keys, t.TempDir(), objstore.Join(u, prefix+"/"+stage))
			if err := e.command(stage).Run(); !killedBySIGKILL(err) {
				t.Fatalf("the run was not killed at %s: %v", stage, err)
			}
			got := tree(t, e.out)
			whole := false
			for k := range got {
				whole = whole || filepath.Base(k) == "_SUCCESS"
			}
			switch stage {
			case "uploading":
				if whole || len(got) == 0 {
					t.Fatalf("killed while uploading, the bucket holds %d objects, _SUCCESS %v", len(got), whole)
				}
			case "published":
				sameTree(t, runFiles(got), runFiles(want))
			}
			e.finish(t, want)
		})
	}
}
