package source

import (
	"audiencematch/pipeline/errkind"
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
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

// FileSource reads the tables from CSV or Parquet files.
type FileSource struct{ Users, Consent string }

func (s FileSource) path(table string) string {
	if table == TableUsers {
		return s.Users
	}
	return s.Consent
}

// Open opens the table's file.
func (s FileSource) Open(_ context.Context, table string, columns []string) (RowReader, error) {
	return OpenTable(s.path(table), columns)
}

// Name is the file's base name.
func (s FileSource) Name(table string) string { return filepath.Base(s.path(table)) }

// Close does nothing: each table is closed after it is read.
func (FileSource) Close() error { return nil }

// InputSize is the size of a file source's two files. It is not known
// (false) for any other source, nor when a file cannot be read (the run
// reports that).
func InputSize(src Source) (int64, bool) {
	fs, ok := src.(FileSource)
	if !ok {
		return 0, false
	}
	n := int64(0)
	for _, p := range []string{fs.Users, fs.Consent} {
		st, err := os.Stat(p)
		if err != nil {
			return 0, false
		}
		n += st.Size()
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
	if !st.Mode().IsRegular() {
		rc = struct {
			io.Reader
			io.Closer
		}{br, f}
	} else if _, err := f.Seek(0, io.SeekStart); err != nil {
		f.Close()
		return nil, fmt.Errorf("open %q: %w: %w", path, errkind.ErrNoInput, err)
	}
	r, err := newCSVTable(rc, columns)
	if err != nil {
		rc.Close()
		return nil, fmt.Errorf("%q: %w", path, err)
	}
	return r, nil
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
