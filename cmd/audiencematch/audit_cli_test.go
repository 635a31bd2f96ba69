package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"audiencematch/consent/audit"
	"audiencematch/pipeline/auditor"
	"audiencematch/pipeline/delivery"
	"audiencematch/pipeline/statedir"
)

// TestAuditorVisits: the auditor's commands across two visits, with the
// verifier key printed by keys init, and a rollback between them.
func TestAuditorVisits(t *testing.T) {
	e := newEnv(t, vectorUsers, vectorEvents)
	vkey, _, code := execute(t, "keys", "init", "--state", e.state)
	if code != 0 || !strings.HasPrefix(vkey, audit.DefaultOrigin+"+") {
		t.Fatalf("keys init printed %q", vkey)
	}
	vkey = strings.TrimSpace(vkey)
	if _, stderr, code := execute(t, e.args()...); code != 0 {
		t.Fatal(stderr)
	}
	first := filepath.Join(e.dir, "visit1.checkpoint")
	out, stderr, code := execute(t, "audit", "verify", "--state", e.state, "--verifier", vkey, "--save-checkpoint", first)
	if code != 0 || !strings.Contains(out, "ok: 1 records, 1 committed runs") {
		t.Fatalf("verify: %d %s %s", code, out, stderr)
	}
	// Keep a copy of the log as it was, for the rollback below.
	auditDir := statedir.Audit(e.state)
	old := map[string][]byte{}
	for _, f := range []string{audit.RecordsFile, audit.CheckpointFile} {
		old[f], _ = os.ReadFile(filepath.Join(auditDir, f))
	}
	// The next night.
	if _, stderr, code := execute(t, append(e.args(), "--as-of", "2026-11-02T00:00:00Z")...); code != 0 {
		t.Fatal(stderr)
	}
	second := filepath.Join(e.dir, "visit2.checkpoint")
	if out, stderr, code := execute(t, "audit", "verify", "--state", e.state, "--verifier", vkey,
		"--trusted-checkpoint", first, "--save-checkpoint", second); code != 0 || !strings.Contains(out, "2 records") {
		t.Fatalf("second visit: %d %s %s", code, out, stderr)
	}
	// audit runs, as a table and as JSON.
	out, _, code = execute(t, "audit", "runs", "--state", e.state, "--verifier", vkey)
	if code != 0 || strings.Count(out, "run_committed") != 2 || !strings.Contains(out, "meta-ads") {
		t.Errorf("audit runs:\n%s", out)
	}
	out, _, _ = execute(t, "audit", "runs", "--state", e.state, "--verifier", vkey, "--json")
	var recs []audit.Record
	if err := json.Unmarshal([]byte(out), &recs); err != nil || len(recs) != 2 || recs[1].PreviousRunID != recs[0].RunID {
		t.Errorf("audit runs --json: %v %+v", err, recs)
	}
	// A subject by phone, typed another way: exported in both runs, with proofs.
	out, stderr, code = execute(t, "audit", "subject", "--state", e.state, "--verifier", vkey, "--key", e.key,
		"--phone", "650.555.1212", "--country", "us", "--json")
	var rep auditor.SubjectReport
	if code != 0 || json.Unmarshal([]byte(out), &rep) != nil || len(rep.Runs) != 2 {
		t.Fatalf("subject: %d %s %s", code, out, stderr)
	}
	for _, r := range rep.Runs {
		if r.Status != "exported" || len(r.Evidence) != 1 || r.Evidence[0].EventID != "e1" || len(r.Membership.Proof) == 0 {
			t.Errorf("subject run %s: %+v", r.RunID, r)
		}
	}
	// Rollback: the operator restores the log as it was after night one.
	for f, b := range old {
		os.WriteFile(filepath.Join(auditDir, f), b, 0o600)
	}
	_, stderr, code = execute(t, "audit", "verify", "--state", e.state, "--verifier", vkey, "--trusted-checkpoint", second)
	if code != exitData || !strings.Contains(stderr, "rollback") {
		t.Errorf("rolled-back log: exit %d, %s", code, stderr)
	}
	// Another key does not verify it at all.
	other := newEnv(t, vectorUsers, vectorEvents)
	otherKey, _, _ := execute(t, "keys", "init", "--state", other.state)
	if _, _, code := execute(t, "audit", "verify", "--state", e.state, "--verifier", strings.TrimSpace(otherKey)); code != exitData {
		t.Errorf("verified with another log's key: exit %d", code)
	}
}

func TestPostgresUnreachableExit75(t *testing.T) {
	e := newEnv(t, vectorUsers, vectorEvents)
	a := []string{"run", "--source", "postgres://am:hunter2@127.0.0.1:1/app?sslmode=disable&connect_timeout=3",
		"--destination", "meta-ads", "--state", e.state, "--as-of", "2026-11-01T00:00:00Z", "--key", e.key}
	_, stderr, code := execute(t, a...)
	if code != exitTempFail || !strings.Contains(stderr, "is the server up") || strings.Contains(stderr, "hunter2") {
		t.Errorf("exit %d, %s", code, stderr)
	}
	if len(e.published(t)) != 0 {
		t.Error("published without a source")
	}
}

// verifyOpts are the options of audit verify for a test's state, whose
// delivery root is its sibling "out".
func verifyOpts(state string, trusted []byte) auditor.VerifyOptions {
	return auditor.VerifyOptions{Trusted: trusted, Roots: delivery.Roots{Override: filepath.Join(filepath.Dir(state), "out")}}
}

// publishedDir is a committed run's published directory in a test whose
// delivery root is its state's sibling "out".
func publishedDir(state string, rec *audit.Record) string {
	return filepath.Join(filepath.Dir(state), "out", filepath.FromSlash(rec.PublishedRel()))
}
