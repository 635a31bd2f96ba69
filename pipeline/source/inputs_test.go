package source_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"github.com/apache/arrow-go/v18/parquet"
	"github.com/apache/arrow-go/v18/parquet/pqarrow"
	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	pq "github.com/parquet-go/parquet-go"

	"audiencematch/pipeline/errkind"
	"audiencematch/pipeline/source"
	"audiencematch/pipeline/source/sourcetest"
)

func TestGzipCSVFiles(t *testing.T) {
	(&sourcetest.Suite{Store: storeFiles(writeCompressedCSV(gzipped), ".csv.gz"), FirstLine: 2}).RunTests(t)
}

func TestZstdCSVFiles(t *testing.T) {
	(&sourcetest.Suite{Store: storeFiles(writeCompressedCSV(zstded), ".data"), FirstLine: 2}).RunTests(t)
}

// TestParquetPartDirectories reads each table from a directory of three
// Parquet parts in Hive partitions, beside the files a Spark job leaves
// (_SUCCESS, hidden checksums, _temporary/), which are skipped.
func TestParquetPartDirectories(t *testing.T) {
	(&sourcetest.Suite{Store: storePartDirs, FirstLine: 1, LineBreaks: true}).RunTests(t)
}

func storePartDirs(t *testing.T, ts sourcetest.Tables) source.Source {
	dir := t.TempDir()
	fs := source.FileSource{Users: filepath.Join(dir, "users"), Consent: filepath.Join(dir, "consent_events")}
	for _, c := range []struct {
		dir string
		tbl sourcetest.Table
	}{{fs.Users, ts.Users}, {fs.Consent, ts.Consent}} {
		n := len(c.tbl.Rows)
		cuts := []int{0, n / 3, 2 * n / 3, n}
		for i := range 3 {
			part := filepath.Join(c.dir, fmt.Sprintf("region=r%d", i), fmt.Sprintf("part-%05d.parquet", i))
			mkdirAll(t, filepath.Dir(part))
			writeParquet(t, part, sourcetest.Table{Columns: c.tbl.Columns, Rows: c.tbl.Rows[cuts[i]:cuts[i+1]]})
		}
		writeFile(t, filepath.Join(c.dir, "_SUCCESS"), nil)
		writeFile(t, filepath.Join(c.dir, "region=r0", ".part-00000.parquet.crc"), []byte("crc"))
		mkdirAll(t, filepath.Join(c.dir, "_temporary", "0"))
		writeFile(t, filepath.Join(c.dir, "_temporary", "0", "part-9.csv"), []byte("not,a,part\n"))
	}
	return fs
}

type compressor func(t *testing.T, b []byte) []byte

func gzipped(t *testing.T, b []byte) []byte {
	var out bytes.Buffer
	w := gzip.NewWriter(&out)
	w.Write(b)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

func zstded(t *testing.T, b []byte) []byte {
	w, err := zstd.NewWriter(nil)
	if err != nil {
		t.Fatal(err)
	}
	return w.EncodeAll(b, nil)
}

func writeCompressedCSV(c compressor) func(t *testing.T, path string, tbl sourcetest.Table) {
	return func(t *testing.T, path string, tbl sourcetest.Table) { writeFile(t, path, c(t, csvText(t, tbl))) }
}

func writeFile(t *testing.T, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func mkdirAll(t *testing.T, dir string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
}

func sum(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func fileSum(t *testing.T, path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return sum(b)
}

// userRows are n users, their ids in order.
func userRows(n int) [][]string {
	rows := make([][]string, n)
	for i := range rows {
		rows[i] = []string{fmt.Sprintf("u%06d", i), fmt.Sprintf("+4474%08d", i), "GB"}
	}
	return rows
}

// writeParquetGo writes rows as a Parquet file with parquet-go, in row
// groups of perGroup rows.
func writeParquetGo(t *testing.T, path string, rows [][]string, perGroup int64) {
	type user struct {
		UserID  string `parquet:"user_id"`
		Phone   string `parquet:"phone"`
		Country string `parquet:"country"`
	}
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	w := pq.NewGenericWriter[user](f, pq.MaxRowsPerRowGroup(perGroup))
	for _, r := range rows {
		if _, err := w.Write([]user{{r[0], r[1], r[2]}}); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

// writeArrow writes rows as a Parquet file with arrow-go, in row groups of
// perGroup rows.
func writeArrow(t *testing.T, path string, rows [][]string, perGroup int64) {
	fields := make([]arrow.Field, len(source.UserColumns))
	for i, c := range source.UserColumns {
		fields[i] = arrow.Field{Name: c, Type: arrow.BinaryTypes.String}
	}
	schema := arrow.NewSchema(fields, nil)
	b := array.NewRecordBuilder(memory.DefaultAllocator, schema)
	defer b.Release()
	for _, r := range rows {
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
	w, err := pqarrow.NewFileWriter(schema, f, parquet.NewWriterProperties(parquet.WithMaxRowGroupLength(perGroup)), pqarrow.DefaultWriterProps())
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Write(rec); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestPartsFromBothWriters reads a directory of parts written by arrow-go
// and parquet-go in turn, several row groups each, as one table: every
// row once, in part order, numbered on across parts, read in parallel;
// the manifest's parts and the table's digest follow the contract.
func TestPartsFromBothWriters(t *testing.T) {
	dir := t.TempDir()
	rows := userRows(1000)
	var names []string
	for i := range 6 {
		name := fmt.Sprintf("part-%05d.parquet", i)
		names = append(names, name)
		chunk := rows[i*len(rows)/6 : (i+1)*len(rows)/6]
		if i%2 == 0 {
			writeArrow(t, filepath.Join(dir, name), chunk, 37)
		} else {
			writeParquetGo(t, filepath.Join(dir, name), chunk, 29)
		}
	}
	for _, via := range []string{"rows", "batches"} {
		t.Run(via, func(t *testing.T) {
			r, err := source.FileSource{Users: dir, Consent: dir}.Open(t.Context(), source.TableUsers, source.UserColumns)
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			got := readUsers(t, r, via == "batches")
			if len(got) != len(rows) {
				t.Fatalf("read %d rows, want %d", len(got), len(rows))
			}
			for i, row := range got {
				if row.line != int64(i+1) || strings.Join(row.fields, ",") != strings.Join(rows[i], ",") {
					t.Fatalf("row %d: line %d %v, want line %d %v", i, row.line, row.fields, i+1, rows[i])
				}
			}
			parts := r.(source.PartLister).Parts()
			var list strings.Builder
			for i, p := range parts {
				if p.Name != names[i] || p.SHA256 != fileSum(t, filepath.Join(dir, names[i])) {
					t.Errorf("part %d: %s %s, want %s and its SHA-256", i, p.Name, p.SHA256, names[i])
				}
				list.WriteString(p.SHA256 + "\n")
			}
			if len(parts) != len(names) {
				t.Errorf("%d parts listed, want %d", len(parts), len(names))
			}
			if want := sum([]byte(list.String())); r.Digest() != want {
				t.Errorf("digest %s, want the SHA-256 of the parts' digests %s", r.Digest(), want)
			}
		})
	}
}

type readRow struct {
	line   int64
	fields []string
}

// readUsers reads every row, through Next or through batches taken by
// four goroutines and put back in order.
func readUsers(t *testing.T, r source.RowReader, batches bool) []readRow {
	t.Helper()
	var out []readRow
	if !batches {
		for {
			row, err := r.Next()
			if err == io.EOF {
				return out
			}
			if err != nil {
				t.Fatal(err)
			}
			if row.Reject != "" {
				t.Fatalf("line %d rejected: %s", row.Line, row.Reject)
			}
			out = append(out, readRow{row.Line, cloneFields(row.Fields)})
		}
	}
	br := source.Batches(r)
	type got struct {
		seq  int
		rows []readRow
	}
	ch := make(chan got)
	errc := make(chan error, 4)
	for range 4 {
		go func() {
			var b source.Batch
			for {
				if err := br.NextBatch(&b); err != nil {
					if err != io.EOF {
						errc <- err
						return
					}
					errc <- nil
					return
				}
				var rs []readRow
				for _, row := range b.Rows {
					rs = append(rs, readRow{row.Line, cloneFields(row.Fields)})
				}
				ch <- got{b.Seq, rs}
				br.Release(&b)
			}
		}()
	}
	bySeq := map[int][]readRow{}
	done := 0
	for done < 4 {
		select {
		case g := <-ch:
			if _, dup := bySeq[g.seq]; dup {
				t.Fatalf("batch %d handed out twice", g.seq)
			}
			bySeq[g.seq] = g.rows
		case err := <-errc:
			if err != nil {
				t.Fatal(err)
			}
			done++
		}
	}
	for i := range len(bySeq) {
		rs, ok := bySeq[i]
		if !ok {
			t.Fatalf("batch %d missing: batches are numbered with a gap", i)
		}
		out = append(out, rs...)
	}
	return out
}

// TestCSVPartsAndGlobs reads CSV parts, plain and compressed, through a
// directory and through a glob, with their lines numbered on across parts.
func TestCSVPartsAndGlobs(t *testing.T) {
	dir := t.TempDir()
	rows := userRows(30)
	tbl := func(rs [][]string) []byte {
		return csvText(t, sourcetest.Table{Columns: source.UserColumns, Rows: rs})
	}
	writeFile(t, filepath.Join(dir, "a.csv"), tbl(rows[:10]))
	writeFile(t, filepath.Join(dir, "b.csv.gz"), gzipped(t, tbl(rows[10:20])))
	writeFile(t, filepath.Join(dir, "c.csv.zst"), zstded(t, tbl(rows[20:])))
	for _, spec := range []string{dir, filepath.Join(dir, "*.csv*"), "file://" + dir} {
		r, err := source.FileSource{Users: spec, Consent: spec}.Open(t.Context(), source.TableUsers, source.UserColumns)
		if err != nil {
			t.Fatalf("%s: %v", spec, err)
		}
		got := readUsers(t, r, true)
		r.Close()
		if len(got) != len(rows) {
			t.Fatalf("%s: %d rows, want %d", spec, len(got), len(rows))
		}
		// Each part's header is a line: the concatenated files' numbering.
		for i, row := range got {
			if want := int64(i + 2 + i/10); row.line != want || row.fields[0] != rows[i][0] {
				t.Fatalf("%s: row %d: line %d %s, want line %d %s", spec, i, row.line, row.fields[0], want, rows[i][0])
			}
		}
	}
}

// TestStandardInput reads a gzip-compressed CSV table from "-".
func TestStandardInput(t *testing.T) {
	rows := userRows(5)
	text := csvText(t, sourcetest.Table{Columns: source.UserColumns, Rows: rows})
	f, err := os.CreateTemp(t.TempDir(), "stdin")
	if err != nil {
		t.Fatal(err)
	}
	f.Write(gzipped(t, text))
	f.Seek(0, io.SeekStart)
	old := os.Stdin
	os.Stdin = f
	t.Cleanup(func() { os.Stdin = old; f.Close() })
	src := source.FileSource{Users: "-", Consent: "x.csv"}
	r, err := src.Open(t.Context(), source.TableUsers, source.UserColumns)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	got := readUsers(t, r, false)
	if len(got) != 5 || got[0].fields[0] != "u000000" || got[0].line != 2 {
		t.Fatalf("read %v", got)
	}
	if r.Digest() != sum(text) {
		t.Errorf("digest %s, want the SHA-256 of the decompressed text %s", r.Digest(), sum(text))
	}
	if n := src.Name(source.TableUsers); n != "-" {
		t.Errorf("name %q, want -", n)
	}
	if _, err := (source.FileSource{Users: "-", Consent: "-"}).Open(t.Context(), source.TableUsers, source.UserColumns); !errors.Is(err, errkind.ErrUsage) {
		t.Errorf("both tables from standard input: %v, want a usage error", err)
	}
}

// TestInputErrors: what cannot be read is a clear error of the right
// kind, naming the input or the part, never a cell of it.
func TestInputErrors(t *testing.T) {
	dir := t.TempDir()
	rows := userRows(4)
	mixed := filepath.Join(dir, "mixed")
	mkdirAll(t, mixed)
	writeParquetGo(t, filepath.Join(mixed, "part-0.parquet"), rows, 2)
	writeFile(t, filepath.Join(mixed, "part-1.json"), []byte(`{"user_id":"u1","phone":"+447400123456"}`+"\n"))
	csvs := filepath.Join(dir, "csvs")
	mkdirAll(t, csvs)
	writeFile(t, filepath.Join(csvs, "part-0.csv"), csvText(t, sourcetest.Table{Columns: source.UserColumns, Rows: rows}))
	writeParquetGo(t, filepath.Join(csvs, "part-1.csv"), rows, 2)
	stray := filepath.Join(dir, "stray")
	mkdirAll(t, filepath.Join(stray, "old"))
	writeFile(t, filepath.Join(stray, "part-0.csv"), csvText(t, sourcetest.Table{Columns: source.UserColumns, Rows: rows}))
	empty := filepath.Join(dir, "empty")
	mkdirAll(t, empty)
	writeFile(t, filepath.Join(empty, "_SUCCESS"), nil)
	for _, c := range []struct {
		name, spec string
		kind       error
		says       []string
	}{
		{"glob matching nothing", filepath.Join(dir, "nothing-*.parquet"), errkind.ErrNoInput, []string{"matches no file", "nothing-*.parquet"}},
		{"a JSON part among Parquet parts", mixed, errkind.ErrData, []string{`part "part-1.json" is csv`, `"part-0.parquet" is parquet`}},
		{"a Parquet part among CSV parts", csvs, errkind.ErrData, []string{`part "part-1.csv" is parquet`}},
		{"a directory that is no partition", stray, errkind.ErrData, []string{`"old"`, "key=value"}},
		{"only markers", empty, errkind.ErrNoInput, []string{"holds no part file"}},
		{"missing", filepath.Join(dir, "missing.csv"), errkind.ErrNoInput, []string{"missing.csv"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			err := readErr(t, source.FileSource{Users: c.spec, Consent: c.spec})
			if !errors.Is(err, c.kind) {
				t.Fatalf("got %v, want %v", err, c.kind)
			}
			for _, s := range c.says {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("%q does not say %q", err, s)
				}
			}
			if strings.Contains(err.Error(), "+4474") || strings.Contains(err.Error(), "u000") {
				t.Errorf("%q quotes the input's data", err)
			}
		})
	}
}

// readErr opens and reads the users table to its end, returning the first
// error.
func readErr(t *testing.T, src source.FileSource) error {
	r, err := src.Open(t.Context(), source.TableUsers, source.UserColumns)
	if err != nil {
		return err
	}
	defer r.Close()
	for {
		if _, err := r.Next(); err == io.EOF {
			return nil
		} else if err != nil {
			return err
		}
	}
}

// cloneFields copies fields out of the reader's memory.
func cloneFields(fields []string) []string {
	out := make([]string, len(fields))
	for i, f := range fields {
		out[i] = strings.Clone(f)
	}
	return out
}

// TestManyPartsConcurrently reads many small CSV parts, some of them only
// a header, with several goroutines, many times: parts end while other
// goroutines still hold their batches, and every row must still come once,
// in order, with its line.
func TestManyPartsConcurrently(t *testing.T) {
	dir := t.TempDir()
	rows := userRows(200)
	var want []readRow
	var lineBase int64
	next := 0
	for k := 0; next < len(rows); k++ {
		n := min((k*7)%9, len(rows)-next) // 0 to 8 rows; some parts empty
		part := rows[next : next+n]
		writeFile(t, filepath.Join(dir, fmt.Sprintf("part-%03d.csv", k)), csvText(t, sourcetest.Table{Columns: source.UserColumns, Rows: part}))
		for j, r := range part {
			want = append(want, readRow{lineBase + int64(j) + 2, r})
		}
		if n > 0 {
			lineBase += int64(n) + 1
		}
		next += n
	}
	for range 20 {
		r, err := source.FileSource{Users: dir, Consent: dir}.Open(t.Context(), source.TableUsers, source.UserColumns)
		if err != nil {
			t.Fatal(err)
		}
		got := readUsers(t, r, true)
		r.Close()
		if len(got) != len(want) {
			t.Fatalf("%d rows, want %d", len(got), len(want))
		}
		for i := range want {
			if got[i].line != want[i].line || !slices.Equal(got[i].fields, want[i].fields) {
				t.Fatalf("row %d: line %d %v, want line %d %v", i, got[i].line, got[i].fields, want[i].line, want[i].fields)
			}
		}
	}
}
