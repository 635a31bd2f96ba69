package source

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"

	"audiencematch/internal/objstore"
	"audiencematch/pipeline/errkind"
)

// Row is one data row of an input table.
type Row struct {
	// Line is the 1-based physical line of a CSV file's row, the 1-based
	// record number of a COPY stream's (NewCopyReader; the header is 1) or
	// the 1-based row number in a Parquet file.
	Line int64
	// Fields holds the requested columns, in the order they were asked for.
	// The slice is reused by the next call to Next.
	Fields []string
	// Reject, when not empty, says why the row is malformed; Raw holds the
	// row's text as read, for the reject file, and Fields those of the
	// requested columns that can still be read ("" for the others), or nil
	// when none can: MATCHING.md section 2's amendment 1 needs a malformed
	// consent row's user_id and purpose whenever they can be read.
	Reject string
	Raw    string
}

// RowReader streams the rows of one table, in input order.
type RowReader interface {
	// Next returns the next row, or nil and io.EOF after the last; any
	// other error ends the table (the input cannot be read), and comes
	// without a row. A malformed row is no error: it is a Row with Reject
	// set. The returned Row and its Fields slice are owned by the reader
	// and valid until the next call. So are the strings in them, when the
	// reader is also a BatchReader; any other reader keeps its strings
	// valid past the next call (as strings Go allocates are), since
	// Batches holds many rows' strings at once.
	Next() (*Row, error)
	// Digest is the hex SHA-256 of the whole input, as read (a file's
	// bytes, a COPY stream's); it is complete once Next, or NextBatch of
	// the reader's Batches, has returned io.EOF.
	Digest() string
	// Close releases the input. It may come before the end, which stops
	// the reading.
	Close() error
}

// Source opens a run's two input tables. Open is called once per table,
// consent_events first; the RowReader it returns streams that table, with
// the columns asked for (a missing one is an error, an extra one
// ignored).
type Source interface {
	Open(ctx context.Context, table string, columns []string) (RowReader, error)
	// Name is what the manifest records for a table: a file's base name, or
	// a description that holds no credentials.
	Name(table string) string
	// Close releases what the Source holds across tables (a database
	// transaction); it comes after the tables' readers are closed.
	Close() error
}

// Table names, as the manifest and the reject file use them.
const (
	TableUsers   = "users"
	TableConsent = "consent_events"
)

// FileSource reads the tables from files: each a file, a directory of
// parts, a glob, "-" for standard input, or an object-store URL (see the
// package doc, "Inputs").
type FileSource struct {
	Users, Consent string
	// TempDir is where a Parquet object is copied to be read ("": the
	// system's temporary directory).
	TempDir string
}

func (s FileSource) path(table string) string {
	if table == TableUsers {
		return s.Users
	}
	return s.Consent
}

// Open opens the table's input.
func (s FileSource) Open(ctx context.Context, table string, columns []string) (RowReader, error) {
	if s.Users == "-" && s.Consent == "-" {
		return nil, fmt.Errorf("%w: --users and --consent are both \"-\": standard input holds one table; give the other as a file", errkind.ErrUsage)
	}
	return openInput(ctx, s.path(table), columns, s.TempDir)
}

// Name is the input's base name: a file's or a directory's, a glob's last
// element, "-", or an object URL without its query.
func (s FileSource) Name(table string) string {
	p := s.path(table)
	if p == "-" {
		return p
	}
	if objstore.IsURL(p) {
		return objstore.Redact(p)
	}
	if lp, ok := objstore.LocalPath(p); ok {
		p = lp
	}
	return filepath.Base(p)
}

// Close does nothing: each table is closed after it is read.
func (FileSource) Close() error { return nil }

// InputSize is the size of a file source's inputs, every part counted.
// It is not known (false) for any other source, for standard input and
// objects, nor when a file cannot be read (the run reports that).
func InputSize(src Source) (int64, bool) {
	fs, ok := src.(FileSource)
	if !ok {
		return 0, false
	}
	n := int64(0)
	for _, p := range []string{fs.Users, fs.Consent} {
		if p == "-" || objstore.IsURL(p) {
			return 0, false
		}
		in, err := resolveInput(context.Background(), p)
		if err != nil {
			return 0, false
		}
		for _, part := range in.parts {
			if part.size < 0 {
				return 0, false
			}
			n += part.size
		}
	}
	return n, true
}

// NewCSVReader streams CSV from r (with its header row) as a RowReader,
// with the rules of a CSV file: one line, one row. PostgreSQL's COPY
// output, whose values may hold line breaks, is read with NewCopyReader.
func NewCSVReader(r io.ReadCloser, columns []string) (RowReader, error) {
	return newCSVTable(r, columns)
}

// Table columns of MATCHING.md section 1, in the order readers return them.
var (
	UserColumns  = []string{"user_id", "phone", "country"}
	EventColumns = []string{"event_id", "user_id", "purpose", "action", "occurred_at", "policy_version", "source"}
)

// Format is an input file format.
type Format string

// Input formats.
const (
	FormatCSV     Format = "csv"
	FormatParquet Format = "parquet"
)

// DetectFormat tells CSV from Parquet by content (Parquet files begin with
// "PAR1"), falling back to the extension for empty files.
func DetectFormat(path string) (Format, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("open %q: %w: %w", path, errkind.ErrNoInput, err)
	}
	defer f.Close()
	head := make([]byte, 4)
	n, _ := io.ReadFull(f, head)
	return formatOf(path, head[:n])
}

func formatOf(path string, head []byte) (Format, error) {
	if bytes.Equal(head, []byte("PAR1")) {
		return FormatParquet, nil
	}
	if strings.EqualFold(filepath.Ext(path), ".parquet") {
		return "", fmt.Errorf("%q has a .parquet name but is not a Parquet file: %w", path, errkind.ErrData)
	}
	return FormatCSV, nil
}

// OpenTable opens a CSV or Parquet table and checks that it has columns. A
// missing column is an errkind.ErrConfig error that names it. The file is opened
// once and its format told from a peek at its first bytes, so a pipe or FIFO
// (--users <(zcat users.csv.gz)) loses nothing to the detection; a Parquet
// table must be a regular file, since Parquet is read from its footer.
func OpenTable(path string, columns []string) (RowReader, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open %q: %w: %w", path, errkind.ErrNoInput, err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("open %q: %w: %w", path, errkind.ErrNoInput, err)
	}
	if st.IsDir() {
		f.Close()
		return nil, fmt.Errorf("%w: %q is a directory: give the table's file", errkind.ErrNoInput, path)
	}
	br := bufio.NewReaderSize(f, 1<<16)
	head, _ := br.Peek(4)
	format, err := formatOf(path, head)
	if err != nil {
		f.Close()
		return nil, err
	}
	if format == FormatParquet {
		if !st.Mode().IsRegular() {
			f.Close()
			return nil, fmt.Errorf("%w: %q is a Parquet stream from a pipe: Parquet is read from its footer, so write it to a file and give that", errkind.ErrNoInput, path)
		}
		f.Close()
		return openParquetTable(path, columns, false)
	}
	var rc io.ReadCloser = f
	if !st.Mode().IsRegular() || compression(head) != "" {
		rc = struct {
			io.Reader
			io.Closer
		}{br, f}
	} else if _, err := f.Seek(0, io.SeekStart); err != nil {
		f.Close()
		return nil, fmt.Errorf("open %q: %w: %w", path, errkind.ErrNoInput, err)
	}
	r, _, err := openStream(fmt.Sprintf("%q", path), rc, columns)
	return r, err
}

// Compressions of CSV inputs, told by their magic bytes (RFC 1952 section
// 2.3.1, RFC 8878 section 3.1.1).
const (
	gzipMagic = "\x1f\x8b"
	zstdMagic = "\x28\xb5\x2f\xfd"
)

// compression names the compression whose magic bytes head begins with,
// or is "".
func compression(head []byte) string {
	switch {
	case bytes.HasPrefix(head, []byte(gzipMagic)):
		return "gzip"
	case bytes.HasPrefix(head, []byte(zstdMagic)):
		return "zstd"
	}
	return ""
}

// openStream reads the CSV table of a stream (a pipe, standard input, an
// object), gzip- or zstd-compressed or not, told by its first bytes. name
// is what errors call it. A Parquet stream is refused: Parquet is read from
// its footer.
func openStream(name string, rc io.ReadCloser, columns []string) (RowReader, Format, error) {
	br := bufio.NewReaderSize(rc, 1<<16)
	head, _ := br.Peek(4)
	if bytes.Equal(head, []byte("PAR1")) {
		rc.Close()
		return nil, "", fmt.Errorf("%w: %s is a Parquet stream: Parquet is read from its footer, so write it to a file and give that", errkind.ErrNoInput, name)
	}
	var r io.Reader = br
	closer := io.Closer(rc)
	switch compression(head) {
	case "gzip":
		zr, err := gzip.NewReader(br)
		if err != nil {
			rc.Close()
			return nil, "", fmt.Errorf("%w: %s: not a readable gzip stream: %w", errkind.ErrData, name, err)
		}
		r, closer = corrupt{zr, "gzip"}, closers{zr, rc}
	case "zstd":
		zr, err := zstd.NewReader(br)
		if err != nil {
			rc.Close()
			return nil, "", fmt.Errorf("%w: %s: not a readable zstd stream: %w", errkind.ErrData, name, err)
		}
		zc := zr.IOReadCloser()
		r, closer = corrupt{zc, "zstd"}, closers{zc, rc}
	}
	t, err := newCSVTable(struct {
		io.Reader
		io.Closer
	}{r, closer}, columns)
	if err != nil {
		closer.Close()
		return nil, "", fmt.Errorf("%s: %w", name, err)
	}
	return t, FormatCSV, nil
}

// corrupt marks a decompressor's errors as bad data: a stream that is
// cut short or damaged (the decompressor's messages hold offsets, never
// the data).
type corrupt struct {
	r    io.Reader
	what string
}

func (c corrupt) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if err != nil && err != io.EOF {
		err = fmt.Errorf("%w: the %s stream is corrupt or cut short (%v): compress the file again", errkind.ErrData, c.what, err)
	}
	return n, err
}

// closers closes each in turn.
type closers []io.Closer

func (cs closers) Close() error {
	var err error
	for _, c := range cs {
		err = errors.Join(err, c.Close())
	}
	return err
}

// columnIndex maps each wanted column to its position in header.
//
// Its errors name wanted columns and positions only, never another cell of
// the header: a file without a header row (or compressed, or not the table
// meant) has a user id and a phone number there, and errors reach logs and
// the audit log.
func columnIndex(header, columns []string) ([]int, error) {
	wanted := make(map[string]bool, len(columns))
	for _, c := range columns {
		wanted[c] = true
	}
	pos := make(map[string]int, len(header))
	for i, h := range header {
		if j, dup := pos[h]; dup {
			if wanted[h] {
				return nil, fmt.Errorf("%w: column %q appears twice in the header (columns %d and %d)", errkind.ErrConfig, h, j+1, i+1)
			}
			return nil, fmt.Errorf("%w: columns %d and %d of the header have the same name", errkind.ErrConfig, j+1, i+1)
		}
		pos[h] = i
	}
	idx := make([]int, len(columns))
	var missing, hints []string
	for i, c := range columns {
		p, ok := pos[c]
		if !ok {
			missing = append(missing, c)
			for j, h := range header {
				if strings.EqualFold(strings.TrimSpace(h), c) {
					hints = append(hints, fmt.Sprintf("column %d would be %s but for case or white space", j+1, c))
				}
			}
		}
		idx[i] = p
	}
	if len(missing) > 0 {
		hint := "is the file compressed, or without a header row?"
		if len(hints) > 0 {
			hint = strings.Join(hints, "; ") + ": names are exact"
		}
		return nil, fmt.Errorf("%w: missing column(s) %s: the header row's %d column(s) must include %s (MATCHING.md section 1); %s",
			errkind.ErrConfig, strings.Join(missing, ", "), len(header), strings.Join(columns, ", "), hint)
	}
	return idx, nil
}
