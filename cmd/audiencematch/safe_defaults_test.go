package main

import (
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"audiencematch/consent/audit"
	"audiencematch/pipeline/manifest"
	"audiencematch/pipeline/statedir"
)

// setPolicy rewrites meta-ads's consent policy in the test registry.
func (e env) setPolicy(t *testing.T, policy string) {
	t.Helper()
	p := filepath.Join(e.state, "destinations.yaml")
	b, _ := os.ReadFile(p)
	s := strings.Replace(string(b), "ads_matching: {min_policy_version: 1, max_consent_age: none}", "ads_matching: "+policy, 1)
	writeFile(t, p, s, 0o644)
}

func lastRecord(t *testing.T, state string) *audit.Record {
	t.Helper()
	l, err := audit.Open(statedir.Audit(state))
	if err != nil || l.Size() == 0 {
		t.Fatalf("audit log: %v", err)
	}
	return l.Records()[l.Size()-1]
}

func publishedManifest(t *testing.T, e env) *manifest.Manifest {
	t.Helper()
	m, _ := filepath.Glob(filepath.Join(e.out, "meta-ads", "dt=*", "run=*", "manifest.json"))
	if len(m) != 1 {
		t.Fatalf("manifests: %v", m)
	}
	b, _ := os.ReadFile(m[0])
	var man manifest.Manifest
	if err := json.Unmarshal(b, &man); err != nil {
		t.Fatal(err)
	}
	return &man
}

// TestRegistryPolicyDecides: without flags the registry's policy applies
// and is what the manifest and the record say; flags may tighten it, never
// loosen it.
func TestRegistryPolicyDecides(t *testing.T) {
	// u1's grant is policy 2, u2's is a year and a half old: the registry's
	// policy (3, 395 days) excludes both, the old defaults (1, none) did not.
	events := `event_id,user_id,purpose,action,occurred_at,policy_version,source
e1,u1,ads_matching,grant,2026-10-01T00:00:00Z,2,app_settings
e2,u2,ads_matching,grant,2025-05-01T00:00:00Z,3,app_settings
e3,u3,ads_matching,grant,2026-10-01T00:00:00Z,3,app_settings
e4,u4,ads_matching,grant,2026-10-01T00:00:00Z,4,app_settings
`
	e := newEnv(t, vectorUsers, events)
	e.setPolicy(t, "{min_policy_version: 3, max_consent_age: 395d}")
	for name, c := range map[string]struct {
		flags []string
		says  string
	}{
		"older policy version": {[]string{"--min-policy-version", "1"}, "--min-policy-version 1 is looser than the registry's min_policy_version 3"},
		"longer age":           {[]string{"--max-consent-age", "400d"}, "--max-consent-age 400d is looser than the registry's max_consent_age 395d"},
		"no age limit":         {[]string{"--max-consent-age", "0d"}, "may only tighten"},
	} {
		_, stderr, code := execute(t, e.args(c.flags...)...)
		if code != exitUsage || !strings.Contains(stderr, c.says) {
			t.Errorf("%s: exit %d, want 64 saying %q: %s", name, code, c.says, stderr)
		}
	}
	if len(e.published(t)) != 0 {
		t.Fatal("a looser flag published")
	}
	out, stderr, code := execute(t, e.args()...)
	if code != 0 || !strings.Contains(out, "published 2 identifiers") {
		t.Fatalf("exit %d: %s %s", code, out, stderr)
	}
	m := publishedManifest(t, e)
	if m.Policy.MinPolicyVersion != 3 || m.Policy.MaxConsentAgeSeconds != 395*86400 {
		t.Errorf("manifest policy %+v", m.Policy)
	}
	if rec := lastRecord(t, e.state); rec.Policy == nil || rec.Policy.MinPolicyVersion != 3 || rec.Policy.MaxConsentAgeSeconds != 395*86400 {
		t.Errorf("record policy %+v", rec.Policy)
	}
	// Tighter flags apply, and are what the next run records.
	out, stderr, code = execute(t, e.args("--as-of", "2026-11-02T00:00:00Z", "--min-policy-version", "4", "--max-consent-age", "60d", "--allow-drop")...)
	if code != 0 || !strings.Contains(out, "exported 1 ") {
		t.Fatalf("tighter: exit %d: %s %s", code, out, stderr)
	}
	if rec := lastRecord(t, e.state); rec.Policy.MinPolicyVersion != 4 || rec.Policy.MaxConsentAgeSeconds != 60*86400 {
		t.Errorf("tighter record policy %+v", rec.Policy)
	}
}

// TestVersion1RegistryRefused: a registry without a consent policy is
// refused before anything is read, with the lines to add.
func TestVersion1RegistryRefused(t *testing.T) {
	e := newEnv(t, vectorUsers, vectorEvents)
	p := filepath.Join(e.state, "destinations.yaml")
	b, _ := os.ReadFile(p)
	v1 := regexp.MustCompile(`(?m)^    consent:\n.*\n`).ReplaceAllString(strings.Replace(string(b), "destinations/v2", "destinations/v1", 1), "")
	writeFile(t, p, v1, 0o644)
	_, stderr, code := execute(t, e.args()...)
	if code != exitConfig || !strings.Contains(stderr, "+       ads_matching: {min_policy_version: <N>, max_consent_age: <DAYS>d}") ||
		!strings.Contains(stderr, "version: audiencematch.destinations/v2") {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	// A v2 registry missing one purpose's policy names it, with its line.
	writeFile(t, p, strings.Replace(string(b), "      marketing_email: {min_policy_version: 1, max_consent_age: none}\n", "", 1), 0o644)
	_, stderr, code = execute(t, "destinations", "check", "--state", e.state)
	if code != exitConfig || !strings.Contains(stderr, "marketing_email: {min_policy_version: <N>, max_consent_age: <DAYS>d}") {
		t.Fatalf("exit %d: %s", code, stderr)
	}
}

// TestDestinationsInit: init writes a commented registry a run accepts,
// with a relative --delivery made absolute, and a relative --out naming
// the same directory agrees with it.
func TestDestinationsInit(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	if _, stderr, code := execute(t, "keys", "init", "--state", "st"); code != 0 {
		t.Fatal(stderr)
	}
	_, stderr, code := execute(t, "destinations", "init", "--state", "st", "--delivery", "out")
	if code != exitUsage || !strings.Contains(stderr, "--min-policy-version, --max-consent-age") {
		t.Fatalf("without a policy: exit %d: %s", code, stderr)
	}
	init := []string{"destinations", "init", "--state", "st", "--delivery", "out", "--min-policy-version", "3", "--max-consent-age", "395d"}
	if _, stderr, code := execute(t, init...); code != 0 {
		t.Fatalf("init: exit %d: %s", code, stderr)
	}
	b, _ := os.ReadFile(filepath.Join("st", "destinations.yaml"))
	for _, want := range []string{"delivery: " + filepath.Join(dir, "out") + " ", "min_policy_version: 3", "max_consent_age: 395d", "# "} {
		if !strings.Contains(string(b), want) {
			t.Errorf("the template lacks %q:\n%s", want, b)
		}
	}
	if _, stderr, code := execute(t, init...); code != exitUsage || !strings.Contains(stderr, "exists") {
		t.Errorf("init over a registry: exit %d: %s", code, stderr)
	}
	if out, stderr, code := execute(t, "destinations", "check", "--state", "st"); code != 0 || !strings.Contains(out, "ok: 1 destinations") {
		t.Fatalf("check: exit %d: %s %s", code, out, stderr)
	}
	if out, _, _ := execute(t, "destinations", "list", "--state", "st"); !strings.Contains(out, "ads_matching: version>=3, age<=395d") {
		t.Errorf("list does not show the policy:\n%s", out)
	}
	writeFile(t, filepath.Join("in", "users.csv"), vectorUsers, 0o644)
	writeFile(t, filepath.Join("in", "consent_events.csv"), vectorEvents, 0o644)
	out, stderr, code := execute(t, "run", "--users", "in/users.csv", "--consent", "in/consent_events.csv", "--destination", "meta-ads",
		"--state", "st", "--out", "./out/", "--as-of", "2026-11-01T00:00:00Z", "--summary")
	if code != 0 || !strings.Contains(out, "published 4 identifiers") {
		t.Fatalf("run with a relative --out: exit %d: %s %s", code, out, stderr)
	}
	// A bucket delivery is kept as written, and a run's --out must name
	// the same URL: a directory does not agree with it.
	bucket := "s3://exports/am?region=eu-west-1"
	if _, stderr, code := execute(t, "destinations", "init", "--state", "st2", "--delivery", bucket, "--min-policy-version", "3", "--max-consent-age", "395d"); code != 0 {
		t.Fatalf("init with a bucket: exit %d: %s", code, stderr)
	}
	if b, _ := os.ReadFile(filepath.Join("st2", "destinations.yaml")); !strings.Contains(string(b), "delivery: "+bucket+" ") {
		t.Errorf("the template does not keep the bucket's URL:\n%s", b)
	}
	if _, stderr, code := execute(t, "run", "--users", "in/users.csv", "--consent", "in/consent_events.csv", "--destination", "meta-ads",
		"--state", "st2", "--key", filepath.Join("st", "keys", "master.key"), "--out", "out", "--as-of", "2026-11-01T00:00:00Z"); code != exitUsage || !strings.Contains(stderr, "conflicts with the registry's delivery") {
		t.Errorf("--out a directory against a bucket delivery: exit %d: %s", code, stderr)
	}
}

// TestPlanPublishesNothing: --plan reads, checks and prints, and leaves
// OUT, STATE/runs and the audit log as they were; the next night's plan
// shows its deltas.
func TestPlanPublishesNothing(t *testing.T) {
	e := newEnv(t, vectorUsers, vectorEvents)
	out, stderr, code := execute(t, e.args("--plan")...)
	if code != 0 || !strings.Contains(out, "plan: would publish 4 identifiers") || !strings.Contains(out, "nothing published") ||
		!strings.Contains(out, "users 4 = exported 4") || !strings.Contains(out, "first run") {
		t.Fatalf("plan: exit %d: %s %s", code, out, stderr)
	}
	runs, _ := os.ReadDir(filepath.Join(e.state, "runs"))
	if len(e.published(t)) != 0 || len(runs) != 0 || fileExists(filepath.Join(statedir.Audit(e.state), audit.RecordsFile)) {
		t.Fatalf("a plan left output %v, runs %v or an audit log", e.published(t), runs)
	}
	if _, stderr, code := execute(t, e.args()...); code != 0 {
		t.Fatal(stderr)
	}
	// u4 withdraws the next night.
	writeFile(t, e.events, vectorEvents+"e5,u4,ads_matching,withdraw,2026-11-01T12:00:00Z,3,app_settings\n", 0o644)
	out, stderr, code = execute(t, e.args("--dry-run", "--as-of", "2026-11-02T00:00:00Z", "--allow-drop")...)
	if code != 0 || !strings.Contains(out, "adds 0, removes 1") {
		t.Fatalf("next night's plan: exit %d: %s %s", code, out, stderr)
	}
	if l, _ := audit.Open(statedir.Audit(e.state)); l.Size() != 1 {
		t.Errorf("the plan appended to the log: %d records", l.Size())
	}
	// A plan refused by the registry records no refusal either.
	_, _, code = execute(t, e.args("--plan", "--destination", "google-cm")...)
	if l, _ := audit.Open(statedir.Audit(e.state)); code != exitRefused || l.Size() != 1 {
		t.Errorf("a refused plan: exit %d, %d records", code, l.Size())
	}
}

// TestFailurePrintedOnce: a failed run's error is its log line, and a usage
// error is one plain line: never both.
func TestFailurePrintedOnce(t *testing.T) {
	e := newEnv(t, vectorUsers, vectorEvents)
	os.Remove(e.users)
	_, stderr, code := execute(t, e.args()...)
	if code != exitNoInput || strings.Count(stderr, "run failed") != 1 || strings.Count(stderr, "\n") != 1 || strings.Contains(stderr, "audiencematch: ") {
		t.Errorf("a failed run: exit %d, stderr:\n%s", code, stderr)
	}
	_, stderr, code = execute(t, "run", "--state", e.state)
	if code != exitUsage || strings.Count(stderr, "missing") != 1 || strings.Count(stderr, "\n") != 1 {
		t.Errorf("a usage error: exit %d, stderr:\n%s", code, stderr)
	}
}

// TestDidYouMean: unknown flags, config keys and registry keys near a
// known one are named.
func TestDidYouMean(t *testing.T) {
	e := newEnv(t, vectorUsers, vectorEvents)
	if _, stderr, code := execute(t, e.args("--min-polcy-version", "3")...); code != exitUsage || !strings.Contains(stderr, "did you mean --min-policy-version?") {
		t.Errorf("flag: exit %d: %s", code, stderr)
	}
	cfg := writeFile(t, filepath.Join(e.dir, "c.yaml"), "max-consent-ag: 30d\n", 0o600)
	if _, stderr, code := execute(t, e.args("--config", cfg)...); code != exitConfig || !strings.Contains(stderr, "did you mean max-consent-age?") {
		t.Errorf("config key: exit %d: %s", code, stderr)
	}
	p := filepath.Join(e.state, "destinations.yaml")
	b, _ := os.ReadFile(p)
	writeFile(t, p, strings.Replace(string(b), "retention_days: 90", "retention_day: 90", 1), 0o644)
	if _, stderr, code := execute(t, e.args()...); code != exitConfig || !strings.Contains(stderr, "did you mean retention_days?") {
		t.Errorf("registry key: exit %d: %s", code, stderr)
	}
}

// TestAuditRunsReadable: short lines, times to the second, the cutoff.
func TestAuditRunsReadable(t *testing.T) {
	e := newEnv(t, vectorUsers, vectorEvents)
	mustRun(t, e.args()...)
	os.Remove(e.users)
	execute(t, e.args("--as-of", "2026-11-02T00:00:00Z")...) // a run_failed with a long reason
	execute(t, e.args("--destination", "google-cm")...)      // a destination_refused
	out, _, code := execute(t, "audit", "runs", "--state", e.state)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if code != 0 || len(lines) != 6 || !strings.Contains(lines[0], "AS_OF") {
		t.Fatalf("audit runs: exit %d\n%s", code, out)
	}
	for _, l := range lines {
		if len(l) > 140 {
			t.Errorf("a line of %d characters: %s", len(l), l)
		}
	}
	if !regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ +run_committed +meta-ads +2026-11-01T00:00:00Z +20261101T000000Z-[0-9a-f]+ +4 +0 *$`).MatchString(lines[1]) {
		t.Errorf("the committed run's line: %q", lines[1])
	}
	if !strings.Contains(lines[2], "run_failed") || !strings.Contains(lines[2], "2026-11-02T00:00:00Z") ||
		!strings.HasPrefix(lines[3], "    reason: users: ") || !strings.HasSuffix(lines[3], "…") {
		t.Errorf("the failed run's lines: %q", lines[2:4])
	}
}

// TestJSONResults: audit verify and destinations check print one JSON
// document with --json, failing or not, and exit as without it.
func TestJSONResults(t *testing.T) {
	e := newEnv(t, vectorUsers, vectorEvents)
	mustRun(t, e.args()...)
	out, _, code := execute(t, "audit", "verify", "--state", e.state, "--json")
	var v VerifyResult
	if err := json.Unmarshal([]byte(out), &v); err != nil || code != 0 || !v.OK || v.Records != 1 || v.Committed != 1 || len(v.Root) != 64 {
		t.Fatalf("verify --json: exit %d, %v, %+v", code, err, v)
	}
	parts, _ := filepath.Glob(filepath.Join(e.out, "meta-ads", "*", "*", "snapshot", "part-00000.parquet"))
	os.WriteFile(parts[0], []byte("tampered"), 0o644)
	out, stderr, code := execute(t, "audit", "verify", "--state", e.state, "--json")
	v = VerifyResult{}
	if err := json.Unmarshal([]byte(out), &v); err != nil || code != exitData || v.OK || v.Error == "" || v.ExitCode != exitData || strings.Contains(stderr, "audiencematch: ") {
		t.Fatalf("verify --json after tampering: exit %d, %v, %+v, stderr %s", code, err, v, stderr)
	}
	out, _, code = execute(t, "destinations", "check", "--state", e.state, "--json")
	var c CheckResult
	if err := json.Unmarshal([]byte(out), &c); err != nil || code != 0 || !c.OK || c.Destinations != 4 || len(c.Warnings) != 2 {
		t.Fatalf("check --json: exit %d, %v, %+v", code, err, c)
	}
	p := filepath.Join(e.state, "destinations.yaml")
	b, _ := os.ReadFile(p)
	writeFile(t, p, strings.Replace(strings.Replace(string(b), "relationship: parent", "relationship: friend", 1), "retention_days: 7", "retention_days: 0", 1), 0o644)
	out, _, code = execute(t, "destinations", "check", "--state", e.state, "--json")
	c = CheckResult{}
	if err := json.Unmarshal([]byte(out), &c); err != nil || code != exitConfig || c.OK || len(c.Errors) != 2 {
		t.Fatalf("check --json of a bad registry: exit %d, %v, %+v", code, err, c)
	}
}

// TestNoCommandAsAFlagArgument: pflag takes back-quoted text in a flag's
// usage as the name of its argument; no usage may hold any, in any command.
func TestNoCommandAsAFlagArgument(t *testing.T) {
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		c.Flags().VisitAll(func(f *pflag.Flag) {
			if strings.Contains(f.Usage, "`") {
				t.Errorf("%s --%s: a back quote in its usage: %s", c.CommandPath(), f.Name, f.Usage)
			}
		})
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(newRootCommand(io.Discard, io.Discard))
}

// TestPretouchHelpOneDefault: the flag's help states its default once.
func TestPretouchHelpOneDefault(t *testing.T) {
	out, _, _ := execute(t, "run", "--help")
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, "--pretouch-mib") && (strings.Count(l, "default") != 1 || strings.Contains(l, "-1")) {
			t.Errorf("--pretouch-mib help: %s", l)
		}
		// pflag takes back-quoted text as the argument's name.
		if regexp.MustCompile(`^\s+(-\w, )?--[a-z-]+ audiencematch`).MatchString(l) {
			t.Errorf("a command shown as a flag's argument: %s", l)
		}
	}
}

// TestConfigWithSecretOwnerOnly: a config file holding a database
// password is refused when others may read it, like a key file.
func TestConfigWithSecretOwnerOnly(t *testing.T) {
	e := newEnv(t, vectorUsers, vectorEvents)
	for _, source := range []string{"postgres://am:hunter2@127.0.0.1:1/db", "host=127.0.0.1 port=1 password=hunter2"} {
		cfg := writeFile(t, filepath.Join(e.dir, "db.yaml"), "source: "+source+"\n", 0o644)
		a := []string{"run", "--config", cfg, "--destination", "meta-ads", "--state", e.state, "--as-of", "2026-11-01T00:00:00Z"}
		_, stderr, code := execute(t, a...)
		if code != exitConfig || !strings.Contains(stderr, "holds a secret") || !strings.Contains(stderr, "chmod 600") || strings.Contains(stderr, "hunter2") {
			t.Errorf("%q at 0644: exit %d: %s", source, code, stderr)
		}
		os.Chmod(cfg, 0o600)
		if _, stderr, _ := execute(t, a...); strings.Contains(stderr, "holds a secret") {
			t.Errorf("%q at 0600 refused: %s", source, stderr)
		}
	}
	// Without a password, a readable config file is fine.
	cfg := writeFile(t, filepath.Join(e.dir, "plain.yaml"), "users: "+e.users+"\nconsent: "+e.events+"\n", 0o644)
	if _, stderr, code := execute(t, e.args("--config", cfg)...); code != 0 {
		t.Errorf("a config file without a secret: exit %d: %s", code, stderr)
	}
}

// TestPruneCommand: prune --dry-run shows what a later prune removes;
// prune removes it and audit runs lists the prune record.
func TestPruneCommand(t *testing.T) {
	e := newEnv(t, vectorUsers, vectorEvents)
	mustRun(t, e.args()...)
	mustRun(t, e.args("--as-of", "2026-11-02T00:00:00Z")...)
	later := time.Now().Add(200 * 24 * time.Hour).UTC().Format(time.RFC3339)
	out, stderr, code := execute(t, "prune", "--state", e.state, "--now", later, "--dry-run")
	if code != 0 || !strings.Contains(out, "would remove run 20261101T") || !strings.Contains(out, "its published directory, evidence and rejects") || strings.Contains(out, "20261102T") {
		t.Fatalf("dry run: exit %d: %s %s", code, out, stderr)
	}
	if len(e.published(t)) == 0 || strings.Contains(mustOut(t, "audit", "runs", "--state", e.state), "prune") {
		t.Fatal("a dry run removed or recorded something")
	}
	if out, stderr, code := execute(t, "prune", "--state", e.state, "--now", later); code != 0 || !strings.Contains(out, "removed run 20261101T") {
		t.Fatalf("prune: exit %d: %s %s", code, out, stderr)
	}
	if !strings.Contains(mustOut(t, "audit", "runs", "--state", e.state), "    pruned after 90 days: 20261101T") {
		t.Error("audit runs does not list the prune")
	}
	// --now moves retention's clock, not the record's: a prune is recorded
	// when it happens.
	pl, _ := audit.Open(statedir.Audit(e.state))
	last := pl.Records()[len(pl.Records())-1]
	if at, err := time.Parse(time.RFC3339Nano, last.Time); last.Type != audit.TypePrune || err != nil || at.After(time.Now()) {
		t.Errorf("the prune record's time %q (type %s) is not when it was appended", last.Time, last.Type)
	}
	// Both verifiers accept the pruned state, and say the run is pruned.
	if out := mustOut(t, "audit", "verify", "--state", e.state); !strings.Contains(out, "pruned: record 0, run 20261101T") {
		t.Errorf("audit verify after the prune:\n%s", out)
	}
	// --json names a pruned run with the record's own member names.
	var res struct {
		Pruned []map[string]any `json:"pruned"`
	}
	if err := json.Unmarshal([]byte(mustOut(t, "audit", "verify", "--state", e.state, "--json")), &res); err != nil || len(res.Pruned) == 0 {
		t.Fatalf("audit verify --json after the prune: %v, %+v", err, res)
	}
	for _, k := range []string{"record", "run_id", "destination", "unchecked"} {
		if _, ok := res.Pruned[0][k]; !ok {
			t.Errorf("audit verify --json: a pruned run has no %q: %v", k, res.Pruned[0])
		}
	}
	verifier := filepath.Join(statedir.Keys(e.state), audit.VerifierFile)
	if ok, out := independent(t, "verify", "--state", e.state, "--verifier", verifier, "--delivery", e.out); !ok {
		t.Errorf("the independent verifier refuses the pruned state:\n%s", out)
	}
	// A failed run's directory (raw rejected rows) goes too, named in the
	// record's pruned_failed, which both verifiers read.
	failed := filepath.Join(e.state, "failed", "20261103T000000Z-0123456789ab")
	writeFile(t, filepath.Join(failed, "manifest.json"), `{"destination":"meta-ads"}`, 0o600)
	old := time.Now().Add(-100 * 24 * time.Hour)
	os.Chtimes(failed, old, old)
	if out, stderr, code := execute(t, "prune", "--state", e.state); code != 0 || !strings.Contains(out, "removed failed run 20261103T000000Z-0123456789ab") || fileExists(failed) {
		t.Fatalf("prune of a failed run: exit %d: %s %s", code, out, stderr)
	}
	if rec := lastRecord(t, e.state); rec.Type != audit.TypePrune || len(rec.PrunedFailed) != 1 || len(rec.PrunedRuns) != 0 {
		t.Errorf("the failed run's prune record: %+v", rec)
	}
	mustOut(t, "audit", "verify", "--state", e.state)
	if ok, out := independent(t, "verify", "--state", e.state, "--verifier", verifier, "--delivery", e.out); !ok {
		t.Errorf("the independent verifier refuses a prune of a failed run:\n%s", out)
	}
	if _, stderr, code := execute(t, "prune", "--state", e.state, "--destination", "nosuch"); code != exitUsage {
		t.Errorf("an unknown destination: exit %d: %s", code, stderr)
	}
}

func mustOut(t *testing.T, args ...string) string {
	t.Helper()
	out, stderr, code := execute(t, args...)
	if code != 0 {
		t.Fatalf("%v: exit %d: %s", args, code, stderr)
	}
	return out
}

// TestShardsWithoutAShell: the Indexed Job's commands need no shell: --as-of
// today is the day's 00:00 UTC, and commit --if-complete exits 0 while shards
// are missing (75 without it).
func TestShardsWithoutAShell(t *testing.T) {
	e := newEnv(t, vectorUsers, vectorEvents)
	if _, stderr, code := execute(t, "run", "--users", e.users, "--consent", e.events, "--key", e.key, "--destination", "meta-ads",
		"--state", e.state, "--as-of", "today", "--shard", "0/2"); code != 0 {
		t.Fatalf("shard 0/2: exit %d: %s", code, stderr)
	}
	commit := []string{"commit", "--key", e.key, "--destination", "meta-ads", "--state", e.state, "--as-of", "today", "--shards", "2"}
	if _, stderr, code := execute(t, commit...); code != exitTempFail {
		t.Errorf("commit with a shard missing: exit %d: %s", code, stderr)
	}
	if _, stderr, code := execute(t, append(commit, "--if-complete")...); code != 0 || len(e.published(t)) != 0 {
		t.Errorf("commit --if-complete with a shard missing: exit %d: %s", code, stderr)
	}
	if _, stderr, code := execute(t, "run", "--users", e.users, "--consent", e.events, "--key", e.key, "--destination", "meta-ads",
		"--state", e.state, "--as-of", "today", "--shard", "1/2"); code != 0 {
		t.Fatalf("shard 1/2: exit %d: %s", code, stderr)
	}
	if _, stderr, code := execute(t, append(commit, "--if-complete")...); code != 0 {
		t.Fatalf("commit --if-complete: exit %d: %s", code, stderr)
	}
	today := time.Now().UTC().Truncate(24 * time.Hour).Format(time.RFC3339)
	if m := publishedManifest(t, e); m.AsOf != today {
		t.Errorf("as_of %s, want %s", m.AsOf, today)
	}
}
