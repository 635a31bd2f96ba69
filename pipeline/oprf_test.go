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

	"github.com/nyaruka/phonenumbers"
	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"
	"golang.org/x/mod/sumdb/note"

	"audiencematch/consent/audit"
	"audiencematch/fixtures"
	"audiencematch/hashing"
	"audiencematch/pipeline"
	"audiencematch/pipeline/auditor"
	"audiencematch/pipeline/idcache"
	"audiencematch/pipeline/statedir"
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
	if _, err := auditor.VerifyAudit(filepath.Join(dir, "state"), v, verifyOpts(filepath.Join(dir, "state"), nil)); err != nil {
		t.Fatalf("audit verify: %v", err)
	}
}

// TestOPRFShardedIdenticalToUnsharded: under oprf-ristretto255, two shards
// and a commit publish byte for byte what one run publishes, and the log
// verifies.
func TestOPRFShardedIdenticalToUnsharded(t *testing.T) {
	dir, st := shardFixtures(t, fixtures.Options{Users: 3000, Seed: 7})
	ctx := context.Background()
	mk, _ := hashing.NewMasterKey(auditMaster)
	k, err := hashing.MasterKeyOf(mk).ForScheme(hashing.OPRFRistretto255, "meta-ads")
	if err != nil {
		t.Fatal(err)
	}
	config := func(sub string) pipeline.Config {
		cfg := shardConfig(t, filepath.Join(dir, sub), st)
		cfg.Scheme, cfg.Key = hashing.OPRFRistretto255, k
		cfg.Registry = testRegistry(cfg.Out, "meta-ads", hashing.OPRFRistretto255)
		return cfg
	}
	base, err := pipeline.Run(ctx, config("whole"))
	if err != nil {
		t.Fatal(err)
	}
	cfg := config("sharded")
	for i := range 2 {
		if _, err := runShard(ctx, cfg, i, 2); err != nil {
			t.Fatal(err)
		}
	}
	res, err := pipeline.Commit(ctx, cfg, 2)
	if err != nil {
		t.Fatal(err)
	}
	sameFiles(t, "published", filesUnder(t, res.PublishedDir), filesUnder(t, base.PublishedDir))
	if _, err := auditor.VerifyAudit(cfg.State, cfg.AuditVerifier, verifyOpts(cfg.State, nil)); err != nil {
		t.Errorf("verify: %v", err)
	}
}

// TestOPRFSubject: audit subject under oprf-ristretto255, with the master
// key or the destination's oprf key file: an exported number's identifier
// is the oracle's and its inclusion proof verifies; an hmac-sha256
// destination key computes nothing and says why.
func TestOPRFSubject(t *testing.T) {
	s, v := signer(t)
	dir := t.TempDir()
	users, events := generateSeed(1500, 31)
	d := &day{users: users, events: events, asOf: fixtures.DefaultAsOf}
	oprfDay(t, dir, 1, d, s, auditMaster)
	state := filepath.Join(dir, "state")
	exported := computeOracle(users, events, oracleParams{asOf: d.asOf, purpose: fixtures.DefaultPurpose,
		minPolicy: fixtures.DefaultMinPolicyVersion, maxAge: 395 * 24 * time.Hour, dest: "meta-ads", scheme: "e164"}).ids
	mk, _ := hashing.NewMasterKey(auditMaster)
	kp := filepath.Join(t.TempDir(), "meta-ads.oprf.key")
	if _, err := hashing.WriteSchemeKey(kp, mk, hashing.OPRFRistretto255, "meta-ads"); err != nil {
		t.Fatal(err)
	}
	oprfKey, err := hashing.LoadKey(kp)
	if err != nil {
		t.Fatal(err)
	}
	hmacKey := destKeyFile(t, mk, "meta-ads")
	keys := []hashing.Key{hashing.MasterKeyOf(mk), oprfKey}
	h := rfc6962.DefaultHasher
	l, _ := audit.Open(statedir.Audit(state))
	checked, hmacChecked := map[bool]int{}, false
	for i, u := range users {
		if u.Broken || u.UserID == "" || checked[true] >= 3 && checked[false] >= 3 {
			continue
		}
		num, err := phonenumbers.Parse(u.Phone, strings.ToUpper(u.Country))
		if err != nil || !phonenumbers.IsValidNumber(num) {
			continue
		}
		e164 := phonenumbers.Format(num, phonenumbers.E164)
		_, want := exported[e164]
		if checked[want] >= 3 {
			continue
		}
		checked[want]++
		rep, err := auditor.Subject(state, verifyOpts(state, nil).Roots, v, auditor.SubjectQuery{Phone: u.Phone, Country: u.Country, Key: &keys[i%2]})
		if err != nil || len(rep.Runs) != 1 {
			t.Fatalf("subject: %+v, %v", rep, err)
		}
		r := rep.Runs[0]
		if (r.Status == "exported") != want || r.ID != fmt.Sprintf("%x", oracleOPRF(auditMaster, "meta-ads", e164)) {
			t.Fatalf("status %s, id %s; oracle exported=%v", r.Status, r.ID, want)
		}
		if want {
			rec := l.Records()[r.RecordIndex]
			root, id := mustDecodeHex(t, rec.IDs.Root), mustDecodeHex(t, r.ID)
			if err := proof.VerifyInclusion(h, uint64(r.Membership.Index), uint64(rec.IDs.Size), h.HashLeaf(id), hashes(r.Membership.Proof), root); err != nil {
				t.Fatalf("identifier inclusion: %v", err)
			}
			if len(r.Evidence) == 0 || !r.Evidence[0].Primary {
				t.Error("exported without its evidence")
			}
		}
		if !hmacChecked {
			hmacChecked = true
			rep, err := auditor.Subject(state, verifyOpts(state, nil).Roots, v, auditor.SubjectQuery{Phone: u.Phone, Country: u.Country, Key: &hmacKey})
			if err != nil || rep.Runs[0].Status != "unknown" || !strings.Contains(rep.Runs[0].Note, "keys derive --scheme oprf-ristretto255") {
				t.Fatalf("an hmac-sha256 key: %+v, %v", rep.Runs[0], err)
			}
		}
	}
	if checked[true] < 3 || checked[false] < 3 {
		t.Fatalf("checked %v subjects", checked)
	}
}

// TestOPRFShardCaches: each shard keeps a cache of its own, so the next
// night's shards evaluate nothing that the first night's evaluated.
func TestOPRFShardCaches(t *testing.T) {
	dir, st := shardFixtures(t, fixtures.Options{Users: 2000, Seed: 8})
	ctx := context.Background()
	mk, _ := hashing.NewMasterKey(auditMaster)
	k, _ := hashing.MasterKeyOf(mk).ForScheme(hashing.OPRFRistretto255, "meta-ads")
	cfg := shardConfig(t, dir, st)
	cfg.Scheme, cfg.Key = hashing.OPRFRistretto255, k
	cfg.Registry = testRegistry(cfg.Out, "meta-ads", hashing.OPRFRistretto255)
	for night := range 2 {
		cfg.Rules.AsOf = fixtures.DefaultAsOf.Add(time.Duration(night) * 24 * time.Hour)
		var evaluated, cached int64
		for i := range 2 {
			var logs bytes.Buffer
			c := cfg
			c.Log = slog.New(slog.NewJSONHandler(&logs, nil))
			if _, err := runShard(ctx, c, i, 2); err != nil {
				t.Fatal(err)
			}
			var m struct{ Cached, Evaluated int64 }
			for _, line := range strings.Split(logs.String(), "\n") {
				if strings.Contains(line, `"msg":"oprf identifiers"`) {
					json.Unmarshal([]byte(line), &m)
				}
			}
			evaluated, cached = evaluated+m.Evaluated, cached+m.Cached
			if _, err := os.Stat(idcache.ShardPath(cfg.State, "meta-ads", i, 2)); err != nil {
				t.Fatalf("night %d: shard %d's cache: %v", night+1, i, err)
			}
		}
		if night == 0 && (evaluated == 0 || cached != 0) || night == 1 && (evaluated != 0 || cached == 0) {
			t.Fatalf("night %d: %d evaluated, %d cached", night+1, evaluated, cached)
		}
		if _, err := pipeline.Commit(ctx, cfg, 2); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := auditor.VerifyAudit(cfg.State, cfg.AuditVerifier, verifyOpts(cfg.State, nil)); err != nil {
		t.Errorf("verify: %v", err)
	}
}
