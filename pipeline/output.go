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
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/parquet-go/parquet-go/compress/gzip"

	"github.com/parquet-go/parquet-go"

	"audiencematch/hashing"
	"audiencematch/pipeline/errkind"
	"audiencematch/pipeline/fsutil"
)

// BinaryIDRow is a row of an hmac-sha256 export: FIXED_LEN_BYTE_ARRAY(32).
type BinaryIDRow struct {
	ID [32]byte `parquet:"id"`
}

// TextIDRow is a row of an export in a text scheme: a UTF-8 string.
type TextIDRow struct {
	ID string `parquet:"id"`
}

// EvidenceRow ties an exported identifier to a user row and the consent
// event that justified it. It is private: kept under <state>, never published.
type EvidenceRow struct {
	ID      string `parquet:"id"` // hex for hmac-sha256, the identifier text otherwise
	UserID  string `parquet:"user_id"`
	EventID string `parquet:"event_id"`
	Primary bool   `parquet:"primary"` // the holder counted as exported; others are duplicate_number
}

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

// PublishedPath is where a run of destination at asOf is published under out.
func PublishedPath(out, destination string, asOf time.Time, runID string) string {
	return filepath.Join(out, destination, "dt="+asOf.UTC().Format(time.DateOnly), "run="+runID)
}

// writeOutputs resolves the join's buckets in identifier order and, for
// each, writes its identifiers to the parts (and the deltas), its holders to
// the private evidence file and both to the record's tree heads: three
// sequential writers, side by side. The consent snapshot is digested
// beside them.
func (r *run) writeOutputs(ctx context.Context) error {
	r.m.RunID = r.runID()
	if _, err := os.Stat(r.publishedPath()); err == nil {
		return nil // finish reports it as already published
	}
	pub := filepath.Join(r.staging, "publish")
	parts, err := newPartWriter(pub, r.pages, &r.cfg, r.cfg.Scheme, r.cfg.KeyID())
	if err != nil {
		return err
	}
	parts.later = &r.later
	deltas, err := r.startDeltas(pub)
	if err != nil {
		return fmt.Errorf("write deltas: %w", err)
	}
	if deltas != nil {
		defer deltas.old.Close() // after a failure: finish reads it to the end
	}
	ev, err := newEvidenceWriter(filepath.Join(r.staging, "private", "evidence.parquet"), r.pages)
	if err != nil {
		return fmt.Errorf("write evidence: %w", err)
	}
	ev.f.later = &r.later
	defer ev.abort()
	var snapErr error
	var snapWG sync.WaitGroup
	snapWG.Go(func() { r.snapshot, snapErr = snapshotOf(r.snapSrc, bucketParts, r.staging, r.spills.splitBytes) })
	var trees treeBuilder
	u := &r.m.Users
	// Three writers take the buckets in order, each at its own pace: the
	// parts (and deltas), the evidence and the trees. A writer that waited
	// for the others at every bucket left a core idle whenever the
	// evidence, the slowest, was the last one working.
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
		writer(ev.add),
		writer(func(rb *resolvedBucket) error { trees.add(rb); return nil }),
	}
	err = eachResolved(ctx, r.idSrc, bucketParts, r.cfg.Workers, r.cfg.Scheme.Binary(), newIDBucketer(r.cfg.Scheme, bucketParts), r.staging, r.spills.splitBytes, func(rb *resolvedBucket, release func()) error {
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
	err = cmp.Or(err, writersErr)
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
	closeWG.Go(func() { r.m.Files, partsErr = parts.Close() })
	if deltas != nil {
		closeWG.Go(func() { deltasErr = deltas.finish() })
	}
	closeWG.Go(func() { evErr = ev.close() })
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

func (r *run) publishedPath() string {
	return PublishedPath(r.cfg.Out, r.cfg.Destination, r.cfg.Rules.AsOf, r.m.RunID)
}

// writerOptions are the Parquet settings of published files. The file's
// bytes depend only on the identifiers and these settings (not on the run
// id), so the same audience from two sources gives identical files.
func writerOptions(cfg *Config, scheme hashing.Scheme, keyID string) []parquet.WriterOption {
	opts := []parquet.WriterOption{
		parquet.Compression(&parquet.Zstd),
		parquet.MaxRowsPerRowGroup(cfg.RowsPerGroup),
		parquet.CreatedBy("audiencematch", cfg.ToolVersion, ""),
		parquet.KeyValueMetadata(metaScheme, string(scheme)),
	}
	if keyID != "" {
		opts = append(opts, parquet.KeyValueMetadata(metaKeyID, keyID))
	}
	return opts
}

// The only key-value metadata published files carry.
const (
	metaScheme = "audiencematch.scheme"
	metaKeyID  = "audiencematch.key_id"
)

// partWriter streams sorted identifiers into part-NNNNN.parquet files of at
// most cfg.RowsPerFile rows. Close always leaves at least one part, empty
// if need be, so that readers find the schema.
type partWriter struct {
	dir    string
	pages  parquet.BufferPool // where a row group's pages wait; nil: memory
	cfg    *Config
	scheme hashing.Scheme
	keyID  string
	files  []OutputFile
	f      *hashingFile
	bin    *parquet.GenericWriter[BinaryIDRow]
	txt    *parquet.GenericWriter[TextIDRow]
	binBuf []BinaryIDRow
	txtBuf []TextIDRow
	txtMem strArena // txtBuf's ids: the caller's strings may not outlive Add
	rows   int64
	later  *syncer // if set, syncs the parts closed (see hashingFile)
}

func newPartWriter(dir string, pages parquet.BufferPool, cfg *Config, scheme hashing.Scheme, keyID string) (*partWriter, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	return &partWriter{dir: dir, pages: pages, cfg: cfg, scheme: scheme, keyID: keyID}, nil
}

func (w *partWriter) open() error {
	name := fmt.Sprintf("part-%05d.parquet", len(w.files))
	f, err := createHashing(filepath.Join(w.dir, name), 0o644)
	if err != nil {
		return err
	}
	f.later = w.later
	w.f, w.rows = f, 0
	w.files = append(w.files, OutputFile{Path: name})
	opts := writerOptions(w.cfg, w.scheme, w.keyID)
	if w.pages != nil {
		opts = append(opts, parquet.ColumnPageBuffers(w.pages))
	}
	if w.scheme.Binary() {
		w.bin = parquet.NewGenericWriter[BinaryIDRow](f, opts...)
	} else {
		w.txt = parquet.NewGenericWriter[TextIDRow](f, opts...)
	}
	return nil
}

// Add appends one identifier (raw bytes for binary schemes).
func (w *partWriter) Add(id string) error {
	if w.f != nil && w.rows == w.cfg.RowsPerFile {
		if err := w.closePart(); err != nil {
			return err
		}
	}
	if w.f == nil {
		if err := w.open(); err != nil {
			return err
		}
	}
	w.rows++
	if w.scheme.Binary() {
		var row BinaryIDRow
		copy(row.ID[:], id)
		w.binBuf = append(w.binBuf, row)
	} else {
		w.txtBuf = append(w.txtBuf, TextIDRow{ID: w.txtMem.keep(id)})
	}
	if len(w.binBuf)+len(w.txtBuf) >= 64<<10 {
		return w.flush()
	}
	return nil
}

func (w *partWriter) flush() error {
	var err error
	if w.bin != nil && len(w.binBuf) > 0 {
		_, err = w.bin.Write(w.binBuf)
	}
	if w.txt != nil && len(w.txtBuf) > 0 {
		_, err = w.txt.Write(w.txtBuf)
	}
	w.binBuf, w.txtBuf = w.binBuf[:0], w.txtBuf[:0]
	w.txtMem.reset()
	return err
}

func (w *partWriter) closePart() error {
	err := w.flush()
	if w.bin != nil {
		err = errors.Join(err, w.bin.Close())
	} else {
		err = errors.Join(err, w.txt.Close())
	}
	err = errors.Join(err, w.f.Close())
	if err != nil {
		return fmt.Errorf("%s: %w", w.files[len(w.files)-1].Path, err)
	}
	last := &w.files[len(w.files)-1]
	last.SHA256, last.Rows, last.Bytes = w.f.Sum(), w.rows, w.f.n
	w.f, w.bin, w.txt = nil, nil, nil
	return nil
}

// Close finishes the last part and returns every file written.
func (w *partWriter) Close() ([]OutputFile, error) {
	if w.f == nil && len(w.files) == 0 {
		if err := w.open(); err != nil {
			return nil, err
		}
	}
	if w.f != nil {
		if err := w.closePart(); err != nil {
			return nil, err
		}
	}
	return w.files, nil
}

// evidenceWriter writes the private evidence file: one row per valid
// holder of each exported identifier.
type evidenceWriter struct {
	f     *hashingFile
	w     *parquet.GenericWriter[EvidenceRow]
	batch []EvidenceRow
	// kept holds the strings of the rows carried from one bucket to the
	// next (see add); spare is the other arena, reset to take the next.
	kept, spare strArena
}

// evidenceChunk is how many rows parquet-go's writer writes before it
// checks whether a page is full (maxRowsPerWrite in its writer.go): where
// pages are cut depends only on how many rows came before as long as every
// Write but the last hands it a multiple of evidenceChunk rows. The file
// must not depend on how the buckets were split (in sub-buckets, or over
// shards), so add writes a bucket's rows in such multiples and carries the
// rest over; the tests that compare runs' evidence byte for byte (split
// buckets, many workers, N shards) would see a change in that.
const evidenceChunk = 64

// evidenceBatch bounds the rows handed to one Write (a multiple of
// evidenceChunk).
var evidenceBatch = 64 << 10

// evidenceCodec is GZIP, Huffman coding only: the evidence is mostly hex
// identifiers and random-looking ids, which LZ matching barely shortens, so
// zstd's default level spent most of the write stage's time searching for
// matches. At 1M users the file is 23.3 MB this way, 23.5 MB with zstd,
// written in a third of the time. Every Parquet reader reads GZIP.
var evidenceCodec = &gzip.Codec{Level: gzip.HuffmanOnly}

func newEvidenceWriter(path string, pages parquet.BufferPool) (*evidenceWriter, error) {
	f, err := createHashing(path, 0o600)
	if err != nil {
		return nil, err
	}
	// Row groups bound what the writer buffers: the whole file otherwise,
	// a third of a gigabyte at 10M users.
	opts := []parquet.WriterOption{parquet.Compression(evidenceCodec), parquet.MaxRowsPerRowGroup(DefaultRowsPerGroup)}
	if pages != nil {
		opts = append(opts, parquet.ColumnPageBuffers(pages))
	}
	w := parquet.NewGenericWriter[EvidenceRow](f, opts...)
	return &evidenceWriter{f: f, w: w, batch: make([]EvidenceRow, 0, evidenceBatch)}, nil
}

// strArena keeps copies of strings until reset: what a batch of rows
// holds until it is written, when the strings' own memory is reused. Its
// blocks are kept for the next batch, so that batch after batch fills the
// same memory.
type strArena struct {
	blocks [][]byte
	i      int // the block being filled
}

func (a *strArena) keep(s string) string {
	for a.i < len(a.blocks) && cap(a.blocks[a.i])-len(a.blocks[a.i]) < len(s) {
		a.i++
	}
	if a.i == len(a.blocks) {
		a.blocks = append(a.blocks, make([]byte, 0, max(1<<20, len(s))))
	}
	b := a.blocks[a.i]
	a.blocks[a.i] = append(b, s...)
	return bytesString(a.blocks[a.i][len(b):])
}

// reset lets the space be reused: no string kept before may be used after.
func (a *strArena) reset() {
	for i := range a.blocks {
		a.blocks[i] = a.blocks[i][:0]
	}
	a.i = 0
}

// add writes the bucket's evidence rows, their strings straight from the
// bucket's memory (Write copies them into its pages), but for the last
// rows past a multiple of evidenceChunk: their strings are copied, as the
// bucket's memory goes back once add returns, and they are written with
// the next bucket's. Copying every row's strings (into an arena, so that
// batches of 64k rows could span buckets) took 0.4 CPU-seconds at 10M
// users.
func (e *evidenceWriter) add(rb *resolvedBucket) error {
	for _, x := range rb.export {
		for j, hi := range x.holders {
			if len(e.batch) == cap(e.batch) {
				if err := e.write(len(e.batch)); err != nil {
					return err
				}
			}
			h := &rb.holders[hi]
			e.batch = append(e.batch, EvidenceRow{ID: x.eid, UserID: h.userID, EventID: h.eventID, Primary: j == 0})
		}
	}
	if err := e.write(len(e.batch) / evidenceChunk * evidenceChunk); err != nil {
		return err
	}
	// What is left (fewer than evidenceChunk rows, from this bucket and
	// perhaps some carried from earlier ones, in kept) is copied into the
	// spare arena, which then becomes kept.
	e.spare.reset()
	for i := range e.batch {
		r := &e.batch[i]
		r.ID, r.UserID, r.EventID = e.spare.keep(r.ID), e.spare.keep(r.UserID), e.spare.keep(r.EventID)
	}
	e.kept, e.spare = e.spare, e.kept
	return nil
}

// write writes the batch's first n rows and keeps the rest.
func (e *evidenceWriter) write(n int) error {
	if n == 0 {
		return nil
	}
	_, err := e.w.Write(e.batch[:n])
	e.batch = append(e.batch[:0], e.batch[n:]...)
	return err
}

// flush writes every row left.
func (e *evidenceWriter) flush() error { return e.write(len(e.batch)) }

func (e *evidenceWriter) close() error {
	err := errors.Join(e.flush(), e.w.Close(), e.f.Close())
	e.f = nil
	return err
}

// abort closes the file after a failure; nothing after close.
func (e *evidenceWriter) abort() {
	if e.f != nil {
		e.f.Close()
	}
}

// finish checks the run and publishes it.
func (r *run) finish() (*Result, error) {
	m := r.m
	res := &Result{Manifest: m, PublishedDir: r.publishedPath(), Stages: r.stages}
	runDir := filepath.Join(r.cfg.State, "runs", m.RunID)
	res.EvidencePath = filepath.Join(runDir, "evidence.parquet")
	res.RejectsPath = filepath.Join(runDir, "rejects.csv")
	if _, err := os.Stat(res.PublishedDir); err == nil {
		res.AlreadyPublished = true
		return res, r.commitRecord(runDir)
	}
	// The output files are synced while the manifest is written and the
	// guard reads them; the record is written once they are durable.
	r.synced = r.later.start()
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
	if err := r.checkDrop(); err != nil {
		return nil, err
	}
	if err := fsutil.WriteFileDurable(filepath.Join(r.staging, "publish", "manifest.json"), body, 0o644); err != nil {
		return nil, err
	}
	removesScheme := r.cfg.Scheme
	if m.Removes != nil {
		removesScheme = hashing.Scheme(m.Removes.Scheme)
	}
	start := time.Now()
	if err := r.guard.Check(filepath.Join(r.staging, "publish"), &r.cfg, removesScheme); err != nil {
		return nil, fmt.Errorf("%w: %w", errkind.ErrData, err)
	}
	err = <-r.synced
	if r.synced = nil; err != nil {
		return nil, fmt.Errorf("sync the output files: %w", err)
	}
	r.stages = append(r.stages, StageTime{"guard", time.Since(start)})
	r.cfg.Log.Debug("stage done", "stage", "guard", "seconds", time.Since(start).Seconds(), "passes", r.guard.passCount)
	sum := sha256.Sum256(body)
	rec, err := r.buildRecord(hex.EncodeToString(sum[:]))
	if err != nil {
		return nil, fmt.Errorf("audit record: %w", err)
	}
	recBody, err := json.Marshal(rec)
	if err != nil {
		return nil, err
	}
	if err := fsutil.WriteFileDurable(filepath.Join(private, "record.json"), recBody, 0o600); err != nil {
		return nil, err
	}
	if err := crashPoint("staged"); err != nil {
		return nil, err
	}
	if err := replaceDir(private, runDir); err != nil {
		return nil, fmt.Errorf("keep evidence: %w", err)
	}
	if err := crashPoint("evidence"); err != nil {
		return nil, err
	}
	if err := fsutil.PublishDir(filepath.Join(r.staging, "publish"), res.PublishedDir); err != nil {
		if errors.Is(err, fs.ErrExist) || errors.Is(err, syscall.ENOTEMPTY) {
			res.AlreadyPublished = true
			return res, r.commitRecord(runDir)
		}
		return nil, fmt.Errorf("publish %q: %w", res.PublishedDir, err)
	}
	if err := crashPoint("published"); err != nil {
		return nil, err
	}
	if err := r.commitRecord(runDir); err != nil {
		return nil, err
	}
	return res, crashPoint("committed")
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
