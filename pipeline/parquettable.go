package pipeline

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"time"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"github.com/apache/arrow-go/v18/parquet/file"
	"github.com/apache/arrow-go/v18/parquet/pqarrow"
)

// parquetTable streams a Parquet table through arrow-go in record batches.
// Every requested column is turned into text (strings as they are, integers
// in decimal, timestamps in RFC 3339), so that both formats share one set of
// parsing rules; a null is an empty string.
type parquetTable struct {
	pf      *file.Reader
	rr      pqarrow.RecordReader
	digest  string
	columns []string
	rec     arrow.RecordBatch
	cols    []arrow.Array // of rec, in the order of columns
	i, n    int
	line    int64
	row     Row
}

func openParquetTable(path string, columns []string) (*parquetTable, error) {
	digest, err := fileDigest(path)
	if err != nil {
		return nil, err
	}
	pf, err := file.OpenParquetFile(path, false)
	if err != nil {
		return nil, fmt.Errorf("%w: %q is not a readable Parquet file: %w", ErrData, path, err)
	}
	t := &parquetTable{pf: pf, digest: digest, columns: columns}
	schema := pf.MetaData().Schema
	header := make([]string, schema.Root().NumFields())
	for i := range header {
		header[i] = schema.Root().Field(i).Name()
	}
	if _, err := columnIndex(header, columns); err != nil {
		pf.Close()
		return nil, fmt.Errorf("%q: %w", path, err)
	}
	idx := make([]int, len(columns))
	for i, c := range columns {
		if idx[i] = schema.ColumnIndexByName(c); idx[i] < 0 {
			pf.Close()
			return nil, fmt.Errorf("%q: %w: column %q is not a flat column", path, ErrConfig, c)
		}
	}
	fr, err := pqarrow.NewFileReader(pf, pqarrow.ArrowReadProperties{BatchSize: 64 << 10}, memory.DefaultAllocator)
	if err != nil {
		pf.Close()
		return nil, fmt.Errorf("%w: %q: %w", ErrData, path, err)
	}
	if t.rr, err = fr.GetRecordReader(context.Background(), idx, nil); err != nil {
		pf.Close()
		return nil, fmt.Errorf("%w: %q: %w", ErrData, path, err)
	}
	for _, f := range t.rr.Schema().Fields() {
		if !textable(f.Type) {
			t.Close()
			return nil, fmt.Errorf("%q: %w: column %q has type %s; use a string, integer or timestamp column", path, ErrConfig, f.Name, f.Type)
		}
	}
	t.row.Fields = make([]string, len(columns))
	return t, nil
}

func textable(dt arrow.DataType) bool {
	switch dt.ID() {
	case arrow.STRING, arrow.LARGE_STRING, arrow.BINARY, arrow.LARGE_BINARY,
		arrow.INT8, arrow.INT16, arrow.INT32, arrow.INT64,
		arrow.UINT8, arrow.UINT16, arrow.UINT32, arrow.UINT64, arrow.TIMESTAMP:
		return true
	}
	return false
}

func (t *parquetTable) Next() (*Row, error) {
	for t.i >= t.n {
		if !t.rr.Next() {
			if err := t.rr.Err(); err != nil && !errors.Is(err, io.EOF) {
				return nil, fmt.Errorf("%w: reading Parquet row %d: %w", ErrData, t.line+1, err)
			}
			return nil, io.EOF
		}
		t.rec = t.rr.RecordBatch()
		t.cols = t.cols[:0]
		for _, c := range t.columns {
			a := t.rec.Columns()[t.rec.Schema().FieldIndices(c)[0]]
			t.cols = append(t.cols, a)
		}
		t.i, t.n = 0, int(t.rec.NumRows())
	}
	t.line++
	t.row.Line = t.line
	for j, a := range t.cols {
		t.row.Fields[j] = cellText(a, t.i)
	}
	t.i++
	return &t.row, nil
}

func cellText(a arrow.Array, i int) string {
	if a.IsNull(i) {
		return ""
	}
	switch a := a.(type) {
	case *array.String:
		return a.Value(i)
	case *array.LargeString:
		return a.Value(i)
	case *array.Binary:
		return string(a.Value(i))
	case *array.LargeBinary:
		return string(a.Value(i))
	case *array.Int8:
		return strconv.FormatInt(int64(a.Value(i)), 10)
	case *array.Int16:
		return strconv.FormatInt(int64(a.Value(i)), 10)
	case *array.Int32:
		return strconv.FormatInt(int64(a.Value(i)), 10)
	case *array.Int64:
		return strconv.FormatInt(a.Value(i), 10)
	case *array.Uint8:
		return strconv.FormatUint(uint64(a.Value(i)), 10)
	case *array.Uint16:
		return strconv.FormatUint(uint64(a.Value(i)), 10)
	case *array.Uint32:
		return strconv.FormatUint(uint64(a.Value(i)), 10)
	case *array.Uint64:
		return strconv.FormatUint(a.Value(i), 10)
	case *array.Timestamp:
		unit := a.DataType().(*arrow.TimestampType).Unit
		return a.Value(i).ToTime(unit).UTC().Format(time.RFC3339Nano)
	}
	return a.ValueStr(i)
}

func (t *parquetTable) Digest() string { return t.digest }

func (t *parquetTable) Close() error {
	if t.rr != nil {
		t.rr.Release()
	}
	return t.pf.Close()
}

// fileDigest is the hex SHA-256 of a whole file.
func fileDigest(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("open %q: %w: %w", path, ErrNoInput, err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("read %q: %w: %w", path, ErrNoInput, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
