package destinations

import (
	"fmt"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"time"

	"audiencematch/consent"
	"audiencematch/internal/suggest"
	"audiencematch/pipeline/errkind"
)

// NoLimit is the max_consent_age that sets no age limit: written out, so
// that no limit is a decision rather than an omission.
const NoLimit = "none"

// Policy is the consent policy of a destination and purpose: MATCHING.md
// section 2's min_policy_version and max_consent_age. Both are required.
type Policy struct {
	MinPolicyVersion *int64 `yaml:"min_policy_version" json:"min_policy_version"`
	MaxConsentAge    string `yaml:"max_consent_age" json:"max_consent_age"`
}

// MaxAge is the policy's age limit; 0 for none.
func (p Policy) MaxAge() time.Duration {
	if p.MaxConsentAge == NoLimit {
		return 0
	}
	d, _ := consent.ParseMaxAge(p.MaxConsentAge) // checked by Validate
	return d
}

// MinVersion is the policy's oldest privacy-notice version.
func (p Policy) MinVersion() int64 {
	if p.MinPolicyVersion == nil {
		return 0
	}
	return *p.MinPolicyVersion
}

func (p Policy) check() error {
	var errs []string
	if p.MinPolicyVersion == nil {
		errs = append(errs, "min_policy_version is required")
	} else if *p.MinPolicyVersion < 1 {
		errs = append(errs, fmt.Sprintf("min_policy_version %d must be at least 1", *p.MinPolicyVersion))
	}
	switch p.MaxConsentAge {
	case "":
		errs = append(errs, `max_consent_age is required (whole days like 395d, or "none" for no limit)`)
	case NoLimit:
	default:
		if d, err := consent.ParseMaxAge(p.MaxConsentAge); err != nil {
			errs = append(errs, err.Error())
		} else if d <= 0 {
			errs = append(errs, fmt.Sprintf(`max_consent_age %q must be positive (or "none" for no limit)`, p.MaxConsentAge))
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("%s", strings.Join(errs, "; "))
	}
	return nil
}

func (p Policy) String() string {
	return fmt.Sprintf("min_policy_version %d, max_consent_age %s", p.MinVersion(), p.MaxConsentAge)
}

// PolicyFor is the destination's consent policy for purpose.
func (d *Destination) PolicyFor(purpose string) (Policy, bool) {
	p, ok := d.Consent[purpose]
	return p, ok
}

// Tighten returns the rules of a run: the policy's, each made stricter by a
// flag that asks for it. minVersion 0 and maxAge 0 mean the flag was not
// given. A flag looser than the policy is a usage error: the registry, not
// the crontab, decides how old a grant may be.
func (p Policy) Tighten(where string, minVersion int64, maxAge time.Duration) (int64, time.Duration, error) {
	outMin, outAge := p.MinVersion(), p.MaxAge()
	if minVersion != 0 {
		if minVersion < outMin {
			return 0, 0, fmt.Errorf("%w: --min-policy-version %d is looser than the registry's min_policy_version %d for %s: flags may only tighten the registry's consent policy (leave the flag out to use it)",
				errkind.ErrUsage, minVersion, outMin, where)
		}
		outMin = minVersion
	}
	if maxAge != 0 {
		if outAge != 0 && maxAge > outAge {
			return 0, 0, fmt.Errorf("%w: --max-consent-age %s is looser than the registry's max_consent_age %s for %s: flags may only tighten the registry's consent policy (leave the flag out to use it)",
				errkind.ErrUsage, days(maxAge), p.MaxConsentAge, where)
		}
		outAge = maxAge
	}
	return outMin, outAge, nil
}

// Permits reports, as an error, rules looser than the policy: an older
// policy version, or a longer age limit or none (maxAge 0) where the policy
// sets one.
func (p Policy) Permits(where string, minVersion int64, maxAge time.Duration) error {
	if minVersion < p.MinVersion() {
		return fmt.Errorf("%w: min_policy_version %d is looser than the registry's %d for %s", errkind.ErrUsage, minVersion, p.MinVersion(), where)
	}
	if limit := p.MaxAge(); limit != 0 && (maxAge == 0 || maxAge > limit) {
		got := "no limit"
		if maxAge != 0 {
			got = days(maxAge)
		}
		return fmt.Errorf("%w: max_consent_age %s is looser than the registry's %s for %s", errkind.ErrUsage, got, p.MaxConsentAge, where)
	}
	return nil
}

func days(d time.Duration) string {
	if d%(24*time.Hour) == 0 {
		return fmt.Sprintf("%dd", d/(24*time.Hour))
	}
	return d.String()
}

// policyLines are the registry lines a destination lacks for the purposes
// it has no policy for, indented under "  - id: ...", with placeholders the
// data protection officer replaces.
func policyLines(d *Destination) []string {
	var missing []string
	for _, p := range d.Purposes {
		if _, ok := d.Consent[p]; !ok {
			missing = append(missing, p)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	lines := []string{}
	if len(d.Consent) == 0 {
		lines = append(lines, "    consent:")
	}
	for _, p := range missing {
		lines = append(lines, fmt.Sprintf("      %s: {min_policy_version: <N>, max_consent_age: <DAYS>d}", p))
	}
	return lines
}

// upgradeError is the error for a version 1 registry: what to change, and
// the lines to add under each destination.
func upgradeError(r *Registry) error {
	var b strings.Builder
	fmt.Fprintf(&b, "version %s has no consent policy; %s requires one per destination and purpose, the data protection officer's decision (runs so far took it from --min-policy-version and --max-consent-age, whose defaults were policy version 1 and no age limit).\n", versionV1, Version)
	b.WriteString("Change the first line, and add under each destination the lines marked + (replace <N> and <DAYS>; max_consent_age: none sets no limit):\n")
	fmt.Fprintf(&b, "  version: %s\n  destinations:\n", Version)
	for i := range r.Destinations {
		d := &r.Destinations[i]
		fmt.Fprintf(&b, "    - id: %s\n", d.ID)
		for _, l := range policyLines(d) {
			fmt.Fprintf(&b, "+ %s\n", l)
		}
	}
	return fmt.Errorf("%w: %s", errkind.ErrConfig, strings.TrimRight(b.String(), "\n"))
}

var unknownFieldRE = regexp.MustCompile(`field (\S+) not found in type destinations\.(\w+)`)

// withSuggestion adds "did you mean" to the YAML decoder's unknown-key
// errors.
func withSuggestion(err error) error {
	m := unknownFieldRE.FindStringSubmatch(err.Error())
	if m == nil {
		return err
	}
	var t reflect.Type
	switch m[2] {
	case "Registry":
		t = reflect.TypeFor[Registry]()
	case "Destination":
		t = reflect.TypeFor[Destination]()
	case "Policy":
		t = reflect.TypeFor[Policy]()
	default:
		return err
	}
	var keys []string
	for f := range t.Fields() {
		if k, _, _ := strings.Cut(f.Tag.Get("yaml"), ","); k != "" && k != "-" && !slices.Contains(keys, k) {
			keys = append(keys, k)
		}
	}
	if h := suggest.Hint(m[1], keys); h != "" {
		return fmt.Errorf("%w%s", err, h)
	}
	return err
}
