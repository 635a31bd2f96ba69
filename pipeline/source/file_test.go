package source_test

import (
	"bytes"
	"context"
	"encoding/csv"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"github.com/apache/arrow-go/v18/parquet"
	"github.com/apache/arrow-go/v18/parquet/pqarrow"

	"audiencematch/pipeline/source"
	"audiencematch/pipeline/source/sourcetest"
)

func TestCSVFiles(t *testing.T) {
	(&sourcetest.Suite{Store: storeFiles(writeCSV, ".csv"), FirstLine: 2}).RunTests(t)
}

func TestParquetFiles(t *testing.T) {
	(&sourcetest.Suite{Store: storeFiles(writeParquet, ".parquet"), FirstLine: 1, LineBreaks: true}).RunTests(t)
}

func TestCopyStreams(t *testing.T) {
	(&sourcetest.Suite{Store: storeCopy, FirstLine: 2, LineBreaks: true}).RunTests(t)
}

// storeFiles stores the tables as two files written by write, in a
// FileSource.
func storeFiles(write func(t *testing.T, path string, tbl sourcetest.Table), ext string) func(*testing.T, sourcetest.Tables) source.Source {
	return func(t *testing.T, ts sourcetest.Tables) source.Source {
		dir := t.TempDir()
		fs := source.FileSource{Users: filepath.Join(dir, "users"+ext), Consent: filepath.Join(dir, "consent_events"+ext)}
		write(t, fs.Users, ts.Users)
		write(t, fs.Consent, ts.Consent)
		return fs
	}
}

// csvText is tbl as RFC 4180 CSV with a header row, quoted where needed.
func csvText(t *testing.T, tbl sourcetest.Table) []byte {
	var b bytes.Buffer
	w := csv.NewWriter(&b)
	w.Write(tbl.Columns)
	w.WriteAll(tbl.Rows)
	if err := w.Error(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func writeCSV(t *testing.T, path string, tbl sourcetest.Table) {
	if err := os.WriteFile(path, csvText(t, tbl), 0o600); err != nil {
		t.Fatal(err)
	}
}

// writeParquet writes tbl as a Parquet file of string columns, in the
// table's column order.
func writeParquet(t *testing.T, path string, tbl sourcetest.Table) {
	fields := make([]arrow.Field, len(tbl.Columns))
	for i, c := range tbl.Columns {
		fields[i] = arrow.Field{Name: c, Type: arrow.BinaryTypes.String, Nullable: true}
	}
	schema := arrow.NewSchema(fields, nil)
	b := array.NewRecordBuilder(memory.DefaultAllocator, schema)
	defer b.Release()
	for _, r := range tbl.Rows {
		for i, v := range r {
			b.Field(i).(*array.StringBuilder).Append(v)
		}
	}
	rec := b.NewRecordBatch()
	defer rec.Release()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	w, err := pqarrow.NewFileWriter(schema, f, parquet.NewWriterProperties(), pqarrow.DefaultWriterProps())
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Write(rec); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil { // closes f
		t.Fatal(err)
	}
}

// copySource serves tables from memory as CSV streams read with COPY's
// quoting (NewCopyReader): what package pg reads, without a database.
type copySource map[string][]byte

func storeCopy(t *testing.T, ts sourcetest.Tables) source.Source {
	return copySource{source.TableUsers: csvText(t, ts.Users), source.TableConsent: csvText(t, ts.Consent)}
}

func (s copySource) Open(_ context.Context, table string, columns []string) (source.RowReader, error) {
	return source.NewCopyReader(io.NopCloser(bytes.NewReader(s[table])), columns)
}

func (copySource) Name(table string) string { return "copy:" + table }

func (copySource) Close() error { return nil }
