package main

import (
	"fmt"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"audiencematch/consent/audit"
	"audiencematch/hashing"
	"audiencematch/pipeline"
	"audiencematch/pipeline/destinations"
	"audiencematch/pipeline/errkind"
	"audiencematch/pipeline/oprfx"
	"audiencematch/pipeline/statedir"
)

const oprfExitCodes = `Exit codes: 0 done; 64 usage; 65 bad data (a malformed request or element,
a response that is not the request's); 66 a file is missing; 75 another run
holds the state directory; 77 refused (over the destination's
oprf_max_evaluations, none set, or a destination that may not receive data);
78 configuration (keys, registry).`

func newOPRFCommand(g *globalOptions) *cobra.Command {
	c := &cobra.Command{
		Use:   "oprf",
		Short: "The oprf-ristretto255 exchange: the platform's blind/finalize/match, the exporter's evaluate",
		Long: `Under the oprf-ristretto255 scheme (MATCHING.md section 4, amendment 2) the
destination never holds a key: it obtains the identifier of a number it already
has only by sending the number blinded (RFC 9497) to the exporter, who evaluates
it without seeing it, within the registry's oprf_max_evaluations per rolling
24 hours, and records every request in the audit log.

  platform:  oprf blind     numbers.csv -> request.parquet + blinds.parquet (0600)
  exporter:  oprf evaluate  request.parquet -> response.parquet (recorded, budgeted)
  platform:  oprf finalize  response.parquet + blinds -> ids.parquet (id FLBA(64))
  platform:  oprf match     ids.parquet + a published run directory -> matched rows

The platform may use any RFC 9497 implementation instead: docs/CONSUMERS.md gives
the encodings.`,
	}
	c.AddCommand(newOPRFBlindCommand(), newOPRFEvaluateCommand(g), newOPRFFinalizeCommand(), newOPRFMatchCommand())
	return c
}

// OPRFBlindOptions are the flags of `oprf blind`.
type OPRFBlindOptions struct{ Destination, Numbers, Out, Secrets string }

// AddFlags registers the options' flags.
func (o *OPRFBlindOptions) AddFlags(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringVar(&o.Destination, "destination", "", "destination id the numbers are blinded for (required)")
	f.StringVar(&o.Numbers, "numbers", "", "CSV or Parquet file with a phone column, an optional country column, and any others (required)")
	f.StringVar(&o.Out, "out", "", "the request to send: Parquet, column blinded FIXED_LEN_BYTE_ARRAY(32) (required)")
	f.StringVar(&o.Secrets, "secrets", "", "the blinds, kept private: a new file of mode 0600, never overwritten (required)")
}

func newOPRFBlindCommand() *cobra.Command {
	o := &OPRFBlindOptions{}
	cmd := &cobra.Command{
		Use:   "blind --destination D --numbers FILE --out REQUEST --secrets BLINDS",
		Short: "The platform's side: blind its own numbers into a request",
		Long: `Normalize the phone numbers of --numbers exactly as a run does (MATCHING.md
section 3: libphonenumber, the country column as the default region), blind each
valid one with a fresh random scalar (RFC 9497 Blind, ristretto255-SHA512, mode
OPRF) and write the request (--out) and the blinds (--secrets, mode 0600). Rows
whose phone is not a valid number are left out and counted.

` + oprfExitCodes,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.Destination == "" || o.Numbers == "" || o.Out == "" || o.Secrets == "" {
				return fmt.Errorf("%w: oprf blind needs --destination, --numbers, --out and --secrets", errkind.ErrUsage)
			}
			res, err := oprfx.Blind(cmd.Context(), o.Destination, o.Numbers, o.Out, o.Secrets)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "blinded %d numbers of %d rows (%d not valid numbers) into %s; request sha256 %s\n",
				res.Blinded, res.Rows, res.Invalid, o.Out, res.RequestSHA256)
			return nil
		},
	}
	o.AddFlags(cmd)
	return cmd
}

// OPRFEvaluateOptions are the flags of `oprf evaluate`.
type OPRFEvaluateOptions struct {
	Destination, Request, Out, State, Key, Destinations string
	LockWait                                            time.Duration
}

// AddFlags registers the options' flags.
func (o *OPRFEvaluateOptions) AddFlags(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringVar(&o.Destination, "destination", "", "destination id (required; its registry scheme must be oprf-ristretto255)")
	f.StringVar(&o.Request, "request", "", "the platform's request (required)")
	f.StringVar(&o.Out, "out", "", "the response to return: Parquet, column evaluated FIXED_LEN_BYTE_ARRAY(32) (required)")
	f.StringVar(&o.State, "state", "", "state directory: its audit log records the request (required)")
	f.StringVar(&o.Key, "key", "", "master key, or the destination's key from \"keys derive --scheme oprf-ristretto255\" (default: the registry's key_file, $"+hashing.KeyEnv+", then STATE/keys/master.key)")
	f.StringVar(&o.Destinations, "destinations", "", "destination registry (default: STATE/destinations.yaml)")
	f.DurationVar(&o.LockWait, "lock-wait", 0, "how long to wait for a run holding the state directory (0: fail at once, exit 75)")
}

func newOPRFEvaluateCommand(g *globalOptions) *cobra.Command {
	o := &OPRFEvaluateOptions{}
	cmd := &cobra.Command{
		Use:   "evaluate --destination D --request REQUEST --out RESPONSE --state DIR",
		Short: "The exporter's side: evaluate a blinded request within the destination's budget",
		Long: `Check that every element of the request is the canonical encoding of a
ristretto255 element other than the identity (RFC 9497 section 3.3.1), that the
request and the elements answered for the destination in the 24 hours before it
stay within the registry's oprf_max_evaluations, then evaluate every element on
every core (BlindEvaluate with the destination's key) and write the response,
row for row. Every request is recorded in the audit log (oprf_evaluated: the
destination, key_id, element count and the SHA-256 of the request and response),
a refusal too; the whole request is refused if any element or the budget fails.

` + oprfExitCodes,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runOPRFEvaluate(cmd, o, g) },
	}
	o.AddFlags(cmd)
	return cmd
}

func runOPRFEvaluate(cmd *cobra.Command, o *OPRFEvaluateOptions, g *globalOptions) error {
	if o.Destination == "" || o.Request == "" || o.Out == "" || o.State == "" {
		return fmt.Errorf("%w: oprf evaluate needs --destination, --request, --out and --state", errkind.ErrUsage)
	}
	if !pipeline.ValidDestination(o.Destination) {
		return fmt.Errorf("%w: destination %q is not a valid destination id", errkind.ErrUsage, o.Destination)
	}
	log, err := g.logger(cmd.ErrOrStderr())
	if err != nil {
		return err
	}
	regPath, err := registryPath(o.Destinations, o.State)
	if err != nil {
		return err
	}
	registry, err := destinations.Load(regPath)
	if err != nil {
		return fmt.Errorf("%w: %w", errkind.ErrConfig, err)
	}
	keyFile := o.Key
	if d := registry.Lookup(o.Destination); d != nil && keyFile == "" {
		keyFile = d.KeyFile
	}
	signer, err := audit.LoadSigner(statedir.Keys(o.State))
	if err != nil {
		return fmt.Errorf("%w: %w; create it with: audiencematch keys init --state %s", errkind.ErrConfig, err, o.State)
	}
	verifier, err := audit.LoadVerifier(filepath.Join(statedir.Keys(o.State), audit.VerifierFile))
	if err != nil {
		return fmt.Errorf("%w: %w", errkind.ErrConfig, err)
	}
	key, err := loadKey(keyFile, o.State)
	if err != nil {
		return fmt.Errorf("%w: %w", errkind.ErrConfig, err)
	}
	sk, err := key.ForScheme(hashing.OPRFRistretto255, o.Destination)
	if err != nil {
		return fmt.Errorf("%w: %w", errkind.ErrConfig, err)
	}
	res, err := oprfx.Evaluate(cmd.Context(), oprfx.EvaluateConfig{
		Destination: o.Destination, Key: sk, Registry: registry, State: o.State, Request: o.Request, Response: o.Out,
		ToolVersion: Version, AuditSigner: signer, AuditVerifier: verifier, LockWait: o.LockWait, Log: log,
	})
	if err != nil {
		return err
	}
	fmt.Fprintf(cmd.OutOrStdout(), "evaluated %d elements for %s (key_id %s) into %s; %d of %d in the last 24 hours; response sha256 %s\n",
		res.Elements, o.Destination, res.KeyID, o.Out, res.Used+res.Elements, res.Budget, res.ResponseSHA256)
	return nil
}

// OPRFFinalizeOptions are the flags of `oprf finalize`.
type OPRFFinalizeOptions struct{ Destination, Numbers, Secrets, Response, Out string }

// AddFlags registers the options' flags.
func (o *OPRFFinalizeOptions) AddFlags(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringVar(&o.Destination, "destination", "", "destination id the numbers were blinded for (required)")
	f.StringVar(&o.Numbers, "numbers", "", "the numbers file given to blind, unchanged (required)")
	f.StringVar(&o.Secrets, "secrets", "", "the blinds blind wrote (required)")
	f.StringVar(&o.Response, "response", "", "the exporter's response (required)")
	f.StringVar(&o.Out, "out", "", "the identifiers: Parquet, the numbers file's columns and id FIXED_LEN_BYTE_ARRAY(64) (required)")
}

func newOPRFFinalizeCommand() *cobra.Command {
	o := &OPRFFinalizeOptions{}
	cmd := &cobra.Command{
		Use:   "finalize --destination D --numbers FILE --secrets BLINDS --response RESPONSE --out FILE",
		Short: "The platform's side: unblind the response into identifiers",
		Long: `Unblind each evaluated element with its blind and finalize it (RFC 9497
Finalize): the identifier of each valid number of --numbers, as the exporter
publishes it, beside the file's own columns (as text), in the file's row order.

` + oprfExitCodes,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.Destination == "" || o.Numbers == "" || o.Secrets == "" || o.Response == "" || o.Out == "" {
				return fmt.Errorf("%w: oprf finalize needs --destination, --numbers, --secrets, --response and --out", errkind.ErrUsage)
			}
			res, err := oprfx.Finalize(cmd.Context(), o.Destination, o.Numbers, o.Secrets, o.Response, o.Out)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "wrote %d identifiers to %s\n", res.IDs, o.Out)
			return nil
		},
	}
	o.AddFlags(cmd)
	return cmd
}

// OPRFMatchOptions are the flags of `oprf match`.
type OPRFMatchOptions struct{ IDs, Published, Out string }

// AddFlags registers the options' flags.
func (o *OPRFMatchOptions) AddFlags(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringVar(&o.IDs, "ids", "", "the output of oprf finalize (required)")
	f.StringVar(&o.Published, "published", "", "a published run directory: OUT/<destination>/dt=<date>/run=<id> (required)")
	f.StringVar(&o.Out, "out", "", "the rows of --ids whose identifier the run published (required)")
}

func newOPRFMatchCommand() *cobra.Command {
	o := &OPRFMatchOptions{}
	cmd := &cobra.Command{
		Use:   "match --ids FILE --published RUN_DIR --out FILE",
		Short: "The platform's side: keep its rows whose identifier is in a published snapshot",
		Long: `Keep the rows of --ids (the output of oprf finalize) whose identifier is in the
snapshot of the published run directory: the platform's own users who are in
the consented audience, with the platform's own columns.

` + oprfExitCodes,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.IDs == "" || o.Published == "" || o.Out == "" {
				return fmt.Errorf("%w: oprf match needs --ids, --published and --out", errkind.ErrUsage)
			}
			res, err := oprfx.Match(cmd.Context(), o.IDs, o.Published, o.Out)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "matched %d of %d rows against %d published identifiers; wrote %s\n", res.Matched, res.Rows, res.Published, o.Out)
			return nil
		},
	}
	o.AddFlags(cmd)
	return cmd
}
