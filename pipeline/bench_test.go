package pipeline_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"audiencematch/consent"
	"audiencematch/fixtures"
	"audiencematch/hashing"
	"audiencematch/pipeline"
)

const benchUsers = 100000

var (
	benchOnce sync.Once
	benchDir  string
	benchErr  error
)

// benchInputs generates 100k fixture users once per test binary.
func benchInputs(b *testing.B) fixtures.Stats {
	b.Helper()
	benchOnce.Do(func() {
		benchDir, benchErr = os.MkdirTemp("", "audiencematch-bench-")
		if benchErr == nil {
			_, benchErr = fixtures.WriteFiles(benchDir, fixtures.Options{Users: benchUsers, Seed: 1})
		}
	})
	if benchErr != nil {
		b.Fatal(benchErr)
	}
	return fixtures.Stats{UsersPath: filepath.Join(benchDir, "users.csv"), EventsPath: filepath.Join(benchDir, "consent_events.csv")}
}

// BenchmarkRun is the whole job on 100k users: read, consent, normalize,
// hash, write, guard, manifest, publish.
func BenchmarkRun(b *testing.B) {
	st := benchInputs(b)
	mk, _ := hashing.NewMasterKey(bytes.Repeat([]byte{1}, 32))
	k, _ := hashing.DeriveDestKey(mk, "meta-ads")
	for b.Loop() {
		dir := b.TempDir()
		out := filepath.Join(dir, "out")
		_, err := pipeline.Run(context.Background(), pipeline.Config{
			Users: st.UsersPath, Consent: st.EventsPath, Destination: "meta-ads", Scheme: hashing.HMACSHA256, Key: k,
			Out: out, State: filepath.Join(dir, "state"), Rules: pipeline.FixtureRules(fixtures.DefaultAsOf),
			MaxRejectRate: 0.01, ToolVersion: "bench", Registry: pipeline.TestRegistry(out, "meta-ads", hashing.HMACSHA256),
		})
		if err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(benchUsers)*float64(b.N)/b.Elapsed().Seconds(), "users/s")
}

// BenchmarkConsentFold is parsing and folding events into effective ones.
func BenchmarkConsentFold(b *testing.B) {
	var events []fixtures.Event
	fixtures.Generate(fixtures.Options{Users: benchUsers, Seed: 1}, func(fixtures.User) {}, func(e fixtures.Event) { events = append(events, e) })
	rules := pipeline.FixtureRules(fixtures.DefaultAsOf)
	for b.Loop() {
		state := make(map[string]*consent.Effective, benchUsers)
		for _, r := range events {
			e, err := consent.ParseEvent(r.EventID, r.UserID, r.Purpose, r.Action, r.OccurredAt, r.PolicyVersion, r.Source)
			if err != nil || rules.Classify(&e) != consent.ClassUsed {
				continue
			}
			s := state[e.UserID]
			if s == nil {
				s = &consent.Effective{}
				state[e.UserID] = s
			}
			s.Add(&e)
		}
	}
	b.ReportMetric(float64(len(events))*float64(b.N)/b.Elapsed().Seconds(), "events/s")
}

// BenchmarkNormalizeFixtures is libphonenumber on the fixtures' mix of
// countries and typing styles, one core.
func BenchmarkNormalizeFixtures(b *testing.B) {
	var users []fixtures.User
	fixtures.Generate(fixtures.Options{Users: 20000, Seed: 1}, func(u fixtures.User) { users = append(users, u) }, func(fixtures.Event) {})
	n := 0
	for b.Loop() {
		for _, u := range users {
			hashing.Normalize(u.Phone, u.Country)
			n++
		}
	}
	b.ReportMetric(float64(n)/b.Elapsed().Seconds(), "numbers/s")
}
