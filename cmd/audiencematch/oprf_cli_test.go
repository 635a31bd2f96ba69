package main

import (
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/parquet-go/parquet-go"

	"audiencematch/pipeline/idfile"
)

// TestOPRFCommands: the oprf-ristretto255 scheme from the command line with
// MATCHING.md's known-answer key: run publishes the contract's id of
// +16505551212 as FIXED_LEN_BYTE_ARRAY(64); the platform's blind, the
// exporter's evaluate (with a destination key from keys derive), finalize
// and match find exactly that number among the platform's; a request over
// oprf_max_evaluations exits 77; audit verify passes.
func TestOPRFCommands(t *testing.T) {
	const kaID = "8dc6681dcab189d1349d1870e600201312d3ffaf1fb3008ec31fb9231c775ee3cf04d3eb4c990cbc1c936c9654c77afe1ef37bb39105780a87f2b3ee19e51472"
	users := vectorUsers + "u5,+16505551299,\n"
	events := vectorEvents + "e5,u5,ads_matching,withdraw,2026-10-01T00:00:00Z,3,app_settings\n"
	e := newEnv(t, users, events)
	vkey, _, _ := execute(t, "keys", "init", "--state", e.state)
	writeFile(t, filepath.Join(e.state, "destinations.yaml"), fmt.Sprintf(`version: audiencematch.destinations/v2
destinations:
  - id: meta-ads
    name: Parent Ads
    organization: Parent Co
    relationship: parent
    purposes: [ads_matching]
    consent: {ads_matching: {min_policy_version: 1, max_consent_age: none}}
    lawful_basis: consent
    scheme: oprf-ristretto255
    delivery: %s
    retention_days: 90
    oprf_max_evaluations: 3
`, e.out), 0o644)
	out, stderr, code := execute(t, e.args()...)
	if code != 0 || !strings.Contains(out, "published 4 identifiers") {
		t.Fatalf("run: exit %d: %s %s", code, out, stderr)
	}
	var runDir string
	found := false
	for _, f := range e.published(t) {
		if !strings.HasSuffix(f, "/snapshot/part-00000.parquet") {
			continue
		}
		runDir = filepath.Dir(filepath.Dir(f)) // run=<id>/snapshot/part-00000.parquet
		rows, err := parquet.ReadFile[idfile.WideIDRow](f)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rows {
			found = found || hex.EncodeToString(r.ID[:]) == kaID
		}
	}
	if !found {
		t.Fatal("the contract's known-answer id is not published")
	}

	dkey := filepath.Join(e.dir, "meta-ads.oprf.key")
	if out, stderr, code := execute(t, "keys", "derive", "--key", e.key, "--state", e.state, "--destination", "meta-ads", "--scheme", "oprf-ristretto255", "--out", dkey); code != 0 || strings.TrimSpace(out) != "89fa0444ee6d7862" {
		t.Fatalf("keys derive --scheme oprf-ristretto255: exit %d, key_id %q: %s", code, out, stderr)
	}

	p := filepath.Join(e.dir, "platform")
	numbers := writeFile(t, filepath.Join(p, "numbers.csv"), "crm_id,phone,country\nA,650-555-1212,US\nB,+1 650 555 1299,\nC,+61 412 345 678,\nD,garbage,US\n", 0o644)
	req, blinds, resp, ids, matched := filepath.Join(p, "req.parquet"), filepath.Join(p, "blinds.parquet"), filepath.Join(p, "resp.parquet"), filepath.Join(p, "ids.parquet"), filepath.Join(p, "matched.parquet")
	if out, stderr, code := execute(t, "oprf", "blind", "--destination", "meta-ads", "--numbers", numbers, "--out", req, "--secrets", blinds); code != 0 || !strings.Contains(out, "blinded 3 numbers of 4 rows (1 not valid numbers)") {
		t.Fatalf("blind: exit %d: %s %s", code, out, stderr)
	}
	if out, stderr, code := execute(t, "oprf", "evaluate", "--destination", "meta-ads", "--request", req, "--out", resp, "--state", e.state, "--key", dkey); code != 0 || !strings.Contains(out, "evaluated 3 elements") {
		t.Fatalf("evaluate: exit %d: %s %s", code, out, stderr)
	}
	if out, stderr, code := execute(t, "oprf", "finalize", "--destination", "meta-ads", "--numbers", numbers, "--secrets", blinds, "--response", resp, "--out", ids); code != 0 {
		t.Fatalf("finalize: exit %d: %s %s", code, out, stderr)
	}
	if out, stderr, code := execute(t, "oprf", "match", "--ids", ids, "--published", runDir, "--out", matched); code != 0 || !strings.Contains(out, "matched 1 of 3 rows against 4 published identifiers") {
		t.Fatalf("match: exit %d: %s %s", code, out, stderr)
	}
	type matchedRow struct {
		CRMID string   `parquet:"crm_id"`
		Phone string   `parquet:"phone"`
		ID    [64]byte `parquet:"id"`
	}
	rows, err := parquet.ReadFile[matchedRow](matched)
	if err != nil || len(rows) != 1 || rows[0].CRMID != "A" || hex.EncodeToString(rows[0].ID[:]) != kaID {
		t.Fatalf("matched rows %+v, %v; want row A with the known-answer id", rows, err)
	}
	// The budget is 3 a day: the same request again is refused and recorded.
	_, stderr, code = execute(t, "oprf", "evaluate", "--destination", "meta-ads", "--request", req, "--out", filepath.Join(p, "resp2.parquet"), "--state", e.state, "--key", dkey)
	if code != exitRefused || !strings.Contains(stderr, "oprf_max_evaluations 3") {
		t.Fatalf("over the budget: exit %d (want 77): %s", code, stderr)
	}
	if _, err := os.Stat(filepath.Join(p, "resp2.parquet")); !os.IsNotExist(err) {
		t.Error("a refused request has a response")
	}
	recs, _ := os.ReadFile(filepath.Join(e.state, "audit", "records.jsonl"))
	if n := strings.Count(string(recs), `"type":"oprf_evaluated"`); n != 2 || !strings.Contains(string(recs), `"elements":3,"request_sha256"`) {
		t.Errorf("%d oprf_evaluated records in the log, want 2:\n%s", n, recs)
	}
	if strings.Contains(string(recs), "6505551212") {
		t.Error("the audit log holds a phone number")
	}
	if out, stderr, code := execute(t, "audit", "verify", "--state", e.state, "--verifier", strings.TrimSpace(vkey)); code != 0 {
		t.Fatalf("audit verify: exit %d: %s %s", code, out, stderr)
	}
	if out, stderr, code := execute(t, "audit", "runs", "--state", e.state); code != 0 {
		t.Fatalf("audit runs with oprf_evaluated records: exit %d: %s %s", code, out, stderr)
	}
	if out, stderr, code := execute(t, "destinations", "check", "--state", e.state); code != 0 {
		t.Fatalf("destinations check: exit %d: %s %s", code, out, stderr)
	}
}
