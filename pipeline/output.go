package pipeline

import (
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
	"syscall"
	"time"

	"github.com/parquet-go/parquet-go"

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

func (r *run) writeOutputs(ctx context.Context) error {
	r.m.RunID = r.runID()
	if _, err := os.Stat(r.publishedPath()); err == nil {
		return nil // finish reports it as already published
	}
	pub := filepath.Join(r.staging, "publish")
	ids := make([]string, len(r.export))
	for i := range r.export {
		ids[i] = r.export[i].id
	}
	files, err := writeParts(pub, &r.cfg, ids)
	if err != nil {
		return fmt.Errorf("write output: %w", err)
	}
	r.m.Files = files
	r.m.TotalRows = int64(len(ids))
	if err := r.writeEvidence(filepath.Join(r.staging, "private", "evidence.parquet")); err != nil {
		return fmt.Errorf("write evidence: %w", err)
	}
	return ctx.Err()
}

func (r *run) publishedPath() string {
	return PublishedPath(r.cfg.Out, r.cfg.Destination, r.cfg.Rules.AsOf, r.m.RunID)
}

// writerOptions are the Parquet settings of published files. The file's
// bytes depend only on the identifiers and these settings (not on the run
// id), so the same audience from two sources gives identical files.
func writerOptions(cfg *Config) []parquet.WriterOption {
	return []parquet.WriterOption{
		parquet.Compression(&parquet.Zstd),
		parquet.MaxRowsPerRowGroup(cfg.RowsPerGroup),
		parquet.CreatedBy("audiencematch", cfg.ToolVersion, ""),
		parquet.KeyValueMetadata("audiencematch.scheme", string(cfg.Scheme)),
		parquet.KeyValueMetadata("audiencematch.key_id", cfg.KeyID()),
	}
}

// writeParts writes sorted identifiers as part-NNNNN.parquet files in dir.
// An empty export still gets one (empty) part, so that readers find the schema.
func writeParts(dir string, cfg *Config, ids []string) ([]OutputFile, error) {
	var files []OutputFile
	for part := 0; part == 0 || int64(part)*cfg.RowsPerFile < int64(len(ids)); part++ {
		lo := int64(part) * cfg.RowsPerFile
		hi := min(int64(len(ids)), lo+cfg.RowsPerFile)
		name := fmt.Sprintf("part-%05d.parquet", part)
		f, err := createHashing(filepath.Join(dir, name), 0o644)
		if err != nil {
			return nil, err
		}
		if cfg.Scheme.Binary() {
			err = writeRows(f, ids[lo:hi], writerOptions(cfg), func(s string) BinaryIDRow {
				var row BinaryIDRow
				copy(row.ID[:], s)
				return row
			})
		} else {
			err = writeRows(f, ids[lo:hi], writerOptions(cfg), func(s string) TextIDRow { return TextIDRow{ID: s} })
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		files = append(files, OutputFile{Path: name, SHA256: f.Sum(), Rows: hi - lo, Bytes: f.n})
	}
	return files, nil
}

func writeRows[T any](f *hashingFile, ids []string, opts []parquet.WriterOption, conv func(string) T) error {
	w := parquet.NewGenericWriter[T](f, opts...)
	batch := make([]T, 0, 64<<10)
	for i, id := range ids {
		batch = append(batch, conv(id))
		if len(batch) == cap(batch) || i == len(ids)-1 {
			if _, err := w.Write(batch); err != nil {
				return err
			}
			batch = batch[:0]
		}
	}
	return w.Close()
}

func (r *run) writeEvidence(path string) error {
	f, err := createHashing(path, 0o600)
	if err != nil {
		return err
	}
	w := parquet.NewGenericWriter[EvidenceRow](f, parquet.Compression(&parquet.Zstd))
	batch := make([]EvidenceRow, 0, 64<<10)
	for _, e := range r.export {
		id := e.id
		if r.cfg.Scheme.Binary() {
			id = hex.EncodeToString([]byte(e.id))
		}
		for j, hi := range e.holders {
			h := &r.holders[hi]
			batch = append(batch, EvidenceRow{ID: id, UserID: h.userID, EventID: h.eventID, Primary: j == 0})
			if len(batch) == cap(batch) {
				if _, err := w.Write(batch); err != nil {
					f.Close()
					return err
				}
				batch = batch[:0]
			}
		}
	}
	if _, err := w.Write(batch); err != nil {
		f.Close()
		return err
	}
	if err := w.Close(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
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
			ErrData, 100*ur, 100*er, 100*r.cfg.MaxRejectRate, filepath.Join(failed, "rejects.csv"))
	}
	if err := fsutil.WriteFileDurable(filepath.Join(r.staging, "publish", "manifest.json"), body, 0o644); err != nil {
		return nil, err
	}
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
