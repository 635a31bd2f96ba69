package pipeline_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nyaruka/phonenumbers"
	"golang.org/x/mod/sumdb/note"

	"audiencematch/consent/audit"
	"audiencematch/fixtures"
	"audiencematch/hashing"
	"audiencematch/pipeline"
	"audiencematch/pipeline/auditor"
	"audiencematch/pipeline/manifest"
	"audiencematch/pipeline/statedir"
)

// readSet reads the identifiers of a run's snapshot, adds or removes.
func readSet(t *testing.T, dir string, files []manifest.OutputFile, scheme hashing.Scheme) []string {
	t.Helper()
	var out []string
	for _, f := range files {
		for _, id := range readIDs(t, filepath.Join(dir, filepath.FromSlash(f.Path)), scheme) {
			out = append(out, id)
		}
	}
	return out
}

func minus(a, b []string) []string {
	var out []string
	for _, x := range a {
		if _, found := slices.BinarySearch(b, x); !found {
			out = append(out, x)
		}
	}
	return out
}

func sortedIDs(o *oracle) []string {
	var ids []string
	for id := range o.ids {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

type day struct {
	users  []fixtures.User
	events []fixtures.Event
	asOf   time.Time
}

func (d *day) clone(asOf time.Time) *day {
	return &day{users: slices.Clone(d.users), events: slices.Clone(d.events), asOf: asOf}
}

func (d *day) event(user, action string, at time.Time) {
	d.events = append(d.events, fixtures.Event{EventID: fmt.Sprintf("ev-x%d", len(d.events)), UserID: user, Purpose: fixtures.DefaultPurpose,
		Action: action, OccurredAt: at.Format(time.RFC3339), PolicyVersion: "5", Source: "app_settings"})
}

// tryDay writes day n's tables and runs the export on them.
func tryDay(t *testing.T, dir string, n int, d *day, s note.Signer, master []byte) (*pipeline.Result, error) {
	t.Helper()
	st, err := fixtures.WriteTables(filepath.Join(dir, fmt.Sprintf("in-%d", n)), d.users, d.events)
	if err != nil {
		t.Fatal(err)
	}
	mk, _ := hashing.NewMasterKey(master)
	k, _ := hashing.DeriveDestKey(mk, "meta-ads")
	out := filepath.Join(dir, "out")
	return pipeline.Run(context.Background(), pipeline.Config{
		Users: st.UsersPath, Consent: st.EventsPath, Destination: "meta-ads", Scheme: hashing.HMACSHA256, Key: k,
		Out: out, State: filepath.Join(dir, "state"), Rules: fixtureRules(d.asOf), MaxRejectRate: 0.05,
		ToolVersion: "test", AuditSigner: s, AuditVerifier: verifierOf[s], Registry: testRegistry(out, "meta-ads", hashing.HMACSHA256),
	})
}

func runDay(t *testing.T, dir string, n int, d *day, s note.Signer, master []byte) *pipeline.Result {
	t.Helper()
	res, err := tryDay(t, dir, n, d, s, master)
	if err != nil {
		t.Fatalf("day %d: %v", n, err)
	}
	return res
}

// TestDeltasThreeRuns: between runs users withdraw, re-grant, change number
// and disappear. The removes of run N+1 are exactly the identifiers of run N
// that are no longer eligible, and its adds exactly the new ones.
func TestDeltasThreeRuns(t *testing.T) {
	s, v := signer(t)
	dir := t.TempDir()
	users, events := generateSeed(3000, 5)
	d1 := &day{users: users, events: events, asOf: fixtures.DefaultAsOf}
	oracleFor := func(d *day) *oracle {
		return computeOracle(d.users, d.events, oracleParams{asOf: d.asOf, purpose: fixtures.DefaultPurpose,
			minPolicy: fixtures.DefaultMinPolicyVersion, maxAge: 395 * 24 * time.Hour, master: auditMaster, dest: "meta-ads", scheme: "hmac-sha256"})
	}
	o1 := oracleFor(d1)
	exportedUser := func(o *oracle) map[string]bool {
		m := map[string]bool{}
		for _, hs := range o.ids {
			for _, h := range hs {
				m[h] = true
			}
		}
		return m
	}
	// Day 2: withdrawals, re-grants, number changes, deleted accounts.
	d2 := d1.clone(d1.asOf.Add(24 * time.Hour))
	ex1 := exportedUser(o1)
	var withdrew, changed, deleted, regranted []string
	for i, u := range d2.users {
		switch {
		case !ex1[u.UserID] && u.Case == fixtures.CaseWithdrawn && len(regranted) < 15:
			d2.event(u.UserID, "grant", d1.asOf.Add(2*time.Hour))
			regranted = append(regranted, u.UserID)
		case !ex1[u.UserID]:
		case len(withdrew) < 20:
			d2.event(u.UserID, "withdraw", d1.asOf.Add(time.Hour))
			withdrew = append(withdrew, u.UserID)
		case len(changed) < 20:
			d2.users[i].Phone, d2.users[i].Country = fmt.Sprintf("+44 7400 %06d", 100000+i), ""
			changed = append(changed, u.UserID)
		case len(deleted) < 20:
			d2.users[i].UserID = "deleted"
			deleted = append(deleted, u.UserID)
		}
	}
	d2.users = slices.DeleteFunc(d2.users, func(u fixtures.User) bool { return u.UserID == "deleted" })
	// Day 3: some of day 2's withdrawers come back, others leave.
	d3 := d2.clone(d2.asOf.Add(24 * time.Hour))
	for _, u := range withdrew[:5] {
		d3.event(u, "grant", d2.asOf.Add(time.Hour))
	}
	for _, u := range regranted[:5] {
		d3.event(u, "withdraw", d2.asOf.Add(time.Hour))
	}

	var prev []string
	for n, d := range []*day{d1, d2, d3} {
		res := runDay(t, dir, n+1, d, s, auditMaster)
		m := res.Manifest
		snap := readSet(t, res.PublishedDir, m.Files, hashing.HMACSHA256)
		want := sortedIDs(oracleFor(d))
		if !slices.Equal(snap, want) {
			t.Fatalf("day %d: snapshot of %d differs from the oracle's %d", n+1, len(snap), len(want))
		}
		if n == 0 {
			if m.Adds != nil || m.Removes != nil || m.PreviousRunID != "" {
				t.Fatal("the first run has deltas")
			}
		} else {
			adds := readSet(t, res.PublishedDir, m.Adds.Files, hashing.HMACSHA256)
			removes := readSet(t, res.PublishedDir, m.Removes.Files, hashing.HMACSHA256)
			if !slices.Equal(removes, minus(prev, snap)) || !slices.Equal(adds, minus(snap, prev)) {
				t.Fatalf("day %d: %d adds, %d removes; want %d and %d", n+1, len(adds), len(removes), len(minus(snap, prev)), len(minus(prev, snap)))
			}
			if len(removes) == 0 || len(adds) == 0 {
				t.Fatalf("day %d: the changes produced no adds or no removes", n+1)
			}
			if m.Removes.KeyID != m.KeyID || m.PreviousTotalRows != int64(len(prev)) {
				t.Errorf("day %d: removes key %s, previous rows %d", n+1, m.Removes.KeyID, m.PreviousTotalRows)
			}
		}
		prev = snap
	}
	// A withdrawer's identifier went out in day 2's removes.
	l, _ := audit.Open(statedir.Audit(filepath.Join(dir, "state")))
	if l.Size() != 3 {
		t.Fatalf("log size %d", l.Size())
	}
	if _, err := auditor.VerifyAudit(filepath.Join(dir, "state"), v, verifyOpts(filepath.Join(dir, "state"), nil)); err != nil {
		t.Fatal(err)
	}
	var w fixtures.User
	for _, u := range d1.users {
		if u.UserID == withdrew[10] {
			w = u
		}
	}
	num, _ := phonenumbers.Parse(w.Phone, strings.ToUpper(w.Country))
	id := oracleParams{master: auditMaster, dest: "meta-ads"}.id(phonenumbers.Format(num, phonenumbers.E164))
	rec := l.Records()[1]
	var removed []string
	for _, f := range rec.Removes {
		removed = append(removed, readIDs(t, filepath.Join(dir, "out", rec.Published, f.Path), hashing.HMACSHA256)...)
	}
	if _, found := slices.BinarySearch(removed, id); !found {
		t.Error("a user who withdrew on day 2 is not in day 2's removes")
	}
}

// TestKeyRotation: the run after a new master key sends a full snapshot as
// adds, and removes every identifier of the previous run under its old key_id.
func TestKeyRotation(t *testing.T) {
	s, v := signer(t)
	dir := t.TempDir()
	users, events := generateSeed(1500, 6)
	d1 := &day{users: users, events: events, asOf: fixtures.DefaultAsOf}
	r1 := runDay(t, dir, 1, d1, s, auditMaster)
	newMaster := make([]byte, 32)
	r2 := runDay(t, dir, 2, d1.clone(d1.asOf.Add(24*time.Hour)), s, newMaster)
	m1, m2 := r1.Manifest, r2.Manifest
	if m1.KeyID == m2.KeyID {
		t.Fatal("a new master key kept the key_id")
	}
	snap1 := readSet(t, r1.PublishedDir, m1.Files, hashing.HMACSHA256)
	snap2 := readSet(t, r2.PublishedDir, m2.Files, hashing.HMACSHA256)
	adds := readSet(t, r2.PublishedDir, m2.Adds.Files, hashing.HMACSHA256)
	removes := readSet(t, r2.PublishedDir, m2.Removes.Files, hashing.HMACSHA256)
	if !slices.Equal(adds, snap2) || !slices.Equal(removes, snap1) {
		t.Fatalf("after rotation: %d adds of %d, %d removes of %d", len(adds), len(snap2), len(removes), len(snap1))
	}
	if m2.Removes.KeyID != m1.KeyID || m2.Adds.KeyID != m2.KeyID {
		t.Errorf("removes under key %s, want the old %s", m2.Removes.KeyID, m1.KeyID)
	}
	if _, err := auditor.VerifyAudit(filepath.Join(dir, "state"), v, verifyOpts(filepath.Join(dir, "state"), nil)); err != nil {
		t.Fatal(err)
	}
}

// TestRemovesWhenPreviousOutputIsGone: with the previous run's published
// files deleted, removes come from its evidence, checked against its record.
func TestRemovesWhenPreviousOutputIsGone(t *testing.T) {
	s, _ := signer(t)
	dir := t.TempDir()
	users, events := generateSeed(1500, 8)
	d1 := &day{users: users, events: events, asOf: fixtures.DefaultAsOf}
	r1 := runDay(t, dir, 1, d1, s, auditMaster)
	snap1 := readSet(t, r1.PublishedDir, r1.Manifest.Files, hashing.HMACSHA256)
	d2 := d1.clone(d1.asOf.Add(24 * time.Hour))
	d2.users = d2.users[:len(d2.users)*9/10] // a tenth of the accounts are deleted (under the drop guard's 20%)
	if err := os.RemoveAll(r1.PublishedDir); err != nil {
		t.Fatal(err)
	}
	r2 := runDay(t, dir, 2, d2, s, auditMaster)
	snap2 := readSet(t, r2.PublishedDir, r2.Manifest.Files, hashing.HMACSHA256)
	removes := readSet(t, r2.PublishedDir, r2.Manifest.Removes.Files, hashing.HMACSHA256)
	if len(removes) == 0 || !slices.Equal(removes, minus(snap1, snap2)) {
		t.Fatalf("%d removes, want %d", len(removes), len(minus(snap1, snap2)))
	}
	// The evidence is checked against the record: a substituted one stops the run.
	d3 := d2.clone(d2.asOf.Add(24 * time.Hour))
	ev := filepath.Join(dir, "state", "runs", r2.Manifest.RunID, "evidence.parquet")
	os.RemoveAll(r2.PublishedDir)
	os.Rename(filepath.Join(dir, "state", "runs", r1.Manifest.RunID, "evidence.parquet"), ev) // the wrong run's evidence
	_, err := tryDay(t, dir, 3, d3, s, auditMaster)
	if err == nil || !strings.Contains(err.Error(), "does not match its audit record") {
		t.Fatalf("run over a substituted evidence file: %v", err)
	}
}
