package pipeline_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nyaruka/phonenumbers"
	"github.com/parquet-go/parquet-go"
	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"
	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"

	"audiencematch/consent/audit"
	"audiencematch/fixtures"
	"audiencematch/hashing"
	"audiencematch/pipeline"
	"audiencematch/pipeline/auditor"
	"audiencematch/pipeline/delivery"
	"audiencematch/pipeline/idfile"
	"audiencematch/pipeline/statedir"
)

// verifierOf finds the verifier of a signer made by signer; nil for nil.
var verifierOf = map[note.Signer]note.Verifier{}

func signer(t testing.TB) (note.Signer, note.Verifier) {
	t.Helper()
	skey, vkey, err := note.GenerateKey(rand.Reader, audit.DefaultOrigin)
	if err != nil {
		t.Fatal(err)
	}
	s, _ := note.NewSigner(skey)
	v, _ := note.NewVerifier(vkey)
	verifierOf[s] = v
	return s, v
}

// auditedRun runs n users of fixtures with the audit log on.
func auditedRun(t *testing.T, dir string, users int, s note.Signer, asOf time.Time) (*pipeline.Result, pipeline.Config) {
	t.Helper()
	st, err := fixtures.WriteFiles(filepath.Join(dir, "in"), fixtures.Options{Users: users, Seed: 9})
	if err != nil {
		t.Fatal(err)
	}
	cfg := pipeline.Config{
		Users: st.UsersPath, Consent: st.EventsPath, Destination: "meta-ads", Scheme: hashing.HMACSHA256,
		Key: destKey(t, "meta-ads"),
		Out: filepath.Join(dir, "out"), State: filepath.Join(dir, "state"),
		Rules: fixtureRules(asOf), MaxRejectRate: 0.05, ToolVersion: "test", AuditSigner: s, AuditVerifier: verifierOf[s],
		Registry: testRegistry(filepath.Join(dir, "out"), "meta-ads", hashing.HMACSHA256),
	}
	res, err := pipeline.Run(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	return res, cfg
}

var auditMaster = bytes.Repeat([]byte{0x42}, 32)

func destKey(t testing.TB, dest string) hashing.DestKey {
	mk, _ := hashing.NewMasterKey(auditMaster)
	k, err := hashing.DeriveDestKey(mk, dest)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestAuditVerifyAndTamper(t *testing.T) {
	s, v := signer(t)
	dir := t.TempDir()
	res, cfg := auditedRun(t, dir, 120, s, fixtures.DefaultAsOf)
	rep, err := auditor.VerifyAudit(cfg.State, v, verifyOpts(cfg.State, nil))
	if err != nil {
		t.Fatal(err)
	}
	if rep.Records != 1 || rep.Committed != 1 {
		t.Fatalf("report %+v", rep)
	}
	files := []string{
		filepath.Join(statedir.Audit(cfg.State), audit.RecordsFile),
		filepath.Join(statedir.Audit(cfg.State), audit.CheckpointFile),
		filepath.Join(res.PublishedDir, "manifest.json"),
		filepath.Join(res.PublishedDir, "part-00000.parquet"),
	}
	for _, f := range files {
		orig, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for i := range orig {
			b := bytes.Clone(orig)
			b[i] ^= 0x01
			os.WriteFile(f, b, 0o600)
			if _, err := auditor.VerifyAudit(cfg.State, v, verifyOpts(cfg.State, nil)); err == nil {
				t.Fatalf("%s: flipping byte %d of %d went unnoticed", filepath.Base(f), i, len(orig))
			}
		}
		os.WriteFile(f, orig, 0o600)
	}
	// Evidence too, and a file planted beside the published ones.
	ev := res.EvidencePath
	orig, _ := os.ReadFile(ev)
	b := bytes.Clone(orig)
	b[len(b)/2] ^= 0xff
	os.WriteFile(ev, b, 0o600)
	if _, err := auditor.VerifyAudit(cfg.State, v, verifyOpts(cfg.State, nil)); err == nil {
		t.Error("a changed evidence file went unnoticed")
	}
	os.WriteFile(ev, orig, 0o600)
	// Evidence rewritten as well-formed Parquet: a holder changed, a row
	// dropped, a duplicate holder made primary.
	rows, err := parquet.ReadFile[idfile.EvidenceRow](ev)
	if err != nil || len(rows) < 3 {
		t.Fatalf("%d evidence rows, err %v", len(rows), err)
	}
	for name, edit := range map[string]func([]idfile.EvidenceRow) []idfile.EvidenceRow{
		"holder changed": func(r []idfile.EvidenceRow) []idfile.EvidenceRow { r[1].UserID += "x"; return r },
		"row dropped":    func(r []idfile.EvidenceRow) []idfile.EvidenceRow { return r[1:] },
		"primary turned": func(r []idfile.EvidenceRow) []idfile.EvidenceRow { r[2].Primary = !r[2].Primary; return r },
	} {
		if err := parquet.WriteFile(ev, edit(slices.Clone(rows))); err != nil {
			t.Fatal(err)
		}
		if _, err := auditor.VerifyAudit(cfg.State, v, verifyOpts(cfg.State, nil)); err == nil {
			t.Errorf("evidence with a %s went unnoticed", name)
		}
	}
	os.WriteFile(ev, orig, 0o600)
	planted := filepath.Join(res.PublishedDir, "part-00001.parquet")
	os.WriteFile(planted, []byte("extra"), 0o644)
	if _, err := auditor.VerifyAudit(cfg.State, v, verifyOpts(cfg.State, nil)); err == nil || !strings.Contains(err.Error(), "holds") {
		t.Errorf("a planted file: %v", err)
	}
	os.Remove(planted)
	if _, err := auditor.VerifyAudit(cfg.State, v, verifyOpts(cfg.State, nil)); err != nil {
		t.Fatalf("restored state fails: %v", err)
	}
}

// TestCommitRecordRecovered: a run published whose record never reached the
// log (a crash between the two) gets it from the next attempt.
func TestCommitRecordRecovered(t *testing.T) {
	s, v := signer(t)
	dir := t.TempDir()
	res, cfg := auditedRun(t, dir, 200, nil, fixtures.DefaultAsOf) // published, not recorded
	if _, err := os.Stat(res.PublishedDir); err != nil {
		t.Fatal(err)
	}
	cfg.AuditSigner, cfg.AuditVerifier = s, v
	again, err := pipeline.Run(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	// The published but unrecorded run is recorded first, from the record
	// it prepared; the run for the same cutoff then has nothing to do.
	if again.Skipped == nil || again.Skipped.RunID != res.Manifest.RunID {
		t.Fatal("rerun did not recognise the published run")
	}
	l, err := audit.Open(statedir.Audit(cfg.State))
	if err != nil || l.Committed(res.Manifest.RunID) != 0 || l.Size() != 1 {
		t.Fatalf("log after recovery: size %d, err %v", l.Size(), err)
	}
	if _, err := auditor.VerifyAudit(cfg.State, v, verifyOpts(cfg.State, nil)); err != nil {
		t.Fatal(err)
	}
	// A third attempt appends nothing more.
	if _, err := pipeline.Run(context.Background(), cfg); err != nil {
		t.Fatal(err)
	}
	if l, _ := audit.Open(statedir.Audit(cfg.State)); l.Size() != 1 {
		t.Fatalf("log grew to %d on a no-op rerun", l.Size())
	}
}

// TestRecoverInterruptedAppend: a crash between appending a record and
// signing the checkpoint, or in the middle of the append, is completed or
// undone by the next run, and the log verifies again.
func TestRecoverInterruptedAppend(t *testing.T) {
	s, v := signer(t)
	dir := t.TempDir()
	_, cfg := auditedRun(t, dir, 100, s, fixtures.DefaultAsOf)
	adir := statedir.Audit(cfg.State)
	cp, _ := os.ReadFile(filepath.Join(adir, audit.CheckpointFile))
	// A record appended without its checkpoint (any well-formed record that
	// keeps the delivery chain will do).
	failed := &audit.Record{Version: audit.RecordVersion, Type: audit.TypeRunFailed, Time: "2026-11-01T00:00:00Z",
		ToolVersion: "test", Destination: "meta-ads", Reason: "a test"}
	line, err := failed.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	line = append(line, '\n')
	f, _ := os.OpenFile(filepath.Join(adir, audit.RecordsFile), os.O_APPEND|os.O_WRONLY, 0)
	f.Write(line)
	f.Close()
	if _, err := auditor.VerifyAudit(cfg.State, v, verifyOpts(cfg.State, nil)); err == nil {
		t.Fatal("an unsigned record verified")
	}
	cfg.Force = true
	if _, err := pipeline.Run(context.Background(), cfg); err != nil {
		t.Fatal(err)
	}
	if _, err := auditor.VerifyAudit(cfg.State, v, verifyOpts(cfg.State, cp)); err != nil {
		t.Fatalf("after recovery: %v", err)
	}
	// A torn record: the next run drops it.
	f, _ = os.OpenFile(filepath.Join(adir, audit.RecordsFile), os.O_APPEND|os.O_WRONLY, 0)
	f.Write(line[:len(line)/2])
	f.Close()
	if _, err := pipeline.Run(context.Background(), cfg); err != nil {
		t.Fatal(err)
	}
	if _, err := auditor.VerifyAudit(cfg.State, v, verifyOpts(cfg.State, cp)); err != nil {
		t.Fatalf("after a torn record: %v", err)
	}
	// A changed record is not signed over.
	b, _ := os.ReadFile(filepath.Join(adir, audit.RecordsFile))
	os.WriteFile(filepath.Join(adir, audit.RecordsFile), bytes.Replace(b, []byte(`"users"`), []byte(`"USERS"`), 1), 0o600)
	if _, err := pipeline.Run(context.Background(), cfg); err == nil || !strings.Contains(err.Error(), "audit") {
		t.Fatalf("a run went ahead over a changed log: %v", err)
	}
}

func TestFailedRunRecorded(t *testing.T) {
	s, v := signer(t)
	dir := t.TempDir()
	st, _ := fixtures.WriteFiles(filepath.Join(dir, "in"), fixtures.Options{Users: 50, Seed: 1})
	cfg := pipeline.Config{Users: st.UsersPath, Consent: filepath.Join(dir, "missing.csv"), Destination: "meta-ads",
		Scheme: hashing.HMACSHA256, Out: filepath.Join(dir, "out"), State: filepath.Join(dir, "state"),
		Rules: fixtureRules(fixtures.DefaultAsOf), ToolVersion: "test", AuditSigner: s, AuditVerifier: verifierOf[s],
		Registry: testRegistry(filepath.Join(dir, "out"), "meta-ads", hashing.HMACSHA256)}
	if _, err := pipeline.Run(context.Background(), cfg); err == nil {
		t.Fatal("run with a missing input succeeded")
	}
	l, err := audit.Open(statedir.Audit(cfg.State))
	if err != nil || l.Size() != 1 || l.Records()[0].Type != audit.TypeRunFailed || !strings.Contains(l.Records()[0].Reason, "missing.csv") {
		t.Fatalf("log: %v %+v", err, l.Records())
	}
	if _, err := auditor.VerifyAudit(cfg.State, v, verifyOpts(cfg.State, nil)); err != nil {
		t.Fatal(err)
	}
}

// TestSubjectEveryCase: for users of each consent case, the subject report
// agrees with the oracle, and every proof verifies with transparency-dev/merkle.
func TestSubjectEveryCase(t *testing.T) {
	s, v := signer(t)
	dir := t.TempDir()
	const n = 3000
	_, cfg := auditedRun(t, dir, n, s, fixtures.DefaultAsOf)
	users, events := generateSeed(n, 9)
	o := computeOracle(users, events, oracleParams{asOf: cfg.Rules.AsOf, purpose: cfg.Rules.Purpose, minPolicy: cfg.Rules.MinPolicyVersion,
		maxAge: cfg.Rules.MaxAge, master: auditMaster, dest: "meta-ads", scheme: "hmac-sha256"})
	mk, _ := hashing.NewMasterKey(auditMaster)
	// Half the lookups use the master key, half the destination's own key
	// (keys derive); another destination's key computes nothing.
	keys := []hashing.Key{hashing.MasterKeyOf(mk), destKeyFile(t, mk, "meta-ads")}
	other := destKeyFile(t, mk, "other-dest")
	h := rfc6962.DefaultHasher
	seen := map[fixtures.Case]int{}
	for _, u := range users {
		if u.Broken || u.UserID == "" || seen[u.Case] >= 3 {
			continue
		}
		num, err := phonenumbers.Parse(u.Phone, strings.ToUpper(u.Country))
		if err != nil || !phonenumbers.IsValidNumber(num) || len(u.Phone) > 250 {
			continue
		}
		seen[u.Case]++
		e164 := phonenumbers.Format(num, phonenumbers.E164)
		_, wantExported := o.ids[oracleParams{master: auditMaster, dest: "meta-ads", scheme: "hmac-sha256"}.id(e164)]
		if seen[u.Case] == 1 {
			rep, err := auditor.Subject(cfg.State, verifyOpts(cfg.State, nil).Roots, v, auditor.SubjectQuery{Phone: u.Phone, Country: u.Country, Key: &other})
			if err != nil || len(rep.Runs) != 1 || rep.Runs[0].Status != "unknown" || !strings.Contains(rep.Runs[0].Note, "other-dest") {
				t.Fatalf("another destination's key: %+v, %v", rep, err)
			}
		}
		rep, err := auditor.Subject(cfg.State, verifyOpts(cfg.State, nil).Roots, v, auditor.SubjectQuery{Phone: u.Phone, Country: u.Country, Key: &keys[seen[u.Case]%2]})
		if err != nil {
			t.Fatal(err)
		}
		if len(rep.Runs) != 1 {
			t.Fatalf("%d runs in the report", len(rep.Runs))
		}
		r := rep.Runs[0]
		if (r.Status == "exported") != wantExported {
			t.Errorf("case %v: status %s, oracle exported=%v", u.Case, r.Status, wantExported)
			continue
		}
		// Independent check of the record's inclusion in the signed log.
		cp, err := audit.ParseCheckpoint([]byte(rep.Checkpoint), v)
		if err != nil {
			t.Fatal(err)
		}
		l, _ := audit.Open(statedir.Audit(cfg.State))
		rec := l.Records()[r.RecordIndex]
		if err := proof.VerifyInclusion(h, uint64(r.RecordIndex), cp.Size, h.HashLeaf(l.Line(r.RecordIndex)), hashes(r.RecordProof), cp.Hash); err != nil {
			t.Fatalf("record inclusion: %v", err)
		}
		root, _ := hex.DecodeString(rec.IDs.Root)
		id, _ := hex.DecodeString(r.ID)
		m := r.Membership
		if m.Present {
			if err := proof.VerifyInclusion(h, uint64(m.Index), uint64(rec.IDs.Size), h.HashLeaf(id), hashes(m.Proof), root); err != nil {
				t.Fatalf("identifier inclusion: %v", err)
			}
			if len(r.Evidence) == 0 || r.Evidence[0].EventID == "" || !r.Evidence[0].Primary {
				t.Errorf("case %v: exported without the consent event behind it", u.Case)
			}
			evRoot, _ := hex.DecodeString(rec.Evidence.Root)
			for _, e := range r.Evidence {
				leaf := audit.EvidenceLeaf(r.ID, e.UserID, e.EventID, e.Primary) // hex ids, as hmac-sha256 evidence holds them
				if err := proof.VerifyInclusion(h, uint64(e.Index), uint64(rec.Evidence.Size), h.HashLeaf(leaf), hashes(e.Proof), evRoot); err != nil {
					t.Fatalf("evidence row %d inclusion: %v", e.Index, err)
				}
			}
		} else {
			for _, nb := range []*audit.Neighbor{m.Left, m.Right} {
				if nb == nil {
					continue
				}
				if err := proof.VerifyInclusion(h, uint64(nb.Index), uint64(rec.IDs.Size), h.HashLeaf(nb.Leaf), hashes(nb.Proof), root); err != nil {
					t.Fatalf("neighbour inclusion: %v", err)
				}
			}
			if (m.Left != nil && bytes.Compare(m.Left.Leaf, id) >= 0) || (m.Right != nil && bytes.Compare(id, m.Right.Leaf) >= 0) {
				t.Fatal("absence neighbours do not bracket the identifier")
			}
		}
		// By user id too: an exported user's evidence names them.
		byUser, err := auditor.Subject(cfg.State, verifyOpts(cfg.State, nil).Roots, v, auditor.SubjectQuery{UserID: u.UserID})
		if err != nil {
			t.Fatal(err)
		}
		if inEvidence := byUser.Runs[0].Status == "exported"; inEvidence && !wantExported {
			t.Errorf("case %v: user found exported by id but the oracle says not", u.Case)
		}
	}
	for c := fixtures.CaseNone; c <= fixtures.CaseGrantWithNoise; c++ {
		if seen[c] == 0 {
			t.Errorf("no subject of case %v checked", c)
		}
	}
}

func hashes[T ~[]tlog.Hash](p T) [][]byte {
	out := make([][]byte, len(p))
	for i := range p {
		out[i] = p[i][:]
	}
	return out
}

// destKeyFile writes destination's key file as `keys derive` does and loads it.
func destKeyFile(t *testing.T, mk hashing.MasterKey, destination string) hashing.Key {
	t.Helper()
	p := filepath.Join(t.TempDir(), destination+".key")
	if _, err := hashing.WriteDestKey(p, mk, destination); err != nil {
		t.Fatal(err)
	}
	k, err := hashing.LoadKey(p)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// verifyOpts are the options of audit verify for a test's state, whose
// delivery root is its sibling "out".
func verifyOpts(state string, trusted []byte) auditor.VerifyOptions {
	return auditor.VerifyOptions{Trusted: trusted, Roots: delivery.Roots{Override: filepath.Join(filepath.Dir(state), "out")}}
}
