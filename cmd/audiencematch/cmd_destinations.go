package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"audiencematch/fixtures"
	"audiencematch/internal/fsutil"
	"audiencematch/internal/objstore"
	"audiencematch/pipeline"
	"audiencematch/pipeline/destinations"
	"audiencematch/pipeline/errkind"
)

// DestinationsOptions are the flags of `audiencematch destinations`.
type DestinationsOptions struct {
	State string
	File  string
	JSON  bool
}

// AddFlags registers the options' flags.
func (o *DestinationsOptions) AddFlags(cmd *cobra.Command) {
	cmd.Flags().StringVar(&o.State, "state", "", "state directory; the registry defaults to STATE/destinations.yaml")
	cmd.Flags().StringVar(&o.File, "destinations", "", "the registry file (default: STATE/destinations.yaml)")
}

func (o *DestinationsOptions) load() (*destinations.Registry, error) {
	path, err := registryPath(o.File, o.State)
	if err != nil {
		return nil, err
	}
	r, err := destinations.Load(path)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errkind.ErrConfig, err)
	}
	return r, nil
}

func registryPath(file, state string) (string, error) {
	if file != "" {
		return file, nil
	}
	if state == "" {
		return "", fmt.Errorf("%w: give --destinations FILE or --state DIR", errkind.ErrUsage)
	}
	return filepath.Join(state, "destinations.yaml"), nil
}

func newDestinationsCommand() *cobra.Command {
	d := &cobra.Command{
		Use:   "destinations",
		Short: "Show and check the destination registry (the allowlist and GDPR Art. 30 list of recipients)",
		Long: `The registry (YAML, default STATE/destinations.yaml) lists every recipient a run may
send to: id, name, organization, relationship (parent, affiliate, processor,
third_party), purposes, consent (each purpose's min_policy_version and
max_consent_age: the policy runs may only tighten), lawful_basis, scheme,
allow_unkeyed, delivery (a local directory, a file:// URL, or an s3://, gs://
or azblob:// location), dir_mode, retention_days, and optionally key_file and
max_drop_percent. A run refuses (exit 77) a destination not in it,
a third party, one not registered for the run's purpose, or an unkeyed scheme
without allow_unkeyed. "destinations init" writes a commented one to start from.`,
	}
	o := &DestinationsOptions{}
	list := &cobra.Command{
		Use:   "list",
		Short: "Print the registry as a table (or --json)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			r, err := o.load()
			if err != nil {
				return err
			}
			if o.JSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(r.Destinations)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tNAME\tORGANIZATION\tRELATIONSHIP\tPURPOSES\tCONSENT POLICY\tLAWFUL BASIS\tSCHEME\tDELIVERY\tRETENTION")
			for _, d := range r.Destinations {
				scheme := d.Scheme
				if d.AllowUnkeyed {
					scheme += " (unkeyed allowed)"
				}
				var policy []string
				for _, p := range d.Purposes {
					c, _ := d.PolicyFor(p)
					policy = append(policy, fmt.Sprintf("%s: version>=%d, age<=%s", p, c.MinVersion(), c.MaxConsentAge))
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%dd\n", d.ID, d.Name, d.Organization, d.Relationship,
					strings.Join(d.Purposes, ","), strings.Join(policy, "; "), d.LawfulBasis, scheme, d.Delivery, d.RetentionDays)
			}
			return tw.Flush()
		},
	}
	o.AddFlags(list)
	list.Flags().BoolVar(&o.JSON, "json", false, "print JSON")
	co := &DestinationsOptions{}
	check := &cobra.Command{
		Use:   "check",
		Short: "Validate the registry: every problem is listed; exit 78 if there is one",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if co.JSON {
				return checkJSON(cmd.OutOrStdout(), co)
			}
			r, err := co.load()
			if err != nil {
				return err
			}
			for _, w := range r.Warnings() {
				fmt.Fprintln(cmd.ErrOrStderr(), "warning:", w)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "ok: %d destinations in %s\n", len(r.Destinations), r.Path)
			return nil
		},
	}
	co.AddFlags(check)
	check.Flags().BoolVar(&co.JSON, "json", false, "print the result as JSON: {\"ok\", \"path\", \"destinations\", \"warnings\", \"errors\"}")
	d.AddCommand(list, check, newDestinationsInitCommand())
	return d
}

// InitOptions are the flags of `audiencematch destinations init`.
type InitOptions struct {
	DestinationsOptions
	Destination      string
	Delivery         string
	Purpose          string
	MinPolicyVersion int64
	MaxConsentAge    string
	Force            bool
}

func newDestinationsInitCommand() *cobra.Command {
	o := &InitOptions{}
	cmd := &cobra.Command{
		Use:   "init --state DIR --delivery DIR --min-policy-version N --max-consent-age AGE",
		Short: "Write a commented registry for the parent platform, to review with the data protection officer",
		Long: `Write STATE/destinations.yaml (or --destinations FILE): one destination, the parent
platform, keyed (hmac-sha256), for one purpose, each line commented. The consent
policy (--min-policy-version, --max-consent-age) has no default: which grants
count is the data protection officer's decision, and runs may only tighten it.
--delivery, a directory, is made absolute; an object store's URL (s3://, gs://,
azblob://) is kept as written. An existing registry is never overwritten without
--force. The registry written is checked as a run would check it.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runDestinationsInit(cmd, o) },
	}
	o.AddFlags(cmd)
	f := cmd.Flags()
	f.StringVar(&o.Destination, "destination", "meta-ads", "the destination id")
	f.StringVar(&o.Delivery, "delivery", "", "the directory runs publish to (required; made absolute), or an s3://, gs:// or azblob:// URL")
	f.StringVar(&o.Purpose, "purpose", fixtures.DefaultPurpose, "the purpose runs to it export for")
	f.Int64Var(&o.MinPolicyVersion, "min-policy-version", 0, "the oldest privacy-notice version whose grants count (required)")
	f.StringVar(&o.MaxConsentAge, "max-consent-age", "", "grants older than this do not count: whole days (395d), or none for no limit (required)")
	f.BoolVar(&o.Force, "force", false, "overwrite an existing registry")
	return cmd
}

// registryTemplate is the registry destinations init writes; its
// placeholders are filled in order: destination, purpose, min policy
// version, max consent age, delivery.
const registryTemplate = `# The destination registry: who may receive identifiers (the allowlist every
# run enforces before it reads any user data) and the GDPR Art. 30 list of
# recipients. Written by "audiencematch destinations init": review every line
# with the data protection officer. Reference: docs/OPERATIONS.md, "The
# destination registry"; check it with "audiencematch destinations check".
version: %[6]s
destinations:
  - id: %[1]s                       # names the output directory and the derived key
    name: Parent Ads Custom Audiences  # the recipient, for the Art. 30 record
    organization: Parent Platforms, Inc.
    relationship: parent             # parent, affiliate or processor; third_party is always refused
    purposes: [%[2]s]                # the --purpose values a run to it may use
    consent:                         # per purpose: which grants count; run flags may only tighten it
      %[2]s:
        min_policy_version: %[3]d    # the oldest privacy-notice version whose grants count
        max_consent_age: %[4]s       # grants older than this do not count (395d, 9480h, or none)
    lawful_basis: consent, GDPR Art. 6(1)(a)
    scheme: hmac-sha256              # keyed; the unkeyed sha256-digits, sha256-e164 and uid2 need allow_unkeyed
    allow_unkeyed: false
    delivery: %[5]s                  # where runs publish: an absolute directory or a bucket URL
    retention_days: 90               # audiencematch prune (and each run) removes older runs and their evidence
    # key_file: /etc/audiencematch/%[1]s.key   # optional: this destination's own master key
    # max_drop_percent: 20           # optional: the drop guard's threshold, in percent
`

func runDestinationsInit(cmd *cobra.Command, o *InitOptions) error {
	path, err := registryPath(o.File, o.State)
	if err != nil {
		return err
	}
	var missing []string
	if o.Delivery == "" {
		missing = append(missing, "--delivery")
	}
	if !cmd.Flags().Changed("min-policy-version") {
		missing = append(missing, "--min-policy-version")
	}
	if o.MaxConsentAge == "" {
		missing = append(missing, "--max-consent-age")
	}
	if len(missing) > 0 {
		return fmt.Errorf("%w: missing %s: the consent policy is the data protection officer's decision, so it has no default (e.g. --min-policy-version 3 --max-consent-age 395d)", errkind.ErrUsage, strings.Join(missing, ", "))
	}
	if !pipeline.ValidDestination(o.Destination) {
		return fmt.Errorf("%w: --destination %q: use 1-64 characters of a-z, 0-9, '.', '_', '-'", errkind.ErrUsage, o.Destination)
	}
	delivery := o.Delivery
	if p, ok := objstore.LocalPath(o.Delivery); ok {
		if delivery, err = filepath.Abs(p); err != nil {
			return fmt.Errorf("%w: --delivery: %w", errkind.ErrUsage, err)
		}
	}
	if !o.Force && fileExists(path) {
		return fmt.Errorf("%w: %s exists: edit it, or pass --force to replace it", errkind.ErrUsage, path)
	}
	body := fmt.Sprintf(registryTemplate, o.Destination, o.Purpose, o.MinPolicyVersion, o.MaxConsentAge, delivery, destinations.Version)
	// The template is checked before it is written: a registry init writes
	// is one a run accepts.
	if _, err := destinations.Parse(path, []byte(body)); err != nil {
		return fmt.Errorf("%w: %w", errkind.ErrUsage, err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("%w: %w", errkind.ErrConfig, err)
	}
	if err := fsutil.WriteFileDurable(path, []byte(body), 0o644); err != nil {
		return fmt.Errorf("%w: %w", errkind.ErrConfig, err)
	}
	fmt.Fprintf(cmd.ErrOrStderr(), "wrote %s: review it with the data protection officer, then: audiencematch destinations check --destinations %s\n", path, path)
	return nil
}

// CheckResult is what destinations check --json prints.
type CheckResult struct {
	OK           bool     `json:"ok"`
	Path         string   `json:"path"`
	Destinations int      `json:"destinations"`
	Warnings     []string `json:"warnings"`
	Errors       []string `json:"errors"`
}

// checkJSON prints the outcome of loading the registry as one JSON
// document, every problem its own entry; a failure then exits as it would
// without --json, printed once.
func checkJSON(w io.Writer, o *DestinationsOptions) error {
	path, err := registryPath(o.File, o.State)
	if err != nil {
		return err
	}
	res := CheckResult{Path: path, Warnings: []string{}, Errors: []string{}}
	r, loadErr := destinations.Load(path)
	if loadErr == nil {
		res.OK, res.Destinations, res.Warnings = true, len(r.Destinations), append(res.Warnings, r.Warnings()...)
	} else if j, ok := errors.Unwrap(loadErr).(interface{ Unwrap() []error }); ok {
		for _, e := range j.Unwrap() {
			res.Errors = append(res.Errors, e.Error())
		}
	} else {
		res.Errors = append(res.Errors, strings.TrimPrefix(loadErr.Error(), path+": "))
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(res); err != nil {
		return err
	}
	if loadErr != nil {
		return reported(fmt.Errorf("%w: %w", errkind.ErrConfig, loadErr))
	}
	return nil
}
