package pipeline_test

import (
	"context"
	"encoding/csv"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"github.com/apache/arrow-go/v18/parquet/file"
	"github.com/apache/arrow-go/v18/parquet/pqarrow"
	"github.com/nyaruka/phonenumbers"
	"github.com/parquet-go/parquet-go"

	"audiencematch/consent/audit"
	"audiencematch/fixtures"
	"audiencematch/hashing"
	"audiencematch/internal/fsutil"
	"audiencematch/pipeline"
	"audiencematch/pipeline/auditor"
	"audiencematch/pipeline/errkind"
	"audiencematch/pipeline/oprfx"
	"audiencematch/pipeline/statedir"
)

// TestOPRFExchangeEndToEnd runs both sides of the oblivious scheme on
// fixtures: the exporter publishes a run under oprf-ristretto255; the
// platform blinds a list of its own (numbers of the audience, numbers of
// users without consent, numbers the exporter has never seen, invalid
// ones), the exporter evaluates it within its budget, the platform
// finalizes and matches against the published snapshot. The matched rows
// are exactly those whose number the contract exports, computed apart from
// package hashing; a request over the budget and one with the identity
// element are refused and recorded; the log verifies.
func TestOPRFExchangeEndToEnd(t *testing.T) {
	ctx := context.Background()
	s, v := signer(t)
	dir := t.TempDir()
	users, events := generateSeed(3000, 9497)
	st, err := fixtures.WriteTables(filepath.Join(dir, "in"), users, events)
	if err != nil {
		t.Fatal(err)
	}
	mk, _ := hashing.NewMasterKey(auditMaster)
	key, err := hashing.MasterKeyOf(mk).ForScheme(hashing.OPRFRistretto255, "meta-ads")
	if err != nil {
		t.Fatal(err)
	}
	out, state := filepath.Join(dir, "out"), filepath.Join(dir, "state")
	reg := testRegistry(out, "meta-ads", hashing.OPRFRistretto255)
	res, err := pipeline.Run(ctx, pipeline.Config{
		Users: st.UsersPath, Consent: st.EventsPath, Destination: "meta-ads", Scheme: hashing.OPRFRistretto255, Key: key,
		Out: out, State: state, Rules: fixtureRules(fixtures.DefaultAsOf), MaxRejectRate: 0.05,
		ToolVersion: "test", AuditSigner: s, AuditVerifier: v, Registry: reg,
	})
	if err != nil {
		t.Fatalf("run (leak guard included): %v", err)
	}

	// The platform's list, with columns of its own.
	exported := map[string]bool{}
	for e164 := range computeOracle(users, events, oracleParams{asOf: fixtures.DefaultAsOf, purpose: fixtures.DefaultPurpose,
		minPolicy: fixtures.DefaultMinPolicyVersion, maxAge: 395 * 24 * time.Hour, dest: "meta-ads", scheme: "e164"}).ids {
		exported[e164] = true
	}
	var rows [][]string
	for i, u := range users[:900] {
		if !u.Broken && !strings.ContainsAny(u.Phone, "\"\r\n") {
			rows = append(rows, []string{fmt.Sprintf("c-%04d", i), u.Phone, u.Country, "seg-a"})
		}
	}
	for i := range 40 { // numbers the exporter has never seen
		rows = append(rows, []string{fmt.Sprintf("x-%04d", i), fmt.Sprintf("+61 412 7%05d", i), "", "seg-b"})
	}
	rows = append(rows, []string{"bad-1", "not a number", "US", "seg-c"}, []string{"bad-2", "", "", "seg-c"})
	var wantMatched []string
	valid, inAudience, notInAudience := 0, 0, 0
	for _, r := range rows {
		n, err := phonenumbers.Parse(r[1], strings.ToUpper(r[2]))
		if err != nil || !phonenumbers.IsValidNumber(n) || len(r[1]) > 250 {
			continue
		}
		valid++
		if exported[phonenumbers.Format(n, phonenumbers.E164)] {
			wantMatched = append(wantMatched, r[0])
			inAudience++
		} else {
			notInAudience++
		}
	}
	if inAudience < 100 || notInAudience < 100 {
		t.Fatalf("the list has %d numbers of the audience and %d others: too few to prove anything", inAudience, notInAudience)
	}
	numbers := filepath.Join(dir, "platform", "numbers.csv")
	os.MkdirAll(filepath.Dir(numbers), 0o755)
	writeCSVFile(t, numbers, append([][]string{{"customer_id", "phone", "country", "segment"}}, rows...))

	pdir := filepath.Dir(numbers)
	request, secrets, response := filepath.Join(pdir, "request.parquet"), filepath.Join(pdir, "blinds.parquet"), filepath.Join(pdir, "response.parquet")
	br, err := oprfx.Blind(ctx, "meta-ads", numbers, request, secrets)
	if err != nil {
		t.Fatal(err)
	}
	if br.Blinded != int64(valid) || br.Invalid != int64(len(rows)-valid) {
		t.Fatalf("blinded %d, invalid %d; want %d and %d", br.Blinded, br.Invalid, valid, len(rows)-valid)
	}
	if st, _ := os.Stat(secrets); st.Mode().Perm() != 0o600 {
		t.Errorf("secrets mode %v, want 0600", st.Mode().Perm())
	}
	if _, err := oprfx.Blind(ctx, "meta-ads", numbers, request, secrets); !errors.Is(err, errkind.ErrUsage) {
		t.Errorf("blind over existing secrets: %v, want a refusal to overwrite", err)
	}

	budget := int64(valid + 10)
	reg.Destinations[0].OPRFMaxEvaluations = &budget
	now := time.Date(2026, 12, 5, 3, 0, 0, 0, time.UTC)
	ecfg := oprfx.EvaluateConfig{Destination: "meta-ads", Key: key, Registry: reg, State: state, Request: request, Response: response,
		ToolVersion: "test", AuditSigner: s, AuditVerifier: v, Now: func() time.Time { return now }}
	er, err := oprfx.Evaluate(ctx, ecfg)
	if err != nil {
		t.Fatalf("evaluate: %v", err)
	}
	if er.Elements != int64(valid) || er.KeyID != res.Manifest.KeyID {
		t.Fatalf("evaluated %d elements under %s, want %d under %s", er.Elements, er.KeyID, valid, res.Manifest.KeyID)
	}

	ids := filepath.Join(pdir, "ids.parquet")
	if _, err := oprfx.Finalize(ctx, "meta-ads", numbers, secrets, response, ids); err != nil {
		t.Fatal(err)
	}
	matched := filepath.Join(pdir, "matched.parquet")
	mr, err := oprfx.Match(ctx, ids, res.PublishedDir, matched)
	if err != nil {
		t.Fatal(err)
	}
	got := readStringColumn(t, matched, "customer_id")
	slices.Sort(got)
	slices.Sort(wantMatched)
	if !slices.Equal(got, wantMatched) || mr.Matched != int64(len(wantMatched)) {
		t.Fatalf("match kept %d rows, the contract exports the numbers of %d of them (or they differ)", len(got), len(wantMatched))
	}
	if seg := readStringColumn(t, matched, "segment"); len(seg) != len(got) || seg[0] != "seg-a" {
		t.Errorf("the platform's own columns are not kept: %v", seg[:min(3, len(seg))])
	}

	// A snapshot part that is not the one its manifest lists is refused.
	tampered := filepath.Join(dir, "tampered-run")
	if err := os.MkdirAll(tampered, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := fsutil.CopyDir(res.PublishedDir, tampered); err != nil {
		t.Fatal(err)
	}
	part := filepath.Join(tampered, res.Manifest.Files[0].Path)
	b, _ := os.ReadFile(part)
	os.Remove(part)
	os.WriteFile(part, append(b[:len(b)-1:len(b)-1], b[len(b)-1]^1), 0o644)
	if _, err := oprfx.Match(ctx, ids, tampered, filepath.Join(pdir, "m2.parquet")); !errors.Is(err, errkind.ErrData) || !strings.Contains(err.Error(), "manifest") {
		t.Errorf("match against a changed part: %v, want a data error", err)
	}

	// A malformed request: the identity element in row 2.
	bad := filepath.Join(pdir, "bad-request.parquet")
	writeElements(t, bad, [][32]byte{[32]byte(mustDecodeHex(t, "e2f2ae0a6abc4e71a884a961c500515f58e30b6aa582dd8db6a65945e08d2d76")), {}, {1}})
	ecfg.Request, ecfg.Response = bad, filepath.Join(pdir, "bad-response.parquet")
	if _, err := oprfx.Evaluate(ctx, ecfg); !errors.Is(err, errkind.ErrData) || !strings.Contains(err.Error(), "request row 2") || !strings.Contains(err.Error(), "identity") {
		t.Errorf("identity element: %v, want a data error naming row 2", err)
	}
	if _, err := os.Stat(ecfg.Response); !os.IsNotExist(err) {
		t.Error("a refused request has a response")
	}
	// Over the budget: the same request again.
	ecfg.Request, ecfg.Response = request, filepath.Join(pdir, "response-2.parquet")
	if _, err := oprfx.Evaluate(ctx, ecfg); !errors.Is(err, errkind.ErrRejected) || !strings.Contains(err.Error(), "oprf_max_evaluations") {
		t.Fatalf("over the budget: %v, want a refusal (exit 77)", err)
	}
	if _, err := os.Stat(ecfg.Response); !os.IsNotExist(err) {
		t.Error("a request over the budget has a response")
	}
	// The window rolls: a day later the budget is back.
	now = now.Add(24*time.Hour + time.Second)
	if _, err := oprfx.Evaluate(ctx, ecfg); err != nil {
		t.Fatalf("a day later: %v", err)
	}

	l, err := audit.Open(statedir.Audit(state))
	if err != nil {
		t.Fatal(err)
	}
	var kinds []string
	for _, r := range l.Records() {
		if r.Type == audit.TypeOPRFEvaluated {
			k := "answered"
			if r.Reason != "" {
				k = "refused"
			}
			kinds = append(kinds, fmt.Sprintf("%s:%d", k, r.Elements))
			if r.KeyID != res.Manifest.KeyID || r.Destination != "meta-ads" || len(r.RequestSHA256) != 64 {
				t.Errorf("record %+v", r)
			}
		}
	}
	want := []string{fmt.Sprintf("answered:%d", valid), "refused:3", fmt.Sprintf("refused:%d", valid), fmt.Sprintf("answered:%d", valid)}
	if !slices.Equal(kinds, want) {
		t.Errorf("oprf_evaluated records %v, want %v", kinds, want)
	}
	if _, err := auditor.VerifyAudit(state, v, verifyOpts(state, nil)); err != nil {
		t.Fatalf("audit verify: %v", err)
	}
}

func writeCSVFile(t *testing.T, path string, rows [][]string) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	w := csv.NewWriter(f)
	w.WriteAll(rows)
	if err := errors.Join(w.Error(), f.Close()); err != nil {
		t.Fatal(err)
	}
}

func writeElements(t *testing.T, path string, elems [][32]byte) {
	t.Helper()
	type row struct {
		Blinded [32]byte `parquet:"blinded"`
	}
	var rows []row
	for _, e := range elems {
		rows = append(rows, row{e})
	}
	if err := parquet.WriteFile(path, rows); err != nil {
		t.Fatal(err)
	}
}

func mustDecodeHex(t *testing.T, s string) []byte {
	t.Helper()
	var b []byte
	if _, err := fmt.Sscanf(s, "%x", &b); err != nil {
		t.Fatal(err)
	}
	return b
}

// readStringColumn reads a text column with arrow-go, an independent reader.
func readStringColumn(t *testing.T, path, name string) []string {
	t.Helper()
	pf, err := file.OpenParquetFile(path, false)
	if err != nil {
		t.Fatal(err)
	}
	defer pf.Close()
	fr, err := pqarrow.NewFileReader(pf, pqarrow.ArrowReadProperties{}, memory.DefaultAllocator)
	if err != nil {
		t.Fatal(err)
	}
	tbl, err := fr.ReadTable(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer tbl.Release()
	idx := tbl.Schema().FieldIndices(name)
	if len(idx) != 1 {
		t.Fatalf("%s: no column %q in %v", path, name, tbl.Schema())
	}
	var out []string
	for _, c := range tbl.Column(idx[0]).Data().Chunks() {
		a := c.(*array.String)
		for i := range a.Len() {
			out = append(out, a.Value(i))
		}
	}
	return out
}
