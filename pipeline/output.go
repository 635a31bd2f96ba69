package pipeline

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/csv"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"audiencematch/consent/audit"
	"audiencematch/hashing"
	"audiencematch/internal/fsutil"
	"audiencematch/pipeline/delivery"
	"audiencematch/pipeline/errkind"
	"audiencematch/pipeline/idfile"
	"audiencematch/pipeline/statedir"
)

// RunID names a run after its cutoff and a digest of its configuration and
// inputs: the same inputs and settings give the same run, so a re-run is
// recognized rather than published twice.
func (r *run) runID() string {
	h := sha256.New()
	h.Write([]byte(r.m.ConfigDigest))
	for _, in := range r.m.Inputs {
		h.Write([]byte("\x00" + in.Table + "\x00" + in.SHA256))
	}
	return r.cfg.Rules.AsOf.UTC().Format("20060102T150405Z") + "-" + hex.EncodeToString(h.Sum(nil))[:12]
}

// PublishedPath is where a run of destination at asOf is published under
// out, a directory or an object-store location (delivery.RunDir).
func PublishedPath(out, destination string, asOf time.Time, runID string) string {
	return delivery.Location(out, PublishedRel(destination, asOf, runID))
}

// PublishedRel is a run's published directory relative to the delivery
// root, as its audit record names it: "<destination>/dt=<date>/run=<id>"
// (delivery.RunDir).
func PublishedRel(destination string, asOf time.Time, runID string) string {
	return delivery.RunDir(destination, asOf, runID)
}

// writeOutputs resolves the join's buckets in identifier order and, for
// each, writes its identifiers to the parts (and the deltas), its holders to
// the private evidence file and both to the record's tree heads: three
// sequential writers, side by side. The consent snapshot is digested
// beside them.
func (r *run) writeOutputs(ctx context.Context) error {
	r.m.RunID = r.runID()
	if ok, err := delivery.Published(ctx, r.cfg.Out, r.runDir()); err != nil {
		return err
	} else if ok {
		return nil // finish reports it as already published
	}
	pub := filepath.Join(r.staging, "publish")
	parts, err := idfile.NewPartWriter(filepath.Join(pub, delivery.SnapshotDir), r.pages, r.cfg.layout(), r.cfg.Scheme, r.cfg.KeyID())
	if err != nil {
		return err
	}
	parts.Later = &r.later
	deltas, err := r.startDeltas(pub)
	if err != nil {
		return fmt.Errorf("write deltas: %w", err)
	}
	if deltas != nil {
		defer deltas.old.Close() // after a failure: finish reads it to the end
	}
	ev, err := idfile.NewEvidenceWriter(filepath.Join(r.staging, "private", "evidence.parquet"), r.pages, &r.later)
	if err != nil {
		return fmt.Errorf("write evidence: %w", err)
	}
	defer ev.Abort()
	var snapErr error
	var snapWG sync.WaitGroup
	snapWG.Go(func() { r.snapshot, snapErr = snapshotOf(r.snapSrc, bucketParts, r.staging, r.spills.splitBytes) })
	trees, err := r.writeBuckets(ctx, parts, deltas, ev)
	snapWG.Wait()
	if err != nil {
		return fmt.Errorf("write output: %w", err)
	}
	if snapErr != nil {
		return fmt.Errorf("consent snapshot: %w", snapErr)
	}
	// The last row groups are flushed and the files synced side by side.
	var closeWG sync.WaitGroup
	var partsErr, deltasErr, evErr error
	closeWG.Go(func() {
		if r.m.Files, partsErr = parts.Close(); partsErr == nil {
			for i := range r.m.Files {
				r.m.Files[i].Path = delivery.SnapshotDir + "/" + r.m.Files[i].Path
			}
		}
	})
	if deltas != nil {
		closeWG.Go(func() { deltasErr = deltas.finish() })
	}
	closeWG.Go(func() { evErr = ev.Close() })
	closeWG.Wait()
	if partsErr != nil {
		return fmt.Errorf("write output: %w", partsErr)
	}
	if deltasErr != nil {
		return fmt.Errorf("write deltas: %w", deltasErr)
	}
	if evErr != nil {
		return fmt.Errorf("write evidence: %w", evErr)
	}
	r.idTree, r.evidenceTree = trees.ids.Summary(), trees.evidence.Summary()
	return ctx.Err()
}

// writeBuckets resolves the join's buckets in identifier order and hands
// each to three writers, each at its own pace: the parts (and deltas), the
// evidence and the trees. A writer that waited for the others at every
// bucket left a core idle whenever the evidence, the slowest, was the last
// one working.
func (r *run) writeBuckets(ctx context.Context, parts *idfile.PartWriter, deltas *deltaMerge, ev *idfile.EvidenceWriter) (*treeBuilder, error) {
	var trees treeBuilder
	u := &r.m.Users
	var writersErr error
	var errMu sync.Mutex
	var writers sync.WaitGroup
	writer := func(write func(rb *resolvedBucket) error) chan *resolvedBucket {
		// Roomier than eachResolved's window, so sending never waits:
		// fn cannot get a bucket the writers have not released.
		ch := make(chan *resolvedBucket, bucketParts)
		writers.Go(func() {
			failed := false
			for rb := range ch {
				if !failed {
					if err := write(rb); err != nil {
						failed = true
						errMu.Lock()
						writersErr = cmp.Or(writersErr, err)
						errMu.Unlock()
					}
				}
				rb.done()
			}
		})
		return ch
	}
	streams := []chan *resolvedBucket{
		writer(func(rb *resolvedBucket) error {
			for i := range rb.export {
				if err := parts.Add(rb.export[i].id); err != nil {
					return err
				}
				if deltas != nil {
					if err := deltas.add(rb.export[i].id); err != nil {
						return err
					}
				}
			}
			return nil
		}),
		writer(func(rb *resolvedBucket) error { return writeEvidence(ev, rb) }),
		writer(func(rb *resolvedBucket) error { trees.add(rb); return nil }),
	}
	err := eachResolved(ctx, r.idSrc, bucketParts, r.cfg.Workers, r.cfg.Scheme.Binary(), newIDBucketer(r.cfg.Scheme, bucketParts), r.staging, r.spills.splitBytes, func(rb *resolvedBucket, release func()) error {
		errMu.Lock()
		werr := writersErr
		errMu.Unlock()
		if werr != nil {
			release()
			return werr
		}
		rb.counts.addTo(u)
		r.m.TotalRows += rb.counts.exported
		rb.hold(int32(len(streams)), release)
		for _, ch := range streams {
			ch <- rb
		}
		return nil
	})
	for _, ch := range streams {
		close(ch)
	}
	writers.Wait()
	return &trees, cmp.Or(err, writersErr)
}

func (r *run) publishedPath() string {
	return PublishedPath(r.cfg.Out, r.cfg.Destination, r.cfg.Rules.AsOf, r.m.RunID)
}

// runDir is the run's directory relative to the delivery root.
func (r *run) runDir() string {
	return delivery.RunDir(r.cfg.Destination, r.cfg.Rules.AsOf, r.m.RunID)
}

// writeEvidence writes the bucket's evidence rows: one per valid holder of
// each exported identifier, the primary holder first.
func writeEvidence(ev *idfile.EvidenceWriter, rb *resolvedBucket) error {
	for _, x := range rb.export {
		for j, hi := range x.holders {
			h := &rb.holders[hi]
			if err := ev.Append(idfile.EvidenceRow{ID: x.eid, UserID: h.userID, EventID: h.eventID, Primary: j == 0}); err != nil {
				return err
			}
		}
	}
	return ev.EndBucket()
}

// finish checks the run and publishes it.
func (r *run) finish() (*Result, error) {
	m := r.m
	res := &Result{Manifest: m, PublishedDir: r.publishedPath(), Stages: r.stages}
	runDir := statedir.Run(r.cfg.State, m.RunID)
	res.EvidencePath = filepath.Join(runDir, "evidence.parquet")
	res.RejectsPath = filepath.Join(runDir, "rejects.csv")
	if ok, err := delivery.Published(context.Background(), r.cfg.Out, r.runDir()); err != nil {
		return nil, err
	} else if ok {
		res.AlreadyPublished = true
		if r.cfg.Plan {
			return res, nil
		}
		return res, r.commitAndPoint(runDir)
	}
	body, err := r.check()
	if err != nil {
		return nil, err
	}
	if r.cfg.Plan {
		res.Planned = true
		return res, nil
	}
	if err := r.publish(res, runDir, body); err != nil {
		return nil, err
	}
	return res, crashPoint("committed")
}

// check decides whether the staged run may be published: its counts
// reconcile, its reject rates and its drop are within bounds, and the leak
// guard passes while the output files are synced. It returns the
// manifest's bytes, staged privately and for publishing.
func (r *run) check() ([]byte, error) {
	m := r.m
	// The output files are synced while the manifest is written and the
	// guard reads them; the record is written once they are durable.
	r.synced = r.later.Start()
	if err := r.rejects.Close(); err != nil {
		return nil, fmt.Errorf("write rejects: %w", err)
	}
	if err := m.Reconcile(); err != nil {
		return nil, err
	}
	body, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, err
	}
	body = append(body, '\n')
	private := filepath.Join(r.staging, "private")
	if err := fsutil.WriteFileDurable(filepath.Join(private, "manifest.json"), body, 0o600); err != nil {
		return nil, err
	}
	if ur, er := m.RejectRates(); ur > r.cfg.MaxRejectRate || er > r.cfg.MaxRejectRate {
		failed := filepath.Join(r.cfg.State, "failed", m.RunID)
		if err := replaceDir(private, failed); err != nil {
			return nil, err
		}
		return nil, fmt.Errorf("%w: malformed rows: %.2f%% of users, %.2f%% of consent events, over --max-reject-rate %.2f%%; nothing published; the rejected rows and their line numbers are in %s",
			errkind.ErrData, 100*ur, 100*er, 100*r.cfg.MaxRejectRate, filepath.Join(failed, "rejects.csv"))
	}
	if !r.cfg.AllowDrop {
		if err := delivery.CheckDrop(m, r.cfg.maxDrop); err != nil {
			return nil, err
		}
	}
	if err := fsutil.WriteFileDurable(filepath.Join(r.staging, "publish", "manifest.json"), body, 0o644); err != nil {
		return nil, err
	}
	removesScheme := r.cfg.Scheme
	if m.Removes != nil {
		removesScheme = hashing.Scheme(m.Removes.Scheme)
	}
	start := time.Now()
	if err := r.guard.Check(filepath.Join(r.staging, "publish"), r.cfg.guardExpect(), removesScheme); err != nil {
		return nil, fmt.Errorf("%w: %w", errkind.ErrData, err)
	}
	err = <-r.synced
	if r.synced = nil; err != nil {
		return nil, fmt.Errorf("sync the output files: %w", err)
	}
	r.stages = append(r.stages, StageTime{"guard", time.Since(start)})
	r.cfg.Log.Debug("stage done", "stage", "guard", "seconds", time.Since(start).Seconds(), "passes", r.guard.Passes())
	return body, nil
}

// publish keeps the run's private files under the state directory with the
// record it prepares, publishes the run with one rename and appends the
// record. A crash anywhere leaves a state the next run completes: before
// the rename nothing is visible; after it, the next run records the
// published run from its prepared record (delivery.Heal).
func (r *run) publish(res *Result, runDir string, manifestBody []byte) error {
	sum := sha256.Sum256(manifestBody)
	rec, err := r.buildRecord(hex.EncodeToString(sum[:]))
	if err != nil {
		return fmt.Errorf("audit record: %w", err)
	}
	recBody, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	private := filepath.Join(r.staging, "private")
	if err := fsutil.WriteFileDurable(filepath.Join(private, "record.json"), recBody, 0o600); err != nil {
		return err
	}
	if err := crashPoint("staged"); err != nil {
		return err
	}
	if err := replaceDir(private, runDir); err != nil {
		return fmt.Errorf("keep evidence: %w", err)
	}
	if err := crashPoint("evidence"); err != nil {
		return err
	}
	already, err := delivery.Publish(context.Background(), r.cfg.Out, r.runDir(), filepath.Join(r.staging, "publish"), r.cfg.dirMode, publishedDigests(rec))
	if errors.Is(err, fs.ErrExist) || errors.Is(err, syscall.ENOTEMPTY) {
		already, err = true, nil
	}
	if err != nil {
		return fmt.Errorf("publish %s: %w", res.PublishedDir, err)
	}
	res.AlreadyPublished = already
	if err := crashPoint("published"); err != nil {
		return err
	}
	return r.commitAndPoint(runDir)
}

// commitAndPoint appends the run's record, then points the destination's
// _LATEST at the head of its delivery chain (this run, unless it is a
// backfill) and removes what interrupted uploads of other runs left.
func (r *run) commitAndPoint(runDir string) error {
	if err := r.commitRecord(runDir); err != nil {
		return err
	}
	if r.cfg.AuditSigner == nil {
		return nil
	}
	if err := pointLatest(&r.cfg); err != nil {
		return fmt.Errorf("run %s is committed, but %s could not be updated (the next run updates it): %w", r.m.RunID, delivery.LatestPointer, err)
	}
	removed, err := delivery.CleanIncomplete(context.Background(), r.cfg.Out, r.cfg.Destination, r.runDir())
	for _, d := range removed {
		r.cfg.Log.Info("removed the objects of an interrupted upload", "dir", d)
	}
	return err
}

// pointLatest points the destination's _LATEST at the head of its delivery
// chain in the audit log.
func pointLatest(cfg *Config) error {
	l, err := delivery.OpenLog(cfg.State)
	if err != nil {
		return err
	}
	return delivery.PointLatestHead(context.Background(), l, cfg.Out, cfg.Destination)
}

// publishedDigests maps each file a run publishes to its SHA-256.
func publishedDigests(rec *audit.Record) map[string]string {
	m := map[string]string{rec.Manifest.Path: rec.Manifest.SHA256}
	for _, f := range slices.Concat(rec.Files, rec.Adds, rec.Removes) {
		m[f.Path] = f.SHA256
	}
	return m
}

// replaceDir moves src to dst, replacing what dst held: the private copy of
// a run is rewritten when the run is.
func replaceDir(src, dst string) error {
	if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
		return err
	}
	if err := os.RemoveAll(dst); err != nil {
		return err
	}
	if err := os.Rename(src, dst); err != nil {
		return err
	}
	return fsutil.SyncDir(filepath.Dir(dst))
}

// rejectWriter records malformed rows, with their line numbers, as CSV:
// table,line,reason,raw. The raw text may hold personal data, so the file is
// owner-only and lives under <state>.
type rejectWriter struct {
	f *os.File
	w *csv.Writer
}

func newRejectWriter(path string) (*rejectWriter, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, err
	}
	w := csv.NewWriter(f)
	w.Write([]string{"table", "line", "reason", "raw"})
	return &rejectWriter{f: f, w: w}, nil
}

func (r *rejectWriter) Write(table string, line int64, reason, raw string) {
	r.w.Write([]string{table, strconv.FormatInt(line, 10), reason, strings.ToValidUTF8(raw, "\uFFFD")})
}

// Close flushes and closes; a second Close is a no-op.
func (r *rejectWriter) Close() error {
	if r.f == nil {
		return nil
	}
	r.w.Flush()
	err := r.w.Error()
	if serr := r.f.Sync(); err == nil {
		err = serr
	}
	if cerr := r.f.Close(); err == nil {
		err = cerr
	}
	r.f = nil
	return err
}
