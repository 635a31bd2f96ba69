package pipeline_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/note"

	"audiencematch/fixtures"
	"audiencematch/hashing"
	"audiencematch/pipeline"
	"audiencematch/pipeline/auditor"
	"audiencematch/pipeline/idcache"
)

// oprfDay runs day n's tables under oprf-ristretto255 and returns the run
// with its "oprf identifiers" log line (cached and evaluated counts) and
// whether it discarded the cache.
func oprfDay(t *testing.T, dir string, n int, d *day, s note.Signer, master []byte) (*pipeline.Result, map[string]any, string) {
	t.Helper()
	st, err := fixtures.WriteTables(filepath.Join(dir, fmt.Sprintf("in-%d", n)), d.users, d.events)
	if err != nil {
		t.Fatal(err)
	}
	mk, _ := hashing.NewMasterKey(master)
	k, err := hashing.MasterKeyOf(mk).ForScheme(hashing.OPRFRistretto255, "meta-ads")
	if err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	out := filepath.Join(dir, "out")
	res, err := pipeline.Run(context.Background(), pipeline.Config{
		Users: st.UsersPath, Consent: st.EventsPath, Destination: "meta-ads", Scheme: hashing.OPRFRistretto255, Key: k,
		Out: out, State: filepath.Join(dir, "state"), Rules: fixtureRules(d.asOf), MaxRejectRate: 0.05,
		ToolVersion: "test", AuditSigner: s, AuditVerifier: verifierOf[s], Registry: testRegistry(out, "meta-ads", hashing.OPRFRistretto255),
		Log: slog.New(slog.NewJSONHandler(&logs, nil)),
	})
	if err != nil {
		t.Fatalf("day %d: %v", n, err)
	}
	var counts map[string]any
	discarded := ""
	for _, line := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) != nil {
			continue
		}
		switch m["msg"] {
		case "oprf identifiers":
			counts = m
		case "discarded the identifier cache: every number is evaluated again":
			discarded, _ = m["reason"].(string)
		}
	}
	if counts == nil {
		t.Fatalf("day %d: no oprf identifiers log line in %s", n, logs.String())
	}
	return res, counts, discarded
}

// TestOPRFNights: three nights and a key rotation under oprf-ristretto255.
// Each snapshot is the oracle's (circl's evaluation straight from the
// contract's text); the second night evaluates only what the first did not
// (the cache); deltas are exact; a tampered cache is discarded, never used;
// a new key sends the full snapshot as adds and the old ids as removes
// under the old key_id; the log verifies.
func TestOPRFNights(t *testing.T) {
	s, v := signer(t)
	dir := t.TempDir()
	users, events := generateSeed(1500, 26)
	d1 := &day{users: users, events: events, asOf: fixtures.DefaultAsOf}
	oracleFor := func(d *day, master []byte) []string {
		return sortedIDs(computeOracle(d.users, d.events, oracleParams{asOf: d.asOf, purpose: fixtures.DefaultPurpose,
			minPolicy: fixtures.DefaultMinPolicyVersion, maxAge: 395 * 24 * time.Hour, master: master, dest: "meta-ads", scheme: "oprf-ristretto255"}))
	}
	num := func(c float64) int64 { return int64(c) }
	count := func(m map[string]any, k string) int64 { f, _ := m[k].(float64); return num(f) }
	const scheme = hashing.OPRFRistretto255

	r1, c1, _ := oprfDay(t, dir, 1, d1, s, auditMaster)
	snap1 := readSet(t, r1.PublishedDir, r1.Manifest.Files, scheme)
	if want := oracleFor(d1, auditMaster); !slices.Equal(snap1, want) || len(want) == 0 {
		t.Fatalf("night 1: %d ids, the oracle %d (or they differ)", len(snap1), len(want))
	}
	if count(c1, "cached") != 0 || count(c1, "evaluated") == 0 {
		t.Fatalf("night 1: %v, want every number evaluated", c1)
	}
	cachePath := idcache.Path(filepath.Join(dir, "state"), "meta-ads")
	if st, err := os.Stat(cachePath); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("the cache after night 1: %v, %v", st, err)
	}

	// Night 2: 20 new numbers with consent, 10 withdrawals.
	d2 := d1.clone(d1.asOf.Add(24 * time.Hour))
	for i := range 20 {
		u := fmt.Sprintf("u-new-%02d", i)
		d2.users = append(d2.users, fixtures.User{UserID: u, Phone: fmt.Sprintf("+44 7400 9%05d", i), Country: ""})
		d2.event(u, "grant", d1.asOf.Add(time.Hour))
	}
	exported := map[string]bool{}
	for _, hs := range computeOracle(d1.users, d1.events, oracleParams{asOf: d1.asOf, purpose: fixtures.DefaultPurpose,
		minPolicy: fixtures.DefaultMinPolicyVersion, maxAge: 395 * 24 * time.Hour, master: auditMaster, dest: "meta-ads", scheme: "sha256-e164"}).ids {
		exported[hs[0]] = true
	}
	withdrawn := 0
	for _, u := range d1.users {
		if exported[u.UserID] && withdrawn < 10 {
			d2.event(u.UserID, "withdraw", d1.asOf.Add(time.Hour))
			withdrawn++
		}
	}
	r2, c2, why2 := oprfDay(t, dir, 2, d2, s, auditMaster)
	snap2 := readSet(t, r2.PublishedDir, r2.Manifest.Files, scheme)
	if want := oracleFor(d2, auditMaster); !slices.Equal(snap2, want) {
		t.Fatalf("night 2: %d ids, the oracle %d (or they differ)", len(snap2), len(want))
	}
	if why2 != "" || count(c2, "evaluated") != 20 || count(c2, "cached") != count(c1, "evaluated") {
		t.Fatalf("night 2: %v (discarded %q); want the 20 new numbers evaluated and night 1's %d from the cache", c2, why2, count(c1, "evaluated"))
	}
	adds := readSet(t, r2.PublishedDir, r2.Manifest.Adds.Files, scheme)
	removes := readSet(t, r2.PublishedDir, r2.Manifest.Removes.Files, scheme)
	if !slices.Equal(adds, minus(snap2, snap1)) || !slices.Equal(removes, minus(snap1, snap2)) || len(adds) != 20 || len(removes) != 10 {
		t.Fatalf("night 2: %d adds and %d removes, want 20 and 10", len(adds), len(removes))
	}

	// Night 3: a tampered cache is discarded and every number evaluated.
	b, _ := os.ReadFile(cachePath)
	b[len(b)/2] ^= 1
	if err := os.WriteFile(cachePath, b, 0o600); err != nil {
		t.Fatal(err)
	}
	d3 := d2.clone(d2.asOf.Add(24 * time.Hour))
	r3, c3, why3 := oprfDay(t, dir, 3, d3, s, auditMaster)
	if !strings.Contains(why3, "MAC") || count(c3, "cached") != 0 {
		t.Fatalf("night 3 over a tampered cache: %v, discarded %q", c3, why3)
	}
	snap3 := readSet(t, r3.PublishedDir, r3.Manifest.Files, scheme)
	if !slices.Equal(snap3, snap2) {
		t.Fatal("night 3: the same audience gave other ids")
	}

	// Night 4: a new master key. The cache of the old key_id is discarded;
	// the full snapshot goes as adds, night 3's as removes under its key_id.
	newMaster := bytes.Repeat([]byte{0x26}, 32)
	d4 := d3.clone(d3.asOf.Add(24 * time.Hour))
	r4, c4, why4 := oprfDay(t, dir, 4, d4, s, newMaster)
	if !strings.Contains(why4, "another key_id") || count(c4, "cached") != 0 {
		t.Fatalf("night 4 after a rotation: %v, discarded %q", c4, why4)
	}
	m3, m4 := r3.Manifest, r4.Manifest
	snap4 := readSet(t, r4.PublishedDir, m4.Files, scheme)
	if want := oracleFor(d4, newMaster); !slices.Equal(snap4, want) || m4.KeyID == m3.KeyID {
		t.Fatalf("night 4: %d ids, the oracle %d; key_id %s after %s", len(snap4), len(want), m4.KeyID, m3.KeyID)
	}
	adds = readSet(t, r4.PublishedDir, m4.Adds.Files, scheme)
	removes = readSet(t, r4.PublishedDir, m4.Removes.Files, scheme)
	if !slices.Equal(adds, snap4) || !slices.Equal(removes, snap3) || m4.Removes.KeyID != m3.KeyID || m4.Removes.Scheme != string(scheme) {
		t.Fatalf("after rotation: %d adds of %d, %d removes of %d, removes under %s", len(adds), len(snap4), len(removes), len(snap3), m4.Removes.KeyID)
	}
	if _, err := auditor.VerifyAudit(filepath.Join(dir, "state"), v, nil); err != nil {
		t.Fatalf("audit verify: %v", err)
	}
}
