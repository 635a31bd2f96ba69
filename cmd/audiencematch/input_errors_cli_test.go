package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"

	"audiencematch/consent/audit"
	"audiencematch/pipeline/statedir"
)

// runBinary runs the built binary and returns stdout, stderr and the exit code.
func runBinary(t *testing.T, bin string, args ...string) (string, string, int) {
	t.Helper()
	var out, errb bytes.Buffer
	c := exec.Command(bin, args...)
	c.Stdout, c.Stderr = &out, &errb
	err := c.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return out.String(), errb.String(), 0
	case errors.As(err, &ee):
		return out.String(), errb.String(), ee.ExitCode()
	}
	t.Fatalf("%s: %v", bin, err)
	return "", "", 0
}

// leakyUsers is a users file as it should have been, had it a header: its
// user ids and phones (and the phones' digits) must never appear in an
// error, a log line or the audit log.
const leakyUsers = "acct-zbh251,+91 74107 39683,US\nacct-q7k2m9,(650) 253-0000,US\nacct-x4p8w1,+44 7400 123456,GB\n"

var leakyValues = []string{"acct-zbh251", "acct-q7k2m9", "acct-x4p8w1", "74107", "7410739683", "253-0000", "6502530000", "7400 123456", "7400123456"}

// noPersonalData fails when text holds any of the users file's values.
func noPersonalData(t *testing.T, what, text string) {
	t.Helper()
	for _, v := range leakyValues {
		if strings.Contains(text, v) {
			t.Errorf("%s holds the input's %q:\n%s", what, v, text)
		}
	}
}

func zstdBytes(t *testing.T, b []byte) []byte {
	t.Helper()
	enc, err := zstd.NewWriter(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer enc.Close()
	return enc.EncodeAll(b, nil)
}

// TestBadUsersFileThenNormalRun, through the binary: a users file with a
// header that is not UTF-8, an xz-compressed CSV and a CSV without its
// header row each fail with exit 78 and a message that says what to fix and
// holds nothing of the file (stderr, logs included, and the audit log); and
// the next run with the right file succeeds, audit verify passes and audit
// runs lists both.
func TestBadUsersFileThenNormalRun(t *testing.T) {
	bin := buildBinary(t)
	cases := []struct {
		name  string
		users []byte
		want  string
	}{
		{"header not UTF-8", []byte("user_id,ph\xffone\xfe,country\n" + leakyUsers), "the header row (line 1) is not valid UTF-8"},
		{"xz-compressed CSV", append([]byte("\xfd7zXZ\x00\x00\x04"), leakyUsers...), "the file is xz-compressed, not CSV text"},
		{"no header row", []byte(leakyUsers), "missing column(s) user_id, phone, country"},
		{"not UTF-8, no header row", []byte("acct-zbh251\xe9,+91 74107 39683,US\n" + leakyUsers), "not valid UTF-8"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t, "", vectorEvents)
			if err := os.WriteFile(e.users, c.users, 0o644); err != nil {
				t.Fatal(err)
			}
			out, stderr, code := runBinary(t, bin, e.args()...)
			if code != exitConfig || !strings.Contains(stderr, c.want) {
				t.Fatalf("exit %d, want %d with %q:\n%s", code, exitConfig, c.want, stderr)
			}
			noPersonalData(t, "stderr", stderr)
			noPersonalData(t, "stdout", out)
			records, err := os.ReadFile(filepath.Join(statedir.Audit(e.state), audit.RecordsFile))
			if err != nil {
				t.Fatal(err)
			}
			noPersonalData(t, "the audit log", string(records))
			if !strings.Contains(string(records), `"type":"run_failed"`) {
				t.Fatalf("no run_failed record:\n%s", records)
			}

			writeFile(t, e.users, vectorUsers, 0o644)
			if _, stderr, code := runBinary(t, bin, e.args()...); code != 0 {
				t.Fatalf("the next run: exit %d:\n%s", code, stderr)
			}
			if out, stderr, code := runBinary(t, bin, "audit", "verify", "--state", e.state); code != 0 || !strings.Contains(out, "ok: 2 records, 1 committed") {
				t.Fatalf("audit verify: exit %d:\n%s%s", code, out, stderr)
			}
			out, stderr, code = runBinary(t, bin, "audit", "runs", "--state", e.state)
			if code != 0 || !strings.Contains(out, "run_failed") || !strings.Contains(out, "run_committed") || strings.Contains(out, audit.TypeUnreadable) {
				t.Fatalf("audit runs: exit %d:\n%s%s", code, out, stderr)
			}
			noPersonalData(t, "audit runs", out)
		})
	}
}

// TestHeaderlessUsersStayPrivate: the case 7, in process: the first
// line of a users file without a header is a user id and a phone, and
// neither reaches the error, stderr (the JSON log included) or the audit log.
func TestHeaderlessUsersStayPrivate(t *testing.T) {
	e := newEnv(t, leakyUsers, vectorEvents)
	out, stderr, code := execute(t, e.args()...)
	if code != exitConfig || !strings.Contains(stderr, "without a header row?") {
		t.Fatalf("exit %d:\n%s", code, stderr)
	}
	noPersonalData(t, "stderr", stderr)
	noPersonalData(t, "stdout", out)
	records, _ := os.ReadFile(filepath.Join(statedir.Audit(e.state), audit.RecordsFile))
	noPersonalData(t, "the audit log", string(records))
	l, err := audit.Open(statedir.Audit(e.state))
	if err != nil || len(l.Records()) != 1 || l.Records()[0].Type != audit.TypeRunFailed {
		t.Fatalf("audit log: %v %+v", err, l)
	}
}

// TestUnreadableRecordDoesNotStopRuns, through the binary: a non-canonical
// line in the log (what an earlier version wrote for a reason with invalid
// UTF-8) does not stop the next run from recording; audit verify fails
// naming it, and audit runs lists the other records and marks it.
func TestUnreadableRecordDoesNotStopRuns(t *testing.T) {
	bin := buildBinary(t)
	e := newEnv(t, vectorUsers, vectorEvents)
	if _, stderr, code := runBinary(t, bin, e.args()...); code != 0 {
		t.Fatal(stderr)
	}
	bad, err := json.Marshal(&audit.Record{Version: audit.RecordVersion, Type: audit.TypeRunFailed,
		Time: time.Date(2026, 11, 1, 1, 0, 0, 0, time.UTC).Format(time.RFC3339Nano), ToolVersion: "0.0.9",
		Destination: "meta-ads", Reason: "users: the header has (\xb5/\xfd"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := audit.ParseRecord(bad); err == nil {
		t.Fatal("the planted line is readable")
	}
	f, err := os.OpenFile(filepath.Join(statedir.Audit(e.state), audit.RecordsFile), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Write(append(bad, '\n'))
	f.Close()

	// The writer goes on: the next night's run signs the line in and
	// records itself after it.
	if _, stderr, code := runBinary(t, bin, append(e.args(), "--as-of", "2026-11-02T00:00:00Z")...); code != 0 {
		t.Fatalf("run after the planted line: exit %d:\n%s", code, stderr)
	}
	l, err := audit.Open(statedir.Audit(e.state))
	if err != nil || l.Size() != 3 || len(l.Unreadable()) != 1 || l.Unreadable()[0] != 1 || l.Records()[2].Type != audit.TypeRunCommitted {
		t.Fatalf("log after the run: %v, %+v", err, l)
	}

	out, stderr, code := runBinary(t, bin, "audit", "verify", "--state", e.state)
	if code != exitData || !strings.Contains(stderr, "record 1 (line 2) cannot be read") {
		t.Errorf("audit verify: exit %d, want %d naming record 1:\n%s%s", code, exitData, out, stderr)
	}
	out, stderr, code = runBinary(t, bin, "audit", "runs", "--state", e.state)
	if code != 0 || strings.Count(out, "run_committed") != 2 || strings.Count(out, audit.TypeUnreadable) != 1 || !strings.Contains(stderr, "record 1") {
		t.Errorf("audit runs: exit %d:\n%s%s", code, out, stderr)
	}
	out, _, code = runBinary(t, bin, "audit", "runs", "--state", e.state, "--json")
	var recs []audit.Record
	if err := json.Unmarshal([]byte(out), &recs); err != nil || code != 0 || len(recs) != 3 || recs[1].Type != audit.TypeUnreadable ||
		recs[2].PreviousRunID != recs[0].RunID {
		t.Errorf("audit runs --json: exit %d, %v, %+v", code, err, recs)
	}
}

// withUsers is args with --users replaced by users.
func withUsers(args []string, users string) []string {
	out := slices.Clone(args)
	out[slices.Index(out, "--users")+1] = users
	return out
}

// TestPartitionedInputsCLI, through the binary: a zstd-compressed users
// file and the same file on standard input publish the same run as the
// plain file; a glob that matches nothing exits 66 and a directory holding
// a part of another format 65, each naming the problem.
func TestPartitionedInputsCLI(t *testing.T) {
	bin := buildBinary(t)
	plain := newEnv(t, vectorUsers, vectorEvents)
	out, stderr, code := runBinary(t, bin, plain.args()...)
	if code != 0 {
		t.Fatalf("plain: exit %d %s", code, stderr)
	}
	runID := func(out string) string {
		_, rest, _ := strings.Cut(out, "run=")
		id, _, _ := strings.Cut(rest, "\n")
		return strings.TrimSpace(id)
	}
	want := runID(out)
	if want == "" {
		t.Fatalf("no run id in %q", out)
	}

	z := newEnv(t, vectorUsers, vectorEvents)
	zst := filepath.Join(z.dir, "in", "users.csv.zst")
	os.WriteFile(zst, zstdBytes(t, []byte(vectorUsers)), 0o644)
	if out, stderr, code := runBinary(t, bin, withUsers(z.args(), zst)...); code != 0 || runID(out) != want {
		t.Fatalf("zstd: exit %d, run %q (want %q) %s", code, runID(out), want, stderr)
	}

	s := newEnv(t, vectorUsers, vectorEvents)
	c := exec.Command(bin, withUsers(s.args(), "-")...)
	c.Stdin = strings.NewReader(vectorUsers)
	b, err := c.Output()
	if err != nil || runID(string(b)) != want {
		t.Fatalf("standard input: %v, run %q, want %q", err, runID(string(b)), want)
	}

	g := newEnv(t, vectorUsers, vectorEvents)
	if _, stderr, code := runBinary(t, bin, withUsers(g.args(), filepath.Join(g.dir, "in", "nothing-*.csv"))...); code != 66 || !strings.Contains(stderr, "matches no file") {
		t.Fatalf("empty glob: exit %d %s", code, stderr)
	}
	d := newEnv(t, vectorUsers, vectorEvents)
	parts := filepath.Join(d.dir, "in", "users")
	writeFile(t, filepath.Join(parts, "part-0.csv"), vectorUsers, 0o644)
	writeFile(t, filepath.Join(parts, "part-1.parquet.json"), "PAR1 but not really", 0o644)
	if _, stderr, code := runBinary(t, bin, withUsers(d.args(), parts)...); code != 65 || !strings.Contains(stderr, "part-1.parquet.json") {
		t.Fatalf("a part of another format: exit %d %s", code, stderr)
	}
}
