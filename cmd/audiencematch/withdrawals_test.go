package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"audiencematch/consent/audit"
	"audiencematch/pipeline"
	"audiencematch/pipeline/statedir"
)

// The tests of this file attack the promise that a withdrawal reaches the
// platform as a remove in the next run, provably, one fault at a time.

// worldEnv is an env whose inputs come from a world of n users.
func worldEnv(t *testing.T, n int) (env, *world) {
	t.Helper()
	w := newWorld(t, 42, n)
	e := newEnv(t, vectorUsers, vectorEvents)
	e.users, e.events = w.write(t, filepath.Join(e.dir, "in"))
	return e, w
}

// granted returns a user of w whose latest event is a grant.
func granted(t *testing.T, w *world) string {
	t.Helper()
	last := map[string]string{}
	for _, ev := range w.events {
		last[ev.user] = ev.action
	}
	for _, id := range w.userIDs() {
		if last[id] == "grant" {
			return id
		}
	}
	t.Fatal("nobody granted")
	return ""
}

func runAt(e env, asOf string, extra ...string) []string {
	return append(e.args(extra...), "--as-of", asOf)
}

func mustRun(t *testing.T, args ...string) string {
	t.Helper()
	out, stderr, code := execute(t, args...)
	if code != 0 {
		t.Fatalf("%v: exit %d\n%s", args[:1], code, stderr)
	}
	return out
}

func mustVerify(t *testing.T, state string) {
	t.Helper()
	if out, stderr, code := execute(t, "audit", "verify", "--state", state); code != 0 {
		t.Fatalf("audit verify: exit %d\n%s%s", code, out, stderr)
	}
}

// lastCommitted is the log's last run_committed record of meta-ads.
func lastCommitted(t *testing.T, state string) *audit.Record {
	t.Helper()
	_, all := chain(t, state, "meta-ads")
	if len(all) == 0 {
		t.Fatal("no committed run")
	}
	return all[len(all)-1]
}

func recordTypes(t *testing.T, state string) []string {
	t.Helper()
	l, err := audit.Open(statedir.Audit(state))
	if err != nil {
		t.Fatal(err)
	}
	var types []string
	for _, r := range l.Records() {
		types = append(types, r.Type)
	}
	return types
}

func mountTmpfs(t *testing.T, dir, opts string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("mounting a second file system needs root; CI runs as root")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", opts, "tmpfs", dir).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a tmpfs here (%v: %s)", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", dir).Run() })
}

// Case 1: OUT on another file system than STATE: every night publishes,
// the second one with adds/ and removes/ copied across.
func TestPublishAcrossFileSystems(t *testing.T) {
	e, w := worldEnv(t, 200)
	mountTmpfs(t, e.out, "size=64m")
	var st1, st2 syscall.Statfs_t
	syscall.Statfs(e.out, &st1)
	syscall.Statfs(e.state, &st2)
	if st1.Type == st2.Type && st1.Fsid == st2.Fsid {
		t.Fatal("OUT and STATE are on the same file system")
	}
	mustRun(t, runAt(e, "2026-11-01T00:00:00Z")...)
	w.event(granted(t, w), "withdraw", time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC))
	e.users, e.events = w.write(t, filepath.Join(e.dir, "in"))
	for _, day := range []string{"2026-11-02T00:00:00Z", "2026-11-03T00:00:00Z"} {
		mustRun(t, runAt(e, day)...)
	}
	rec := lastCommitted(t, e.state)
	if len(rec.Removes) == 0 || len(rec.Adds) == 0 {
		t.Fatalf("the third night has no delta files: %+v", rec)
	}
	if runs, _ := chain(t, e.state, "meta-ads"); len(runs) != 3 {
		t.Fatalf("%d runs committed, want 3", len(runs))
	}
	if hidden, _ := filepath.Glob(filepath.Join(e.out, "meta-ads", "dt=*", ".tmp-*")); len(hidden) != 0 {
		t.Errorf("copies left behind: %v", hidden)
	}
	replay(t, e.state, "meta-ads")
	mustVerify(t, e.state)
}

// Case 3: a run killed between its publish and its record is recorded by
// the next run, whatever its cutoff, before that run computes its deltas;
// and a same-day retry without --as-of publishes nothing twice.
func TestUnrecordedPublishHealed(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	bin := buildBinary(t)
	e, w := worldEnv(t, 200)
	run := func(crashAt string, args ...string) error {
		c := exec.Command(bin, args...)
		c.Env = append(os.Environ(), pipeline.CrashEnv+"="+crashAt)
		out, err := c.CombinedOutput()
		if err != nil && crashAt == "" {
			return fmt.Errorf("%v: %s", err, out)
		}
		return err
	}
	if err := run("published", runAt(e, "2026-11-01T00:00:00Z")...); !killedBySIGKILL(err) {
		t.Fatalf("not killed: %v", err)
	}
	first, _ := filepath.Glob(filepath.Join(e.out, "meta-ads", "dt=2026-11-01", "run=*"))
	if len(first) != 1 || slices.Contains(recordTypes(t, e.state), audit.TypeRunCommitted) {
		t.Fatalf("after the kill: published %v, records %v", first, recordTypes(t, e.state))
	}
	firstID := strings.TrimPrefix(filepath.Base(first[0]), "run=")
	user := granted(t, w)
	w.event(user, "withdraw", time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC))
	e.users, e.events = w.write(t, filepath.Join(e.dir, "in"))
	if err := run("", runAt(e, "2026-11-02T00:00:00Z")...); err != nil {
		t.Fatal(err)
	}
	runs, _ := chain(t, e.state, "meta-ads")
	if len(runs) != 2 || runs[0].RunID != firstID || runs[1].PreviousRunID != firstID {
		t.Fatalf("the chain after healing: %d runs, want the killed run %s first and named as previous", len(runs), firstID)
	}
	removes := readIDs(t, publishedDir(e.state, runs[1]), runs[1].Removes)
	if id := hasherOf(t, e.key, "meta-ads").ID(w.users[user]); !slices.Contains(removes, id) {
		t.Fatal("the withdrawal is not in the next night's removes")
	}
	out, _, _ := execute(t, "audit", "runs", "--state", e.state)
	if !strings.Contains(out, firstID) {
		t.Errorf("audit runs does not list the healed run:\n%s", out)
	}
	replay(t, e.state, "meta-ads")
	mustVerify(t, e.state)

	t.Run("same-day retry without --as-of", func(t *testing.T) {
		e, _ := worldEnv(t, 200)
		args := slices.DeleteFunc(e.args(), func(s string) bool { return s == "--as-of" || strings.HasPrefix(s, "2026-") })
		if err := run("published", args...); !killedBySIGKILL(err) {
			t.Fatalf("not killed: %v", err)
		}
		if err := run("", args...); err != nil {
			t.Fatal(err)
		}
		dirs, _ := filepath.Glob(filepath.Join(e.out, "meta-ads", "dt=*", "run=*"))
		if n := strings.Count(strings.Join(recordTypes(t, e.state), " "), audit.TypeRunCommitted); len(dirs) != 1 || n != 1 {
			t.Fatalf("%d published runs and %d committed records for one day, want 1 and 1", len(dirs), n)
		}
		mustVerify(t, e.state)
	})
}

// Case 4: a backfill between two nights does not become the base of the
// next night's deltas.
func TestBackfillKeepsWithdrawals(t *testing.T) {
	e, w := worldEnv(t, 200)
	mustRun(t, runAt(e, "2026-11-01T00:00:00Z")...)
	nov1 := lastCommitted(t, e.state)
	user := granted(t, w)
	w.event(user, "withdraw", time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC))
	e.users, e.events = w.write(t, filepath.Join(e.dir, "in"))

	_, stderr, code := execute(t, runAt(e, "2026-10-30T00:00:00Z")...)
	if code != exitUsage || !strings.Contains(stderr, "--backfill") {
		t.Fatalf("an earlier cutoff without --backfill: exit %d, %s", code, stderr)
	}
	mustRun(t, runAt(e, "2026-10-30T00:00:00Z", "--backfill")...)
	bf := lastCommitted(t, e.state)
	if !bf.Backfill || bf.PreviousRunID != "" || len(bf.Adds)+len(bf.Removes) != 0 {
		t.Fatalf("the backfill's record: backfill %v, previous %q, %d delta files", bf.Backfill, bf.PreviousRunID, len(bf.Adds)+len(bf.Removes))
	}
	if _, err := os.Stat(filepath.Join(publishedDir(e.state, bf), "adds")); err == nil {
		t.Error("a backfill published adds")
	}
	if out, _, _ := execute(t, "audit", "runs", "--state", e.state); !strings.Contains(out, "run_committed (backfill)") {
		t.Errorf("audit runs does not mark the backfill:\n%s", out)
	}
	if _, stderr, code := execute(t, runAt(e, "2026-11-03T00:00:00Z", "--backfill")...); code != exitUsage {
		t.Errorf("--backfill for a later cutoff: exit %d, %s", code, stderr)
	}

	mustRun(t, runAt(e, "2026-11-02T00:00:00Z")...)
	nov2 := lastCommitted(t, e.state)
	if nov2.PreviousRunID != nov1.RunID {
		t.Fatalf("11-02's deltas are against %s, want 11-01's %s", nov2.PreviousRunID, nov1.RunID)
	}
	id := hasherOf(t, e.key, "meta-ads").ID(w.users[user])
	if !slices.Contains(readIDs(t, publishedDir(e.state, nov2), nov2.Removes), id) {
		t.Fatal("the user who withdrew on 11-01 is not in 11-02's removes")
	}
	replay(t, e.state, "meta-ads")
	mustVerify(t, e.state)
}

// Case 8: the disk fills up while the checkpoint is signed: the run is
// committed (its record is durable) and is not also recorded as failed;
// the run exits 74, and the next one signs the checkpoint.
func TestDiskFullWhileSigning(t *testing.T) {
	e, w := worldEnv(t, 200)
	adir := statedir.Audit(e.state)
	mountTmpfs(t, adir, "size=16m,nr_inodes=1000")
	mustRun(t, runAt(e, "2026-11-01T00:00:00Z")...)
	// No inode left: appending to the records works, creating the new
	// checkpoint's temporary file fails with ENOSPC.
	var st syscall.Statfs_t
	if err := syscall.Statfs(adir, &st); err != nil {
		t.Fatal(err)
	}
	used := st.Files - st.Ffree
	if out, err := exec.Command("mount", "-o", fmt.Sprintf("remount,nr_inodes=%d", used), adir).CombinedOutput(); err != nil {
		t.Skipf("cannot shrink the tmpfs: %v %s", err, out)
	}
	w.event(granted(t, w), "withdraw", time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC))
	e.users, e.events = w.write(t, filepath.Join(e.dir, "in"))
	_, stderr, code := execute(t, runAt(e, "2026-11-02T00:00:00Z")...)
	if code != exitIOErr {
		t.Fatalf("disk full while signing: exit %d, want %d\n%s", code, exitIOErr, stderr)
	}
	want := []string{audit.TypeRunCommitted, audit.TypeRunCommitted}
	if got := recordTypes(t, e.state); !slices.Equal(got, want) {
		t.Fatalf("records %v, want %v", got, want)
	}
	if out, err := exec.Command("mount", "-o", "remount,nr_inodes=1000", adir).CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	mustRun(t, runAt(e, "2026-11-02T00:00:00Z")...) // signs, then finds the date committed
	if got := recordTypes(t, e.state); !slices.Equal(got, want) {
		t.Fatalf("records after recovery %v, want %v", got, want)
	}
	mustVerify(t, e.state)
}

// A read-only delivery root is the machine's state, not a bug: exit 74,
// nothing published, the failure recorded.
func TestReadOnlyOutput(t *testing.T) {
	e, _ := worldEnv(t, 50)
	mountTmpfs(t, e.out, "size=1m,ro")
	_, stderr, code := execute(t, runAt(e, "2026-11-01T00:00:00Z")...)
	if code != exitIOErr || !strings.Contains(stderr, "read-only") {
		t.Fatalf("read-only OUT: exit %d, want %d\n%s", code, exitIOErr, stderr)
	}
	if got := recordTypes(t, e.state); !slices.Equal(got, []string{audit.TypeRunFailed}) {
		t.Fatalf("records %v", got)
	}
}

// Case 10: a mistyped cutoff, an empty input or a collapse of the audience
// publishes nothing, unless the operator allows the drop, which is recorded.
func TestDropGuard(t *testing.T) {
	e, w := worldEnv(t, 200)
	mustRun(t, runAt(e, "2026-11-01T00:00:00Z")...)
	before := e.published(t)

	_, stderr, code := execute(t, runAt(e, "2030-01-01T00:00:00Z")...)
	if code != exitUsage || !strings.Contains(stderr, "in the future") {
		t.Errorf("a future cutoff: exit %d, %s", code, stderr)
	}

	full := e.users
	e.users = writeFile(t, filepath.Join(e.dir, "in", "empty.csv"), "user_id,phone,country\n", 0o644)
	_, stderr, code = execute(t, runAt(e, "2026-11-02T00:00:00Z")...)
	if code != exitData || !strings.Contains(stderr, "drop guard") || !strings.Contains(stderr, "0 user rows") {
		t.Errorf("a header-only users file: exit %d, %s", code, stderr)
	}
	e.users = full

	// A third of the audience withdraws at once.
	for i, id := range w.userIDs() {
		if i%3 == 0 {
			w.event(id, "withdraw", time.Date(2026, 11, 2, 12, 0, 0, 0, time.UTC))
		}
	}
	e.users, e.events = w.write(t, filepath.Join(e.dir, "in"))
	_, stderr, code = execute(t, runAt(e, "2026-11-03T00:00:00Z")...)
	if code != exitData || !strings.Contains(stderr, "max_drop_percent of 20.0%") {
		t.Errorf("a third withdrawn: exit %d, %s", code, stderr)
	}
	if got := e.published(t); !slices.Equal(got, before) {
		t.Fatalf("the guard published: %d files, %d before", len(got), len(before))
	}
	if runs, _ := chain(t, e.state, "meta-ads"); len(runs) != 1 {
		t.Fatalf("%d runs committed", len(runs))
	}

	mustRun(t, runAt(e, "2026-11-03T00:00:00Z", "--allow-drop")...)
	if rec := lastCommitted(t, e.state); !rec.AllowDrop || rowsOf(rec.Removes) == 0 {
		t.Errorf("the allowed drop: allow_drop %v, %d removes", rec.AllowDrop, rowsOf(rec.Removes))
	}
	if out, _, _ := execute(t, "audit", "runs", "--state", e.state); !strings.Contains(out, "(allow_drop)") {
		t.Errorf("audit runs does not mark the allowed drop:\n%s", out)
	}
	replay(t, e.state, "meta-ads")
	mustVerify(t, e.state)
}

func rowsOf(files []audit.File) (n int64) {
	for _, f := range files {
		n += f.Rows
	}
	return n
}

// A registry with a second YAML document is refused, not half read.
func TestRegistryWithTwoDocuments(t *testing.T) {
	e := newEnv(t, vectorUsers, vectorEvents)
	p := filepath.Join(e.state, "destinations.yaml")
	b, _ := os.ReadFile(p)
	writeFile(t, p, string(b)+"---\nversion: audiencematch.destinations/v2\ndestinations: []\n", 0o644)
	_, stderr, code := execute(t, e.args()...)
	if code != exitConfig || !strings.Contains(stderr, "more than one YAML document") {
		t.Fatalf("exit %d, %s", code, stderr)
	}
}

// A FIFO as --users (bash's <(zcat users.csv.gz)) is read whole; a Parquet
// stream from one is refused clearly.
func TestInputFromPipe(t *testing.T) {
	e := newEnv(t, vectorUsers, vectorEvents)
	fifo := filepath.Join(e.dir, "users.fifo")
	feed := func(content string) {
		os.Remove(fifo)
		if err := syscall.Mkfifo(fifo, 0o600); err != nil {
			t.Skipf("mkfifo: %v", err)
		}
		go func() {
			f, err := os.OpenFile(fifo, os.O_WRONLY, 0)
			if err == nil {
				f.WriteString(content)
				f.Close()
			}
		}()
	}
	feed(vectorUsers)
	e.users = fifo
	out, stderr, code := execute(t, e.args()...)
	if code != 0 || !strings.Contains(out, "published 4 identifiers") || !strings.Contains(out, "users 4 =") {
		t.Fatalf("users from a FIFO: exit %d\n%s%s", code, out, stderr)
	}
	feed("PAR1 and what follows")
	_, stderr, code = execute(t, runAt(e, "2026-11-02T00:00:00Z")...)
	if code != exitNoInput || !strings.Contains(stderr, "write it to a file") {
		t.Fatalf("Parquet from a FIFO: exit %d, %s", code, stderr)
	}
}
