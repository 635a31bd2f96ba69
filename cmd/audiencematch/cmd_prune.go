package main

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"audiencematch/consent"
	"audiencematch/consent/audit"
	"audiencematch/pipeline"
	"audiencematch/pipeline/destinations"
	"audiencematch/pipeline/errkind"
	"audiencematch/pipeline/statedir"
)

// PruneOptions are the flags of `audiencematch prune`.
type PruneOptions struct {
	State, Destinations, Destination string
	Now                              string
	DryRun                           bool
	LockWait                         time.Duration
}

func newPruneCommand(g *globalOptions) *cobra.Command {
	o := &PruneOptions{}
	cmd := &cobra.Command{
		Use:   "prune --state DIR [--destination ID] [--dry-run]",
		Short: "Enforce the registry's retention_days: remove expired runs, evidence, rejects and failed runs, and record it",
		Long: `Remove what each destination's retention_days (the registry's Art. 30 time
limit) has expired, and append a prune record to the audit log naming, for each
run, what was removed. Every run does this for its destination when it has
published, unless --prune=false.

A committed run expires retention_days after it was recorded (and after its cutoff,
audit verify's rule for a run whose published files are gone). Of an expired run,
prune removes its published directory, STATE/runs/<id>/evidence.parquet and
rejects.csv, and keeps its manifest.json and record.json (no personal data) and its
audit record. It never prunes a run the delivery chain needs: the latest run (the
next run's removes come from it), nor a run whose successor is not expired (audit
verify checks the successor's deltas against it). STATE/failed/<name>/ (a run over
its reject rate: raw rows) expires retention_days after it was written.

` + exitCodesHelp,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runPrune(cmd, o, g) },
	}
	f := cmd.Flags()
	f.StringVar(&o.State, "state", "", "state directory (required)")
	f.StringVar(&o.Destinations, "destinations", "", "destination registry (default: STATE/destinations.yaml)")
	f.StringVar(&o.Destination, "destination", "", "prune only this destination (default: every destination of the registry)")
	f.StringVar(&o.Now, "now", "", "prune as of this RFC 3339 instant instead of now: with --dry-run, what a later prune removes")
	f.BoolVar(&o.DryRun, "dry-run", false, "print what would be removed; remove and record nothing")
	f.DurationVar(&o.LockWait, "lock-wait", 0, "wait this long for the state's run lock (default: exit 75 at once when a run holds it)")
	return cmd
}

func runPrune(cmd *cobra.Command, o *PruneOptions, g *globalOptions) error {
	if o.State == "" {
		return fmt.Errorf("%w: --state is required", errkind.ErrUsage)
	}
	log, err := g.logger(cmd.ErrOrStderr())
	if err != nil {
		return err
	}
	now := time.Now()
	if o.Now != "" {
		if now, err = consent.ParseTime(o.Now); err != nil {
			return fmt.Errorf("%w: --now: %w; give an RFC 3339 instant, e.g. 2027-03-01T00:00:00Z", errkind.ErrUsage, err)
		}
	}
	path, err := registryPath(o.Destinations, o.State)
	if err != nil {
		return err
	}
	reg, err := destinations.Load(path)
	if err != nil {
		return fmt.Errorf("%w: %w", errkind.ErrConfig, err)
	}
	if o.Destination != "" && reg.Lookup(o.Destination) == nil {
		return fmt.Errorf("%w: destination %q is not in the registry %s", errkind.ErrUsage, o.Destination, path)
	}
	c := pipeline.PruneConfig{State: o.State, Registry: reg, Destination: o.Destination, Now: now, DryRun: o.DryRun,
		ToolVersion: Version, LockWait: o.LockWait, Log: log}
	if c.AuditSigner, err = audit.LoadSigner(statedir.Keys(o.State)); err != nil {
		return fmt.Errorf("%w: %w", errkind.ErrConfig, err)
	}
	if c.AuditVerifier, err = audit.LoadVerifier(statedir.Keys(o.State) + "/" + audit.VerifierFile); err != nil {
		return fmt.Errorf("%w: %w", errkind.ErrConfig, err)
	}
	rms, err := pipeline.Prune(cmd.Context(), c)
	w := cmd.OutOrStdout()
	verb := "removed"
	if o.DryRun {
		verb = "would remove"
	}
	for _, rm := range rms {
		fmt.Fprintf(w, "%s (retention_days %d):\n", rm.Destination, rm.RetentionDays)
		for _, id := range rm.Runs {
			fmt.Fprintf(w, "  %s run %s: its published directory, evidence and rejects\n", verb, id)
		}
		for _, name := range rm.Failed {
			fmt.Fprintf(w, "  %s failed run %s: STATE/failed/%s\n", verb, name, name)
		}
	}
	if err == nil && len(rms) == 0 {
		fmt.Fprintln(w, "nothing to prune")
	}
	return err
}
