package idfile

import (
	"audiencematch/hashing"
	"audiencematch/internal/fsutil"
	"audiencematch/pipeline/manifest"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/parquet-go/parquet-go"
)

// Layout is how published parts are cut: rows per file and per row group,
// and the tool version their footers name.
type Layout struct {
	RowsPerFile, RowsPerGroup int64
	ToolVersion               string
}

// Output sizing defaults: a row group of 1Mi 32-byte ids is 32 MiB, a size
// every reader handles well.
const (
	DefaultRowsPerFile  = 8 << 20
	DefaultRowsPerGroup = 1 << 20
)

// WriterOptions are the Parquet settings of published files. The file's
// bytes depend only on the identifiers and these settings (not on the run
// id), so the same audience from two sources gives identical files.
func WriterOptions(l Layout, scheme hashing.Scheme, keyID string) []parquet.WriterOption {
	opts := []parquet.WriterOption{
		parquet.Compression(&parquet.Zstd),
		parquet.MaxRowsPerRowGroup(l.RowsPerGroup),
		parquet.CreatedBy("audiencematch", l.ToolVersion, ""),
		parquet.KeyValueMetadata(MetaScheme, string(scheme)),
	}
	if keyID != "" {
		opts = append(opts, parquet.KeyValueMetadata(MetaKeyID, keyID))
	}
	return opts
}

// The only key-value metadata published files carry.
const (
	MetaScheme = "audiencematch.scheme"
	MetaKeyID  = "audiencematch.key_id"
)

// PartWriter streams sorted identifiers into part-NNNNN.parquet files of at
// most cfg.RowsPerFile rows. Close always leaves at least one part, empty
// if need be, so that readers find the schema.
type PartWriter struct {
	dir    string
	pages  parquet.BufferPool // where a row group's pages wait; nil: memory
	layout Layout
	scheme hashing.Scheme
	keyID  string
	files  []manifest.OutputFile
	f      *fsutil.HashingFile
	bin    *parquet.GenericWriter[BinaryIDRow]
	wide   *parquet.GenericWriter[WideIDRow]
	txt    *parquet.GenericWriter[TextIDRow]
	binBuf []BinaryIDRow
	wBuf   []WideIDRow
	txtBuf []TextIDRow
	txtMem strArena // txtBuf's ids: the caller's strings may not outlive Add
	rows   int64
	// Later, if set, syncs the parts once closed (see fsutil.HashingFile).
	Later *fsutil.Syncer
}

// NewPartWriter writes parts of scheme's identifiers into dir, created if
// need be; pages, if not nil, holds a row group's pages until it is written.
func NewPartWriter(dir string, pages parquet.BufferPool, l Layout, scheme hashing.Scheme, keyID string) (*PartWriter, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	return &PartWriter{dir: dir, pages: pages, layout: l, scheme: scheme, keyID: keyID}, nil
}

func (w *PartWriter) open() error {
	name := fmt.Sprintf("part-%05d.parquet", len(w.files))
	f, err := fsutil.CreateHashing(filepath.Join(w.dir, name), 0o644)
	if err != nil {
		return err
	}
	f.Later = w.Later
	w.f, w.rows = f, 0
	w.files = append(w.files, manifest.OutputFile{Path: name})
	opts := WriterOptions(w.layout, w.scheme, w.keyID)
	if w.pages != nil {
		opts = append(opts, parquet.ColumnPageBuffers(w.pages))
	}
	switch {
	case w.scheme.Binary() && w.scheme.IDLen() == len(WideIDRow{}.ID):
		w.wide = parquet.NewGenericWriter[WideIDRow](f, opts...)
	case w.scheme.Binary():
		w.bin = parquet.NewGenericWriter[BinaryIDRow](f, opts...)
	default:
		w.txt = parquet.NewGenericWriter[TextIDRow](f, opts...)
	}
	return nil
}

// Add appends one identifier (raw bytes for binary schemes).
func (w *PartWriter) Add(id string) error {
	if w.f != nil && w.rows == w.layout.RowsPerFile {
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
	switch {
	case w.wide != nil:
		var row WideIDRow
		copy(row.ID[:], id)
		w.wBuf = append(w.wBuf, row)
	case w.bin != nil:
		var row BinaryIDRow
		copy(row.ID[:], id)
		w.binBuf = append(w.binBuf, row)
	default:
		w.txtBuf = append(w.txtBuf, TextIDRow{ID: w.txtMem.keep(id)})
	}
	if len(w.binBuf)+len(w.wBuf)+len(w.txtBuf) >= 64<<10 {
		return w.flush()
	}
	return nil
}

func (w *PartWriter) flush() error {
	var err error
	if w.bin != nil && len(w.binBuf) > 0 {
		_, err = w.bin.Write(w.binBuf)
	}
	if w.wide != nil && len(w.wBuf) > 0 {
		_, err = w.wide.Write(w.wBuf)
	}
	if w.txt != nil && len(w.txtBuf) > 0 {
		_, err = w.txt.Write(w.txtBuf)
	}
	w.binBuf, w.wBuf, w.txtBuf = w.binBuf[:0], w.wBuf[:0], w.txtBuf[:0]
	w.txtMem.reset()
	return err
}

func (w *PartWriter) closePart() error {
	err := w.flush()
	switch {
	case w.bin != nil:
		err = errors.Join(err, w.bin.Close())
	case w.wide != nil:
		err = errors.Join(err, w.wide.Close())
	default:
		err = errors.Join(err, w.txt.Close())
	}
	err = errors.Join(err, w.f.Close())
	if err != nil {
		return fmt.Errorf("%s: %w", w.files[len(w.files)-1].Path, err)
	}
	last := &w.files[len(w.files)-1]
	last.SHA256, last.Rows, last.Bytes = w.f.Sum(), w.rows, w.f.Size()
	w.f, w.bin, w.wide, w.txt = nil, nil, nil, nil
	return nil
}

// Close finishes the last part and returns every file written.
func (w *PartWriter) Close() ([]manifest.OutputFile, error) {
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
