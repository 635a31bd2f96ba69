package main

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode/utf8"

	"github.com/spf13/cobra"
	"golang.org/x/mod/sumdb/note"

	"audiencematch/consent/audit"
	"audiencematch/consent/audit/witness"
	"audiencematch/hashing"
	"audiencematch/internal/fsutil"
	"audiencematch/pipeline/auditor"
	"audiencematch/pipeline/delivery"
	"audiencematch/pipeline/destinations"
	"audiencematch/pipeline/errkind"
	"audiencematch/pipeline/statedir"
)

// AuditOptions are the flags shared by the audit subcommands.
type AuditOptions struct {
	State             string
	Verifier          string
	TrustedCheckpoint string
	SaveCheckpoint    string
	JSON              bool
	Phone, Country    string
	UserID            string
	Key               string
	Delivery          string
	Registry          string
	Witnesses         []string
	MinWitnesses      int
}

// addDeliveryFlags registers the flags that locate published runs.
func (o *AuditOptions) addDeliveryFlags(cmd *cobra.Command) {
	cmd.Flags().StringVar(&o.Delivery, "delivery", "", "the delivered files, laid out as DESTINATION/dt=DATE/run=ID: a directory (a copy, wherever it is) or an object store's URL (s3://BUCKET/PREFIX?region=...) (default: each destination's delivery root in the registry)")
	cmd.Flags().StringVar(&o.Registry, "registry", "", "the destination registry, for the delivery roots and retention of each destination (default: STATE/destinations.yaml, if present)")
}

// addWitnessFlags registers the flags that require witnesses' cosignatures.
func (o *AuditOptions) addWitnessFlags(cmd *cobra.Command) {
	cmd.Flags().StringArrayVar(&o.Witnesses, "witness", nil, "a witness's cosignature verifier key (or a file holding it) whose cosignature the checkpoint must carry; repeat for several")
	cmd.Flags().IntVar(&o.MinWitnesses, "min-witnesses", -1, "how many of the --witness keys must have cosigned (default: all of them)")
}

// witnessVerifiers parses --witness and --min-witnesses.
func (o *AuditOptions) witnessVerifiers() ([]*witness.CosignatureVerifier, int, error) {
	var vs []*witness.CosignatureVerifier
	for _, k := range o.Witnesses {
		text := k
		if b, err := os.ReadFile(k); err == nil {
			text = strings.TrimSpace(string(b))
		}
		v, err := witness.NewCosignatureVerifier(text)
		if err != nil {
			return nil, 0, fmt.Errorf("%w: --witness %q: %w", errkind.ErrUsage, k, err)
		}
		vs = append(vs, v)
	}
	min := o.MinWitnesses
	if min < 0 {
		min = len(vs)
	}
	if min > len(vs) {
		return nil, 0, fmt.Errorf("%w: --min-witnesses %d, but only %d --witness keys are given", errkind.ErrUsage, min, len(vs))
	}
	return vs, min, nil
}

// roots locates published runs: --delivery, or the registry's delivery
// roots; and the registry's retention of each destination.
func (o *AuditOptions) roots() (delivery.Roots, map[string]int64, error) {
	r := delivery.Roots{Override: o.Delivery, ByDestination: map[string]string{}}
	retention := map[string]int64{}
	path := o.Registry
	if path == "" {
		path = filepath.Join(o.State, "destinations.yaml")
		if _, err := os.Stat(path); err != nil {
			return r, retention, nil
		}
	}
	reg, err := destinations.Load(path)
	if err != nil {
		return r, nil, fmt.Errorf("%w: --registry: %w", errkind.ErrConfig, err)
	}
	for _, d := range reg.Destinations {
		r.ByDestination[d.ID] = d.Delivery
		retention[d.ID] = int64(d.RetentionDays)
	}
	return r, retention, nil
}

// AddFlags registers the shared flags.
func (o *AuditOptions) AddFlags(cmd *cobra.Command) {
	cmd.Flags().StringVar(&o.State, "state", "", "the job's state directory (required)")
	cmd.Flags().StringVar(&o.Verifier, "verifier", "", "the log's verifier key, or a file holding it, as printed by keys init (default: STATE/keys/audit.pub, which only checks the state against itself)")
}

func (o *AuditOptions) verifier(cmd *cobra.Command) (note.Verifier, error) {
	if o.State == "" {
		return nil, fmt.Errorf("%w: --state is required", errkind.ErrUsage)
	}
	v := o.Verifier
	if v == "" {
		v = filepath.Join(statedir.Keys(o.State), audit.VerifierFile)
		fmt.Fprintln(cmd.ErrOrStderr(), "note: using the verifier key stored in the state directory; pass --verifier with the key you were given to check it independently")
	}
	ver, err := audit.LoadVerifier(v)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errkind.ErrConfig, err)
	}
	return ver, nil
}

func newAuditCommand() *cobra.Command {
	a := &cobra.Command{
		Use:   "audit",
		Short: "Verify the tamper-evident audit log and answer auditors' questions",
		Long: `The audit log (STATE/audit) records every run: committed, failed, or refused. Its
Merkle tree follows RFC 6962 and its checkpoints are C2SP tlog-checkpoints signed
with Ed25519. These commands need only the state directory, the published output
and the verifier key; they trust nothing the operator says.`,
	}
	a.AddCommand(newAuditVerifyCommand(), newAuditRunsCommand(), newAuditSubjectCommand(), newAuditCheckProofCommand())
	return a
}

func newAuditVerifyCommand() *cobra.Command {
	o := &AuditOptions{}
	cmd := &cobra.Command{
		Use:   "verify --state DIR [--verifier KEY] [--delivery DIR|URL] [--trusted-checkpoint FILE] [--save-checkpoint FILE] [--witness KEY ... [--min-witnesses N]]",
		Short: "Check the log, its signed checkpoint and every published output it points to",
		Long: `Rebuild the log's Merkle tree from its records and check it against the signed
checkpoint; check that the log extends the checkpoint you saved on your last visit
(--trusted-checkpoint: catches rollback, forks and rewritten history); re-hash every
published file and manifest of every committed run, re-read its identifiers (sorted,
distinct, of the scheme's shape) and rebuild their tree, rebuild the private
evidence tree, check every count and the delivery chain's deltas.

Published runs are read under each destination's delivery root in the registry
(--registry, default STATE/destinations.yaml), or under --delivery DIR|URL: a copy of
the delivered files, wherever it is, or the bucket they were delivered to (runs there are
read into a temporary copy, with the cloud SDK's usual credentials). A run whose published directory was removed past its
destination's retention_days is verified from its record and evidence and reported as
pruned, saying what can no longer be checked. --witness KEY (repeatable) requires the
checkpoint to carry valid cosignatures of those witnesses (at least --min-witnesses of
them); the witnesses of STATE/witnesses.yaml that did not cosign are listed.

Exit 0 only when all holds. Otherwise exit 65, naming the first broken thing.
--save-checkpoint FILE keeps the verified checkpoint for your next visit.
docs/AUDITORS.md specifies every byte checked.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			v, err := o.verifier(cmd)
			if err != nil {
				return err
			}
			opts := auditor.VerifyOptions{}
			if o.TrustedCheckpoint != "" {
				if opts.Trusted, err = os.ReadFile(o.TrustedCheckpoint); err != nil {
					return fmt.Errorf("%w: trusted checkpoint: %w", errkind.ErrNoInput, err)
				}
			}
			if opts.Roots, opts.Retention, err = o.roots(); err != nil {
				return err
			}
			if opts.Witnesses, opts.MinWitnesses, err = o.witnessVerifiers(); err != nil {
				return err
			}
			if opts.Configured, err = witness.LoadConfig(o.State); err != nil {
				return fmt.Errorf("%w: %w", errkind.ErrConfig, err)
			}
			rep, err := auditor.VerifyAudit(o.State, v, opts)
			if err == nil && o.SaveCheckpoint != "" {
				err = fsutil.WriteFileDurable(o.SaveCheckpoint, rep.Checkpoint, 0o644)
			}
			if o.JSON {
				return verifyJSON(cmd.OutOrStdout(), rep, err)
			}
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "ok: %d records, %d committed runs verified; signed root %s\n", rep.Records, rep.Committed, rep.Root)
			for _, name := range slices.Sorted(maps.Keys(rep.Cosigned)) {
				fmt.Fprintf(w, "cosigned by witness %s at %s\n", name, time.Unix(int64(rep.Cosigned[name]), 0).UTC().Format(time.RFC3339))
			}
			for _, name := range rep.Uncosigned {
				fmt.Fprintf(w, "NOT cosigned by the configured witness %s: it was down or refused at the last run (the next run asks again)\n", name)
			}
			for _, p := range rep.Pruned {
				fmt.Fprintf(w, "pruned: record %d, run %s (%s): %s\n", p.Record, p.RunID, p.Destination, p.Unchecked)
			}
			return nil
		},
	}
	o.AddFlags(cmd)
	o.addDeliveryFlags(cmd)
	o.addWitnessFlags(cmd)
	cmd.Flags().StringVar(&o.TrustedCheckpoint, "trusted-checkpoint", "", "a checkpoint saved on an earlier visit: the log must extend it")
	cmd.Flags().StringVar(&o.SaveCheckpoint, "save-checkpoint", "", "write the verified checkpoint here, for the next visit")
	cmd.Flags().BoolVar(&o.JSON, "json", false, "print the result as JSON: {\"ok\", \"records\", \"committed\", \"root\", \"checkpoint\", \"pruned\", \"error\", \"exit_code\"}")
	return cmd
}

// VerifyResult is what audit verify --json prints.
type VerifyResult struct {
	OK         bool   `json:"ok"`
	Records    int64  `json:"records"`
	Committed  int    `json:"committed"`
	Root       string `json:"root,omitempty"`
	Checkpoint string `json:"checkpoint,omitempty"`
	// Pruned are the runs verified without their published files.
	Pruned   []auditor.PrunedRun `json:"pruned"`
	Error    string              `json:"error,omitempty"`
	ExitCode int                 `json:"exit_code"`
}

// verifyJSON prints the outcome of audit verify as one JSON document; a
// failure then exits as it would without --json, printed once.
func verifyJSON(w io.Writer, rep *auditor.VerifyReport, err error) error {
	res := VerifyResult{OK: err == nil, ExitCode: exitCode(err), Pruned: []auditor.PrunedRun{}}
	if rep != nil {
		res.Records, res.Committed, res.Root, res.Checkpoint = rep.Records, rep.Committed, rep.Root, string(rep.Checkpoint)
		res.Pruned = append(res.Pruned, rep.Pruned...)
	}
	if err != nil {
		res.Error = err.Error()
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if eerr := enc.Encode(res); eerr != nil {
		return eerr
	}
	return reported(err)
}

func newAuditRunsCommand() *cobra.Command {
	o := &AuditOptions{}
	cmd := &cobra.Command{
		Use:   "runs --state DIR [--json]",
		Short: "List every record of the log, one short line each: time, type, destination, cutoff, run, rows (--json: every field)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			v, err := o.verifier(cmd)
			if err != nil {
				return err
			}
			// VerifyTree: a record that cannot be read is listed as such
			// (type unreadable), with the others; audit verify fails on it.
			l, _, err := audit.VerifyTree(statedir.Audit(o.State), v, nil)
			if err != nil {
				return fmt.Errorf("%w: %w", errkind.ErrData, err)
			}
			if u := l.Unreadable(); len(u) > 0 {
				fmt.Fprintf(cmd.ErrOrStderr(), "warning: %d record(s) of the log cannot be read (the first is record %d); they are listed as %s; see audit verify\n",
					len(u), u[0], audit.TypeUnreadable)
			}
			if o.JSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(l.Records())
			}
			return printRuns(cmd.OutOrStdout(), l.Records())
		},
	}
	o.AddFlags(cmd)
	cmd.Flags().BoolVar(&o.JSON, "json", false, "print the records as JSON")
	return cmd
}

// maxReasonRunes bounds the reason line of audit runs, so that it stays
// readable on a terminal; --json has every field in full.
const maxReasonRunes = 110

// printRuns writes the log as a table: one short line per record, times to
// the second, each run's cutoff, exclusions as a total (the reasons are in
// --json and in the manifest), and a failure's or refusal's reason on an
// indented line below it.
func printRuns(w io.Writer, recs []*audit.Record) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TIME\tTYPE\tDESTINATION\tAS_OF\tRUN\tEXPORTED\tEXCLUDED")
	for _, r := range recs {
		exported, excluded := "-", "-"
		if r.Counts != nil {
			exported = strconv.FormatInt(r.Counts.Exported, 10)
			var n int64
			for _, v := range r.Counts.Excluded {
				n += v
			}
			excluded = strconv.FormatInt(n, 10)
		}
		typ := r.Type
		if r.Backfill {
			typ += " (backfill)"
		}
		if r.AllowDrop {
			typ += " (allow_drop)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", seconds(r.Time), typ, orDash(r.Destination), seconds(r.AsOf),
			orDash(r.RunID), exported, excluded)
		// A line without a tab is not a cell of any column: it does not
		// widen them.
		if r.Reason != "" {
			fmt.Fprintf(tw, "    reason: %s\n", shorten(r.Reason, maxReasonRunes))
		}
		if r.Type == audit.TypePrune {
			parts := slices.Clone(r.PrunedRuns)
			for _, name := range r.PrunedFailed {
				parts = append(parts, "failed/"+name)
			}
			fmt.Fprintf(tw, "    pruned after %d days: %s\n", r.RetentionDays, shorten(strings.Join(parts, ", "), maxReasonRunes))
		}
	}
	return tw.Flush()
}

// seconds is an RFC 3339 time to the second, in UTC; "-" for none, and
// the text itself when it is not a time.
func seconds(s string) string {
	if s == "" {
		return "-"
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return s
	}
	return t.UTC().Format(time.RFC3339)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// shorten cuts s to n runes, ending with "…" when it cuts.
func shorten(s string, n int) string {
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	r := []rune(s)
	return string(r[:n-1]) + "…"
}

func newAuditSubjectCommand() *cobra.Command {
	o := &AuditOptions{}
	cmd := &cobra.Command{
		Use:   "subject --state DIR (--phone P [--country C] | --user-id U) [--json]",
		Short: "For each run: was this person's identifier sent, under which consent, with proofs",
		Long: `For every committed run, say whether this person's identifier was exported and prove
it: the consent event that justified it and an inclusion proof of the identifier in
the run's identifier tree and of the run's record in the log, up to the signed
checkpoint; where it was not exported, a proof of absence from the run's sorted
identifier tree (its two neighbours, each with an inclusion proof). Every proof is
checked before it is printed. This answers "prove you stopped sending my number
after I withdrew".

--phone needs the master key for keyed runs (--key, $` + hashing.KeyEnv + `, or
STATE/keys/master.key), or a destination's key for that destination's runs. --user-id looks the person up in the private evidence.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if (o.Phone == "") == (o.UserID == "") {
				return fmt.Errorf("%w: give exactly one of --phone or --user-id", errkind.ErrUsage)
			}
			v, err := o.verifier(cmd)
			if err != nil {
				return err
			}
			q := auditor.SubjectQuery{Phone: o.Phone, Country: o.Country, UserID: o.UserID}
			if o.Phone != "" {
				if k, err := loadKey(o.Key, o.State); err == nil {
					q.Key = &k
				}
			}
			roots, _, err := o.roots()
			if err != nil {
				return err
			}
			rep, err := auditor.Subject(o.State, roots, v, q)
			if err != nil {
				return err
			}
			if o.JSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(rep)
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "log of %d records; every proof below ends at this signed checkpoint:\n%s\n", rep.LogSize, indent(rep.Checkpoint))
			for _, r := range rep.Runs {
				fmt.Fprintf(w, "run %s  %s  as_of %s  %s key_id %s: %s\n", r.RunID, r.Destination, r.AsOf, r.Scheme, orNone(r.KeyID), strings.ToUpper(r.Status))
				switch {
				case r.Status == "exported":
					for _, e := range r.Evidence {
						fmt.Fprintf(w, "    consent event %s (evidence row %d, proof of %d hashes)\n", e.EventID, e.Index, len(e.Proof))
					}
					fmt.Fprintf(w, "    identifier is leaf %d of the run's identifier tree (proof of %d hashes); record %d of the log (proof of %d hashes)\n",
						r.Membership.Index, len(r.Membership.Proof), r.RecordIndex, len(r.RecordProof))
				case r.Status == "not_exported":
					fmt.Fprintf(w, "    absent: proved by its neighbours in the sorted identifier tree; record %d of the log\n", r.RecordIndex)
				default:
					fmt.Fprintf(w, "    %s\n", r.Note)
				}
			}
			fmt.Fprintln(w, "(--json prints every proof in full)")
			return nil
		},
	}
	o.AddFlags(cmd)
	cmd.Flags().StringVar(&o.Phone, "phone", "", "the number, typed any way")
	cmd.Flags().StringVar(&o.Country, "country", "", "ISO 3166-1 region for a number without +country code")
	cmd.Flags().StringVar(&o.UserID, "user-id", "", "the account id")
	cmd.Flags().StringVar(&o.Key, "key", "", "master key file, or a destination's key file (its runs only) (default: $"+hashing.KeyEnv+", then STATE/keys/master.key)")
	cmd.Flags().BoolVar(&o.JSON, "json", false, "print the report, with every proof, as JSON: the proof \"audit check-proof\" checks")
	o.addDeliveryFlags(cmd)
	return cmd
}

func indent(s string) string {
	return "    " + strings.ReplaceAll(strings.TrimRight(s, "\n"), "\n", "\n    ")
}
