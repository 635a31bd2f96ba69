package source

import (
	"audiencematch/pipeline/errkind"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"strconv"
	"sync"
	"time"
	"unsafe"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"github.com/apache/arrow-go/v18/parquet"
	"github.com/apache/arrow-go/v18/parquet/file"
	"github.com/apache/arrow-go/v18/parquet/pqarrow"
)

// parquetTable streams a Parquet table through arrow-go in record batches.
// Every requested column is turned into text (strings as they are, integers
// in decimal, timestamps in RFC 3339), so that both formats share one set of
// parsing rules; a null is an empty string. A table whose requested columns
// are all flat strings (or binary) is read by parquetStrings instead.
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

// openParquetTable opens the table at path: as parquetStrings when every
// requested column is a flat string column, unless rowsOnly.
func openParquetTable(path string, columns []string, rowsOnly bool) (RowReader, error) {
	digest, err := fileDigest(path)
	if err != nil {
		return nil, err
	}
	pf, err := file.OpenParquetFile(path, false)
	if err != nil {
		return nil, fmt.Errorf("%w: %q is not a readable Parquet file: %w", errkind.ErrData, path, err)
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
			return nil, fmt.Errorf("%q: %w: column %q is not a flat column", path, errkind.ErrConfig, c)
		}
	}
	// Parallel decodes the columns side by side, on other cores than the
	// one reading rows (figures in docs/PERFORMANCE.md).
	fr, err := pqarrow.NewFileReader(pf, pqarrow.ArrowReadProperties{BatchSize: 64 << 10, Parallel: true}, memory.DefaultAllocator)
	if err != nil {
		pf.Close()
		return nil, fmt.Errorf("%w: %q: %w", errkind.ErrData, path, err)
	}
	if t.rr, err = fr.GetRecordReader(context.Background(), idx, nil); err != nil {
		pf.Close()
		return nil, fmt.Errorf("%w: %q: %w", errkind.ErrData, path, err)
	}
	for _, f := range t.rr.Schema().Fields() {
		if !textable(f.Type) {
			t.Close()
			return nil, fmt.Errorf("%q: %w: column %q has type %s; use a string, integer or timestamp column", path, errkind.ErrConfig, f.Name, f.Type)
		}
	}
	if !rowsOnly && flatStrings(pf, idx, t.rr.Schema()) {
		t.rr.Release()
		return &parquetStrings{pf: pf, digest: digest, idx: idx, seq: -1}, nil
	}
	t.row.Fields = make([]string, len(columns))
	return t, nil
}

// flatStrings reports whether the columns idx of pf, whose arrow schema is
// sch, are all byte arrays that arrow reads as strings or binary, neither
// repeated nor nested.
func flatStrings(pf *file.Reader, idx []int, sch *arrow.Schema) bool {
	for _, f := range sch.Fields() {
		switch f.Type.ID() {
		case arrow.STRING, arrow.BINARY, arrow.LARGE_STRING, arrow.LARGE_BINARY:
		default:
			return false
		}
	}
	for _, i := range idx {
		c := pf.MetaData().Schema.Column(i)
		if c.PhysicalType() != parquet.Types.ByteArray || c.MaxRepetitionLevel() != 0 || c.MaxDefinitionLevel() > 1 {
			return false
		}
	}
	return true
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
				return nil, fmt.Errorf("%w: reading Parquet row %d: %w", errkind.ErrData, t.line+1, err)
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

// parquetStrings reads flat string columns straight from their pages
// (arrow-go's column chunk readers), a batch of rows at a time, into the
// batch's own buffer: no arrow arrays are built, and workers parse batches
// while the next is decoded. A null is an empty string, as in parquetTable.
// Read serially through Next it is no faster than parquetTable: what it
// gains is the workers' overlap with decoding, for the same rows (figures
// in docs/PERFORMANCE.md).
type parquetStrings struct {
	mu     sync.Mutex
	pf     *file.Reader
	digest string
	idx    []int // the requested columns' leaf indexes
	rg     int   // the next row group
	cols   []pqColumn
	left   int64 // rows left in the current row group
	line   int64 // rows read so far
	seq    int
	err    error
	rows   batchCursor // Next's
}

// pqColumn is one column of the current row group.
type pqColumn struct {
	r      *file.ByteArrayColumnChunkReader
	leaf   int
	maxDef int16
	vals   []parquet.ByteArray
	defs   []int16
}

// parquetBatchRows is the rows of a batch: enough for a worker to parse a
// while between two turns at the reader.
const parquetBatchRows = 16 << 10

func (t *parquetStrings) NextBatch(b *Batch) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.err != nil {
		return t.err
	}
	if err := t.fill(b); err != nil {
		t.err = err
		return err
	}
	return nil
}

// fill reads the next batch into b.
func (t *parquetStrings) fill(b *Batch) error {
	for t.left == 0 {
		if t.rg == t.pf.NumRowGroups() {
			return io.EOF
		}
		rg := t.pf.RowGroup(t.rg)
		t.rg++
		t.left = rg.NumRows()
		if t.cols == nil {
			t.cols = make([]pqColumn, len(t.idx))
		}
		for k, i := range t.idx {
			c, err := rg.Column(i)
			if err != nil {
				return fmt.Errorf("%w: Parquet row group %d: %w", errkind.ErrData, t.rg-1, err)
			}
			ba, ok := c.(*file.ByteArrayColumnChunkReader)
			if !ok {
				return fmt.Errorf("%w: Parquet row group %d: column %d is not a byte array", errkind.ErrData, t.rg-1, i)
			}
			t.cols[k].r, t.cols[k].leaf, t.cols[k].maxDef = ba, i, t.pf.MetaData().Schema.Column(i).MaxDefinitionLevel()
		}
	}
	n := int(min(t.left, parquetBatchRows))
	t.seq++
	b.reset(t.seq)
	nc := len(t.cols)
	// Column k's field of row r is first the span 2*(r*nc+k) of the
	// batch's arena, then a string of it once the arena has stopped
	// growing.
	spans := slices.Grow(b.spans[:0], 2*n*nc)[:2*n*nc]
	arena := b.arena[:0]
	for k := range t.cols {
		var err error
		if arena, err = t.cols[k].read(n, arena, spans, k, nc, t.line); err != nil {
			return fmt.Errorf("%w: Parquet row group %d, column %d: %w", errkind.ErrData, t.rg-1, t.cols[k].leaf, err)
		}
	}
	all := unsafe.String(unsafe.SliceData(arena), len(arena))
	fields := slices.Grow(b.fields[:0], n*nc)[:n*nc]
	for i := range fields {
		fields[i] = all[spans[2*i]:spans[2*i+1]]
	}
	for r := range n {
		b.Rows = append(b.Rows, Row{Line: t.line + int64(r) + 1, Fields: fields[r*nc : (r+1)*nc : (r+1)*nc]})
	}
	b.fields, b.arena, b.spans = fields, arena, spans
	t.line += int64(n)
	t.left -= int64(n)
	return nil
}

// read appends the column's next n values to arena, from one page at a time
// (a page's values are only valid until the next is read), and their spans
// to spans (see fill). Rows before this batch were line.
func (c *pqColumn) read(n int, arena []byte, spans []int32, k, nc int, line int64) ([]byte, error) {
	if cap(c.vals) < n {
		c.vals, c.defs = make([]parquet.ByteArray, n), make([]int16, n)
	}
	for row := 0; row < n; {
		lvls, nv, err := c.r.ReadBatchInPage(int64(n-row), c.vals[:n-row], c.defs[:n-row], nil)
		if err != nil {
			return arena, fmt.Errorf("row %d: %w", line+int64(row)+1, err)
		}
		if lvls == 0 {
			return arena, fmt.Errorf("the column ends after row %d", line+int64(row))
		}
		v := 0
		for i := range int(lvls) {
			at := 2 * ((row+i)*nc + k)
			spans[at] = int32(len(arena))
			if c.maxDef == 0 || c.defs[i] == c.maxDef {
				if v == nv {
					return arena, fmt.Errorf("row %d: fewer values than levels", line+int64(row+i)+1)
				}
				if len(arena)+len(c.vals[v]) > math.MaxInt32 {
					return arena, fmt.Errorf("row %d: the batch's values pass 2 GiB", line+int64(row+i)+1)
				}
				arena = append(arena, c.vals[v]...)
				v++
			}
			spans[at+1] = int32(len(arena))
		}
		row += int(lvls)
	}
	return arena, nil
}

// Release does nothing: a batch's strings point into its own arena, which
// the next NextBatch with the same Batch fills again.
func (*parquetStrings) Release(*Batch) {}

// Next returns the rows one at a time, in order.
func (t *parquetStrings) Next() (*Row, error) { return t.rows.next(t) }

func (t *parquetStrings) Digest() string { return t.digest }

func (t *parquetStrings) Close() error { return t.pf.Close() }

// fileDigest is the hex SHA-256 of a whole file.
func fileDigest(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("open %q: %w: %w", path, errkind.ErrNoInput, err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("read %q: %w: %w", path, errkind.ErrNoInput, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
