package pipeline

import (
	"strings"
	"time"

	"audiencematch/consent"
	"audiencematch/fixtures"
	"audiencematch/hashing"
	"audiencematch/pipeline/destinations"
)

// TestRegistry registers one parent-platform destination for the fixtures'
// purpose, delivering to out: the registry tests and examples run under. Its
// consent policy is the loosest (policy version 1, no age limit), so that
// a test's own rules decide.
func TestRegistry(out, dest string, scheme hashing.Scheme) *destinations.Registry {
	minVersion := int64(1)
	return &destinations.Registry{Version: destinations.Version, Path: "test-registry", SHA256: strings.Repeat("ab", 32), Destinations: []destinations.Destination{{
		ID: dest, Name: "Parent Ads", Organization: "Parent Co", Relationship: destinations.Parent,
		Purposes: []string{fixtures.DefaultPurpose}, LawfulBasis: "consent", Scheme: string(scheme),
		AllowUnkeyed: !scheme.Keyed(), Delivery: out, RetentionDays: 30,
		Consent: map[string]destinations.Policy{fixtures.DefaultPurpose: {MinPolicyVersion: &minVersion, MaxConsentAge: destinations.NoLimit}},
	}}}
}

// FixtureRules are the consent rules the fixtures are built around.
func FixtureRules(asOf time.Time) consent.Rules {
	return consent.Rules{AsOf: asOf, Purpose: fixtures.DefaultPurpose,
		MinPolicyVersion: fixtures.DefaultMinPolicyVersion, MaxAge: 395 * 24 * time.Hour}
}
