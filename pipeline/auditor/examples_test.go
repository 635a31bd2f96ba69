package auditor_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"slices"
	"strings"
	"testing"

	"golang.org/x/mod/sumdb/tlog"

	"audiencematch/consent/audit"
	"audiencematch/hashing"
	"audiencematch/pipeline/idfile"
)

// The worked examples of docs/AUDITORS.md: the real bytes of a run of
// MATCHING.md's vector users (key 00..1f, meta-ads, cutoff 2026-11-01),
// recomputed here from the rules the document states, and required to
// appear in it verbatim.
const (
	exVerifier   = "audiencematch.audit/v1+5f5fa4ca+ASELhB7nQAmjdk/hEYOi0X9cggUhX6MJ0sDfkn+f6fP5"
	exCheckpoint = "audiencematch.audit/v1\n1\nWp9Vn5WER/ynZhF1SSZ+hgpTCortdwDluEvo8lDU7lg=\n\n— audiencematch.audit/v1 X1+kyuje0CDkB8WOEFlFxJwPg9rbvMQSOwO3xJGtqJIDdXy1BqrDDvjjG/9POE0xVzz3F9Qx/eWNhOUwZoxvvmpAUgY=\n"
	exRecord     = `{"v":"audiencematch.audit/v2","type":"run_committed","time":"2026-12-05T10:24:19.876630937Z","run_id":"20261101T000000Z-e83b0c976211","tool_version":"0.1.0","config_digest":"03c065eccd2ed3cfcde8b7f22f150e34c2e9119acde149cfef2e660b6ae79116","destination":"meta-ads","scheme":"hmac-sha256","key_id":"d47528a220267f43","as_of":"2026-11-01T00:00:00Z","purpose":"ads_matching","authorization":{"registry_sha256":"a83f53b4ddea2d95fdc089bce21754354a153db7a7033232f9784e7317ff358b","organization":"Parent Co","relationship":"parent","purposes":["ads_matching"],"lawful_basis":"consent, GDPR Art. 6(1)(a)","retention_days":90},"policy":{"min_policy_version":1,"max_consent_age_seconds":0,"max_reject_rate":0.01},"inputs":[{"table":"consent_events","sha256":"5bc72a0d4ec3526e185ef4ebc02b9b9d6b2534ee398433ed4a3165476f1c3cdb","rows":4},{"table":"users","sha256":"a20a7d1b7ee2b4771f887a172e09e65a2668ad9ad904739712a6d76eb47d7651","rows":4}],"consent_snapshot_sha256":"7196c7567adee3cd1d6f6cfc1c38969ace36831f0e970bf3af8b8784319259bf","counts":{"user_rows":4,"exported":4,"excluded":{"consent_unreadable":0,"duplicate_number":0,"expired":0,"invalid_phone":0,"malformed_row":0,"no_consent":0,"shared_number_withdrawn":0,"stale_policy":0,"withdrawn":0},"event_rows":4,"events":{"after_cutoff":0,"malformed":0,"other_purpose":0,"unknown_user":0,"used":4}},"published":"meta-ads/dt=2026-11-01/run=20261101T000000Z-e83b0c976211","manifest":{"path":"manifest.json","sha256":"4a550d7dbff72a92f519debfa325bdd7913c0a2c01cb9dbfe2f4b56cf0b5f99c","rows":0},"files":[{"path":"part-00000.parquet","sha256":"aa6d9184500680f369c106b6c432f0318f590808263a4eb56f90b987475e1c48","rows":4}],"ids":{"size":4,"root":"9a99038c45759a3ea0ff4c71b19a2f293f22fc2b068a105dde3351f5ae7b6f38"},"evidence":{"size":4,"root":"fd71633ce8670729288bcea5313d9dbcba8b5ac46b1d34c4ee54997f0cd230ba"}}`
)

// The vector users, their E.164 numbers and consent events.
var exUsers = []struct{ user, e164, event string }{
	{"u1", "+16505551212", "e1"},
	{"u2", "+12345678901", "e2"},
	{"u3", "+390612345678", "e3"},
	{"u4", "+16502531234", "e4"},
}

func TestWorkedExamples(t *testing.T) {
	doc, err := os.ReadFile("../../docs/AUDITORS.md")
	if err != nil {
		t.Fatal(err)
	}
	inDoc := func(what, s string) {
		t.Helper()
		if !bytes.Contains(doc, []byte(s)) {
			t.Errorf("docs/AUDITORS.md does not show %s: %q", what, s)
		}
	}
	hexHash := func(h tlog.Hash) string { return hex.EncodeToString(h[:]) }

	// The record: canonical, and its leaf hash is the checkpoint's root.
	rec, err := audit.ParseRecord([]byte(exRecord))
	if err != nil {
		t.Fatal(err)
	}
	inDoc("the record", exRecord)
	leaf := tlog.RecordHash([]byte(exRecord))
	t.Logf("record leaf hash %s", hexHash(leaf))
	inDoc("the record's leaf hash", hexHash(leaf))
	v, err := audit.LoadVerifier(exVerifier)
	if err != nil {
		t.Fatal(err)
	}
	cp, err := audit.ParseCheckpoint([]byte(exCheckpoint), v)
	if err != nil || !bytes.Equal(cp.Hash, leaf[:]) {
		t.Fatalf("checkpoint: %v, root %x, want the record's leaf hash", err, cp.Hash)
	}
	inDoc("the verifier key", exVerifier)
	inDoc("the checkpoint", strings.ReplaceAll(exCheckpoint, "\n\n", "\n\n"))

	// The run id.
	h := sha256.New()
	h.Write([]byte(rec.ConfigDigest))
	for _, in := range rec.Inputs {
		h.Write([]byte("\x00" + in.Table + "\x00" + in.SHA256))
	}
	if got := "20261101T000000Z-" + hex.EncodeToString(h.Sum(nil))[:12]; got != rec.RunID {
		t.Errorf("run id %s, the record's %s", got, rec.RunID)
	}

	// The config digest.
	cfg, _ := json.Marshal(struct {
		Destination, Scheme, KeyID, AsOf, Purpose string
		MinPolicyVersion                          int64
		MaxConsentAgeSeconds                      int64
		MaxRejectRate                             float64
		RowsPerFile, RowsPerGroup                 int64
		ToolVersion                               string
	}{"meta-ads", "hmac-sha256", rec.KeyID, rec.AsOf, rec.Purpose, 1, 0, 0.01, idfile.DefaultRowsPerFile, idfile.DefaultRowsPerGroup, rec.ToolVersion})
	t.Logf("config digest input %s", cfg)
	inDoc("the config digest's input", string(cfg))
	if sum := sha256.Sum256(cfg); hex.EncodeToString(sum[:]) != rec.ConfigDigest {
		t.Errorf("config digest %x, the record's %s", sum, rec.ConfigDigest)
	}

	// key_id, identifiers, and the two trees.
	kb := make([]byte, 32)
	for i := range kb {
		kb[i] = byte(i)
	}
	master, err := hashing.NewMasterKey(kb)
	if err != nil {
		t.Fatal(err)
	}
	dk, err := hashing.DeriveDestKey(master, "meta-ads")
	if err != nil {
		t.Fatal(err)
	}
	if dk.KeyID() != rec.KeyID {
		t.Errorf("key_id %s, the record's %s", dk.KeyID(), rec.KeyID)
	}
	hs, _ := hashing.NewHasher(hashing.HMACSHA256, dk)
	type row struct{ id, user, event string }
	var rows []row
	for _, u := range exUsers {
		rows = append(rows, row{hs.ID(u.e164), u.user, u.event})
	}
	slices.SortFunc(rows, func(a, b row) int { return strings.Compare(a.id, b.id) })
	var ids, ev audit.TreeRoot
	for _, r := range rows {
		ids.Append([]byte(r.id))
		el := audit.EvidenceLeaf(hex.EncodeToString([]byte(r.id)), r.user, r.event, true)
		ev.Append(el)
		t.Logf("%s: id %x, leaf hash %s; evidence leaf %x, hash %s", r.user, r.id, hexHash(tlog.RecordHash([]byte(r.id))), el, hexHash(tlog.RecordHash(el)))
		if r.user == "u1" {
			inDoc("u1's identifier", hex.EncodeToString([]byte(r.id)))
			inDoc("u1's evidence leaf", hex.EncodeToString(el))
			inDoc("u1's evidence leaf hash", hexHash(tlog.RecordHash(el)))
		}
	}
	if err := audit.SameTree(ids.Summary(), rec.IDs, "identifier"); err != nil {
		t.Error(err)
	}
	if err := audit.SameTree(ev.Summary(), rec.Evidence, "evidence"); err != nil {
		t.Error(err)
	}

	// The consent snapshot digest.
	var sums [][]byte
	for _, u := range exUsers {
		s := sha256.Sum256([]byte(u.user + "\tvalid\t" + u.event + "\n"))
		sums = append(sums, s[:])
	}
	slices.SortFunc(sums, bytes.Compare)
	if got := sha256.Sum256(bytes.Join(sums, nil)); hex.EncodeToString(got[:]) != rec.ConsentSnapshot {
		t.Errorf("consent snapshot %x, the record's %s", got, rec.ConsentSnapshot)
	}

	// u1's identifier in every scheme (MATCHING.md section 4), as leaves.
	for _, s := range hashing.Schemes() {
		key := dk
		if s == hashing.OPRFRistretto255 {
			if key, err = hashing.DeriveOPRFKey(master, "meta-ads"); err != nil {
				t.Fatal(err)
			}
		}
		hh, err := hashing.NewHasher(s, key)
		if err != nil {
			t.Fatalf("%s: %v", s, err)
		}
		id := hh.ID("+16505551212")
		t.Logf("%s: leaf bytes %x (%q), leaf hash %s", s, id, id, hexHash(tlog.RecordHash([]byte(id))))
		if !s.Binary() {
			inDoc(string(s)+" identifier", id)
		}
		inDoc(string(s)+" leaf hash", hexHash(tlog.RecordHash([]byte(id))))
	}
}
