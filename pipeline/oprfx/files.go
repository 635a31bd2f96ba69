package oprfx

import (
	"bufio"
	"bytes"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"reflect"
	"strings"

	"github.com/parquet-go/parquet-go"

	"audiencematch/internal/fsutil"
	"audiencematch/pipeline/errkind"
	"audiencematch/pipeline/source"
)

// Column names of the exchange's files.
const (
	ColBlinded   = "blinded"
	ColEvaluated = "evaluated"
	ColRow       = "row"
	ColBlind     = "blind"
	ColID        = "id"
	ColPhone     = "phone"
	ColCountry   = "country"
)

// Key-value metadata of the secrets file.
const (
	MetaNumbersSHA256 = "audiencematch.oprf.numbers_sha256"
	MetaRequestSHA256 = "audiencematch.oprf.request_sha256"
	MetaDestination   = "audiencematch.oprf.destination"
)

type requestRow struct {
	Blinded [32]byte `parquet:"blinded"`
}

type responseRow struct {
	Evaluated [32]byte `parquet:"evaluated"`
}

type secretRow struct {
	Row   int64    `parquet:"row"`
	Blind [32]byte `parquet:"blind"`
}

// writeParquet writes rows to a new file at path, of mode perm, durably:
// to a temp file beside it, synced, then renamed. It never replaces a file
// of mode 0600 (secrets).
func writeParquet[T any](path string, perm os.FileMode, rows []T, opts ...parquet.WriterOption) error {
	return writeFile(path, perm, func(w io.Writer) error {
		pw := parquet.NewGenericWriter[T](w, append([]parquet.WriterOption{parquet.Compression(&parquet.Zstd)}, opts...)...)
		for len(rows) > 0 {
			n := min(len(rows), 64<<10)
			if _, err := pw.Write(rows[:n]); err != nil {
				return err
			}
			rows = rows[n:]
		}
		return pw.Close()
	})
}

// writeFile writes a file durably through fn (fsutil.WriteDurable). A
// file of a secret (mode without group or other bits) is never replaced: a
// blinds file replaced before its response is finalized loses that
// request's answers.
func writeFile(path string, perm os.FileMode, fn func(io.Writer) error) error {
	if perm&0o077 != 0 {
		return fsutil.WriteDurable(path, perm, fn)
	}
	err := fsutil.CreateDurable(path, perm, fn)
	if errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("%w: %s exists; refusing to overwrite it", errkind.ErrUsage, path)
	}
	return err
}

// readElements reads the one column name of FIXED_LEN_BYTE_ARRAY(32) of a
// request or response, refusing any other shape and any null.
func readElements(path, name string) ([][32]byte, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w: %s: %w", errkind.ErrNoInput, path, err)
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	pf, err := parquet.OpenFile(f, st.Size())
	if err != nil {
		return nil, fmt.Errorf("%w: %s is not a readable Parquet file: %v", errkind.ErrData, path, err)
	}
	cols := pf.Schema().Fields()
	if len(cols) != 1 || cols[0].Name() != name || !cols[0].Leaf() || cols[0].Repeated() ||
		cols[0].Type().Kind() != parquet.FixedLenByteArray || cols[0].Type().Length() != 32 {
		return nil, fmt.Errorf("%w: %s: want exactly one column %q of FIXED_LEN_BYTE_ARRAY(32) (RFC 9497 SerializeElement)", errkind.ErrData, path, name)
	}
	out := make([][32]byte, 0, pf.NumRows())
	buf := make([]parquet.Row, 1024)
	for _, rg := range pf.RowGroups() {
		rows := rg.Rows()
		for {
			n, err := rows.ReadRows(buf)
			for _, r := range buf[:n] {
				if len(r) != 1 || r[0].IsNull() || len(r[0].ByteArray()) != 32 {
					rows.Close()
					return nil, fmt.Errorf("%w: %s: row %d: a null or missing element", errkind.ErrData, path, len(out)+1)
				}
				out = append(out, [32]byte(r[0].ByteArray()))
			}
			if err == io.EOF {
				break
			}
			if err != nil {
				rows.Close()
				return nil, fmt.Errorf("%w: %s: %v", errkind.ErrData, path, err)
			}
		}
		rows.Close()
	}
	return out, nil
}

// table is a platform file read whole as text: its column names in order,
// and its rows.
type table struct {
	columns []string
	rows    [][]string
	digest  string
}

func (t *table) index(name string) int {
	for i, c := range t.columns {
		if c == name {
			return i
		}
	}
	return -1
}

// readTable reads a CSV or Parquet file (package source's rules: a Parquet
// column must be flat text, integer or timestamp) with every column as
// text.
func readTable(path string) (*table, error) {
	cols, err := columnsOf(path)
	if err != nil {
		return nil, err
	}
	rr, err := source.OpenTable(path, cols)
	if err != nil {
		return nil, err
	}
	defer rr.Close()
	t := &table{columns: cols}
	for {
		r, err := rr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, err
		}
		if r.Reject != "" {
			return nil, fmt.Errorf("%w: %s line %d: %s; fix the row (a malformed row is never guessed at)", errkind.ErrData, path, r.Line, r.Reject)
		}
		t.rows = append(t.rows, append([]string(nil), r.Fields...))
	}
	t.digest = rr.Digest()
	return t, nil
}

// columnsOf lists a file's column names in order: a Parquet file's
// top-level fields, or a CSV file's header row.
func columnsOf(path string) ([]string, error) {
	format, err := source.DetectFormat(path)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errkind.ErrNoInput, err)
	}
	defer f.Close()
	if format == source.FormatParquet {
		st, err := f.Stat()
		if err != nil {
			return nil, err
		}
		pf, err := parquet.OpenFile(f, st.Size())
		if err != nil {
			return nil, fmt.Errorf("%w: %s: %v", errkind.ErrData, path, err)
		}
		var cols []string
		for _, c := range pf.Schema().Fields() {
			cols = append(cols, c.Name())
		}
		return cols, nil
	}
	br := bufio.NewReader(f)
	for {
		line, err := br.ReadString('\n')
		line = strings.TrimPrefix(line, "\uFEFF")
		if strings.TrimSpace(line) != "" {
			cols, perr := csv.NewReader(strings.NewReader(line)).Read()
			if perr != nil {
				return nil, fmt.Errorf("%w: %s: the header row: %v", errkind.ErrConfig, path, perr)
			}
			return cols, nil
		}
		if err != nil {
			return nil, fmt.Errorf("%w: %s has no header row", errkind.ErrConfig, path)
		}
	}
}

// idsWriter writes an ids file: the platform's columns as text, then id.
type idsWriter struct {
	typ reflect.Type
	w   *parquet.Writer
}

// newIDsSchema is the struct type of an ids file's rows: a field per
// column, in order, so that the file keeps the platform's column order.
func newIDsSchema(columns []string) (reflect.Type, error) {
	var fields []reflect.StructField
	for i, c := range columns {
		if c == "" || strings.ContainsAny(c, ",\"`") || c == ColID {
			return nil, fmt.Errorf("%w: column %d of the numbers file is named %q: rename it (no commas or quotes, and not %q, which the output adds)", errkind.ErrUsage, i+1, c, ColID)
		}
		fields = append(fields, reflect.StructField{Name: fmt.Sprintf("C%d", i), Type: reflect.TypeFor[string](), Tag: reflect.StructTag(`parquet:"` + c + `"`)})
	}
	fields = append(fields, reflect.StructField{Name: "ID", Type: reflect.TypeFor[[64]byte](), Tag: `parquet:"id"`})
	return reflect.StructOf(fields), nil
}

// writeIDs writes rows (text cells and a 64-byte id each) as an ids file.
func writeIDs(path string, columns []string, rows []idsRow) error {
	typ, err := newIDsSchema(columns)
	if err != nil {
		return err
	}
	return writeFile(path, 0o644, func(w io.Writer) error {
		pw := parquet.NewWriter(w, parquet.SchemaOf(reflect.New(typ).Interface()), parquet.Compression(&parquet.Zstd))
		v := reflect.New(typ).Elem()
		for _, r := range rows {
			for i, c := range r.cells {
				v.Field(i).SetString(c)
			}
			v.Field(len(r.cells)).Set(reflect.ValueOf(r.id))
			if err := pw.Write(v.Addr().Interface()); err != nil {
				return err
			}
		}
		return pw.Close()
	})
}

type idsRow struct {
	cells []string
	id    [64]byte
}

// readIDs reads an ids file: its text columns and each row's id.
func readIDs(path string) ([]string, []idsRow, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %w", errkind.ErrNoInput, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, nil, err
	}
	pf, err := parquet.OpenFile(f, st.Size())
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %s is not a readable Parquet file: %v", errkind.ErrData, path, err)
	}
	fields := pf.Schema().Fields()
	idCol := -1
	var cols []string
	for i, c := range fields {
		if !c.Leaf() || c.Repeated() {
			return nil, nil, fmt.Errorf("%w: %s: column %q is not flat", errkind.ErrData, path, c.Name())
		}
		if c.Name() == ColID {
			if c.Type().Kind() != parquet.FixedLenByteArray || c.Type().Length() != 64 {
				return nil, nil, fmt.Errorf("%w: %s: column id is not FIXED_LEN_BYTE_ARRAY(64)", errkind.ErrData, path)
			}
			idCol = i
			continue
		}
		cols = append(cols, c.Name())
	}
	if idCol < 0 {
		return nil, nil, fmt.Errorf("%w: %s has no id column: give the output of oprf finalize", errkind.ErrData, path)
	}
	var out []idsRow
	buf := make([]parquet.Row, 1024)
	for _, rg := range pf.RowGroups() {
		rows := rg.Rows()
		for {
			n, err := rows.ReadRows(buf)
			for _, r := range buf[:n] {
				var row idsRow
				for _, v := range r {
					if v.Column() == idCol {
						if v.IsNull() || len(v.ByteArray()) != 64 {
							rows.Close()
							return nil, nil, fmt.Errorf("%w: %s: row %d has no id", errkind.ErrData, path, len(out)+1)
						}
						row.id = [64]byte(v.ByteArray())
						continue
					}
					row.cells = append(row.cells, string(bytes.Clone(v.ByteArray())))
				}
				out = append(out, row)
			}
			if err == io.EOF {
				break
			}
			if err != nil {
				rows.Close()
				return nil, nil, fmt.Errorf("%w: %s: %v", errkind.ErrData, path, err)
			}
		}
		rows.Close()
	}
	return cols, out, nil
}
