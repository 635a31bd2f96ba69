package destinations

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"audiencematch/pipeline/errkind"
)

const good = `version: audiencematch.destinations/v2
destinations:
  - id: meta-ads
    name: Meta Ads
    organization: Meta Platforms, Inc.
    relationship: parent
    purposes: [ads_matching]
    consent:
      ads_matching: {min_policy_version: 3, max_consent_age: 395d}
    lawful_basis: consent, GDPR Art. 6(1)(a)
    scheme: hmac-sha256
    allow_unkeyed: false
    delivery: /srv/exports
    retention_days: 90
  - id: google-cm
    name: Google Customer Match
    organization: Google LLC
    relationship: third_party
    purposes: [ads_matching]
    consent:
      ads_matching: {min_policy_version: 1, max_consent_age: none}
    lawful_basis: consent
    scheme: sha256-e164
    allow_unkeyed: true
    delivery: /srv/google
    retention_days: 30
  - id: uid2-op
    name: UID2 operator
    organization: Affiliate Co
    relationship: affiliate
    purposes: [ads_matching, measurement]
    consent:
      ads_matching: {min_policy_version: 2, max_consent_age: 365d}
      measurement: {min_policy_version: 2, max_consent_age: 9480h}
    lawful_basis: consent
    scheme: uid2
    allow_unkeyed: true
    delivery: /srv/uid2
    retention_days: 30
  - id: email-vendor
    name: Mailer
    organization: Mailer Ltd
    relationship: processor
    purposes: [marketing_email]
    consent:
      marketing_email:
        min_policy_version: 1
        max_consent_age: 730d
    lawful_basis: contract
    scheme: hmac-sha256
    delivery: /srv/mail
    retention_days: 7
`

func load(t *testing.T, text string) (*Registry, error) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "destinations.yaml")
	os.WriteFile(p, []byte(text), 0o644)
	return Load(p)
}

func TestAuthorize(t *testing.T) {
	r, err := load(t, good)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		id, purpose, want string
	}{
		{"meta-ads", "ads_matching", ""},
		{"uid2-op", "measurement", ""},
		{"nobody", "ads_matching", "not in the registry"},
		{"google-cm", "ads_matching", "third party"},
		{"email-vendor", "ads_matching", "not \"ads_matching\""},
	}
	for _, c := range cases {
		d, err := r.Authorize(c.id, c.purpose)
		if c.want == "" && (err != nil || d == nil || d.ID != c.id) {
			t.Errorf("%s/%s: refused: %v", c.id, c.purpose, err)
		}
		if c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)) {
			t.Errorf("%s/%s: err = %v, want %q", c.id, c.purpose, err, c.want)
		}
	}
}

func TestUnkeyedWithoutOptInRefused(t *testing.T) {
	r, err := load(t, strings.Replace(good, "allow_unkeyed: true\n    delivery: /srv/uid2", "allow_unkeyed: false\n    delivery: /srv/uid2", 1))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Authorize("uid2-op", "ads_matching"); err == nil || !strings.Contains(err.Error(), "without allow_unkeyed") {
		t.Errorf("err = %v", err)
	}
	if w := strings.Join(r.Warnings(), "\n"); !strings.Contains(w, "uid2-op") || !strings.Contains(w, "google-cm") {
		t.Errorf("warnings = %q", w)
	}
}

func TestValidate(t *testing.T) {
	cases := []struct{ edit, want string }{
		{strings.Replace(good, "relationship: parent", "relationship: friend", 1), "relationship \"friend\""},
		{strings.Replace(good, "id: google-cm", "id: meta-ads", 1), "appears twice"},
		{strings.Replace(good, "delivery: /srv/exports", "delivery: exports", 1), "absolute"},
		{strings.Replace(good, "delivery: /srv/exports", "delivery: ftp://host/exports", 1), "object-store URL"},
		{strings.Replace(good, "delivery: /srv/exports", "delivery: file://exports", 1), "absolute"},
		{strings.Replace(good, "delivery: /srv/exports", "delivery: s3://key:secret@bucket/x", 1), "credentials"},
		{strings.Replace(good, "retention_days: 90", "retention_days: 90\n    dir_mode: \"0777x\"", 1), "dir_mode"},
		{strings.Replace(good, "retention_days: 90", "retention_days: 90\n    dir_mode: \"0070\"", 1), "dir_mode"},
		{strings.Replace(good, "retention_days: 90", "retention_days: 0", 1), "retention_days"},
		{strings.Replace(good, "scheme: hmac-sha256", "scheme: md5", 1), "unknown scheme"},
		{strings.Replace(good, "lawful_basis: consent, GDPR Art. 6(1)(a)", "lawful_basis: \"\"", 1), "lawful_basis"},
		{strings.Replace(good, "purposes: [marketing_email]", "purposes: []", 1), "purposes are required"},
		{strings.Replace(good, "audiencematch.destinations/v2", "v0", 1), "version"},
		{strings.Replace(good, "allow_unkeyed: false", "allow_unkeyd: false", 1), "allow_unkeyd"},
		{strings.Replace(good, "retention_days: 90", "retention_days: 90\n    max_drop_percent: 120", 1), "max_drop_percent 120"},
		{strings.Replace(good, "retention_days: 90", "retention_days: 90\n    max_drop_percent: -1", 1), "max_drop_percent -1"},
		// A second document might hold a restriction: it is never ignored.
		{good + "---\nversion: audiencematch.destinations/v2\ndestinations: []\n", "more than one YAML document"},
		{strings.Replace(good, "      ads_matching: {min_policy_version: 3, max_consent_age: 395d}\n", "      ads_matching: {max_consent_age: 395d}\n", 1), "min_policy_version is required"},
		{strings.Replace(good, "min_policy_version: 3, max_consent_age: 395d", "min_policy_version: 3", 1), "max_consent_age is required"},
		{strings.Replace(good, "min_policy_version: 3, max_consent_age: 395d", "min_policy_version: 0, max_consent_age: 395d", 1), "at least 1"},
		{strings.Replace(good, "min_policy_version: 3, max_consent_age: 395d", "min_policy_version: 3, max_consent_age: 0d", 1), "must be positive"},
		{strings.Replace(good, "min_policy_version: 3, max_consent_age: 395d", "min_policy_version: 3, max_consent_age: a year", 1), "want whole days"},
		{strings.Replace(good, "      measurement: {min_policy_version: 2, max_consent_age: 9480h}\n", "", 1), "      measurement: {min_policy_version: <N>, max_consent_age: <DAYS>d}"},
		{strings.Replace(good, "measurement: {", "measurment: {", 1), "consent policy for \"measurment\", which is not among its purposes"},
		{strings.Replace(good, "max_consent_age: 395d", "max_consent_ages: 395d", 1), "did you mean max_consent_age?"},
		{strings.Replace(good, "allow_unkeyed: false", "allow_unkeyd: false", 1), "did you mean allow_unkeyed?"},
		{good + "---\nrelationship: parent\n", "more than one YAML document"},
	}
	for _, c := range cases {
		if _, err := load(t, c.edit); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("want an error mentioning %q, got %v", c.want, err)
		}
	}
	if _, err := Load(filepath.Join(t.TempDir(), "none.yaml")); err == nil {
		t.Error("a missing registry loaded")
	}
}

func TestMaxDrop(t *testing.T) {
	r, err := load(t, strings.Replace(good, "retention_days: 30\n  - id: uid2-op", "retention_days: 30\n    max_drop_percent: 5\n  - id: uid2-op", 1))
	if err != nil {
		t.Fatal(err)
	}
	if got := r.Lookup("meta-ads").MaxDrop(); got != DefaultMaxDropPercent/100 {
		t.Errorf("meta-ads: max drop %v, want the default %v", got, DefaultMaxDropPercent/100)
	}
	if got := r.Lookup("google-cm").MaxDrop(); got != 0.05 {
		t.Errorf("google-cm: max drop %v, want 0.05", got)
	}
}

func TestResolve(t *testing.T) {
	r, err := load(t, strings.Replace(good, "retention_days: 90", "retention_days: 90\n    key_file: /etc/am/meta.key", 1))
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		id, scheme, out, key string
		want                 Settings
		err                  string
	}{
		{"meta-ads", "", "", "", Settings{"hmac-sha256", "/srv/exports", "/etc/am/meta.key"}, ""},
		{"meta-ads", "hmac-sha256", "/srv/exports/", "/k", Settings{"hmac-sha256", "/srv/exports", "/k"}, ""},
		{"meta-ads", "uid2", "", "", Settings{}, "conflicts with the registry's scheme"},
		{"meta-ads", "", "/tmp/x", "", Settings{}, "conflicts with the registry's delivery"},
		{"nobody", "", "", "", Settings{"hmac-sha256", "", ""}, ""},
		{"nobody", "uid2", "/o", "", Settings{"uid2", "/o", ""}, ""},
	}
	for _, c := range cases {
		got, err := r.Resolve(c.id, c.scheme, c.out, c.key)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("%+v: err = %v, want %q", c, err, c.err)
			}
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("%+v: got %+v, %v, want %+v", c, got, err, c.want)
		}
	}
}

// TestDeliveryURLs: a delivery is a directory, a file:/// URL naming one,
// or an object-store URL; the registry's spelling and a flag's agree when
// they name the same place; dir_mode defaults to 0750.
func TestDeliveryURLs(t *testing.T) {
	for _, d := range []string{"file:///srv/exports", "s3://exports/am?region=eu-west-1&endpoint=http://127.0.0.1:9000", "gs://exports/am", "azblob://exports/am"} {
		r, err := load(t, strings.Replace(good, "delivery: /srv/exports", "delivery: "+d, 1))
		if err != nil {
			t.Errorf("%s: %v", d, err)
			continue
		}
		if m := r.Destinations[0].DirModeOr(0o750); m != 0o750 {
			t.Errorf("%s: dir mode %v, want 0750 by default", d, m)
		}
	}
	r, err := load(t, strings.Replace(good, "delivery: /srv/exports", "delivery: file:///srv/exports/\n    dir_mode: \"0755\"", 1))
	if err != nil {
		t.Fatal(err)
	}
	d := &r.Destinations[0]
	if err := d.Agrees("", "/srv/exports"); err != nil {
		t.Errorf("/srv/exports against file:///srv/exports/: %v", err)
	}
	if err := d.Agrees("", "/srv/other"); err == nil {
		t.Error("/srv/other agrees with file:///srv/exports/")
	}
	if m := d.DirModeOr(0o750); m != 0o755 {
		t.Errorf("dir_mode 0755 read as %v", m)
	}
}

func TestVersion1ShowsTheLinesToAdd(t *testing.T) {
	v1 := `version: audiencematch.destinations/v1
destinations:
  - id: meta-ads
    name: Meta Ads
    organization: Meta Platforms, Inc.
    relationship: parent
    purposes: [ads_matching, measurement]
    lawful_basis: consent
    scheme: hmac-sha256
    delivery: /srv/exports
    retention_days: 90
`
	_, err := load(t, v1)
	if err == nil {
		t.Fatal("a version 1 registry loaded")
	}
	for _, want := range []string{
		"version: audiencematch.destinations/v2",
		"    - id: meta-ads\n+     consent:\n+       ads_matching: {min_policy_version: <N>, max_consent_age: <DAYS>d}\n+       measurement: {min_policy_version: <N>, max_consent_age: <DAYS>d}",
		"policy version 1 and no age limit",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
}

func TestPolicyTightenOnly(t *testing.T) {
	r, err := load(t, good)
	if err != nil {
		t.Fatal(err)
	}
	p, ok := r.Lookup("meta-ads").PolicyFor("ads_matching")
	if !ok {
		t.Fatal("no policy")
	}
	const day = 24 * time.Hour
	cases := []struct {
		min     int64
		age     time.Duration
		wantMin int64
		wantAge time.Duration
		err     string
	}{
		{0, 0, 3, 395 * day, ""},
		{4, 30 * day, 4, 30 * day, ""},
		{3, 395 * day, 3, 395 * day, ""},
		{2, 0, 0, 0, "--min-policy-version 2 is looser than the registry's min_policy_version 3"},
		{0, 396 * day, 0, 0, "--max-consent-age 396d is looser than the registry's max_consent_age 395d"},
	}
	for _, c := range cases {
		gotMin, gotAge, err := p.Tighten("meta-ads/ads_matching", c.min, c.age)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) || !errors.Is(err, errkind.ErrUsage) {
				t.Errorf("Tighten(%d, %v) err = %v, want %q", c.min, c.age, err, c.err)
			}
			continue
		}
		if err != nil || gotMin != c.wantMin || gotAge != c.wantAge {
			t.Errorf("Tighten(%d, %v) = %d, %v, %v; want %d, %v", c.min, c.age, gotMin, gotAge, err, c.wantMin, c.wantAge)
		}
	}
	// No limit in the registry: any flag limit tightens.
	none, _ := r.Lookup("google-cm").PolicyFor("ads_matching")
	if _, age, err := none.Tighten("x", 0, 10*day); err != nil || age != 10*day {
		t.Errorf("no limit tightened to 10d: %v, %v", age, err)
	}
	// Permits is the pipeline's check of rules given directly: no limit
	// where the registry sets one is looser.
	for _, c := range []struct {
		min int64
		age time.Duration
		ok  bool
	}{{3, 395 * day, true}, {5, day, true}, {2, day, false}, {3, 0, false}, {3, 400 * day, false}} {
		if err := p.Permits("x", c.min, c.age); (err == nil) != c.ok {
			t.Errorf("Permits(%d, %v) = %v, want ok=%v", c.min, c.age, err, c.ok)
		}
	}
	if err := none.Permits("x", 1, 0); err != nil {
		t.Errorf("no limit refused no limit: %v", err)
	}
}

func TestAuthorizeWithoutPolicy(t *testing.T) {
	r, err := load(t, good)
	if err != nil {
		t.Fatal(err)
	}
	delete(r.Lookup("meta-ads").Consent, "ads_matching")
	_, err = r.Authorize("meta-ads", "ads_matching")
	if err == nil || !strings.Contains(err.Error(), "ads_matching: {min_policy_version: <N>, max_consent_age: <DAYS>d}") {
		t.Errorf("err = %v", err)
	}
}

func TestSameDirResolves(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	os.Mkdir("real", 0o755)
	os.Symlink("real", "link")
	cases := []struct {
		a, b string
		same bool
	}{
		{"out", filepath.Join(dir, "out"), true},
		{"./out/", filepath.Join(dir, "out"), true},
		{"link/x", filepath.Join(dir, "real", "x"), true},
		{"out", filepath.Join(dir, "other"), false},
		{"file://" + filepath.Join(dir, "out"), "out", true},
		{"s3://exports/am", "s3://exports/am/", true},
		{"s3://exports/am", "s3://exports/other", false},
		{"s3://exports/am", "exports/am", false},
		{"gs://exports/am", "s3://exports/am", false},
	}
	for _, c := range cases {
		if got := SameDir(c.a, c.b); got != c.same {
			t.Errorf("SameDir(%q, %q) = %v, want %v", c.a, c.b, got, c.same)
		}
	}
	d := &Destination{ID: "x", Delivery: filepath.Join(dir, "out"), Scheme: "hmac-sha256"}
	if err := d.Agrees("", "out"); err != nil {
		t.Errorf("a relative --out naming the delivery: %v", err)
	}
	if err := d.Agrees("", "elsewhere"); err == nil {
		t.Error("another directory agreed")
	}
	// --out against a bucket delivery: the same URL agrees, a directory
	// does not.
	u := &Destination{ID: "x", Delivery: "s3://exports/am?region=eu-west-1", Scheme: "hmac-sha256"}
	if err := u.Agrees("", "s3://exports/am?region=eu-west-1"); err != nil {
		t.Errorf("the delivery's own URL: %v", err)
	}
	for _, out := range []string{"out", "s3://exports/other?region=eu-west-1", "file:///exports/am"} {
		if err := u.Agrees("", out); err == nil {
			t.Errorf("--out %s agreed with %s", out, u.Delivery)
		}
	}
}

const oprfEntry = `  - id: meta-oprf
    name: Meta Ads (oblivious)
    organization: Meta Platforms, Inc.
    relationship: parent
    purposes: [ads_matching]
    consent: {ads_matching: {min_policy_version: 3, max_consent_age: 395d}}
    lawful_basis: consent
    scheme: oprf-ristretto255
    delivery: /srv/oprf
    retention_days: 30
`

func TestOPRFDestination(t *testing.T) {
	r, err := load(t, good+oprfEntry)
	if err != nil {
		t.Fatal(err)
	}
	// Keyed: no allow_unkeyed needed.
	d, err := r.Authorize("meta-oprf", "ads_matching")
	if err != nil {
		t.Fatalf("oprf-ristretto255 without allow_unkeyed refused: %v", err)
	}
	if got := d.EvaluationBudget(); got != 0 {
		t.Errorf("budget without oprf_max_evaluations = %d, want 0 (every evaluation refused)", got)
	}
	if w := strings.Join(r.Warnings(), "\n"); !strings.Contains(w, "meta-oprf: no oprf_max_evaluations") {
		t.Errorf("warnings = %q, want one for the missing budget", w)
	}
	r, err = load(t, good+oprfEntry+"    oprf_max_evaluations: 5000\n")
	if err != nil {
		t.Fatal(err)
	}
	if got := r.Lookup("meta-oprf").EvaluationBudget(); got != 5000 {
		t.Errorf("budget = %d, want 5000", got)
	}
	for _, c := range []struct{ text, want string }{
		{good + oprfEntry + "    oprf_max_evaluations: -1\n", "must not be negative"},
		{strings.Replace(good, "retention_days: 90", "retention_days: 90\n    oprf_max_evaluations: 10", 1), "for scheme oprf-ristretto255 only"},
		{good + oprfEntry + "    oprf_max_evaluation: 10\n", "oprf_max_evaluation"},
	} {
		if _, err := load(t, c.text); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("want an error mentioning %q, got %v", c.want, err)
		}
	}
}
