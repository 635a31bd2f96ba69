package main

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/mod/sumdb/note"

	"audiencematch/consent/audit"
	"audiencematch/consent/audit/witness"
	"audiencematch/pipeline/auditor"
	"audiencematch/pipeline/statedir"
)

// vectorWithdrawal withdraws u1 between the first and the second night.
const vectorWithdrawal = vectorEvents + "e5,u1,ads_matching,withdraw,2026-11-01T12:00:00Z,3,app_settings\n"

// twoNights runs the vector data on 2026-11-01 and 2026-11-02, u1
// withdrawing between them, and returns the env and the verifier key.
func twoNights(t *testing.T) (env, string) {
	t.Helper()
	e := newEnv(t, vectorUsers, vectorWithdrawal)
	vkey, _, _ := execute(t, "keys", "init", "--state", e.state)
	for _, asOf := range []string{"2026-11-01T00:00:00Z", "2026-11-02T00:00:00Z"} {
		if _, stderr, code := execute(t, e.args("--as-of", asOf, "--allow-drop")...); code != 0 {
			t.Fatal(stderr)
		}
	}
	return e, strings.TrimSpace(vkey)
}

// TestPortableState: the state and the delivered files, moved to another
// directory, verify with --delivery; and a log of v1 records (absolute
// published paths) still reads, moved or not.
func TestPortableState(t *testing.T) {
	e, vkey := twoNights(t)
	l, err := audit.Open(statedir.Audit(e.state))
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range l.Records() {
		if r.Type == audit.TypeRunCommitted && (filepath.IsAbs(r.Published) || r.Version != audit.RecordVersionV2 ||
			r.Authorization == nil || r.Authorization.Organization != "Parent Co" || len(r.Authorization.RegistrySHA256) != 64) {
			t.Fatalf("record not portable or without its authorization: %+v", r)
		}
	}
	moved := filepath.Join(t.TempDir(), "elsewhere")
	if err := os.Rename(e.dir, moved); err != nil {
		t.Fatal(err)
	}
	state, out := filepath.Join(moved, "state"), filepath.Join(moved, "out")
	verify := func(args ...string) (string, string, int) {
		return execute(t, append([]string{"audit", "verify", "--state", state, "--verifier", vkey}, args...)...)
	}
	if stdout, stderr, code := verify("--delivery", out); code != 0 || !strings.Contains(stdout, "2 committed runs verified") {
		t.Fatalf("moved state with --delivery: exit %d\n%s%s", code, stdout, stderr)
	}
	// Without --delivery the registry's root, the old place, is empty.
	if _, stderr, code := verify(); code != exitData || !strings.Contains(stderr, "missing") {
		t.Errorf("moved state without --delivery: exit %d, %s", code, stderr)
	}

	// The same log as v1 would have written it: absolute paths of the
	// first machine, no authorization. Signed again with the state's key.
	recs := l.Records()
	old := make([]*audit.Record, len(recs))
	for i, r := range recs {
		c := *r
		c.Version, c.Authorization = audit.RecordVersionV1, nil
		if c.Type == audit.TypeRunCommitted {
			c.Published = filepath.Join(e.out, filepath.FromSlash(r.Published))
		}
		old[i] = &c
	}
	rewriteLog(t, state, old)
	if stdout, stderr, code := verify("--delivery", out); code != 0 {
		t.Fatalf("v1 records, moved, with --delivery: exit %d\n%s%s", code, stdout, stderr)
	}
	if _, stderr, code := verify(); code != exitData {
		t.Errorf("v1 records name the old absolute paths: exit %d, %s", code, stderr)
	}
	// An unknown version is refused by the reader, named.
	recs[0].Version = "audiencematch.audit/v9"
	rewriteLog(t, state, recs)
	if _, stderr, code := verify("--delivery", out); code != exitData || !strings.Contains(stderr, "audiencematch.audit/v9") {
		t.Errorf("unknown record version: exit %d, %s", code, stderr)
	}
}

// rewriteLog writes recs as the log's records, as given (no re-stamping),
// and signs a checkpoint with the state's key: what an operator holding
// the key could do.
func rewriteLog(t *testing.T, state string, recs []*audit.Record) {
	t.Helper()
	dir := statedir.Audit(state)
	var b []byte
	for _, r := range recs {
		line, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		b = append(append(b, line...), '\n')
	}
	if err := os.WriteFile(filepath.Join(dir, audit.RecordsFile), b, 0o600); err != nil {
		t.Fatal(err)
	}
	l, err := audit.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	s, err := audit.LoadSigner(statedir.Keys(state))
	if err != nil {
		t.Fatal(err)
	}
	if err := l.WriteCheckpoint(s); err != nil {
		t.Fatal(err)
	}
}

// TestCheckProofTamperTable: a proof from audit subject --json checks
// offline, and every way of tampering with it fails, with its reason.
func TestCheckProofTamperTable(t *testing.T) {
	e, vkey := twoNights(t)
	subject := func(phone string) map[string]any {
		t.Helper()
		out, stderr, code := execute(t, "audit", "subject", "--state", e.state, "--verifier", vkey, "--key", e.key, "--phone", phone, "--country", "us", "--json")
		if code != 0 {
			t.Fatalf("subject: %s", stderr)
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(out), &m); err != nil {
			t.Fatal(err)
		}
		return m
	}
	u1 := subject("650.555.1212")        // exported, then withdrawn
	nobody := subject("+1 415 555 0100") // never in the data
	if s := statuses(u1); !slices.Equal(s, []string{"exported", "not_exported"}) {
		t.Fatalf("u1: %v", s)
	}
	if s := statuses(nobody); !slices.Equal(s, []string{"not_exported", "not_exported"}) {
		t.Fatalf("nobody: %v", s)
	}
	dir := t.TempDir()
	check := func(p map[string]any, args ...string) (string, string, int) {
		t.Helper()
		b, _ := json.Marshal(p)
		path := filepath.Join(dir, "proof.json")
		writeFile(t, path, string(b), 0o644)
		return execute(t, append([]string{"audit", "check-proof", path, "--verifier", vkey}, args...)...)
	}
	proofPath := filepath.Join(dir, "proof.json")
	for name, p := range map[string]map[string]any{"u1": u1, "nobody": nobody} {
		if out, stderr, code := check(p); code != 0 || !strings.Contains(out, "every one answered") {
			t.Fatalf("honest proof %s: exit %d\n%s%s", name, code, out, stderr)
		}
		// The independent verifier, from the docs alone, agrees.
		if ok, out := independent(t, "check-proof", proofPath, "--verifier", vkey); !ok {
			t.Errorf("honest proof %s: the independent verifier refuses it: %s", name, out)
		}
	}
	out, _, _ := check(u1)
	if !strings.Contains(out, "EXPORTED (identifier in the run's tree; 1 evidence row(s)") || !strings.Contains(out, "NOT_EXPORTED") ||
		!strings.Contains(out, "recipient Parent Co (parent)") {
		t.Errorf("check-proof output:\n%s", out)
	}

	// A forged absence for u1's identifier in night one, where it is
	// present at leaf k: its real neighbours k-1 and k+1, each with a
	// valid inclusion proof, are not adjacent.
	runs := l0(t, e.state)
	run1 := runs[0]
	ids := readIDs(t, publishedDir(e.state, run1), run1.Files)
	leafHex := run(u1, 0)["id"].(string)
	leaf, _ := hex.DecodeString(leafHex)
	k := slices.Index(ids, string(leaf))
	if k < 1 || k+1 >= len(ids) {
		t.Fatalf("u1's identifier at %d of %d: the test wants neighbours on both sides", k, len(ids))
	}
	var tree audit.MerkleTree
	for _, id := range ids {
		tree.Append([]byte(id))
	}
	neighbour := func(i int) map[string]any {
		p, err := tree.Prove(int64(i), tree.Size())
		if err != nil {
			t.Fatal(err)
		}
		return map[string]any{"index": i, "leaf": base64.StdEncoding.EncodeToString([]byte(ids[i])), "proof": jsonOf(p)}
	}

	flipHash := func(s string) string {
		b, _ := base64.StdEncoding.DecodeString(s)
		b[0] ^= 1
		return base64.StdEncoding.EncodeToString(b)
	}
	cases := []struct {
		name, want string
		proof      map[string]any
		edit       func(p map[string]any)
	}{
		{"changed hash", "membership proof", u1, func(p map[string]any) {
			pr := run(p, 0)["membership"].(map[string]any)["proof"].([]any)
			pr[0] = flipHash(pr[0].(string))
		}},
		{"non-adjacent neighbours", "not adjacent", u1, func(p map[string]any) {
			// Night two, after u1 withdrew: absent between two neighbours.
			m := run(p, 1)["membership"].(map[string]any)
			r := m["right"].(map[string]any)
			r["index"] = r["index"].(float64) + 1
		}},
		{"wrong index", "membership proof", u1, func(p map[string]any) {
			m := run(p, 0)["membership"].(map[string]any)
			m["index"] = float64(k + 1)
		}},
		{"flipped status", `status "not_exported", but the membership proof says present=true`, u1, func(p map[string]any) {
			run(p, 0)["status"] = "not_exported"
		}},
		{"flipped presence", "membership proof", u1, func(p map[string]any) {
			run(p, 0)["status"] = "not_exported"
			run(p, 0)["membership"].(map[string]any)["present"] = false
			delete(run(p, 0), "evidence")
		}},
		{"omitted run", "is not answered in its place", u1, func(p map[string]any) {
			p["runs"] = p["runs"].([]any)[1:]
		}},
		{"omitted last run", "is not answered in its place", u1, func(p map[string]any) {
			p["runs"] = p["runs"].([]any)[:1]
		}},
		{"edited checkpoint", "checkpoint", u1, func(p map[string]any) {
			cp := p["checkpoint"].(string)
			lines := strings.SplitN(cp, "\n", 4)
			lines[2] = flipHash(lines[2])
			p["checkpoint"] = strings.Join(lines, "\n")
		}},
		{"edited record", "a record was changed", u1, func(p map[string]any) {
			recs := p["records"].([]any)
			recs[0] = strings.Replace(recs[0].(string), `"exported":`, `"exported":1`, 1)
		}},
		{"absent claimed for a present id", "not adjacent", u1, func(p map[string]any) {
			r := run(p, 0)
			r["status"] = "not_exported"
			delete(r, "evidence")
			r["membership"] = map[string]any{"present": false, "left": neighbour(k - 1), "right": neighbour(k + 1)}
		}},
		{"absent claimed, present id as a neighbour", "not adjacent around the value", u1, func(p map[string]any) {
			r := run(p, 0)
			r["status"] = "not_exported"
			delete(r, "evidence")
			r["membership"] = map[string]any{"present": false, "left": neighbour(k - 1), "right": neighbour(k)}
		}},
		{"evidence of another consent event", "evidence row", u1, func(p map[string]any) {
			run(p, 0)["evidence"].([]any)[0].(map[string]any)["consent_event_id"] = "e2"
		}},
		{"unknown proof version", "proof version", u1, func(p map[string]any) {
			p["v"] = "audiencematch.proof/v9"
		}},
		{"another person's answer spliced in", "a proof is about one number", u1, func(p map[string]any) {
			// Night two answered with nobody's absence: a valid proof, of
			// another identifier, that would tell u1 they were not sent.
			p["runs"].([]any)[1] = deepCopy(t, nobody)["runs"].([]any)[1]
		}},
		{"an evidence row given twice", "given twice", u1, func(p map[string]any) {
			ev := run(p, 0)["evidence"].([]any)
			run(p, 0)["evidence"] = append(ev, ev[0])
		}},
		{"an answer downgraded to unknown", "does not show the run pruned", u1, func(p map[string]any) {
			r := run(p, 0)
			r["status"], r["note"] = "unknown", "evidence removed"
			delete(r, "membership")
			delete(r, "evidence")
		}},
		{"record proof of another index", "inclusion proof", u1, func(p map[string]any) {
			pr := run(p, 1)["record_proof"].([]any)
			pr[0] = flipHash(pr[0].(string))
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := deepCopy(t, c.proof)
			c.edit(p)
			_, stderr, code := check(p)
			if code != exitData || !strings.Contains(stderr, c.want) {
				t.Errorf("exit %d, want %d naming %q: %s", code, exitData, c.want, stderr)
			}
			ok, nodeOut := independent(t, "check-proof", proofPath, "--verifier", vkey)
			if ok {
				t.Errorf("the independent verifier accepts it: %s", nodeOut)
			}
			t.Logf("refused: %s | node: %s", strings.TrimSpace(stderr), strings.TrimSpace(nodeOut))
		})
	}

	// A checkpoint saved before the proof was made: the proof must extend
	// it; one from a longer log than the proof's is a rollback.
	cpPath := filepath.Join(dir, "saved.checkpoint")
	writeFile(t, cpPath, u1["checkpoint"].(string), 0o644)
	if _, stderr, code := check(u1, "--trusted-checkpoint", cpPath); code != 0 {
		t.Errorf("with the trusted checkpoint it was made at: %s", stderr)
	}
	if _, stderr, code := execute(t, e.args("--as-of", "2026-11-03T00:00:00Z", "--allow-drop")...); code != 0 {
		t.Fatal(stderr)
	}
	later := filepath.Join(dir, "later.checkpoint")
	cpNow, _ := os.ReadFile(filepath.Join(statedir.Audit(e.state), audit.CheckpointFile))
	writeFile(t, later, string(cpNow), 0o644)
	if _, stderr, code := check(u1, "--trusted-checkpoint", later); code != exitData || !strings.Contains(stderr, "rollback") {
		t.Errorf("a proof older than the saved checkpoint: exit %d, %s", code, stderr)
	}
	if _, stderr, code := check(subject("650.555.1212"), "--trusted-checkpoint", cpPath); code != 0 {
		t.Errorf("a newer proof against an older saved checkpoint: %s", stderr)
	}
}

func l0(t *testing.T, state string) []*audit.Record {
	t.Helper()
	runs, _ := chain(t, state, "meta-ads")
	return runs
}

func run(p map[string]any, i int) map[string]any { return p["runs"].([]any)[i].(map[string]any) }

func statuses(p map[string]any) []string {
	var s []string
	for _, r := range p["runs"].([]any) {
		s = append(s, r.(map[string]any)["status"].(string))
	}
	return s
}

func jsonOf(v any) any {
	b, _ := json.Marshal(v)
	var out any
	json.Unmarshal(b, &out)
	return out
}

func deepCopy(t *testing.T, m map[string]any) map[string]any {
	t.Helper()
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	var out map[string]any
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestRetentionAwareVerify: a run whose published directory was removed
// past its destination's retention_days is verified from its record and
// evidence and reported as pruned; within retention the same removal
// fails; with its evidence gone too, what is no longer checkable is said.
func TestRetentionAwareVerify(t *testing.T) {
	e := newEnv(t, vectorUsers, vectorWithdrawal)
	reg := filepath.Join(e.state, "destinations.yaml")
	b, _ := os.ReadFile(reg)
	writeFile(t, reg, strings.Replace(string(b), "retention_days: 90", "retention_days: 3", 1), 0o644)
	for _, asOf := range []string{"2026-11-01T00:00:00Z", "2026-11-02T00:00:00Z", "2026-11-03T00:00:00Z"} {
		if _, stderr, code := execute(t, e.args("--as-of", asOf, "--allow-drop")...); code != 0 {
			t.Fatal(stderr)
		}
	}
	runs := l0(t, e.state)
	verify := func(args ...string) (string, string, int) {
		return execute(t, append([]string{"audit", "verify", "--state", e.state}, args...)...)
	}
	// The first night's published run is removed, as a retention job would.
	if err := os.RemoveAll(publishedDir(e.state, runs[0])); err != nil {
		t.Fatal(err)
	}
	out, stderr, code := verify()
	if code != 0 || !strings.Contains(out, "pruned: record 0, run "+runs[0].RunID) || !strings.Contains(out, "checked from the private evidence") {
		t.Fatalf("a run removed past its retention: exit %d\n%s%s", code, out, stderr)
	}
	// The person's proof still stands for the pruned run, from the evidence.
	pout, stderr, code := execute(t, "audit", "subject", "--state", e.state, "--key", e.key, "--phone", "650.555.1212", "--country", "us", "--json")
	var rep auditor.SubjectReport
	if code != 0 || json.Unmarshal([]byte(pout), &rep) != nil || rep.Runs[0].Status != "exported" {
		t.Fatalf("subject with a pruned run: exit %d %s", code, stderr)
	}
	// Evidence changed after the files are gone: caught.
	ev := statedir.Evidence(e.state, runs[0].RunID)
	saved, _ := os.ReadFile(ev)
	os.WriteFile(ev, saved[:len(saved)-10], 0o600)
	if _, stderr, code := verify(); code != exitData {
		t.Errorf("a pruned run with damaged evidence: exit %d, %s", code, stderr)
	}
	os.WriteFile(ev, saved, 0o600)
	// Its evidence removed too: still not broken, and it says what is lost.
	if err := os.Remove(ev); err != nil {
		t.Fatal(err)
	}
	out, stderr, code = verify()
	if code != 0 || !strings.Contains(out, "evidence was removed too") {
		t.Fatalf("a run pruned with its evidence: exit %d\n%s%s", code, out, stderr)
	}
	// Within the retention (the records carry it), the same removal is a
	// broken state.
	rewriteRetention(t, e.state, 3650)
	if _, stderr, code := verify(); code != exitData || !strings.Contains(stderr, "within its retention") {
		t.Errorf("a run removed within its retention: exit %d, %s", code, stderr)
	}
	if ok, out := independent(t, "verify", "--state", e.state, "--verifier", filepath.Join(statedir.Keys(e.state), audit.VerifierFile), "--delivery", e.out); ok {
		t.Errorf("the independent verifier accepts a run removed within its retention: %s", out)
	}
	// A later prune record naming it (what a retention job records) makes
	// it pruned whatever the retention says; one naming another run does not.
	l, _ := audit.Open(statedir.Audit(e.state))
	prune := &audit.Record{Version: audit.RecordVersionV2, Type: audit.TypePrune, Time: "2026-12-01T00:00:00Z", ToolVersion: "test",
		Destination: "meta-ads", PrunedRuns: []string{"20261101T000000Z-000000000000"}, RetentionDays: 3650}
	rewriteLog(t, e.state, append(l.Records(), prune))
	if _, _, code := verify(); code != exitData {
		t.Errorf("a prune record naming another run: exit %d", code)
	}
	prune.PrunedRuns = []string{runs[0].RunID}
	rewriteLog(t, e.state, append(l.Records(), prune))
	out, stderr, code = verify()
	if code != 0 || !strings.Contains(out, "pruned by record 3") {
		t.Errorf("a run named by a prune record: exit %d\n%s%s", code, out, stderr)
	}
	if ok, out := independent(t, "verify", "--state", e.state, "--verifier", filepath.Join(statedir.Keys(e.state), audit.VerifierFile), "--delivery", e.out); !ok {
		t.Errorf("the independent verifier refuses a run named by a prune record: %s", out)
	}
	// The person's proof answers the pruned run "unknown", which check-proof
	// accepts because the log shows the prune, and says so.
	vkey, _ := os.ReadFile(filepath.Join(statedir.Keys(e.state), audit.VerifierFile))
	pout, stderr, code = execute(t, "audit", "subject", "--state", e.state, "--key", e.key, "--phone", "650.555.1212", "--country", "us", "--json")
	if code != 0 {
		t.Fatalf("subject after the prune: %s", stderr)
	}
	proof := filepath.Join(t.TempDir(), "proof.json")
	writeFile(t, proof, pout, 0o644)
	out, stderr, code = execute(t, "audit", "check-proof", proof, "--verifier", strings.TrimSpace(string(vkey)))
	if code != 0 || !strings.Contains(out, "UNKNOWN") || !strings.Contains(out, "pruned by record 3") {
		t.Errorf("check-proof of a pruned run's unknown answer: exit %d\n%s%s", code, out, stderr)
	}
	if ok, nout := independent(t, "check-proof", proof, "--verifier", strings.TrimSpace(string(vkey))); !ok {
		t.Errorf("the independent verifier refuses the pruned run's unknown answer: %s", nout)
	}
}

// rewriteRetention sets every committed record's retention_days and signs
// the log again with the state's key.
func rewriteRetention(t *testing.T, state string, days int64) {
	t.Helper()
	l, err := audit.Open(statedir.Audit(state))
	if err != nil {
		t.Fatal(err)
	}
	recs := l.Records()
	for _, r := range recs {
		if r.Authorization != nil {
			r.Authorization.RetentionDays = days
		}
	}
	rewriteLog(t, state, recs)
}

// TestWitnessCosigning runs against the real litewitness that
// scripts/witness.sh starts: the run has its checkpoint cosigned, a
// witness that is down does not stop the run, shows in audit verify and is
// asked again by the next run, and --witness/--min-witnesses require them.
func TestWitnessCosigning(t *testing.T) {
	url := os.Getenv("AUDIENCEMATCH_TEST_WITNESS_URL")
	if url == "" {
		t.Skip("AUDIENCEMATCH_TEST_WITNESS_URL is not set: run eval \"$(scripts/witness.sh start)\" first (scripts/test.sh does)")
	}
	wkey := os.Getenv("AUDIENCEMATCH_TEST_WITNESS_VKEY")
	e := newEnv(t, vectorUsers, vectorWithdrawal)
	// Each test log needs its own origin at the witness: rename the key.
	origin := "audiencematch.test/" + strings.ToLower(strings.ReplaceAll(t.Name(), "/", "-")) + "-" + hex.EncodeToString([]byte(e.dir))[len(hex.EncodeToString([]byte(e.dir)))-12:]
	vkey := newLogKey(t, e.state, origin)
	ctl, db := os.Getenv("AUDIENCEMATCH_TEST_WITNESS_CTL"), os.Getenv("AUDIENCEMATCH_TEST_WITNESS_DB")
	for _, args := range [][]string{{"add-log", "-db", db, "-origin", origin}, {"add-key", "-db", db, "-origin", origin, "-key", vkey}} {
		if out, err := exec.Command(ctl, args...).CombinedOutput(); err != nil {
			t.Fatalf("witnessctl %v: %v %s", args, err, out)
		}
	}
	wv, err := witness.NewCosignatureVerifier(wkey)
	if err != nil {
		t.Fatal(err)
	}
	config := func(url string) {
		writeFile(t, filepath.Join(e.state, witness.ConfigFile), fmt.Sprintf("version: %s\nwitnesses:\n  - name: %s\n    url: %s\n    key: %s\n",
			witness.ConfigVersion, wv.Name(), url, wkey), 0o644)
	}
	// Night one: the witness is down (nothing listens there).
	config("http://127.0.0.1:1")
	if _, stderr, code := execute(t, e.args()...); code != 0 || !strings.Contains(stderr, "witness did not cosign") {
		t.Fatalf("a run with its witness down: exit %d, %s", code, stderr)
	}
	verify := func(args ...string) (string, string, int) {
		return execute(t, append([]string{"audit", "verify", "--state", e.state, "--verifier", vkey}, args...)...)
	}
	if out, stderr, code := verify(); code != 0 || !strings.Contains(out, "NOT cosigned by the configured witness "+wv.Name()) {
		t.Errorf("verify with the witness down: exit %d\n%s%s", code, out, stderr)
	}
	if _, stderr, code := verify("--witness", wkey); code != exitData || !strings.Contains(stderr, "min-witnesses") {
		t.Errorf("--witness required while it was down: exit %d, %s", code, stderr)
	}
	// Night two: it is up again, and cosigns.
	config(url)
	if _, stderr, code := execute(t, e.args("--as-of", "2026-11-02T00:00:00Z", "--allow-drop")...); code != 0 {
		t.Fatal(stderr)
	}
	out, stderr, code := verify("--witness", wkey)
	if code != 0 || !strings.Contains(out, "cosigned by witness "+wv.Name()) {
		t.Fatalf("verify --witness after the witness came back: exit %d\n%s%s", code, out, stderr)
	}
	// Another witness required: one of two is not enough, unless allowed.
	other := testWitnessKey(t, "other.example/w")
	if _, _, code := verify("--witness", wkey, "--witness", other); code != exitData {
		t.Errorf("two witnesses required, one cosigned: exit %d", code)
	}
	if _, stderr, code := verify("--witness", wkey, "--witness", other, "--min-witnesses", "1"); code != 0 {
		t.Errorf("--min-witnesses 1 of 2: %s", stderr)
	}
	// A day with nothing new (the date rule) still asks a witness that
	// lacks the checkpoint: here it has it already.
	cp, _ := os.ReadFile(filepath.Join(statedir.Audit(e.state), audit.CheckpointFile))
	if n := strings.Count(string(cp), "\n— "); n != 2 {
		t.Errorf("the checkpoint holds %d signature lines, want the log's and the witness's:\n%s", n, cp)
	}
	// The proof a subject is handed carries the cosignature.
	pout, _, _ := execute(t, "audit", "subject", "--state", e.state, "--verifier", vkey, "--key", e.key, "--phone", "650.555.1212", "--country", "us", "--json")
	path := writeFile(t, filepath.Join(e.dir, "proof.json"), pout, 0o644)
	if out, stderr, code := execute(t, "audit", "check-proof", path, "--verifier", vkey, "--witness", wkey); code != 0 || !strings.Contains(out, "cosigned by witness") {
		t.Errorf("check-proof --witness: exit %d\n%s%s", code, out, stderr)
	}
	// The independent verifier checks litewitness's cosignature too.
	if ok, out := independent(t, "verify", "--state", e.state, "--verifier", vkey, "--delivery", e.out, "--witness", wkey); !ok || !strings.Contains(out, "cosigned by 1 witness") {
		t.Errorf("independent verify --witness: %s", out)
	}
	if ok, out := independent(t, "verify", "--state", e.state, "--verifier", vkey, "--delivery", e.out, "--witness", other); ok {
		t.Errorf("independent verify accepts a witness that never cosigned: %s", out)
	}
}

// newLogKey replaces the state's log keys with a fresh pair named origin
// (before any run), and returns the verifier key.
func newLogKey(t *testing.T, state, origin string) string {
	t.Helper()
	keys := statedir.Keys(state)
	os.Remove(filepath.Join(keys, audit.SignerFile))
	os.Remove(filepath.Join(keys, audit.VerifierFile))
	vkey, created, err := audit.InitKeys(keys, origin)
	if err != nil || !created {
		t.Fatalf("InitKeys: %v %v", created, err)
	}
	if _, err := note.NewVerifier(vkey); err != nil {
		t.Fatal(err)
	}
	return vkey
}

// testWitnessKey is a cosignature/v1 verifier key of a witness that never
// signs anything.
func testWitnessKey(t *testing.T, name string) string {
	t.Helper()
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	key := append([]byte{0x04}, pub...)
	sum := sha256.Sum256(append(append([]byte(name), '\n'), key...))
	v, err := witness.NewCosignatureVerifier(fmt.Sprintf("%s+%x+%s", name, sum[:4], base64.StdEncoding.EncodeToString(key)))
	if err != nil {
		t.Fatal(err)
	}
	return v.String()
}
