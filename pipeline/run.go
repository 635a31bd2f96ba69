package pipeline

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash/maphash"
	"io/fs"
	"log/slog"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"runtime/pprof"
	"slices"
	"time"
	"unsafe"

	"github.com/parquet-go/parquet-go"
	"golang.org/x/mod/sumdb/note"

	"audiencematch/consent"
	"audiencematch/consent/audit"
	"audiencematch/consent/audit/witness"
	"audiencematch/hashing"
	"audiencematch/internal/fsutil"
	"audiencematch/internal/objstore"
	"audiencematch/pipeline/delivery"
	"audiencematch/pipeline/destinations"
	"audiencematch/pipeline/errkind"
	"audiencematch/pipeline/idfile"
	"audiencematch/pipeline/leakguard"
	"audiencematch/pipeline/manifest"
	"audiencematch/pipeline/retention"
	"audiencematch/pipeline/source"
	"audiencematch/pipeline/spill"
	"audiencematch/pipeline/statedir"
)

// Config is everything one run needs. The CLI fills it from flags and the
// config file; tests fill it directly.
type Config struct {
	Users, Consent string        // input paths, CSV or Parquet (when Source is nil)
	Source         source.Source // nil: a FileSource of Users and Consent
	Destination    string
	Scheme         hashing.Scheme
	Key            hashing.DestKey // K_dest, or skS for oprf-ristretto255 (Key.ForScheme); unused by unkeyed schemes
	Out, State     string
	Rules          consent.Rules
	MaxRejectRate  float64 // a fraction: 0.01 is 1%
	RowsPerFile    int64   // 0: idfile.DefaultRowsPerFile
	RowsPerGroup   int64   // 0: idfile.DefaultRowsPerGroup
	Workers        int     // 0: GOMAXPROCS
	ToolVersion    string
	Log            *slog.Logger // nil: discard
	// AuditSigner signs the audit log under <state>/audit. With nil, no
	// audit record is written (library use and tests only: the CLI always
	// sets it).
	AuditSigner note.Signer
	// AuditVerifier is the signer's public key, to check the log's
	// checkpoint before a crashed append is completed; required with a signer.
	AuditVerifier note.Verifier
	// Force re-runs a destination and cutoff date that already has a
	// committed run (a run with the same inputs and settings is still
	// recognised as published and not written twice).
	Force bool
	// Backfill publishes a run for a cutoff earlier than the destination's
	// latest committed one: a snapshot without deltas, outside the delivery
	// chain (see chain.go). Without it such a cutoff is refused.
	Backfill bool
	// AllowDrop lets a run publish though its snapshot shrinks past the
	// registry's max_drop_percent against the previous run, or its input
	// has no rows; the record says so.
	AllowDrop bool
	// Progress, when not nil, is updated as rows go by.
	Progress *Progress
	// Registry is the destination allowlist; required. A destination it does
	// not authorize for the purpose is refused before any user data is read.
	Registry *destinations.Registry
	// Shard, when its Count is set, makes Run process one partition of the
	// users and leave it for Commit instead of publishing.
	Shard Shard
	// ShardStore, when set, is an object-store location (objstore) where
	// shards leave their outputs and Commit finds them, for shards that
	// share no file system (the pods of a Kubernetes Indexed Job); empty:
	// STATE/shards only.
	ShardStore string
	// LockWait is how long to wait for the run lock; 0: fail at once
	// (exit 75), as an overlapping nightly run should.
	LockWait time.Duration
	// Prune, after a run is published and recorded, enforces its
	// destination's retention_days (package retention), under the same lock.
	Prune bool
	// Plan makes the run do everything up to publishing (read, consent,
	// hash, deltas against the previous committed run, the reconciliation,
	// reject rates, drop guard and leak guard) and stop there: nothing is
	// published or kept under STATE/runs, and nothing is appended to the
	// audit log, neither a failure nor a refusal.
	Plan bool
	// commit is set by Commit, which reads shards rather than inputs.
	commit bool
	// maxDrop is the destination's drop guard threshold, a fraction, from
	// the registry (authorize sets it).
	maxDrop float64
	// dirMode is the mode of the published run's directories, from the
	// registry (authorize sets it).
	dirMode fs.FileMode
	// authorization is the registry entry that authorized the run, for
	// its record (authorize sets it).
	authorization *audit.Authorization
	// spills are the thresholds at which the run splits and groups its
	// spills; nil: defaultSpillThresholds. Tests set them
	// (SetSpillThresholds).
	spills *spillThresholds
}

// Result describes a finished run.
type Result struct {
	Manifest         *manifest.Manifest
	PublishedDir     string // OUT/<destination>/dt=<date>/run=<id>
	EvidencePath     string
	RejectsPath      string
	AlreadyPublished bool // the same run (same inputs and config) was published before
	// Skipped is set when a run for the destination and cutoff date was
	// already committed and Force was not given: nothing was read.
	Skipped *audit.Record
	Stages  []StageTime
	// ShardDir is where a shard run (Config.Shard) left its part for Commit.
	ShardDir string
	// Planned is set when Config.Plan stopped the run before publishing:
	// the Manifest is what it would have published.
	Planned bool
	// Pruned is what Config.Prune removed after the run.
	Pruned []retention.Removal
}

// StageTime is how long one stage took.
type StageTime struct {
	Name     string
	Duration time.Duration
}

// maxClockSkew is how far in the future a cutoff may be, for clocks of
// machines that share a state directory.
const maxClockSkew = 5 * time.Minute

var destinationRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,63}$`)

// ValidDestination reports whether id is usable as a destination id (it
// names a directory and is part of the HKDF info string).
func ValidDestination(id string) bool { return destinationRE.MatchString(id) }

func (c *Config) check() error {
	switch {
	case !ValidDestination(c.Destination):
		return fmt.Errorf("%w: destination %q: use 1-64 characters of a-z, 0-9, '.', '_', '-', starting with a letter or digit", errkind.ErrUsage, c.Destination)
	case c.Source == nil && (c.Users == "" || c.Consent == "") && !c.commit:
		return fmt.Errorf("%w: both --users and --consent (or --source) are required", errkind.ErrUsage)
	case c.Out == "" || c.State == "":
		return fmt.Errorf("%w: both --out and --state are required", errkind.ErrUsage)
	case c.Rules.Purpose == "":
		return fmt.Errorf("%w: --purpose is required", errkind.ErrUsage)
	case c.Rules.AsOf.IsZero():
		return fmt.Errorf("%w: as_of is not set", errkind.ErrUsage)
	case c.Rules.AsOf.After(time.Now().Add(maxClockSkew)):
		// Consent events after a future cutoff are not yet known, so the
		// run would decide on a history that is still being written; a
		// typo here (2030 for 2026) would otherwise withdraw nobody and
		// publish a cutoff no later run could follow.
		return fmt.Errorf("%w: --as-of %s is in the future: give a cutoff no later than now, as RFC 3339 (2026-11-01T00:00:00Z), or leave it out for the start of the run",
			errkind.ErrUsage, c.Rules.AsOf.UTC().Format(time.RFC3339))
	case c.MaxRejectRate < 0 || c.MaxRejectRate > 1:
		return fmt.Errorf("%w: --max-reject-rate %v is not between 0 and 1", errkind.ErrUsage, c.MaxRejectRate)
	}
	if _, err := hashing.ParseScheme(string(c.Scheme)); err != nil {
		return fmt.Errorf("%w: %w", errkind.ErrUsage, err)
	}
	c.RowsPerFile, c.RowsPerGroup = c.rows()
	if c.Workers <= 0 {
		c.Workers = runtime.GOMAXPROCS(0)
	}
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
	if c.Source == nil {
		c.Source = source.FileSource{Users: c.Users, Consent: c.Consent}
	}
	if p, ok := objstore.LocalPath(c.Out); ok {
		c.Out = p // file:///srv/exports is /srv/exports
	} else if !objstore.IsURL(c.Out) {
		return fmt.Errorf("%w: --out %s: give a directory or an s3://, gs://, azblob:// or file:// URL", errkind.ErrUsage, objstore.Redact(c.Out))
	}
	return nil
}

// rows is the output sizing in effect: the defaults where none is set.
func (c *Config) rows() (perFile, perGroup int64) {
	perFile, perGroup = c.RowsPerFile, c.RowsPerGroup
	if perFile <= 0 {
		perFile = idfile.DefaultRowsPerFile
	}
	if perGroup <= 0 {
		perGroup = idfile.DefaultRowsPerGroup
	}
	return perFile, perGroup
}

// KeyID is the key_id the run reports: empty for unkeyed schemes.
func (c *Config) KeyID() string {
	if !c.Scheme.Keyed() {
		return ""
	}
	return c.Scheme.KeyID(c.Key)
}

// Digest is the SHA-256 of the canonical form of everything in the
// configuration that can change the output (never the key itself), with
// the defaults in effect whether or not check has filled them in (the
// shards' directory is named by it, and Commit once looked for it under the
// digest of unfilled sizes, so never removed it).
func (c *Config) Digest() string {
	perFile, perGroup := c.rows()
	b, _ := json.Marshal(struct {
		Destination, Scheme, KeyID, AsOf, Purpose string
		MinPolicyVersion                          int64
		MaxConsentAgeSeconds                      int64
		MaxRejectRate                             float64
		RowsPerFile, RowsPerGroup                 int64
		ToolVersion                               string
	}{c.Destination, string(c.Scheme), c.KeyID(), c.Rules.AsOf.UTC().Format(time.RFC3339Nano), c.Rules.Purpose,
		c.Rules.MinPolicyVersion, int64(c.Rules.MaxAge / time.Second), c.MaxRejectRate, perFile, perGroup, c.ToolVersion})
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// exportRow is one exported identifier and the valid holders behind it.
type exportRow struct {
	id      string
	eid     string  // the identifier as evidence names it: hex for binary schemes
	holders []int32 // indexes into its bucket's holders, smallest user id first
}

type run struct {
	cfg      Config
	staging  string
	rejects  *rejectWriter
	guard    *leakguard.Guard
	snapshot string // consent snapshot digest
	seed     maphash.Seed
	// Spilled in-scope events and user rows, by user (consent and users
	// stages, read by the join), and the join's holders and snapshot lines,
	// in buckets (see join).
	events, users, ids, snap *spill.Spill
	// spills are the run's thresholds: its Config's, or the defaults.
	spills spillThresholds
	// groupSpills is set when they keep their partitions in groups of
	// files (see spill.Options.GroupWriters and spillThresholds.groupFrom).
	groupSpills bool
	// What the write stage reads: the run's own ids and snap, or every
	// shard's (Commit).
	idSrc, snapSrc []*spill.Spill
	// idc is the identifier cache of an oprf-ristretto255 run (idcache.go).
	idc *runCache
	// idTree and evidenceTree are the record's tree heads (computeTrees).
	idTree, evidenceTree *audit.Tree
	m                    *manifest.Manifest
	// base is the run this run's deltas are computed against: the head of
	// the destination's delivery chain (delivery.DeltaBase), whatever its
	// cutoff, since it is what the platform holds; nil for a destination's
	// first run and for a backfill, which carries no deltas.
	base *audit.Record
	// pages holds the Parquet writers' pages until their row group is
	// written: files in staging rather than fresh heap, which a virtual
	// machine faults in page by page at a high cost (docs/PERFORMANCE.md).
	pages parquet.BufferPool
	// later holds the output files written (parts, deltas, evidence) until
	// finish syncs them, while the guard reads them; synced has the outcome.
	later  fsutil.Syncer
	synced <-chan error
	stages []StageTime
	t0     time.Time
}

func newRun(cfg Config) *run {
	r := &run{cfg: cfg, t0: time.Now(), m: newManifest(&cfg), guard: leakguard.New(leakguard.Salt(cfg.Digest()), "", leakguard.Options{Durable: cfg.Shard.Count > 0}), seed: maphash.MakeSeed()}
	r.spills = defaultSpillThresholds
	if cfg.spills != nil {
		r.spills = *cfg.spills
	}
	n, known := source.InputSize(cfg.Source)
	r.groupSpills = !known || n/int64(max(cfg.Shard.Count, 1)) >= r.spills.groupFrom
	return r
}

// spillThresholds are the sizes at which a run splits and groups its
// spills (package spill).
type spillThresholds struct {
	// splitBytes bounds a partition a stage loads whole (a join partition,
	// a bucket of holders or of snapshot lines). A larger one is first split
	// into spillParts sub-partitions of a spill of its own (spill.Split), so
	// memory stays flat however large the audience (docs/DESIGN.md,
	// "Splits").
	splitBytes int64
	// groupFrom is the size of the input files (a shard's share of them)
	// from which a run groups its spills. Grouping bounds the staging's
	// peak at a large audience, but each spill then has a file per writer
	// and group to create and remove, one at a time, which costs a smaller
	// run more time than it saves (docs/PERFORMANCE.md). Inputs read from a
	// database, of unknown size, are grouped.
	groupFrom int64
}

var defaultSpillThresholds = spillThresholds{splitBytes: 16 << 20, groupFrom: 512 << 20}

// newSpill creates the spill NAME in staging, digested if digest is set,
// its partitions in groups of files if the run groups its spills (see
// spillThresholds.groupFrom).
func (r *run) newSpill(name string, parts int, digest bool) (*spill.Spill, error) {
	o := spill.Options{Digest: digest}
	if r.groupSpills {
		o.GroupWriters = r.cfg.Workers
	}
	return spill.New(filepath.Join(r.staging, name), parts, o)
}

// closeSpills closes every spill file (they live in staging, which goes).
func (r *run) closeSpills() {
	for _, s := range slices.Concat([]*spill.Spill{r.events, r.users, r.ids, r.snap}, r.idSrc, r.snapSrc, r.guard.Spills()) {
		if s != nil {
			s.Close()
		}
	}
}

// step is one stage of a run.
type step struct {
	name string
	fn   func(context.Context) error
}

// Run performs one export and publishes it atomically. On any error nothing
// is published and the staging directory is removed. With cfg.Shard set it
// runs one shard instead, which publishes nothing (see RunShard).
func Run(ctx context.Context, cfg Config) (*Result, error) {
	if cfg.Shard.Count > 0 {
		return RunShard(ctx, cfg)
	}
	return execute(ctx, cfg, func(r *run) []step {
		return []step{
			{"consent", r.readConsent},
			{"users", r.readUsers},
			{"join", r.join},
			{"write", r.writeOutputs},
		}
	})
}

// execute runs steps under the run lock, with the audit log recovered, the
// destination authorized and staging cleaned, then checks and publishes.
func execute(ctx context.Context, cfg Config, steps func(*run) []step) (res *Result, err error) {
	if err := cfg.check(); err != nil {
		return nil, err
	}
	r := newRun(cfg)
	if err := ensureStateDirs(cfg.State); err != nil {
		return nil, err
	}
	lock, err := acquireLock(ctx, cfg.State, r.t0, cfg.LockWait)
	if err != nil {
		return nil, err
	}
	defer lock.Release()
	witnesses, err := witness.LoadConfig(cfg.State)
	if err != nil {
		return nil, fmt.Errorf("%w: witnesses: %w", errkind.ErrConfig, err)
	}
	// Last, still under the lock, whatever happened: the checkpoint as the
	// run leaves it goes to the witnesses.
	defer cosign(ctx, &cfg, witnesses)
	if cfg.AuditSigner != nil {
		if cfg.AuditVerifier == nil {
			return nil, fmt.Errorf("%w: an audit signer needs its verifier", errkind.ErrConfig)
		}
		if err := audit.Recover(statedir.Audit(cfg.State), cfg.AuditSigner, cfg.AuditVerifier); err != nil {
			return nil, fmt.Errorf("%w: audit log: %w", errkind.ErrConfig, err)
		}
	}
	if err := authorize(&r.cfg, !cfg.Plan); err != nil {
		return nil, err
	}
	if n, err := cleanStaging(cfg.State, cfg.Out, cfg.Destination); err != nil {
		return nil, fmt.Errorf("clean up an earlier run's staging: %w", err)
	} else if n > 0 {
		cfg.Log.Info("removed the staging leftovers of an interrupted run", "entries", n)
	}
	// One reading of the log, under the lock, makes every decision below:
	// nothing else appends to it until this run does.
	l, err := delivery.OpenLog(cfg.State)
	if err != nil {
		return nil, err
	}
	if cfg.Plan {
		// Healing appends to the log; a plan appends nothing, and deltas
		// planned against a head the next run would change are wrong.
		dir, err := unrecordedDir(l, &cfg)
		if err != nil {
			return nil, err
		}
		if dir != "" {
			return nil, fmt.Errorf("%w: %s is published but not recorded (an interrupted run): the next run records it first, so a plan now would compute the wrong deltas; run once without --plan", errkind.ErrUsage, dir)
		}
	}
	healed, err := heal(&cfg, l)
	for _, id := range healed {
		cfg.Log.Warn("recorded a run that was published but not recorded (interrupted before its audit record)", "run_id", id)
	}
	if err != nil {
		return nil, err
	}
	if len(healed) > 0 {
		if err := delivery.PointLatestHead(ctx, l, cfg.Out, cfg.Destination); err != nil {
			return nil, fmt.Errorf("point %s at the recorded run: %w", delivery.LatestPointer, err)
		}
	}
	if !cfg.Force {
		if rec := committedOn(l, &cfg); rec != nil {
			return &Result{Skipped: rec}, nil
		}
	}
	head := delivery.DeltaBase(l, cfg.Destination)
	if err := delivery.CheckCutoff(cfg.Destination, cfg.Rules.AsOf, cfg.Backfill, head); err != nil {
		return nil, err
	}
	if !cfg.Backfill {
		r.base = head
	}
	defer func() {
		// Shards not yet complete are not a failed run: nothing was tried.
		// A run whose record is in the log is committed whatever failed
		// after it (signing its checkpoint, which the next run completes):
		// a run_failed beside its run_committed would contradict it.
		if err != nil && !cfg.Plan && !errors.Is(err, context.Canceled) && !errors.Is(err, ErrShardsIncomplete) && !r.recorded() {
			if aerr := AppendEvent(&r.cfg, "run_failed", err.Error()); aerr != nil {
				err = fmt.Errorf("%w (and the failure could not be recorded in the audit log: %v)", err, aerr)
			}
		}
	}()
	if r.staging, err = os.MkdirTemp(filepath.Join(cfg.State, "staging"), "run-"); err != nil {
		return nil, fmt.Errorf("%w: create staging directory: %w", errkind.ErrConfig, err)
	}
	r.guard.SetDir(r.staging)
	if fs, ok := r.cfg.Source.(source.FileSource); ok && fs.TempDir == "" {
		fs.TempDir = r.staging // Parquet objects are copied there to be read
		r.cfg.Source = fs
	}
	defer func() {
		if r.rejects != nil {
			r.rejects.Close()
		}
		r.closeSpills()
		r.closeIDCache()
		r.later.Discard()
		if r.synced != nil {
			<-r.synced
		}
		if rmErr := os.RemoveAll(r.staging); rmErr != nil && err == nil {
			err = fmt.Errorf("remove staging %q: %w", r.staging, rmErr)
		}
	}()
	for _, d := range []string{"publish", "private", "pages"} {
		if err := os.Mkdir(filepath.Join(r.staging, d), 0o700); err != nil {
			return nil, err
		}
	}
	r.pages = parquet.NewFileBufferPool(filepath.Join(r.staging, "pages"), "column-*")
	if r.rejects, err = newRejectWriter(filepath.Join(r.staging, "private", "rejects.csv")); err != nil {
		return nil, err
	}
	if err := r.runSteps(ctx, steps(r)); err != nil {
		return nil, err
	}
	if res, err = r.finish(); err != nil || !cfg.Prune || cfg.Plan || cfg.Shard.Count > 0 || cfg.AuditSigner == nil {
		return res, err
	}
	// The run is committed: a prune that fails is reported, not a failed run.
	res.Pruned, err = prune(ctx, PruneConfig{State: cfg.State, Registry: cfg.Registry, Destination: cfg.Destination, Now: time.Now(),
		ToolVersion: cfg.ToolVersion, AuditSigner: cfg.AuditSigner, Log: cfg.Log})
	if err != nil {
		return res, fmt.Errorf("the run is published and recorded, but the prune after it failed (run audiencematch prune): %w", err)
	}
	return res, nil
}

func (r *run) runSteps(ctx context.Context, steps []step) error {
	for _, s := range steps {
		if err := ctx.Err(); err != nil {
			return err
		}
		start := time.Now()
		cpu0, flt0 := usage()
		r.cfg.Progress.setStage(s.name)
		// The stage's label marks its goroutines' samples in a CPU profile.
		var err error
		pprof.Do(ctx, pprof.Labels("stage", s.name), func(ctx context.Context) { err = s.fn(ctx) })
		if err != nil {
			return err
		}
		r.stages = append(r.stages, StageTime{s.name, time.Since(start)})
		cpu, flt := usage()
		r.cfg.Log.Debug("stage done", "stage", s.name, "seconds", time.Since(start).Seconds(), "cpu_seconds", (cpu - cpu0).Seconds(), "minor_faults", flt-flt0)
		if err := crashPoint(s.name); err != nil {
			return err
		}
	}
	return nil
}

func (r *run) reject(table string, line int64, reason, raw string) {
	r.m.AddReject(table, reason)
	r.rejects.Write(table, line, reason, raw)
}

// fieldsText re-creates a row's text from its fields, for the reject file.
func fieldsText(fields []string) string {
	b, _ := json.Marshal(fields)
	return string(b)
}

// bytesString is b as a string without a copy: b must not change while the
// string is in use.
func bytesString(b []byte) string { return unsafe.String(unsafe.SliceData(b), len(b)) }

// authorize refuses, before any user data is read, a destination the
// registry does not allow for the run's purpose, and records the refusal
// when record is set (a shard leaves that to the commit). A scheme or
// delivery directory that contradicts the registry, or consent rules looser
// than its policy, are usage errors: the registry decides them.
func authorize(cfg *Config, record bool) error {
	if cfg.Registry == nil {
		return fmt.Errorf("%w: no destination registry: nothing may be sent without one", errkind.ErrConfig)
	}
	d, err := cfg.Registry.Authorize(cfg.Destination, cfg.Rules.Purpose)
	if err != nil && !record {
		return fmt.Errorf("%w: %w", errkind.ErrRejected, err)
	}
	if err != nil {
		if aerr := AppendEvent(cfg, "destination_refused", err.Error()); aerr != nil {
			return fmt.Errorf("%w: %w (and the refusal could not be recorded: %v)", errkind.ErrRejected, err, aerr)
		}
		return fmt.Errorf("%w: %w", errkind.ErrRejected, err)
	}
	cfg.maxDrop = d.MaxDrop()
	cfg.dirMode = d.DirModeOr(delivery.DefaultDirMode)
	// The registry's consent policy for the purpose is the loosest a run
	// may use (destinations.Policy); Authorize has checked there is one.
	p, _ := d.PolicyFor(cfg.Rules.Purpose)
	if err := p.Permits(cfg.Destination+"/"+cfg.Rules.Purpose, cfg.Rules.MinPolicyVersion, cfg.Rules.MaxAge); err != nil {
		return err
	}
	cfg.authorization = &audit.Authorization{RegistrySHA256: cfg.Registry.SHA256, Organization: d.Organization,
		Relationship: d.Relationship, Purposes: d.Purposes, LawfulBasis: d.LawfulBasis, RetentionDays: int64(d.RetentionDays)}
	return d.Agrees(string(cfg.Scheme), cfg.Out)
}

// cosign asks the configured witnesses that have not cosigned the log's
// checkpoint to cosign it (package witness). A witness that is down or
// refuses does not fail the run: it is reported, `audit verify` shows it,
// and the next run asks again.
func cosign(ctx context.Context, cfg *Config, ws []witness.Witness) {
	if cfg.AuditSigner == nil || len(ws) == 0 {
		return
	}
	dir := statedir.Audit(cfg.State)
	l, err := audit.Open(dir)
	if err == nil && l.Size() == 0 {
		return
	}
	var out []witness.Outcome
	if err == nil {
		out, err = witness.Cosign(ctx, dir, l, cfg.AuditVerifier, ws, http.DefaultClient)
	}
	if err != nil {
		cfg.Log.Warn("the checkpoint could not be sent to the witnesses; the next run tries again", "err", err)
		return
	}
	for _, o := range out {
		switch {
		case o.Cosigned:
			cfg.Log.Info("witness cosigned the checkpoint", "witness", o.Witness, "records", l.Size())
		case o.Err != nil:
			cfg.Log.Warn("witness did not cosign the checkpoint; the next run asks again", "witness", o.Witness, "err", o.Err)
		}
	}
}

// committedOn returns the committed run of the destination for the run's
// cutoff date, if the audit log l has one.
func committedOn(l *audit.Log, cfg *Config) *audit.Record {
	day := cfg.Rules.AsOf.UTC().Format(time.DateOnly)
	for i := len(l.Records()) - 1; i >= 0; i-- {
		rec := l.Records()[i]
		if rec.Type != audit.TypeRunCommitted || rec.Destination != cfg.Destination {
			continue
		}
		if at, err := time.Parse(time.RFC3339Nano, rec.AsOf); err == nil && at.UTC().Format(time.DateOnly) == day {
			return rec
		}
	}
	return nil
}

// newManifest starts the run's manifest with everything the configuration
// decides.
func newManifest(c *Config) *manifest.Manifest {
	m := manifest.New()
	m.ToolVersion, m.Destination, m.Purpose = c.ToolVersion, c.Destination, c.Rules.Purpose
	m.AsOf = c.Rules.AsOf.UTC().Format(time.RFC3339Nano)
	m.Policy = manifest.PolicyRules{
		MinPolicyVersion:     c.Rules.MinPolicyVersion,
		MaxConsentAgeSeconds: int64(c.Rules.MaxAge / time.Second),
		MaxRejectRate:        c.MaxRejectRate,
	}
	m.Scheme, m.KeyID, m.ConfigDigest, m.Backfill = string(c.Scheme), c.KeyID(), c.Digest(), c.Backfill
	return m
}

// guardExpect is what the leak guard compares the published files with:
// the manifest as c fills it, the key, the parts' layout and, but in a
// commit (whose shards check that their sources agree), the inputs' names.
func (c *Config) guardExpect() leakguard.Expect {
	e := leakguard.Expect{Manifest: newManifest(c), Key: c.Key, Layout: c.layout()}
	if c.Source != nil && !c.commit {
		e.InputNames = c.Source.Name
	}
	return e
}

// layout is how the run cuts its published parts.
func (c *Config) layout() idfile.Layout {
	perFile, perGroup := c.rows()
	return idfile.Layout{RowsPerFile: perFile, RowsPerGroup: perGroup, ToolVersion: c.ToolVersion}
}

// unrecordedDir is a published run directory of the destination that the
// audit log l does not record, or "": a path, or an object store's location
// without its query.
func unrecordedDir(l *audit.Log, cfg *Config) (string, error) {
	dirs, err := delivery.RootsFor(cfg.Destination, cfg.Out).RunDirs(cfg.Destination)
	if err != nil {
		return "", err
	}
	for _, id := range slices.Sorted(maps.Keys(dirs)) {
		if l.Committed(id) < 0 {
			return objstore.Redact(dirs[id]), nil
		}
	}
	return "", nil
}

// heal records the destination's published runs that the log does not
// (delivery.Heal); a run without an audit log has nothing to heal.
func heal(cfg *Config, l *audit.Log) ([]string, error) {
	if cfg.AuditSigner == nil || cfg.Plan {
		return nil, nil
	}
	return delivery.Heal(l, cfg.State, cfg.Out, cfg.Destination, cfg.AuditSigner)
}

// recorded reports whether the audit log holds this run's run_committed
// record: once it does, the run is committed, whatever fails after.
func (r *run) recorded() bool {
	if r.m == nil || r.m.RunID == "" || r.cfg.AuditSigner == nil {
		return false
	}
	l, err := audit.Open(statedir.Audit(r.cfg.State))
	return err == nil && l.Committed(r.m.RunID) >= 0
}
