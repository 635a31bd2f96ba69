package main

import (
	"fmt"
	"maps"
	"os"
	"slices"
	"strings"

	"github.com/spf13/cobra"

	"audiencematch/consent/audit"
	"audiencematch/pipeline/auditor"
	"audiencematch/pipeline/errkind"
)

func newAuditCheckProofCommand() *cobra.Command {
	o := &AuditOptions{}
	cmd := &cobra.Command{
		Use:   "check-proof FILE --verifier KEY [--trusted-checkpoint FILE] [--witness KEY ... [--min-witnesses N]]",
		Short: "Check a proof printed by audit subject --json, offline, with no state directory",
		Long: `Check a proof a data subject or a regulator was handed (audit subject --json), with
nothing but the log's verifier key: the checkpoint's signature (and the cosignatures of
the --witness keys); that the proof's records rebuild the checkpoint's root; that every
committed run of the log is answered, in order, none left out; each run record's
inclusion in the log; and each answer against the run's record: an exported identifier's
inclusion in the run's identifier tree with the evidence rows of its consent, or an
identifier's absence from the sorted tree (its two adjacent neighbours, or the first or
last leaf). A proof is about one number: every answer under the same destination and
key must be for the same identifier. An answer "unknown" (no proof) is accepted only for
a run the log shows pruned. --trusted-checkpoint requires the proof's log to extend a
checkpoint you saved. docs/AUDITORS.md, "The proof", specifies every byte.

Exit 0 when everything holds, printing each run's answer; 65 naming the first thing that
does not; 66 when a file cannot be read; 78 for a malformed verifier key.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if o.Verifier == "" {
				return fmt.Errorf("%w: --verifier is required: the log's verifier key you were given", errkind.ErrUsage)
			}
			v, err := audit.LoadVerifier(o.Verifier)
			if err != nil {
				return fmt.Errorf("%w: %w", errkind.ErrConfig, err)
			}
			b, err := os.ReadFile(args[0])
			if err != nil {
				return fmt.Errorf("%w: %w", errkind.ErrNoInput, err)
			}
			opts := auditor.CheckProofOptions{}
			if o.TrustedCheckpoint != "" {
				if opts.Trusted, err = os.ReadFile(o.TrustedCheckpoint); err != nil {
					return fmt.Errorf("%w: trusted checkpoint: %w", errkind.ErrNoInput, err)
				}
			}
			if opts.Witnesses, opts.MinWitnesses, err = o.witnessVerifiers(); err != nil {
				return err
			}
			s, err := auditor.CheckProof(b, v, opts)
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "ok: proof checked against the signed checkpoint of %d records (root %s); %d committed runs, every one answered\n", s.LogSize, s.Root, s.Committed)
			for _, name := range slices.Sorted(maps.Keys(s.Cosigned)) {
				fmt.Fprintf(w, "cosigned by witness %s\n", name)
			}
			for _, r := range s.Runs {
				fmt.Fprintf(w, "record %d, run %s  %s  as_of %s: %s", r.RecordIndex, r.RunID, r.Destination, r.AsOf, strings.ToUpper(r.Status))
				switch {
				case r.Status == "exported":
					fmt.Fprintf(w, " (identifier in the run's tree; %d evidence row(s) of consent)", r.EvidenceRows)
				case r.Status == "not_exported":
					fmt.Fprint(w, " (absence from the run's sorted tree)")
				case r.Note != "":
					fmt.Fprintf(w, " (no proof: %s)", r.Note)
				}
				if a := r.Authorization; a != nil {
					fmt.Fprintf(w, "; recipient %s (%s) for %s, %s", a.Organization, a.Relationship, strings.Join(a.Purposes, ","), a.LawfulBasis)
				}
				fmt.Fprintln(w)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&o.Verifier, "verifier", "", "the log's verifier key, or a file holding it (required)")
	cmd.Flags().StringVar(&o.TrustedCheckpoint, "trusted-checkpoint", "", "a checkpoint of the log you saved: the proof's log must extend it")
	o.addWitnessFlags(cmd)
	return cmd
}
