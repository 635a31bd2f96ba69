package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"runtime/debug"
	"runtime/pprof"
	"runtime/trace"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"audiencematch/consent"
	"audiencematch/consent/audit"
	"audiencematch/fixtures"
	"audiencematch/hashing"
	"audiencematch/pipeline"
	"audiencematch/pipeline/destinations"
	"audiencematch/pipeline/errkind"
	"audiencematch/pipeline/idfile"
	"audiencematch/pipeline/source"
	"audiencematch/pipeline/source/pg"
	"audiencematch/pipeline/statedir"
)

// RunOptions are the flags of `audiencematch run`.
type RunOptions struct {
	Config           string
	Users, Consent   string
	Destination      string
	Key              string
	Out, State       string
	AsOf             string
	Purpose          string
	MinPolicyVersion int64
	MaxConsentAge    string
	Scheme           string
	AllowUnkeyed     bool
	MaxRejectRate    float64
	Workers          int
	RowsPerFile      int64
	Destinations     string
	Source           string
	UsersTable       string
	ConsentTable     string
	UsersQuery       string
	ConsentQuery     string
	Force            bool
	Backfill         bool
	AllowDrop        bool
	Summary          bool
	MetricsFile      string
	CPUProfile       string
	MemProfile       string
	Trace            string
	PretouchMiB      int64
	MemoryLimitMiB   int64
	Shard            string
	Shards           int
	ShardStore       string
	LockWait         time.Duration
	Plan             bool
	Prune            bool
	IfComplete       bool
	commit           bool // `audiencematch commit`: no inputs are read
}

// maxPretouchMiB bounds --pretouch-mib: far more than the largest run's
// heap is waste, and a typo must not allocate the machine away.
// defaultPretouchMiB caps the automatic size at about what the heap of a
// million-user run reuses (docs/PERFORMANCE.md).
const (
	maxPretouchMiB     = 4096
	defaultPretouchMiB = 128
	// defaultMemoryLimitMiB is --memory-limit-mib's default. A run's live
	// heap grows with its buckets of holders until they are split, and the
	// collector lets the heap reach twice the live heap; the limit keeps the
	// largest runs under 1 GiB with room for the runtime and the binary
	// (docs/PERFORMANCE.md has the peaks measured).
	defaultMemoryLimitMiB = 896
)

// pretouchBytes is --pretouch-mib in bytes. Unset (-1), it is the input
// files' size, over the shards of a sharded run (a shard keeps its share of
// the users), up to defaultPretouchMiB: a small run populates little. A
// database source, whose size is unknown, and a commit, which reads shards
// and gains nothing from it (docs/PERFORMANCE.md), populate nothing unless
// asked.
func (o *RunOptions) pretouchBytes(shards int) int64 {
	if o.PretouchMiB >= 0 {
		return o.PretouchMiB << 20
	}
	if o.commit || o.Source != "" {
		return 0
	}
	in, known := source.InputSize(source.FileSource{Users: o.Users, Consent: o.Consent})
	if !known {
		return 0 // the run reports the missing input
	}
	return min(int64(defaultPretouchMiB)<<20, in/int64(max(shards, 1)))
}

// autoMiB is a size in MiB, or -1 for "auto": a flag with one default in
// its help, the word auto, where an int flag would show -1 beside the
// usage's own description of it.
type autoMiB int64

func (v *autoMiB) String() string {
	if *v < 0 {
		return "auto"
	}
	return strconv.FormatInt(int64(*v), 10)
}

func (v *autoMiB) Set(s string) error {
	if s == "auto" {
		*v = -1
		return nil
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 {
		return fmt.Errorf("%q: want a whole number of MiB, or auto", s)
	}
	*v = autoMiB(n)
	return nil
}

func (v *autoMiB) Type() string { return "mib" }

// JobIndexEnv is the shard index a Kubernetes Indexed Job gives each pod.
const JobIndexEnv = "JOB_COMPLETION_INDEX"

// AddFlags registers the options' flags.
func (o *RunOptions) AddFlags(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringVar(&o.Config, "config", "", "YAML file setting any of these flags by name (flags on the command line win)")
	f.StringVar(&o.Users, "users", "", "users table, CSV or Parquet: user_id, phone, country (or use --source)")
	f.StringVar(&o.Consent, "consent", "", "consent_events table, CSV or Parquet (or use --source)")
	f.StringVar(&o.Source, "source", "", "read both tables from PostgreSQL: postgres://user:password@host:port/db (instead of --users/--consent); prefer the config file or $PGPASSWORD for the password")
	f.StringVar(&o.UsersTable, "users-table", "users", "with --source: the users table")
	f.StringVar(&o.ConsentTable, "consent-table", "consent_events", "with --source: the consent events table")
	f.StringVar(&o.UsersQuery, "users-query", "", "with --source: a query returning user_id, phone, country (usually set in the config file)")
	f.StringVar(&o.ConsentQuery, "consent-query", "", "with --source: a query returning the consent_events columns")
	f.BoolVar(&o.Force, "force", false, "run even though a run for this destination and cutoff date is already committed")
	f.BoolVar(&o.Backfill, "backfill", false, "publish a run for a cutoff earlier than the destination's latest committed one: a snapshot with no adds or removes, recorded as a backfill and outside the delivery chain (without it such a cutoff is refused)")
	f.BoolVar(&o.AllowDrop, "allow-drop", false, "publish even though the snapshot shrinks past the registry's max_drop_percent (default 20%) against the previous run, or an input has no rows; recorded in the audit log")
	f.BoolVar(&o.Summary, "summary", false, "print the reconciliation on stdout (default: only when stdout is a terminal; cron stays quiet)")
	f.StringVar(&o.CPUProfile, "cpu-profile", "", "write a Go CPU profile of the run here (for performance work)")
	_ = f.MarkHidden("cpu-profile")
	f.StringVar(&o.MemProfile, "mem-profile", "", "write a Go allocation profile of the run here (for performance work)")
	_ = f.MarkHidden("mem-profile")
	f.StringVar(&o.Trace, "trace", "", "write a Go execution trace of the run here, for go tool trace (for performance work: where cores sit idle)")
	_ = f.MarkHidden("trace")
	o.PretouchMiB = -1
	f.Var((*autoMiB)(&o.PretouchMiB), "pretouch-mib", "populate this much heap memory up front, in one system call, for the run to reuse: on virtual machines where every first touch of a page faults expensively, the run is faster; 0 turns it off; auto: the size of the input files, over the shards, at most 128, and none for --source and commit")
	f.Int64Var(&o.MemoryLimitMiB, "memory-limit-mib", defaultMemoryLimitMiB, "soft limit on the run's memory (Go's runtime/debug.SetMemoryLimit): the garbage collector works harder as the heap nears it, so that a run stays under it while what it must hold fits; 0 turns it off; GOMEMLIMIT in the environment wins")
	f.StringVar(&o.MetricsFile, "metrics-file", "", "write Prometheus text-format metrics here, atomically (node_exporter's textfile collector)")
	f.StringVar(&o.Destination, "destination", "", "destination id, e.g. meta-ads: names the output directory and the derived key (required)")
	f.StringVar(&o.Key, "key", "", "key file, mode 0600: the master key (hex, at least 32 bytes), or the destination's own key from \"audiencematch keys derive\", which is all a machine exporting to one destination needs (default: $"+hashing.DestKeyEnv+" for a destination key, $"+hashing.KeyEnv+" for the master key, then STATE/keys/master.key)")
	f.StringVar(&o.Out, "out", "", "publish directory: OUT/<destination>/dt=<date>/run=<id>/ (default: the registry's delivery for the destination)")
	f.StringVar(&o.Destinations, "destinations", "", "destination registry (default: STATE/destinations.yaml)")
	f.StringVar(&o.State, "state", "", "private state directory: staging, evidence, rejects (required; keep it owner-only)")
	f.StringVar(&o.AsOf, "as-of", "", "consent cutoff, RFC 3339, or today for 00:00 UTC of the day the run starts (default: the start of the run)")
	f.StringVar(&o.Purpose, "purpose", fixtures.DefaultPurpose, "consent purpose to export for")
	f.Int64Var(&o.MinPolicyVersion, "min-policy-version", 0, "oldest privacy-notice version whose grants count: only to tighten the registry's min_policy_version for the destination and purpose (default: the registry's)")
	f.StringVar(&o.MaxConsentAge, "max-consent-age", "", "grants older than this do not count, as days (395d) or a duration (9480h): only to tighten the registry's max_consent_age for the destination and purpose (default: the registry's)")
	f.StringVar(&o.Scheme, "scheme", "", "identifier scheme (default: the registry's): hmac-sha256, oprf-ristretto255, or the unkeyed sha256-digits, sha256-e164, uid2 (need --allow-unkeyed); a value other than the registry's is an error")
	f.BoolVar(&o.AllowUnkeyed, "allow-unkeyed", false, "permit an unkeyed scheme; its identifiers can be reversed to phone numbers")
	f.Float64Var(&o.MaxRejectRate, "max-reject-rate", 0.01, "fail, publishing nothing, when more than this fraction of either table's rows is malformed")
	f.IntVar(&o.Workers, "workers", 0, "parallel workers (default: the number of CPUs)")
	f.Int64Var(&o.RowsPerFile, "rows-per-file", idfile.DefaultRowsPerFile, "most identifiers in one part-NNNNN.parquet file")
	f.StringVar(&o.ShardStore, "shard-store", "", "where shards leave their outputs for the commit when they share no file system: an s3://, gs:// or azblob:// URL (credentials from the cloud SDK's environment); empty: STATE/shards")
	f.BoolVar(&o.Prune, "prune", true, "once published, enforce the destination's retention_days as audiencematch prune does (--prune=false: leave it to a separate prune)")
	if o.commit {
		f.IntVar(&o.Shards, "shards", 0, "how many shards the run was split into (required)")
		f.DurationVar(&o.LockWait, "lock-wait", 10*time.Minute, "wait this long for the state's run lock (another shard's commit may hold it briefly)")
		f.BoolVar(&o.IfComplete, "if-complete", false, "exit 0, publishing nothing, while shards are missing (each pod of an Indexed Job tries the commit; the last one to finish publishes)")
		for _, name := range inputFlags {
			_ = f.MarkHidden(name) // accepted from a shared config file only (runRun)
		}
		return
	}
	f.BoolVar(&o.Plan, "plan", false, "do everything up to publishing (read, consent, hash, deltas against the previous committed run, drop guard, leak guard), print the reconciliation and the delta sizes, and publish nothing: no output, no evidence kept, nothing appended to the audit log")
	f.BoolVar(&o.Plan, "dry-run", false, "the same as --plan")
	f.StringVar(&o.Shard, "shard", "", "process only shard I/N (users partitioned by user id) and leave it under STATE/shards for \"audiencematch commit --shards N\"; publishes nothing")
	f.IntVar(&o.Shards, "shards", 0, "like --shard, taking I from $"+JobIndexEnv+" (a Kubernetes Indexed Job's pod index)")
}

// shard is the shard the flags and environment ask for; Count 0 for none.
func (o *RunOptions) shard() (pipeline.Shard, error) {
	switch {
	case o.commit:
		return pipeline.Shard{}, nil
	case o.Shard != "" && o.Shards != 0:
		return pipeline.Shard{}, fmt.Errorf("%w: give --shard I/N or --shards N, not both", errkind.ErrUsage)
	case o.Shard != "":
		return pipeline.ParseShard(o.Shard)
	case o.Shards != 0:
		idx, ok := os.LookupEnv(JobIndexEnv)
		if !ok {
			return pipeline.Shard{}, fmt.Errorf("%w: --shards %d needs $%s (set by a Kubernetes Indexed Job), or use --shard I/N", errkind.ErrUsage, o.Shards, JobIndexEnv)
		}
		return pipeline.ParseShard(idx + "/" + strconv.Itoa(o.Shards))
	}
	return pipeline.Shard{}, nil
}

func newRunCommand(g *globalOptions) *cobra.Command {
	o := &RunOptions{}
	cmd := &cobra.Command{
		Use:   "run --users FILE --consent FILE --destination ID --out DIR --state DIR [flags]",
		Short: "Run the nightly export: consented numbers to keyed identifiers in Parquet",
		Long: `Run one export, as MATCHING.md defines it:

  consent   keep users whose effective event for --purpose as of --as-of is a grant
            under the registry's min_policy_version or later, no older than its
            max_consent_age (--min-policy-version and --max-consent-age may only
            tighten them);
  numbers   normalize with libphonenumber to E.164; a number held by several accounts
            is exported once, and not at all if any holder withdrew;
  ids       HMAC-SHA256 under K_dest = HKDF-SHA256(master key, "audiencematch/v1/"+destination);
  output    OUT/<destination>/dt=<as-of date>/run=<run id>/part-NNNNN.parquet and
            manifest.json, written under --state and published with one atomic rename.

The run id is derived from the inputs and settings: re-running the same inputs with
the same settings finds the run already published and does nothing (exit 0).
Malformed rows never stop the run: they are counted and written with their line
numbers to STATE/runs/<run id>/rejects.csv; STATE/runs/<run id>/evidence.parquet
holds, privately, the user and consent event behind each identifier.
--plan stops before publishing and prints what the run would publish. Once
published, the run removes what the destination's retention_days has expired
(audiencematch prune; --prune=false to leave it to a scheduled prune).

` + exitCodesHelp,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runRun(cmd, o, g, pipeline.Run)
		},
	}
	o.AddFlags(cmd)
	return cmd
}

func newCommitCommand(g *globalOptions) *cobra.Command {
	o := &RunOptions{commit: true}
	cmd := &cobra.Command{
		Use:   "commit --shards N --destination ID --state DIR [flags]",
		Short: "Publish a sharded run: check all N shards, then publish them as one run",
		Long: `Publish the shards left by "run --shard I/N" (or "run --shards N" in a Kubernetes
Indexed Job) as one run.

Give commit the same settings as the shards (destination, --as-of, policy flags,
key, config file): shards and commit meet under STATE/shards/<cutoff>-<config digest>.
commit checks that all N shards are finished, unchanged (each file's SHA-256 is in
its shard.json), made under the same configuration and from the same input
files (same SHA-256), then applies the shared-number rule across shards, hashes,
writes, runs the leak guard, publishes atomically and appends one audit record,
exactly as an unsharded run would: the output is byte-identical to it. The
shards are removed afterwards.

With shards still missing it exits 75 and changes nothing: run it again when
they are done (the deploy example runs it after every shard; the last one to
finish publishes).

` + exitCodesHelp,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runRun(cmd, o, g, func(ctx context.Context, cfg pipeline.Config) (*pipeline.Result, error) {
				return pipeline.Commit(ctx, cfg, o.Shards) // refuses a missing --shards (64)
			})
		},
	}
	o.AddFlags(cmd)
	return cmd
}

// pipelineConfig validates the options and loads the key.
func (o *RunOptions) pipelineConfig(log *slog.Logger, now time.Time) (pipeline.Config, error) {
	var missing []string
	for _, f := range []struct{ name, v string }{{"--destination", o.Destination}, {"--state", o.State}} {
		if f.v == "" {
			missing = append(missing, f.name)
		}
	}
	if o.Source == "" && !o.commit {
		switch {
		case o.Users == "" && o.Consent == "":
			missing = append(missing, "--users and --consent (or --source)")
		case o.Users == "":
			missing = append(missing, "--users")
		case o.Consent == "":
			missing = append(missing, "--consent")
		}
	}
	if o.Source != "" && (o.Users != "" || o.Consent != "") {
		return pipeline.Config{}, fmt.Errorf("%w: give --source or --users/--consent, not both", errkind.ErrUsage)
	}
	if len(missing) > 0 {
		return pipeline.Config{}, fmt.Errorf("%w: missing %s (see audiencematch run --help)", errkind.ErrUsage, strings.Join(missing, ", "))
	}
	if o.Scheme != "" {
		if _, err := hashing.ParseScheme(o.Scheme); err != nil {
			return pipeline.Config{}, fmt.Errorf("%w: --scheme: %w", errkind.ErrUsage, err)
		}
	}
	regPath, err := registryPath(o.Destinations, o.State)
	if err != nil {
		return pipeline.Config{}, err
	}
	registry, err := destinations.Load(regPath)
	if err != nil {
		return pipeline.Config{}, fmt.Errorf("%w: %w", errkind.ErrConfig, err)
	}
	set, err := registry.Resolve(o.Destination, o.Scheme, o.Out, o.Key)
	if err != nil {
		return pipeline.Config{}, err
	}
	out, scheme, keyFile := cmp.Or(set.Delivery, "unregistered"), hashing.Scheme(set.Scheme), set.KeyFile
	// A destination the registry refuses goes straight to the pipeline, which
	// refuses it (exit 77) and records the refusal; flag and key checks are
	// for destinations that may receive data.
	_, refused := registry.Authorize(o.Destination, o.Purpose)
	if refused == nil && !scheme.Keyed() && !o.AllowUnkeyed {
		return pipeline.Config{}, fmt.Errorf("%w: --scheme %s is unkeyed: a SHA-256 of a phone number is reversed in about a second on one GPU, so its identifiers are personal data in disguise; pass --allow-unkeyed only for a destination that requires it", errkind.ErrUsage, scheme)
	}
	asOf := now.UTC()
	if o.AsOf == "today" {
		// The night's shared cutoff without a shell to compute it: every
		// pod of a sharded job started the same day agrees on it.
		asOf = asOf.Truncate(24 * time.Hour)
	} else if o.AsOf != "" {
		if asOf, err = consent.ParseTime(o.AsOf); err != nil {
			return pipeline.Config{}, fmt.Errorf("%w: --as-of: %w; give an RFC 3339 instant, e.g. 2026-11-01T00:00:00Z, or today for 00:00 UTC today", errkind.ErrUsage, err)
		}
	}
	minVersion, maxAge, err := o.policy(registry, refused == nil)
	if err != nil {
		return pipeline.Config{}, err
	}
	cfg := pipeline.Config{
		Users: o.Users, Consent: o.Consent, Destination: o.Destination, Scheme: scheme,
		Out: out, State: o.State, Registry: registry, Force: o.Force, Backfill: o.Backfill, AllowDrop: o.AllowDrop,
		Rules:         consent.Rules{AsOf: asOf, Purpose: o.Purpose, MinPolicyVersion: minVersion, MaxAge: maxAge},
		MaxRejectRate: o.MaxRejectRate, Workers: o.Workers, RowsPerFile: o.RowsPerFile,
		ToolVersion: Version, Log: log, LockWait: o.LockWait, ShardStore: o.ShardStore,
	}
	if o.Source != "" {
		src, err := o.database()
		if err != nil {
			return cfg, err
		}
		cfg.Source = src
	}
	if err := o.loadKeys(&cfg, log, keyFile, refused == nil); err != nil {
		return cfg, err
	}
	return cfg, nil
}

// policy is the run's consent policy: the registry's for the destination
// and purpose, tightened by --min-policy-version and --max-consent-age. A
// destination the registry refuses keeps the flags: the run refuses it
// before it reads anything.
func (o *RunOptions) policy(registry *destinations.Registry, authorized bool) (int64, time.Duration, error) {
	if o.MinPolicyVersion < 0 {
		return 0, 0, fmt.Errorf("%w: --min-policy-version %d is negative", errkind.ErrUsage, o.MinPolicyVersion)
	}
	maxAge, err := consent.ParseMaxAge(o.MaxConsentAge)
	if err != nil {
		return 0, 0, fmt.Errorf("%w: --max-consent-age: %w", errkind.ErrUsage, err)
	}
	if o.MaxConsentAge != "" && maxAge == 0 {
		return 0, 0, fmt.Errorf("%w: --max-consent-age %s: a flag may only tighten the registry's max_consent_age; give a positive age like 395d, or leave the flag out", errkind.ErrUsage, o.MaxConsentAge)
	}
	if !authorized {
		return o.MinPolicyVersion, maxAge, nil
	}
	p, _ := registry.Lookup(o.Destination).PolicyFor(o.Purpose)
	return p.Tighten(o.Destination+"/"+o.Purpose+" ("+registry.Path+")", o.MinPolicyVersion, maxAge)
}

// database is the PostgreSQL source --source names: a query replaces its
// table.
func (o *RunOptions) database() (*pg.Source, error) {
	usersTable, consentTable := o.UsersTable, o.ConsentTable
	if o.UsersQuery != "" {
		usersTable = ""
	}
	if o.ConsentQuery != "" {
		consentTable = ""
	}
	return pg.New(pg.Options{URL: o.Source, UsersTable: usersTable, ConsentTable: consentTable,
		UsersQuery: o.UsersQuery, ConsentQuery: o.ConsentQuery})
}

// loadKeys loads the audit log's keys and, for a destination that may
// receive data under a keyed scheme, its identifier key.
func (o *RunOptions) loadKeys(cfg *pipeline.Config, log *slog.Logger, keyFile string, authorized bool) error {
	// A shard that leaves its outputs in a shard store writes nothing to the
	// audit log (its commit does), so its pod needs no signing key: the key
	// stays with the commit's state.
	if sh, _ := o.shard(); sh.Count == 0 || o.ShardStore == "" {
		signer, err := audit.LoadSigner(statedir.Keys(o.State))
		if err != nil {
			return fmt.Errorf("%w: %w; create it with: audiencematch keys init --state %s", errkind.ErrConfig, err, o.State)
		}
		cfg.AuditSigner = signer
		if cfg.AuditVerifier, err = audit.LoadVerifier(filepath.Join(statedir.Keys(o.State), audit.VerifierFile)); err != nil {
			return fmt.Errorf("%w: %w; recreate it with: audiencematch keys init --state %s", errkind.ErrConfig, err, o.State)
		}
	}
	if cfg.Scheme.Keyed() && authorized {
		key, err := loadKey(keyFile, o.State)
		if err != nil {
			return fmt.Errorf("%w: %w", errkind.ErrConfig, err)
		}
		if cfg.Key, err = key.ForScheme(cfg.Scheme, o.Destination); err != nil {
			return fmt.Errorf("%w: %w", errkind.ErrConfig, err)
		}
	} else if authorized {
		log.Warn("unkeyed scheme: identifiers are plain SHA-256 of phone numbers and can be reversed by brute force in about a second on one GPU; they remain personal data",
			"scheme", string(cfg.Scheme), "destination", o.Destination)
	}
	return nil
}

// inputFlags name what a run reads; commit accepts them only from a config
// file it shares with the shards, and ignores them.
var inputFlags = []string{"users", "consent", "source", "users-table", "consent-table", "users-query", "consent-query"}

// runRun applies the config file, then runs run (pipeline.Run, or a commit)
// and reports the result.
func runRun(cmd *cobra.Command, o *RunOptions, g *globalOptions, run func(context.Context, pipeline.Config) (*pipeline.Result, error)) (err error) {
	if err := o.load(cmd); err != nil {
		return err
	}
	log, err := g.logger(cmd.ErrOrStderr())
	if err != nil {
		return err
	}
	if o.MemoryLimitMiB > 0 && os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(o.MemoryLimitMiB << 20)
	}
	start := time.Now()
	var res *pipeline.Result
	if o.MetricsFile != "" {
		defer func() {
			if merr := writeMetrics(o.MetricsFile, o.Destination, res, exitCode(err), start, time.Now()); merr != nil {
				log.Error("could not write the metrics file", "path", o.MetricsFile, "error", merr.Error())
				if err == nil {
					err = fmt.Errorf("%w: metrics file: %w", errkind.ErrConfig, merr)
				}
			}
		}()
	}
	cfg, err := o.pipelineConfig(log, start)
	if err != nil {
		return err
	}
	if cfg.Shard, err = o.shard(); err != nil {
		return err
	}
	cfg.Prune = o.Prune
	if cfg.Plan = o.Plan; o.Plan && cfg.Shard.Count > 0 {
		return fmt.Errorf("%w: --plan is for a whole run: a shard publishes nothing anyway; plan the run unsharded", errkind.ErrUsage)
	}
	if (cfg.Shard.Count > 0 || o.commit) && o.AsOf == "" {
		return fmt.Errorf("%w: a sharded run needs --as-of: every shard and the commit must share the cutoff", errkind.ErrUsage)
	}
	if cfg.Source != nil {
		defer cfg.Source.Close()
	}
	stopProfiles, err := o.startProfiles()
	defer stopProfiles()
	if err != nil {
		return err
	}
	t := time.Now()
	if n, err := pipeline.Pretouch(o.pretouchBytes(cfg.Shard.Count)); err != nil {
		log.Debug("pretouch failed; the run faults its memory in page by page", "error", err.Error())
	} else if n > 0 {
		log.Debug("pretouched heap memory", "bytes", n, "seconds", time.Since(t).Seconds())
	}
	cfg.Progress = &pipeline.Progress{}
	stop := showProgress(cmd.Context(), cfg.Progress, cmd.ErrOrStderr(), log)
	res, err = run(cmd.Context(), cfg)
	stop()
	return report(cmd, o, log, cfg, res, err, start)
}

// load applies the config file under the flags and checks what the flags
// alone decide.
func (o *RunOptions) load(cmd *cobra.Command) error {
	if o.commit {
		// commit reads the shards, never the inputs: an input flag on its
		// command line is a mistake (the shards' inputs are checked by
		// their SHA-256). A config file shared with the shards may name
		// them; they are ignored there.
		for _, name := range inputFlags {
			if cmd.Flags().Changed(name) {
				return fmt.Errorf("%w: commit reads the shards under --state, not inputs: drop --%s (the shards recorded their inputs' SHA-256)", errkind.ErrUsage, name)
			}
		}
	}
	if err := applyConfigFile(cmd, o.Config); err != nil {
		return err
	}
	if o.commit {
		o.Users, o.Consent, o.Source = "", "", ""
	}
	if o.PretouchMiB > maxPretouchMiB {
		return fmt.Errorf("%w: --pretouch-mib %d is not between 0 and %d", errkind.ErrUsage, o.PretouchMiB, maxPretouchMiB)
	}
	if o.MemoryLimitMiB < 0 || o.MemoryLimitMiB > math.MaxInt64>>20 {
		return fmt.Errorf("%w: --memory-limit-mib %d is negative or too large", errkind.ErrUsage, o.MemoryLimitMiB)
	}
	return nil
}

// startProfiles starts the profiles and trace the flags ask for; stop ends
// and writes them, whatever happened.
func (o *RunOptions) startProfiles() (stop func(), err error) {
	var stops []func()
	stop = func() {
		for i := len(stops) - 1; i >= 0; i-- {
			stops[i]()
		}
	}
	for _, p := range []struct {
		path, flag string
		start      func(io.Writer) error
		stop       func()
	}{
		{o.CPUProfile, "--cpu-profile", pprof.StartCPUProfile, pprof.StopCPUProfile},
		{o.Trace, "--trace", trace.Start, trace.Stop},
	} {
		if p.path == "" {
			continue
		}
		f, err := os.Create(p.path)
		if err != nil {
			return stop, fmt.Errorf("%w: %s: %w", errkind.ErrUsage, p.flag, err)
		}
		stops = append(stops, func() { f.Close() })
		if err := p.start(f); err != nil {
			return stop, err
		}
		stops = append(stops, p.stop)
	}
	if o.MemProfile != "" {
		f, err := os.Create(o.MemProfile)
		if err != nil {
			return stop, fmt.Errorf("%w: --mem-profile: %w", errkind.ErrUsage, err)
		}
		stops = append(stops, func() {
			pprof.Lookup("allocs").WriteTo(f, 0)
			f.Close()
		})
	}
	return stop, nil
}

// report logs how the run ended: one line on success, so that cron mails
// only failures, and the reconciliation on stdout when asked.
func report(cmd *cobra.Command, o *RunOptions, log *slog.Logger, cfg pipeline.Config, res *pipeline.Result, err error, start time.Time) error {
	// The log line is the failure's one report: main does not print it again.
	if errors.Is(err, pipeline.ErrShardsIncomplete) {
		if o.IfComplete {
			log.Info("not all shards are finished; nothing published (--if-complete: the last shard's commit publishes)", "destination", cfg.Destination, "error", err.Error())
			return nil
		}
		log.Warn("not all shards are finished; nothing published", "destination", cfg.Destination, "error", err.Error(), "exit_code", exitCode(err))
		return reported(err)
	}
	if err != nil {
		log.Error("run failed", "destination", cfg.Destination, "error", err.Error(), "exit_code", exitCode(err))
		return reported(err)
	}
	if rec := res.Skipped; rec != nil {
		log.Info("already committed for this destination and date; nothing to do (use --force to run anyway)",
			"destination", cfg.Destination, "run_id", rec.RunID, "as_of", rec.AsOf)
		return nil
	}
	m := res.Manifest
	if res.ShardDir != "" {
		log.Info("shard done; publish with audiencematch commit once every shard is", "shard", cfg.Shard.String(), "destination", m.Destination,
			"users", m.Users.Rows, "consent_events", m.ConsentEvents.Rows, "dir", res.ShardDir, "seconds", time.Since(start).Seconds())
		return nil
	}
	if cfg.Plan {
		log.Info("plan only: nothing published, nothing recorded", "run_id", m.RunID, "destination", m.Destination,
			"exported", m.TotalRows, "already_published", res.AlreadyPublished, "seconds", time.Since(start).Seconds())
		printPlan(cmd.OutOrStdout(), res)
		return nil
	}
	if res.AlreadyPublished {
		log.Info("this exact run (same inputs and settings) is already published; nothing to do", "run_id", m.RunID, "dir", res.PublishedDir)
		return nil
	}
	log.Info("run published", "run_id", m.RunID, "destination", m.Destination, "scheme", m.Scheme, "key_id", m.KeyID,
		"users", m.Users.Rows, "exported", m.TotalRows, "excluded", m.Users.Rows-m.Users.Exported,
		"consent_events", m.ConsentEvents.Rows, "seconds", time.Since(start).Seconds())
	if o.Summary || isTerminal(cmd.OutOrStdout()) {
		printSummary(cmd.OutOrStdout(), res)
	}
	return nil
}

// printSummary writes the reconciliation: every row of both tables, once.
func printSummary(w io.Writer, res *pipeline.Result) {
	m := res.Manifest
	fmt.Fprintf(w, "published %d identifiers (%s, key_id %s) to %s\n", m.TotalRows, m.Scheme, orNone(m.KeyID), res.PublishedDir)
	fmt.Fprintf(w, "users %d = exported %d%s\n", m.Users.Rows, m.Users.Exported, terms(m.Users.Excluded))
	fmt.Fprintf(w, "consent events %d =%s\n", m.ConsentEvents.Rows, strings.TrimPrefix(terms(m.ConsentEvents.ByClass), " +"))
	if m.Adds != nil {
		fmt.Fprintf(w, "since run %s: adds %d, removes %d (key_id %s)\n", m.PreviousRunID, m.Adds.Rows, m.Removes.Rows, orNone(m.Removes.KeyID))
	}
	fmt.Fprintf(w, "private evidence: %s; rejects: %s\n", res.EvidencePath, filepath.Clean(res.RejectsPath))
}

// printPlan writes what a run would publish: the reconciliation, the
// deltas against the previous run, and where it would go.
func printPlan(w io.Writer, res *pipeline.Result) {
	m := res.Manifest
	if res.AlreadyPublished {
		fmt.Fprintf(w, "plan: this exact run is already published at %s; a run would do nothing\n", res.PublishedDir)
		return
	}
	fmt.Fprintf(w, "plan: would publish %d identifiers (%s, key_id %s) to %s\n", m.TotalRows, m.Scheme, orNone(m.KeyID), res.PublishedDir)
	fmt.Fprintf(w, "consent policy: min_policy_version %d, max_consent_age %s\n", m.Policy.MinPolicyVersion, ageText(m.Policy.MaxConsentAgeSeconds))
	fmt.Fprintf(w, "users %d = exported %d%s\n", m.Users.Rows, m.Users.Exported, terms(m.Users.Excluded))
	fmt.Fprintf(w, "consent events %d =%s\n", m.ConsentEvents.Rows, strings.TrimPrefix(terms(m.ConsentEvents.ByClass), " +"))
	switch {
	case m.Adds != nil:
		fmt.Fprintf(w, "since run %s (%d identifiers): adds %d, removes %d\n", m.PreviousRunID, m.PreviousTotalRows, m.Adds.Rows, m.Removes.Rows)
	case m.Backfill:
		fmt.Fprintln(w, "a backfill: no adds or removes")
	default:
		fmt.Fprintln(w, "the destination's first run: no adds or removes")
	}
	fmt.Fprintln(w, "nothing published, nothing recorded (--plan)")
}

func ageText(seconds int64) string {
	if seconds == 0 {
		return "none"
	}
	if seconds%86400 == 0 {
		return fmt.Sprintf("%dd", seconds/86400)
	}
	return (time.Duration(seconds) * time.Second).String()
}

func terms(counts map[string]int64) string {
	keys := make([]string, 0, len(counts))
	for k := range counts {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		if counts[k] > 0 {
			fmt.Fprintf(&b, " + %s %d", k, counts[k])
		}
	}
	return b.String()
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

// loadKey takes the key from --key (a master key or a destination key),
// else from the environment (hashing.LoadKey), else STATE/keys/master.key.
func loadKey(path, state string) (hashing.Key, error) {
	if path == "" {
		_, master := os.LookupEnv(hashing.KeyEnv)
		if _, dest := os.LookupEnv(hashing.DestKeyEnv); !master && !dest && state != "" {
			if p := filepath.Join(statedir.Keys(state), "master.key"); fileExists(p) {
				path = p
			}
		}
	}
	return hashing.LoadKey(path)
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
