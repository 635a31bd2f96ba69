package main

import (
	"bytes"
	"context"
	"encoding/hex"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"runtime/debug"
	"slices"
	"strings"
	"testing"

	"github.com/gofrs/flock"
	"github.com/parquet-go/parquet-go"

	"audiencematch/consent/audit"
	"audiencematch/fixtures"
	"audiencematch/pipeline"
	"audiencematch/pipeline/errkind"
	"audiencematch/pipeline/idfile"
	"audiencematch/pipeline/statedir"
)

// execute runs the CLI in-process and returns stdout, stderr and the exit code.
func execute(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	var out, errb bytes.Buffer
	root := newRootCommand(&out, &errb)
	root.SetArgs(args)
	err := root.ExecuteContext(context.Background())
	printError(&errb, err)
	return out.String(), errb.String(), exitCode(err)
}

func writeFile(t *testing.T, path, content string, mode os.FileMode) string {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
	return path
}

// vectorKey is MATCHING.md's known-answer key, 0x00..0x1f.
var vectorKey = hex.EncodeToString([]byte("\x00\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c\x0d\x0e\x0f\x10\x11\x12\x13\x14\x15\x16\x17\x18\x19\x1a\x1b\x1c\x1d\x1e\x1f"))

const vectorUsers = `user_id,phone,country
u1,(650)555-1212,US
u2,1 (234) 567-8901,US
u3,06 1234 5678,IT
u4,+16502531234,
`

const vectorEvents = `event_id,user_id,purpose,action,occurred_at,policy_version,source
e1,u1,ads_matching,grant,2026-10-01T00:00:00Z,3,app_settings
e2,u2,ads_matching,grant,2026-10-01T00:00:00Z,3,app_settings
e3,u3,ads_matching,grant,2026-10-01T00:00:00Z,3,app_settings
e4,u4,ads_matching,grant,2026-10-01T00:00:00Z,3,app_settings
`

type env struct {
	dir, users, events, key, out, state string
}

func newEnv(t *testing.T, users, events string) env {
	t.Helper()
	d := t.TempDir()
	e := env{
		dir:    d,
		users:  writeFile(t, filepath.Join(d, "in", "users.csv"), users, 0o644),
		events: writeFile(t, filepath.Join(d, "in", "consent_events.csv"), events, 0o644),
		key:    writeFile(t, filepath.Join(d, "in", "master.key"), vectorKey+"\n", 0o600),
		out:    filepath.Join(d, "out"),
		state:  filepath.Join(d, "state"),
	}
	if _, stderr, code := execute(t, "keys", "init", "--state", e.state); code != 0 {
		t.Fatalf("keys init: %s", stderr)
	}
	e.writeRegistry(t, "hmac-sha256")
	return e
}

// writeRegistry registers meta-ads (the parent platform, with scheme) and
// three destinations every run must refuse.
func (e env) writeRegistry(t *testing.T, scheme string) {
	t.Helper()
	unkeyed := scheme != "hmac-sha256"
	writeFile(t, filepath.Join(e.state, "destinations.yaml"), fmt.Sprintf(`version: audiencematch.destinations/v2
destinations:
  - id: meta-ads
    name: Parent Ads
    organization: Parent Co
    relationship: parent
    purposes: [ads_matching]
    consent:
      ads_matching: {min_policy_version: 1, max_consent_age: none}
    lawful_basis: consent, GDPR Art. 6(1)(a)
    scheme: %s
    allow_unkeyed: %v
    delivery: %s
    retention_days: 90
  - id: google-cm
    name: Google Customer Match
    organization: Google LLC
    relationship: third_party
    purposes: [ads_matching]
    consent:
      ads_matching: {min_policy_version: 1, max_consent_age: none}
    lawful_basis: consent
    scheme: sha256-e164
    allow_unkeyed: true
    delivery: %s
    retention_days: 30
  - id: mailer
    name: Mailer
    organization: Parent Co
    relationship: affiliate
    purposes: [marketing_email]
    consent:
      marketing_email: {min_policy_version: 1, max_consent_age: none}
    lawful_basis: consent
    scheme: hmac-sha256
    delivery: %s
    retention_days: 7
  - id: uid2-op
    name: UID2
    organization: Parent Co
    relationship: affiliate
    purposes: [ads_matching]
    consent:
      ads_matching: {min_policy_version: 1, max_consent_age: none}
    lawful_basis: consent
    scheme: uid2
    allow_unkeyed: false
    delivery: %s
    retention_days: 7
`, scheme, unkeyed, e.out, e.out, e.out, e.out), 0o644)
}

func (e env) args(extra ...string) []string {
	return append([]string{"run", "--users", e.users, "--consent", e.events, "--key", e.key,
		"--destination", "meta-ads", "--out", e.out, "--state", e.state,
		"--as-of", "2026-11-01T00:00:00Z", "--log-format", "json", "--summary"}, extra...)
}

// published lists what is visible under OUT.
func (e env) published(t *testing.T) []string {
	t.Helper()
	var files []string
	filepath.WalkDir(e.out, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			files = append(files, p)
		}
		return nil
	})
	return files
}

func TestRunVectorsEveryScheme(t *testing.T) {
	// MATCHING.md's vectors, end to end: each scheme's id for the number of
	// its vector must be among the published identifiers.
	want := map[string]string{
		"sha256-digits": "e323ec626319ca94ee8bff2e4c87cf613be6ea19919ed1364124e16807ab3176",
		"uid2":          "EObwtHBUqDNZR33LNSMdtt5cafsYFuGmuY4ZLenlue4=",
		"sha256-e164":   "37b702607839d6dc5fc81d95b52e550e336413bf7ae2e04cafeca79f066ea44b",
		"hmac-sha256":   "db79e068b5e2c928a322ce878e419ac120baabb152a69a17ab3a29f04d340ec5",
	}
	for scheme, id := range want {
		t.Run(scheme, func(t *testing.T) {
			e := newEnv(t, vectorUsers, vectorEvents)
			e.writeRegistry(t, scheme)
			out, stderr, code := execute(t, e.args("--scheme", scheme, "--allow-unkeyed")...)
			if code != 0 {
				t.Fatalf("exit %d: %s", code, stderr)
			}
			if !strings.Contains(out, "published 4 identifiers") {
				t.Fatalf("stdout: %s", out)
			}
			found := false
			for _, f := range e.published(t) {
				if !strings.HasSuffix(f, "part-00000.parquet") {
					continue
				}
				if scheme == "hmac-sha256" {
					rows, err := parquet.ReadFile[idfile.BinaryIDRow](f)
					if err != nil {
						t.Fatal(err)
					}
					for _, r := range rows {
						found = found || hex.EncodeToString(r.ID[:]) == id
					}
				} else {
					rows, err := parquet.ReadFile[idfile.TextIDRow](f)
					if err != nil {
						t.Fatal(err)
					}
					for _, r := range rows {
						found = found || r.ID == id
					}
				}
			}
			if !found {
				t.Errorf("the published part does not hold the vector's id %s", id)
			}
			if scheme != "hmac-sha256" && !strings.Contains(stderr, "unkeyed scheme") {
				t.Errorf("no warning for unkeyed scheme: %s", stderr)
			}
		})
	}
}

func TestRunBadInput(t *testing.T) {
	cases := []struct {
		name   string
		setup  func(t *testing.T, e *env) []string
		code   int
		reason string
	}{
		{"missing column", func(t *testing.T, e *env) []string {
			writeFile(t, e.users, "user_id,msisdn,country\nu1,1,US\n", 0o644)
			return e.args()
		}, exitConfig, "missing column(s) phone"},
		{"users file missing", func(t *testing.T, e *env) []string {
			os.Remove(e.users)
			return e.args()
		}, exitNoInput, "no such file"},
		{"consent file unreadable", func(t *testing.T, e *env) []string {
			if os.Geteuid() == 0 {
				// root reads anything; a directory is unreadable as a table.
				os.Remove(e.events)
				os.Mkdir(e.events, 0o755)
			} else {
				os.Chmod(e.events, 0)
			}
			return e.args()
		}, exitNoInput, "consent"},
		{"unknown scheme", func(t *testing.T, e *env) []string { return e.args("--scheme", "md5") }, exitUsage, "unknown scheme"},
		{"unkeyed without opt-in", func(t *testing.T, e *env) []string {
			e.writeRegistry(t, "sha256-e164")
			return e.args()
		}, exitUsage, "--allow-unkeyed"},
		{"scheme conflicts with registry", func(t *testing.T, e *env) []string { return e.args("--scheme", "uid2", "--allow-unkeyed") }, exitUsage, "conflicts with the registry"},
		{"out conflicts with registry", func(t *testing.T, e *env) []string {
			a := e.args()
			for i := range a {
				if a[i] == "--out" {
					a[i+1] = e.out + "-elsewhere"
				}
			}
			return a
		}, exitUsage, "conflicts with the registry's delivery"},
		{"no registry", func(t *testing.T, e *env) []string {
			os.Remove(filepath.Join(e.state, "destinations.yaml"))
			return e.args()
		}, exitConfig, "no destination registry"},
		{"key readable by group", func(t *testing.T, e *env) []string {
			os.Chmod(e.key, 0o640)
			return e.args()
		}, exitConfig, "chmod 600"},
		{"key too short", func(t *testing.T, e *env) []string {
			writeFile(t, e.key, strings.Repeat("ab", 16), 0o600)
			return e.args()
		}, exitConfig, "shorter than 32 bytes"},
		{"no key at all", func(t *testing.T, e *env) []string {
			os.Remove(filepath.Join(e.state, "keys", "master.key"))
			a := e.args()
			for i := range a {
				if a[i] == "--key" {
					return append(a[:i], a[i+2:]...)
				}
			}
			return a
		}, exitConfig, "AUDIENCEMATCH_MASTER_KEY"},
		{"bad as-of", func(t *testing.T, e *env) []string { return e.args("--as-of", "yesterday") }, exitUsage, "RFC 3339"},
		{"pretouch too large", func(t *testing.T, e *env) []string { return e.args("--pretouch-mib", "100000") }, exitUsage, "--pretouch-mib 100000 is not between 0 and 4096"},
		{"pretouch negative", func(t *testing.T, e *env) []string { return e.args("--pretouch-mib", "-2") }, exitUsage, "want a whole number of MiB, or auto"},
		{"memory limit negative", func(t *testing.T, e *env) []string { return e.args("--memory-limit-mib", "-1") }, exitUsage, "--memory-limit-mib -1 is negative or too large"},
		{"bad max age", func(t *testing.T, e *env) []string { return e.args("--max-consent-age", "a year") }, exitUsage, "395d"},
		{"bad destination", func(t *testing.T, e *env) []string { return e.args("--destination", "../etc") }, exitUsage, "destination"},
		{"unknown flag", func(t *testing.T, e *env) []string { return e.args("--colour") }, exitUsage, "unknown flag"},
		{"reject rate exceeded", func(t *testing.T, e *env) []string {
			writeFile(t, e.events, vectorEvents+"e5,u1,ads_matching,revoke,2026-10-01T00:00:00Z,3,x\n", 0o644)
			return e.args()
		}, exitData, "max-reject-rate"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Setenv("AUDIENCEMATCH_MASTER_KEY", "")
			os.Unsetenv("AUDIENCEMATCH_MASTER_KEY")
			e := newEnv(t, vectorUsers, vectorEvents)
			_, stderr, code := execute(t, c.setup(t, &e)...)
			if code != c.code || !strings.Contains(stderr, c.reason) {
				t.Errorf("exit %d, stderr %q; want exit %d mentioning %q", code, stderr, c.code, c.reason)
			}
			if p := e.published(t); len(p) != 0 {
				t.Errorf("published %v after a failure", p)
			}
			if ents, _ := os.ReadDir(filepath.Join(e.state, "staging")); len(ents) != 0 {
				t.Errorf("staging left behind: %v", ents)
			}
		})
	}
}

func TestRefusals(t *testing.T) {
	cases := []struct{ dest, purpose, why string }{
		{"tiktok", "ads_matching", "not in the registry"},
		{"google-cm", "ads_matching", "third party"},
		{"mailer", "ads_matching", "not \"ads_matching\""},
		{"uid2-op", "ads_matching", "without allow_unkeyed"},
	}
	for _, c := range cases {
		t.Run(c.dest, func(t *testing.T) {
			e := newEnv(t, vectorUsers, vectorEvents)
			os.Remove(e.users) // refused before any user data is read
			a := e.args("--purpose", c.purpose)
			for i := range a {
				if a[i] == "--destination" {
					a[i+1] = c.dest
				}
			}
			_, stderr, code := execute(t, a...)
			// The failure's one report is the JSON log line.
			if code != exitRefused || !strings.Contains(strings.ReplaceAll(stderr, `\"`, `"`), c.why) {
				t.Fatalf("exit %d, %s; want %d mentioning %q", code, stderr, exitRefused, c.why)
			}
			if p := e.published(t); len(p) != 0 {
				t.Errorf("published %v", p)
			}
			l, err := audit.Open(statedir.Audit(e.state))
			if err != nil || l.Size() != 1 || l.Records()[0].Type != audit.TypeDestinationRefused || !strings.Contains(l.Records()[0].Reason, c.why) {
				t.Fatalf("audit log: %v %+v", err, l.Records())
			}
			if out, stderr, code := execute(t, "audit", "verify", "--state", e.state); code != 0 {
				t.Fatalf("audit verify after a refusal: %s %s", out, stderr)
			}
		})
	}
}

func TestDestinationsCommands(t *testing.T) {
	e := newEnv(t, vectorUsers, vectorEvents)
	out, stderr, code := execute(t, "destinations", "check", "--state", e.state)
	if code != 0 || !strings.Contains(out, "ok: 4 destinations") || !strings.Contains(stderr, "google-cm: a third party") {
		t.Errorf("check: %d %s %s", code, out, stderr)
	}
	out, _, code = execute(t, "destinations", "list", "--state", e.state)
	if code != 0 || !strings.Contains(out, "Google LLC") || !strings.Contains(out, "third_party") {
		t.Errorf("list: %d %s", code, out)
	}
	writeFile(t, filepath.Join(e.state, "destinations.yaml"), "version: audiencematch.destinations/v2\ndestinations:\n  - id: x\n    relationship: friend\n", 0o644)
	if _, stderr, code := execute(t, "destinations", "check", "--state", e.state); code != exitConfig || !strings.Contains(stderr, "relationship \"friend\"") || !strings.Contains(stderr, "retention_days") {
		t.Errorf("bad registry: %d %s", code, stderr)
	}
}

func TestRejectsKeptWithLineNumbers(t *testing.T) {
	users := vectorUsers + "u5,\"+1 650 555 1213,US\n,+16505551214,US\n"
	events := vectorEvents + "e6,u1,ads_matching,revoke,2026-10-01T00:00:00Z,3,x\n" +
		"e7,u1,ads_matching,grant,2026-10-01 00:00:00,3,x\n" +
		"e8,u1,ads_matching,grant,2026-10-01T00:00:00Z,three,x\n"
	e := newEnv(t, users, events)
	out, stderr, code := execute(t, e.args("--max-reject-rate", "0.5")...)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	if !strings.Contains(out, "malformed_row 2") || !strings.Contains(out, "malformed 3") {
		t.Errorf("summary does not count the rejects: %s", out)
	}
	m := regexp.MustCompile(`rejects: (\S+)`).FindStringSubmatch(out)
	rej, err := os.ReadFile(m[1])
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"users,6,broken_csv_quoting", "users,7,empty_user_id", "consent_events,6,unknown_action",
		"consent_events,7,bad_timestamp", "consent_events,8,non_integer_policy_version"} {
		if !strings.Contains(string(rej), want) {
			t.Errorf("rejects file lacks %q:\n%s", want, rej)
		}
	}
	if st, _ := os.Stat(m[1]); st.Mode().Perm() != 0o600 {
		t.Errorf("rejects file mode %v, want 0600", st.Mode().Perm())
	}
}

func TestRerunIsNoop(t *testing.T) {
	e := newEnv(t, vectorUsers, vectorEvents)
	if _, stderr, code := execute(t, e.args()...); code != 0 {
		t.Fatal(stderr)
	}
	before := e.published(t)
	// Same destination and date: a no-op that says so, without reading the
	// inputs (gone now).
	os.Remove(e.users)
	_, stderr, code := execute(t, e.args()...)
	if code != 0 || !strings.Contains(stderr, "already committed for this destination and date") {
		t.Fatalf("rerun: exit %d, %q", code, stderr)
	}
	// --force with the same inputs: the same run, recognised, not rewritten.
	writeFile(t, e.users, vectorUsers, 0o644)
	if _, stderr, code := execute(t, e.args("--force")...); code != 0 || !strings.Contains(stderr, "already published") {
		t.Fatalf("forced rerun: exit %d, %q", code, stderr)
	}
	if after := e.published(t); strings.Join(after, ",") != strings.Join(before, ",") {
		t.Errorf("rerun changed OUT: %v -> %v", before, after)
	}
	// --force with changed inputs: a second run for the day, with deltas
	// against the first, which the platform holds.
	writeFile(t, e.users, vectorUsers+"u9,+16505551299,US\n", 0o644)
	if out, stderr, code := execute(t, e.args("--force")...); code != 0 || !strings.Contains(out, "published 4 identifiers") || !strings.Contains(out, "adds 0, removes 0") {
		t.Fatalf("forced run with new inputs: exit %d, %q %q", code, out, stderr)
	}
	// Both runs' files (the second's with adds and removes) and one _LATEST.
	if after := e.published(t); len(after) != 2*len(before)+1 {
		t.Errorf("after a forced run with new inputs OUT holds %v", after)
	}
}

func TestRunLock(t *testing.T) {
	e := newEnv(t, vectorUsers, vectorEvents)
	os.MkdirAll(e.state, 0o700)
	holder := flock.New(filepath.Join(e.state, pipeline.LockFile))
	if ok, err := holder.TryLock(); !ok || err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(e.state, pipeline.LockFile), []byte("pid=4242 started=2026-11-24T02:00:00Z\n"), 0o600)
	_, stderr, code := execute(t, e.args()...)
	if code != exitTempFail || !strings.Contains(stderr, "pid=4242") || !strings.Contains(stderr, "started=2026-11-24T02:00:00Z") {
		t.Errorf("second run: exit %d, %s", code, stderr)
	}
	if len(e.published(t)) != 0 {
		t.Error("a run published without the lock")
	}
	holder.Unlock()
	if _, stderr, code := execute(t, e.args()...); code != 0 {
		t.Fatalf("after the lock is released: exit %d %s", code, stderr)
	}
}

func TestMetricsFile(t *testing.T) {
	e := newEnv(t, vectorUsers, vectorEvents)
	mf := filepath.Join(e.dir, "audiencematch.prom")
	if _, stderr, code := execute(t, e.args("--metrics-file", mf)...); code != 0 {
		t.Fatal(stderr)
	}
	b, _ := os.ReadFile(mf)
	for _, want := range []string{
		`audiencematch_last_run_success{destination="meta-ads"} 1`,
		`audiencematch_rows_exported{destination="meta-ads"} 4`,
		`audiencematch_rows_read{destination="meta-ads",table="users"} 4`,
		`audiencematch_rows_excluded{destination="meta-ads",reason="no_consent"} 0`,
		`audiencematch_stage_duration_seconds{destination="meta-ads",stage="users"}`,
		"# TYPE audiencematch_last_success_timestamp_seconds gauge",
	} {
		if !strings.Contains(string(b), want) {
			t.Errorf("metrics lack %q:\n%s", want, b)
		}
	}
	success := previousGauge(mf, "audiencematch_last_success_timestamp_seconds", "meta-ads")
	// A failed run keeps the last success time.
	os.Remove(e.events)
	if _, _, code := execute(t, e.args("--metrics-file", mf, "--force")...); code != exitNoInput {
		t.Fatalf("exit %d", code)
	}
	b, _ = os.ReadFile(mf)
	if !strings.Contains(string(b), `audiencematch_last_run_success{destination="meta-ads"} 0`) ||
		!strings.Contains(string(b), `audiencematch_last_run_exit_code{destination="meta-ads"} 66`) ||
		previousGauge(mf, "audiencematch_last_success_timestamp_seconds", "meta-ads") != success || success == 0 {
		t.Errorf("after a failure:\n%s", b)
	}
}

func TestConfigFile(t *testing.T) {
	e := newEnv(t, vectorUsers, vectorEvents)
	cfg := writeFile(t, filepath.Join(e.dir, "am.yaml"), strings.Join([]string{
		"users: " + e.users, "consent: " + e.events, "key: " + e.key, "destination: meta-ads",
		"out: " + e.out, "state: " + e.state, "as-of: 2026-11-01T00:00:00Z", "min-policy-version: 9",
	}, "\n"), 0o600)
	// The file's min-policy-version 9 excludes everyone; the flag wins.
	out, stderr, code := execute(t, "run", "--config", cfg, "--min-policy-version", "3", "--summary")
	if code != 0 || !strings.Contains(out, "published 4 identifiers") {
		t.Fatalf("exit %d: %s %s", code, out, stderr)
	}
	bad := writeFile(t, filepath.Join(e.dir, "bad.yaml"), "usres: x\n", 0o600)
	if _, stderr, code := execute(t, "run", "--config", bad); code != exitConfig || !strings.Contains(stderr, `unknown key "usres"`) {
		t.Errorf("typo in config: exit %d %s", code, stderr)
	}
}

func TestHelpExplains(t *testing.T) {
	for _, args := range [][]string{{"--help"}, {"run", "--help"}, {"fixtures", "--help"}, {"keys", "init", "--help"},
		{"audit", "verify", "--help"}, {"audit", "runs", "--help"}, {"audit", "subject", "--help"}, {"destinations", "--help"},
		{"destinations", "check", "--help"}} {
		out, _, code := execute(t, args...)
		if code != 0 || !strings.Contains(out, "Usage:") || len(out) < 300 {
			t.Errorf("%v: exit %d\n%s", args, code, out)
		}
	}
	for _, args := range [][]string{{"--help"}, {"run", "--help"}} {
		if out, _, _ := execute(t, args...); !strings.Contains(out, "Exit codes") || !strings.Contains(out, "77") {
			t.Errorf("%v does not list the exit codes", args)
		}
	}
}

// TestNoPersonalDataInLogs runs on fixtures at debug level and checks that
// no phone number or user id from the inputs reaches stdout or stderr.
func TestNoPersonalDataInLogs(t *testing.T) {
	d := t.TempDir()
	if _, stderr, code := execute(t, "fixtures", "--users", "2000", "--out", filepath.Join(d, "in")); code != 0 {
		t.Fatal(stderr)
	}
	if _, stderr, code := execute(t, "keys", "init", "--state", filepath.Join(d, "state")); code != 0 {
		t.Fatal(stderr)
	}
	env{state: filepath.Join(d, "state"), out: filepath.Join(d, "out")}.writeRegistry(t, "hmac-sha256")
	out, stderr, code := execute(t, "run", "--users", filepath.Join(d, "in", "users.csv"),
		"--consent", filepath.Join(d, "in", "consent_events.csv"), "--key", filepath.Join(d, "in", "master.key"),
		"--destination", "meta-ads", "--out", filepath.Join(d, "out"), "--state", filepath.Join(d, "state"),
		"--as-of", "2026-11-01T00:00:00Z", "--log-level", "debug")
	if code != 0 {
		t.Fatal(stderr)
	}
	logs := out + stderr
	var leaked int
	fixtures.Generate(fixtures.Options{Users: 2000, Seed: 1}, func(u fixtures.User) {
		if len(u.UserID) > 5 && strings.Contains(logs, u.UserID) || len(u.Phone) > 6 && strings.Contains(logs, u.Phone) {
			leaked++
		}
	}, func(fixtures.Event) {})
	if leaked > 0 {
		t.Errorf("%d users' ids or phones appear in the output", leaked)
	}
	key, _ := os.ReadFile(filepath.Join(d, "in", "master.key"))
	if strings.Contains(logs, strings.TrimSpace(string(key))) {
		t.Error("the master key appears in the output")
	}
}

// TestLogCallsTakeNoPersonalFields greps the code: no logging call may take
// a phone, E.164 string, user id or key as an attribute.
func TestLogCallsTakeNoPersonalFields(t *testing.T) {
	call := regexp.MustCompile(`\b(log|logger|Log|slog)\.(Debug|Info|Warn|Error)\(.*`)
	bad := regexp.MustCompile(`(?i)"(phone|e164|user_?id|master|secret)"|\.(Phone|UserID|userID|e164|phone)\b|\bKey\b[^_]`)
	// Every package of the module, so that a new one is covered the day it
	// is added (a list of directories missed retention, oprfx, idcache).
	files := 0
	err := filepath.WalkDir("../..", func(f string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && f != "../.." && (strings.HasPrefix(d.Name(), ".") || d.Name() == "demo" || d.Name() == "scripts" || d.Name() == "testdata") {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(f, ".go") || strings.HasSuffix(f, "_test.go") {
			return nil
		}
		files++
		b, err := os.ReadFile(f)
		if err != nil {
			return err
		}
		for i, line := range strings.Split(string(b), "\n") {
			if m := call.FindString(line); m != "" && bad.MatchString(m) {
				t.Errorf("%s:%d logs personal data or a key: %s", f, i+1, strings.TrimSpace(line))
			}
		}
		return nil
	})
	if err != nil || files < 50 {
		t.Fatalf("read %d Go files of the module: %v", files, err)
	}
}

func TestExitCodeMapping(t *testing.T) {
	for err, want := range map[error]int{
		nil: 0, errkind.ErrUsage: 64, errkind.ErrRejected: 77, errkind.ErrData: 65, errkind.ErrNoInput: 66,
		errkind.ErrTempFail: 75, errkind.ErrConfig: 78, context.Canceled: 75,
	} {
		if got := exitCode(err); got != want {
			t.Errorf("exitCode(%v) = %d, want %d", err, got, want)
		}
	}
}

// TestMemoryLimit: a run sets the runtime's soft memory limit from
// --memory-limit-mib (896 MiB by default), leaves it alone with 0, and
// GOMEMLIMIT in the environment wins over the flag.
func TestMemoryLimit(t *testing.T) {
	old := debug.SetMemoryLimit(-1)
	t.Cleanup(func() { debug.SetMemoryLimit(old) })
	for _, c := range []struct {
		name, env string
		flag      []string
		want      int64
	}{
		{"default", "", nil, defaultMemoryLimitMiB << 20},
		{"set", "", []string{"--memory-limit-mib", "700"}, 700 << 20},
		{"off", "", []string{"--memory-limit-mib", "0"}, math.MaxInt64},
		{"GOMEMLIMIT wins", "1GiB", []string{"--memory-limit-mib", "700"}, math.MaxInt64},
	} {
		t.Run(c.name, func(t *testing.T) {
			debug.SetMemoryLimit(math.MaxInt64)
			t.Setenv("GOMEMLIMIT", c.env)
			if c.env == "" {
				os.Unsetenv("GOMEMLIMIT")
			}
			e := newEnv(t, vectorUsers, vectorEvents)
			if _, stderr, code := execute(t, e.args(c.flag...)...); code != 0 {
				t.Fatalf("exit %d: %s", code, stderr)
			}
			// GOMEMLIMIT is read by the runtime at start, not here: "wins"
			// means the flag leaves the limit as it was.
			if got := debug.SetMemoryLimit(-1); got != c.want {
				t.Errorf("memory limit %d, want %d", got, c.want)
			}
		})
	}
}

func TestPretouchBytes(t *testing.T) {
	dir := t.TempDir()
	users, consent := filepath.Join(dir, "users.csv"), filepath.Join(dir, "consent.csv")
	if err := os.WriteFile(users, make([]byte, 1000), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(consent, make([]byte, 3000), 0o600); err != nil {
		t.Fatal(err)
	}
	const auto = defaultPretouchMiB << 20
	for _, c := range []struct {
		name   string
		o      RunOptions
		shards int
		want   int64
	}{
		{"auto: the inputs' size", RunOptions{PretouchMiB: -1, Users: users, Consent: consent}, 0, 4000},
		{"auto: a shard's share", RunOptions{PretouchMiB: -1, Users: users, Consent: consent}, 4, 1000},
		{"auto: a missing input", RunOptions{PretouchMiB: -1, Users: users, Consent: filepath.Join(dir, "none")}, 0, 0},
		{"auto: a database source", RunOptions{PretouchMiB: -1, Source: "postgres://x"}, 0, 0},
		{"auto: a commit", RunOptions{PretouchMiB: -1, commit: true}, 0, 0},
		{"set, for a commit", RunOptions{PretouchMiB: 64, commit: true}, 0, 64 << 20},
		{"set", RunOptions{PretouchMiB: 5, Users: users, Consent: consent}, 0, 5 << 20},
		{"off", RunOptions{PretouchMiB: 0, Users: users, Consent: consent}, 0, 0},
	} {
		if got := c.o.pretouchBytes(c.shards); got != c.want {
			t.Errorf("%s: %d bytes, want %d", c.name, got, c.want)
		}
	}
	// Large inputs are capped.
	if err := os.Truncate(consent, 1<<30); err != nil {
		t.Fatal(err)
	}
	if got := (&RunOptions{PretouchMiB: -1, Users: users, Consent: consent}).pretouchBytes(0); got != auto {
		t.Errorf("1 GiB of input: %d bytes, want the cap %d", got, auto)
	}
}

// TestCLIPolish: an unknown command is a usage error with a suggestion,
// --version prints the version, a missing input flag is named alone, a
// date-only --as-of gets an example, and flag help shows no command as a
// flag's argument name (pflag takes back-quoted text for one).
func TestCLIPolish(t *testing.T) {
	if _, stderr, code := execute(t, "rnu"); code != exitUsage || !strings.Contains(stderr, "did you mean run?") {
		t.Errorf("unknown command: exit %d, %s", code, stderr)
	}
	if out, _, code := execute(t, "--version"); code != 0 || !strings.Contains(out, Version) {
		t.Errorf("--version: exit %d, %q", code, out)
	}
	e := newEnv(t, vectorUsers, vectorEvents)
	args := slices.DeleteFunc(e.args(), func(s string) bool { return s == "--consent" || s == e.events })
	if _, stderr, code := execute(t, args...); code != exitUsage || !strings.Contains(stderr, "missing --consent (") {
		t.Errorf("without --consent: exit %d, %s", code, stderr)
	}
	if _, stderr, code := execute(t, e.args("--as-of", "2026-11-01")...); code != exitUsage || !strings.Contains(stderr, "e.g. 2026-11-01T00:00:00Z") {
		t.Errorf("a date-only --as-of: exit %d, %s", code, stderr)
	}
	out, _, _ := execute(t, "run", "--help")
	for _, flag := range []string{"--key string", "--shard string"} {
		if !strings.Contains(out, flag) {
			t.Errorf("run --help lacks %q", flag)
		}
	}
}
