package idfile

import (
	"audiencematch/hashing"
	"audiencematch/internal/fsutil"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"unsafe"

	"github.com/parquet-go/parquet-go"
	"github.com/parquet-go/parquet-go/compress/gzip"
)

// EvidenceWriter writes the private evidence file: one row per valid
// holder of each exported identifier.
type EvidenceWriter struct {
	f     *fsutil.HashingFile
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
// matches, for a file hardly smaller (docs/PERFORMANCE.md). Every Parquet
// reader reads GZIP.
var evidenceCodec = &gzip.Codec{Level: gzip.HuffmanOnly}

// NewEvidenceWriter creates the evidence file at path, owner-only; pages,
// if not nil, holds a row group's pages until it is written; later, if not
// nil, syncs the file once closed.
func NewEvidenceWriter(path string, pages parquet.BufferPool, later *fsutil.Syncer) (*EvidenceWriter, error) {
	f, err := fsutil.CreateHashing(path, 0o600)
	if err != nil {
		return nil, err
	}
	f.Later = later
	// Row groups bound what the writer buffers: the whole file otherwise.
	opts := []parquet.WriterOption{parquet.Compression(evidenceCodec), parquet.MaxRowsPerRowGroup(DefaultRowsPerGroup)}
	if pages != nil {
		opts = append(opts, parquet.ColumnPageBuffers(pages))
	}
	w := parquet.NewGenericWriter[EvidenceRow](f, opts...)
	return &EvidenceWriter{f: f, w: w, batch: make([]EvidenceRow, 0, evidenceBatch)}, nil
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

// Append adds one row. Its strings are written from the caller's memory,
// which must stay as it is until EndBucket (Write copies them into its
// pages): copying every row's strings cost more than writing them.
func (e *EvidenceWriter) Append(r EvidenceRow) error {
	if len(e.batch) == cap(e.batch) {
		if err := e.write(len(e.batch)); err != nil {
			return err
		}
	}
	e.batch = append(e.batch, r)
	return nil
}

// EndBucket writes the rows appended since the last EndBucket but for the
// last ones past a multiple of evidenceChunk, whose strings it copies (the
// caller's memory may go once it returns): they are written with the next
// bucket's rows, so that where pages are cut does not depend on how the
// rows were split in buckets.
func (e *EvidenceWriter) EndBucket() error {
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
func (e *EvidenceWriter) write(n int) error {
	if n == 0 {
		return nil
	}
	_, err := e.w.Write(e.batch[:n])
	e.batch = append(e.batch[:0], e.batch[n:]...)
	return err
}

// flush writes every row left.
func (e *EvidenceWriter) flush() error { return e.write(len(e.batch)) }

// Close writes what is left and closes the file.
func (e *EvidenceWriter) Close() error {
	err := errors.Join(e.flush(), e.w.Close(), e.f.Close())
	e.f = nil
	return err
}

// Abort closes the file after a failure; nothing after Close.
func (e *EvidenceWriter) Abort() {
	if e.f != nil {
		e.f.Close()
	}
}

// EvidenceReader streams a run's evidence rows in file order, a batch at
// a time, so that reading them does not hold the run in memory (as
// parquet.ReadFile would).
type EvidenceReader struct {
	f    *os.File
	rd   *parquet.GenericReader[EvidenceRow]
	rows []EvidenceRow
	i, n int
	eof  bool
}

func OpenEvidence(path string) (*EvidenceReader, error) {
	f, pf, err := openParquet(path)
	if err != nil {
		return nil, err
	}
	return &EvidenceReader{f: f, rd: parquet.NewGenericReader[EvidenceRow](pf), rows: make([]EvidenceRow, 1024)}, nil
}

// openParquet opens a Parquet file and reads its footer; the caller closes
// the file.
func openParquet(path string) (*os.File, *parquet.File, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, err
	}
	st, err := f.Stat()
	if err == nil {
		var pf *parquet.File
		if pf, err = parquet.OpenFile(f, st.Size()); err == nil {
			return f, pf, nil
		}
		err = fmt.Errorf("%s: %w", path, err)
	}
	f.Close()
	return nil, nil, err
}

// Next returns the next row, valid until the next call, or io.EOF after
// the last.
func (er *EvidenceReader) Next() (*EvidenceRow, error) {
	for er.i == er.n {
		if er.eof {
			return nil, io.EOF
		}
		n, err := er.rd.Read(er.rows)
		if err == io.EOF {
			er.eof = true
		} else if err != nil {
			return nil, err
		}
		er.i, er.n = 0, n
	}
	er.i++
	return &er.rows[er.i-1], nil
}

// Close closes the file; a second Close is a no-op.
func (er *EvidenceReader) Close() error {
	if er.f == nil {
		return nil
	}
	err := errors.Join(er.rd.Close(), er.f.Close())
	er.f = nil
	return err
}

func bytesString(b []byte) string { return unsafe.String(unsafe.SliceData(b), len(b)) }

// EvidenceID is an identifier as evidence rows name it: hex for a binary
// scheme, the identifier's text otherwise.
func EvidenceID(binary bool, id string) string {
	if binary {
		return hex.EncodeToString([]byte(id))
	}
	return id
}

// LeafOfEvidenceID is the inverse of EvidenceID: the identifier's bytes as
// a leaf of the run's identifier tree; nil if eid is not valid hex in a
// binary scheme.
func LeafOfEvidenceID(scheme hashing.Scheme, eid string) []byte {
	if scheme.Binary() {
		b, err := hex.DecodeString(eid)
		if err != nil {
			return nil
		}
		return b
	}
	return []byte(eid)
}
