package pipeline

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/parquet-go/parquet-go/format"
	"golang.org/x/mod/sumdb/note"

	"audiencematch/consent"
	"audiencematch/consent/audit"
	"audiencematch/fixtures"
	"audiencematch/hashing"
	"audiencematch/internal/parquettest"
	"audiencematch/pipeline/idfile"
	"audiencematch/pipeline/leakguard"
	"audiencematch/pipeline/manifest"
)

// The leak guard's own tests are in package leakguard; these run it as a
// run does, through Run, on what a run publishes.

// TestLeakGuardUserTypedStrings: whatever a user types as their phone, with
// consent or without, the run publishes, its withdrawals with it. Each of
// these strings is in what a run publishes: the purpose, the destination,
// the scheme, the cutoff, names of files and fields, the previous run's
// id, and, under a text scheme, another user's id (anyone can compute it).
// A user whose field equals one must not stop the export.
func TestLeakGuardUserTypedStrings(t *testing.T) {
	for _, s := range hashing.Schemes() {
		t.Run(string(s), func(t *testing.T) {
			typedRuns(t, s)
		})
	}
}

// typedRuns runs two days of users who type the strings a run publishes
// as their phone; a user with a valid number withdraws on the second day,
// and another user has typed that number's id. It returns the second run's
// configuration and result, and the users.
func typedRuns(t *testing.T, s hashing.Scheme) (Config, *Result, []fixtures.User) {
	t.Helper()
	dir := t.TempDir()
	k, err := hashing.MasterKeyOf(hashing.TestKey(t)).ForScheme(s, "meta-ads")
	if err != nil {
		t.Fatal(err)
	}
	h, _ := hashing.NewHasher(s, k)
	skey, vkey, err := note.GenerateKey(rand.Reader, audit.DefaultOrigin)
	if err != nil {
		t.Fatal(err)
	}
	signer, _ := note.NewSigner(skey)
	verifier, _ := note.NewVerifier(vkey)
	out := filepath.Join(dir, "out")
	asOf := fixtures.DefaultAsOf
	cfg := Config{Destination: "meta-ads", Scheme: s, Key: k, Out: out, State: filepath.Join(dir, "state"),
		Rules: FixtureRules(asOf), MaxRejectRate: 0.01, ToolVersion: "test", AuditSigner: signer, AuditVerifier: verifier,
		Registry: TestRegistry(out, "meta-ads", s)}
	id := h.ID("+447400123456")
	typed := []string{
		fixtures.DefaultPurpose, " " + fixtures.DefaultPurpose + " ", "meta-ads", string(s), string(hashing.HMACSHA256),
		asOf.Format(time.DateOnly), asOf.Format(time.RFC3339), asOf.Add(24 * time.Hour).Format(time.RFC3339),
		asOf.Format("20060102T150405Z"), "dt=" + asOf.Format(time.DateOnly),
		"manifest.json", "id", "part-00000.parquet", "adds/part-00000.parquet", "removes/part-00000.parquet",
		idfile.MetaScheme, idfile.MetaKeyID, s.KeyID(k), "audiencematch version test(build )", "idfile.TextIDRow", "idfile.BinaryIDRow", "PAR1PAR1",
		manifest.Version, cfg.Digest(), `"purpose": "ads_matching",`, `"destination": "meta-ads",`, `"scheme": "` + string(s) + `",`,
		"users.csv", "consent_events.csv", "previous_run_id", "config_digest", "max_consent_age_seconds", "consent_events",
		hex.EncodeToString([]byte(id)),
	}
	if !s.Binary() {
		typed = append(typed, id) // another user's id, as the scheme publishes it
	}
	typed = append(typed, consent.ExclusionReasons...)
	typed = append(typed, consent.EventClassNames[:]...)
	var users []fixtures.User
	var events []fixtures.Event
	grant := func(user string, at time.Time, action string) {
		events = append(events, fixtures.Event{EventID: fmt.Sprintf("ev-%d", len(events)), UserID: user, Purpose: fixtures.DefaultPurpose,
			Action: action, OccurredAt: at.Format(time.RFC3339), PolicyVersion: "5", Source: "app_settings"})
	}
	addUsers := func(phones []string, at time.Time) {
		for _, p := range phones {
			u := fmt.Sprintf("u-typed-%03d", len(users))
			users = append(users, fixtures.User{UserID: u, Phone: p, Country: "GB"})
			if len(users)%2 == 0 { // half with valid consent, half without
				grant(u, at, "grant")
			}
		}
	}
	users = append(users, fixtures.User{UserID: "u-valid", Phone: "+447400123456", Country: "GB"})
	grant("u-valid", asOf.Add(-48*time.Hour), "grant")
	addUsers(typed, asOf.Add(-24*time.Hour))
	run := func(day int, asOf time.Time) *Result {
		t.Helper()
		st, err := fixtures.WriteTables(filepath.Join(dir, fmt.Sprintf("in-%d", day)), users, events)
		if err != nil {
			t.Fatal(err)
		}
		c := cfg
		c.Users, c.Consent, c.Rules = st.UsersPath, st.EventsPath, FixtureRules(asOf)
		res, err := Run(context.Background(), c)
		if err != nil {
			t.Fatalf("day %d: %v", day, err)
		}
		if _, err := os.Stat(filepath.Join(res.PublishedDir, "manifest.json")); err != nil {
			t.Fatalf("day %d: nothing published: %v", day, err)
		}
		return res
	}
	first := run(1, asOf)
	if first.Manifest.TotalRows != 1 {
		t.Fatalf("day 1: %d ids exported, want 1", first.Manifest.TotalRows)
	}
	// Day 2: u-valid withdraws, a new number is added, and more users type
	// what day 1 published.
	day2 := asOf.Add(24 * time.Hour)
	grant("u-valid", day2.Add(-time.Hour), "withdraw")
	users = append(users, fixtures.User{UserID: "u-new", Phone: "+447400123457", Country: "GB"})
	grant("u-new", day2.Add(-time.Hour), "grant")
	addUsers([]string{first.Manifest.RunID, first.Manifest.Files[0].SHA256, first.Manifest.ConfigDigest,
		day2.Format(time.DateOnly), day2.Format(time.RFC3339)}, day2.Add(-time.Hour))
	second := run(2, day2)
	m := second.Manifest
	if m.Removes == nil || m.Removes.Rows != 1 || m.Adds.Rows != 1 || m.PreviousRunID != first.Manifest.RunID {
		t.Fatalf("day 2: the withdrawal or the new number is not in the deltas: %+v %+v", m.Removes, m.Adds)
	}
	c := cfg
	c.Rules = FixtureRules(day2)
	return c, second, users
}

// TestLeakGuardRunOutputTampered: in a real run's output, a phone or user id
// written where the run writes something else fails the guard.
func TestLeakGuardRunOutputTampered(t *testing.T) {
	for _, s := range []hashing.Scheme{hashing.HMACSHA256, hashing.UID2} {
		t.Run(string(s), func(t *testing.T) {
			cfg, res, users := typedRuns(t, s)
			g := leakguard.New(leakguard.Salt(cfg.Digest()), t.TempDir(), leakguard.Options{})
			for _, u := range users {
				g.Add(u.UserID)
				g.AddPhone(u.Phone)
			}
			g.Add("+447400123456")
			g.Add("+447400123457")
			if err := g.Finish(); err != nil {
				t.Fatal(err)
			}
			removesScheme := hashing.Scheme(res.Manifest.Removes.Scheme)
			phone := "+447400123457"
			for _, c := range []struct {
				name   string
				tamper func(t *testing.T, dir string)
				want   string
			}{
				{"as published", func(*testing.T, string) {}, ""},
				{"phone in a part's key-value metadata", func(t *testing.T, dir string) {
					path := filepath.Join(dir, "adds", "part-00000.parquet")
					b, _ := os.ReadFile(path)
					os.WriteFile(path, parquettest.PatchFooter(t, b, func(md *format.FileMetaData) {
						md.KeyValueMetadata[0].Value = phone
					}), 0o644)
				}, "adds/part-00000.parquet: footer at byte"},
				{"phone in a page's statistics", func(t *testing.T, dir string) {
					path := filepath.Join(dir, "part-00000.parquet")
					b, _ := os.ReadFile(path)
					h, _ := hashing.NewHasher(s, cfg.Key)
					id := h.ID(phone)
					os.WriteFile(path, parquettest.ReplaceFirst(t, b, []byte(id), []byte(phone+id[len(phone):]), 0), 0o644)
				}, "part-00000.parquet: row 0: a page's statistics"},
				{"user id as the manifest's purpose", func(t *testing.T, dir string) {
					path := filepath.Join(dir, "manifest.json")
					b, _ := os.ReadFile(path)
					os.WriteFile(path, bytes.Replace(b, []byte(`"ads_matching"`), []byte(`"u-typed-001"`), 1), 0o644)
				}, "manifest.json: purpose is not"},
			} {
				t.Run(c.name, func(t *testing.T) {
					dir := filepath.Join(t.TempDir(), "publish")
					if err := os.CopyFS(dir, os.DirFS(res.PublishedDir)); err != nil {
						t.Fatal(err)
					}
					c.tamper(t, dir)
					err := g.Check(dir, cfg.guardExpect(), removesScheme)
					if c.want == "" && err != nil || c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)) {
						t.Fatalf("err = %v, want %q", err, c.want)
					}
				})
			}
		})
	}
}
