// Package destinations is the registry of who may receive identifiers: the
// allowlist the run enforces, and the GDPR Art. 30 list of recipients.
//
// The registry is a YAML file:
//
//	version: audiencematch.destinations/v2
//	destinations:
//	  - id: meta-ads
//	    name: Meta Ads Custom Audiences
//	    organization: Meta Platforms, Inc.
//	    relationship: parent            # parent, affiliate, processor, third_party
//	    purposes: [ads_matching]
//	    consent:                        # required: the consent policy of each purpose
//	      ads_matching: {min_policy_version: 3, max_consent_age: 395d}
//	    lawful_basis: consent, GDPR Art. 6(1)(a)
//	    scheme: hmac-sha256
//	    allow_unkeyed: false
//	    delivery: /srv/exports          # a directory, file:///srv/exports, or s3://bucket/prefix?region=…
//	    dir_mode: "0750"                # optional: published directories' mode (default 0750)
//	    retention_days: 90
//	    key_file: /etc/audiencematch/meta-ads.key   # optional: this destination's own master key
//	    max_drop_percent: 20            # optional: the drop guard's threshold (default 20)
//	    oprf_max_evaluations: 100000    # optional, oprf-ristretto255 only: blinded elements
//	                                    # `oprf evaluate` may answer per rolling 24 hours
//	                                    # (absent or 0: every evaluation is refused)
//
// The consent policy of a destination and purpose (MATCHING.md section 2's
// min_policy_version and max_consent_age) is a decision of the data
// protection officer, so it lives here, beside the lawful basis, and is
// required for every purpose: max_consent_age is whole days (395d), a Go
// duration (9480h), or "none" for no limit, written out. A run's flags may
// only tighten it (Policy.Tighten). Version 1 registries had no policy, and
// a run under one silently took policy version 1 and no age limit; Load
// refuses them with the lines to add.
//
// The file holds exactly one YAML document: a second one (after "---") is an
// error rather than silently ignored, since it might hold a restriction.
//
// A run is refused, before it reads any user data, when its destination is
// not in the registry, is a third party, is not registered for the run's
// purpose, or has an unkeyed scheme without allow_unkeyed.
package destinations

import (
	"bytes"
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"

	"audiencematch/hashing"
	"audiencematch/internal/objstore"
	"audiencematch/pipeline/errkind"
)

// Version is the registry format version, its first key.
const Version = "audiencematch.destinations/v2"

// versionV1 is the version before the consent policy was in the registry.
const versionV1 = "audiencematch.destinations/v1"

// Relationships of a recipient to the data controller.
const (
	Parent     = "parent"
	Affiliate  = "affiliate"
	Processor  = "processor"
	ThirdParty = "third_party"
)

// Destination is one registered recipient.
type Destination struct {
	ID           string   `yaml:"id" json:"id"`
	Name         string   `yaml:"name" json:"name"`
	Organization string   `yaml:"organization" json:"organization"`
	Relationship string   `yaml:"relationship" json:"relationship"`
	Purposes     []string `yaml:"purposes" json:"purposes"`
	// Consent is the consent policy of each purpose in Purposes.
	Consent       map[string]Policy `yaml:"consent" json:"consent"`
	LawfulBasis   string            `yaml:"lawful_basis" json:"lawful_basis"`
	Scheme        string            `yaml:"scheme" json:"scheme"`
	AllowUnkeyed  bool              `yaml:"allow_unkeyed" json:"allow_unkeyed"`
	Delivery      string            `yaml:"delivery" json:"delivery"`
	RetentionDays int               `yaml:"retention_days" json:"retention_days"`
	KeyFile       string            `yaml:"key_file,omitempty" json:"key_file,omitempty"`
	// MaxDropPercent is the drop guard's threshold: a run whose snapshot is
	// smaller than the previous one by more than this share publishes
	// nothing unless the operator allows the drop. Nil: DefaultMaxDropPercent.
	MaxDropPercent *float64 `yaml:"max_drop_percent,omitempty" json:"max_drop_percent,omitempty"`
	// DirMode is the mode of published run directories, in octal ("0750"):
	// the consumer's account reads them through its group. Empty: 0750.
	// Object stores have no modes: their bucket policy decides.
	DirMode string `yaml:"dir_mode,omitempty" json:"dir_mode,omitempty"`
	// OPRFMaxEvaluations is how many blinded elements `oprf evaluate` may
	// answer for this destination in any rolling 24 hours (scheme
	// oprf-ristretto255 only). Nil or 0: none, so that a destination is
	// never given an unbounded oracle by omission.
	OPRFMaxEvaluations *int64 `yaml:"oprf_max_evaluations,omitempty" json:"oprf_max_evaluations,omitempty"`
}

// DirModeOr is the destination's dir_mode, or def when it sets none.
func (d *Destination) DirModeOr(def fs.FileMode) fs.FileMode {
	m, err := strconv.ParseUint(d.DirMode, 8, 32)
	if d.DirMode == "" || err != nil {
		return def
	}
	return fs.FileMode(m)
}

// EvaluationBudget is the destination's oprf_max_evaluations: 0 when it is
// not set, which refuses every evaluation.
func (d *Destination) EvaluationBudget() int64 {
	if d.OPRFMaxEvaluations == nil {
		return 0
	}
	return *d.OPRFMaxEvaluations
}

// DefaultMaxDropPercent is the drop guard's threshold when the registry
// sets none: a fifth of the audience gone in one night is far more than the
// usual churn of withdrawals, and far more like a truncated input or a
// mistyped cutoff.
const DefaultMaxDropPercent = 20.0

// MaxDrop is the drop guard's threshold as a fraction (0.2 for 20%).
func (d *Destination) MaxDrop() float64 {
	if d.MaxDropPercent == nil {
		return DefaultMaxDropPercent / 100
	}
	return *d.MaxDropPercent / 100
}

// Registry is the parsed registry file.
type Registry struct {
	Version      string        `yaml:"version"`
	Destinations []Destination `yaml:"destinations"`
	Path         string        `yaml:"-"`
	// SHA256 is the hex SHA-256 of the file's bytes as Load read them: a
	// run's audit record names the registry it was authorized by with it.
	SHA256 string `yaml:"-"`
}

var idRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,63}$`)

// ErrNotFound means there is no registry file.
var ErrNotFound = errors.New("no destination registry")

// Load reads and validates a registry. Unknown keys are errors: a typo must
// not silently drop a restriction.
func Load(path string) (*Registry, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w at %s: create one (see README, \"Destinations\")", ErrNotFound, path)
	}
	if err != nil {
		return nil, err
	}
	return Parse(path, b)
}

// Parse validates the registry text b, read from path (which names it in
// errors), as Load does.
func Parse(path string, b []byte) (*Registry, error) {
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	sum := sha256.Sum256(b)
	r := &Registry{Path: path, SHA256: hex.EncodeToString(sum[:])}
	if err := dec.Decode(r); err != nil {
		return nil, fmt.Errorf("%s: %w", path, withSuggestion(err))
	}
	var more yaml.Node
	if err := dec.Decode(&more); err == nil {
		return nil, fmt.Errorf("%s: more than one YAML document (a second one starts at line %d): put every destination in the first", path, more.Line)
	} else if !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%s: after the first document: %w", path, err)
	}
	if r.Version == versionV1 {
		return nil, fmt.Errorf("%s: %w", path, upgradeError(r))
	}
	if errs := r.Validate(); len(errs) > 0 {
		return nil, fmt.Errorf("%s: %w", path, errors.Join(errs...))
	}
	return r, nil
}

// Validate returns every problem of the registry, not just the first.
func (r *Registry) Validate() []error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if r.Version != Version {
		bad("version %q: want %q", r.Version, Version)
	}
	if len(r.Destinations) == 0 {
		bad("no destinations")
	}
	seen := map[string]bool{}
	for i, d := range r.Destinations {
		where := fmt.Sprintf("destination %d (%q)", i+1, d.ID)
		if !idRE.MatchString(d.ID) {
			bad("%s: id must be 1-64 characters of a-z, 0-9, '.', '_', '-'", where)
		}
		if seen[d.ID] {
			bad("%s: id appears twice", where)
		}
		seen[d.ID] = true
		if strings.TrimSpace(d.Name) == "" || strings.TrimSpace(d.Organization) == "" || strings.TrimSpace(d.LawfulBasis) == "" {
			bad("%s: name, organization and lawful_basis are required (GDPR Art. 30 records them)", where)
		}
		if !slices.Contains([]string{Parent, Affiliate, Processor, ThirdParty}, d.Relationship) {
			bad("%s: relationship %q: use parent, affiliate, processor or third_party", where, d.Relationship)
		}
		if len(d.Purposes) == 0 {
			bad("%s: purposes are required", where)
		}
		if lines := policyLines(&d); len(lines) > 0 {
			bad("%s: no consent policy for every purpose; the data protection officer decides it: add under the destination (replace <N> and <DAYS>; max_consent_age: none sets no limit):\n%s", where, strings.Join(lines, "\n"))
		}
		for _, p := range slices.Sorted(maps.Keys(d.Consent)) {
			if !slices.Contains(d.Purposes, p) {
				bad("%s: consent policy for %q, which is not among its purposes %v", where, p, d.Purposes)
			} else if err := d.Consent[p].check(); err != nil {
				bad("%s: consent policy for %q: %v", where, p, err)
			}
		}
		if _, err := hashing.ParseScheme(d.Scheme); err != nil {
			bad("%s: %v", where, err)
		}
		if p, ok := objstore.LocalPath(d.Delivery); d.Delivery == "" || (ok && !filepath.IsAbs(p)) || (!ok && !objstore.IsURL(d.Delivery)) {
			bad("%s: delivery must be an absolute directory path, a file:/// URL or an object-store URL (s3://BUCKET/PREFIX, gs://BUCKET/PREFIX, azblob://CONTAINER/PREFIX)", where)
		} else if !ok {
			if _, _, err := objstore.Split(d.Delivery); err != nil {
				bad("%s: delivery: %v", where, err)
			}
		}
		if m, err := strconv.ParseUint(d.DirMode, 8, 32); d.DirMode != "" && (err != nil || m&^0o777 != 0 || m&0o700 != 0o700) {
			bad("%s: dir_mode %q: give octal permissions the owner can use, like 0750", where, d.DirMode)
		}
		if d.RetentionDays <= 0 {
			bad("%s: retention_days must be positive", where)
		}
		if p := d.MaxDropPercent; p != nil && (*p < 0 || *p > 100) {
			bad("%s: max_drop_percent %v must be between 0 and 100", where, *p)
		}
		if n := d.OPRFMaxEvaluations; n != nil && *n < 0 {
			bad("%s: oprf_max_evaluations %d must not be negative", where, *n)
		}
		if d.OPRFMaxEvaluations != nil && d.Scheme != string(hashing.OPRFRistretto255) {
			bad("%s: oprf_max_evaluations is for scheme %s only, not %s", where, hashing.OPRFRistretto255, d.Scheme)
		}
	}
	return errs
}

// Warnings lists entries that are valid but that every run will refuse.
func (r *Registry) Warnings() []string {
	var out []string
	for _, d := range r.Destinations {
		if d.Relationship == ThirdParty {
			out = append(out, fmt.Sprintf("%s: a third party: every run to it is refused", d.ID))
		}
		if sc, err := hashing.ParseScheme(d.Scheme); err == nil && !sc.Keyed() && !d.AllowUnkeyed {
			out = append(out, fmt.Sprintf("%s: unkeyed scheme %s without allow_unkeyed: every run to it is refused", d.ID, sc))
		}
		if d.Scheme == string(hashing.OPRFRistretto255) && d.EvaluationBudget() == 0 {
			out = append(out, fmt.Sprintf("%s: no oprf_max_evaluations: every `oprf evaluate` for it is refused", d.ID))
		}
	}
	return out
}

// Lookup returns the destination with id, or nil.
func (r *Registry) Lookup(id string) *Destination {
	for i := range r.Destinations {
		if r.Destinations[i].ID == id {
			return &r.Destinations[i]
		}
	}
	return nil
}

// Authorize returns the destination if a run for purpose may send to it, or
// the reason it may not.
func (r *Registry) Authorize(id, purpose string) (*Destination, error) {
	d := r.Lookup(id)
	switch {
	case d == nil:
		return nil, fmt.Errorf("destination %q is not in the registry %s", id, r.Path)
	case d.Relationship == ThirdParty:
		return nil, fmt.Errorf("destination %q belongs to a third party (%s): nothing goes to third parties", id, d.Organization)
	case !slices.Contains(d.Purposes, purpose):
		return nil, fmt.Errorf("destination %q is registered for purposes %v, not %q", id, d.Purposes, purpose)
	}
	if sc, _ := hashing.ParseScheme(d.Scheme); !sc.Keyed() && !d.AllowUnkeyed {
		return nil, fmt.Errorf("destination %q has the unkeyed scheme %s without allow_unkeyed", id, sc)
	}
	if _, ok := d.PolicyFor(purpose); !ok {
		return nil, fmt.Errorf("destination %q has no consent policy for %q in the registry %s; add under it:\n%s", id, purpose, r.Path,
			strings.Join(policyLines(&Destination{Purposes: []string{purpose}, Consent: d.Consent}), "\n"))
	}
	return d, nil
}

// Settings are what a run to a destination sends with: the registry
// decides them, and a flag may repeat them but not contradict them.
type Settings struct {
	Scheme, Delivery, KeyFile string
}

// Resolve returns the settings of a run to id from the registry and the
// flags that may only repeat it (empty: not given). A destination the
// registry does not know keeps the flags: the run refuses it, and records
// the refusal, before it reads anything.
func (r *Registry) Resolve(id, scheme, delivery, keyFile string) (Settings, error) {
	d := r.Lookup(id)
	if d == nil {
		return Settings{Scheme: cmp.Or(scheme, string(hashing.HMACSHA256)), Delivery: delivery, KeyFile: keyFile}, nil
	}
	if err := d.Agrees(scheme, delivery); err != nil {
		return Settings{}, fmt.Errorf("%w (%s)", err, r.Path)
	}
	return Settings{Scheme: d.Scheme, Delivery: d.Delivery, KeyFile: cmp.Or(keyFile, d.KeyFile)}, nil
}

// Agrees reports, as an error naming both, a scheme or delivery directory
// (empty: not given) that contradicts the destination's.
func (d *Destination) Agrees(scheme, delivery string) error {
	if scheme != "" && scheme != d.Scheme {
		return fmt.Errorf("%w: scheme %s conflicts with the registry's scheme %s for %q", errkind.ErrUsage, scheme, d.Scheme, d.ID)
	}
	if delivery != "" && !SameDir(delivery, d.Delivery) {
		return fmt.Errorf("%w: output directory %s conflicts with the registry's delivery %s for %q", errkind.ErrUsage, delivery, d.Delivery, d.ID)
	}
	return nil
}

// SameDir reports whether two deliveries name the same place once both are
// resolved. A local path or file:// URL is made absolute against the
// working directory, cleaned, and has its symbolic links followed as far
// as the path exists: a relative --out naming the registry's delivery
// directory agrees with it. An object store's URL is compared as written,
// less a trailing slash; it never names the same place as a local path.
func SameDir(a, b string) bool {
	pa, aLocal := objstore.LocalPath(a)
	pb, bLocal := objstore.LocalPath(b)
	if aLocal != bLocal {
		return false
	}
	if !aLocal {
		return strings.TrimSuffix(a, "/") == strings.TrimSuffix(b, "/")
	}
	return resolve(pa) == resolve(pb)
}
func resolve(p string) string {
	abs, err := filepath.Abs(p)
	if err != nil {
		return filepath.Clean(p)
	}
	// Follow links in the longest existing prefix; what does not exist yet
	// (a first run's delivery) is kept as written.
	rest := ""
	for dir := abs; ; dir = filepath.Dir(dir) {
		if real, err := filepath.EvalSymlinks(dir); err == nil {
			return filepath.Join(real, rest)
		}
		if dir == filepath.Dir(dir) {
			return abs
		}
		rest = filepath.Join(filepath.Base(dir), rest)
	}
}
