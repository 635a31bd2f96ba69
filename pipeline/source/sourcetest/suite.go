// Package sourcetest is the conformance suite of source.Source: whatever
// stores the tables (CSV files, Parquet files, a COPY stream, PostgreSQL),
// the same tables come back as the same rows, by the rules of package
// source's documentation. A source's test provides an adapter that stores
// tables in its format and returns a Source reading them, and runs the
// suite in one line:
//
//	func TestSuite(t *testing.T) { newTestSuite(t).RunTests(t) }
//
// The suite checks that
//
//   - rows come back with the requested columns, in the order requested,
//     including values with quotes, commas, non-ASCII digits, an empty
//     country and, where the format can carry one, a line break;
//   - Row.Line numbers rows from the format's first line, one apart;
//   - Batches gives the same rows in batches numbered from 0 without gaps,
//     taken by several goroutines at once;
//   - Digest is the same on two reads of the same table, and differs when
//     the table does;
//   - a missing column is an error that names it, of the kind
//     Suite.MissingColumn says (errkind.ErrConfig, MATCHING.md section 1,
//     unless set);
//   - extra columns are ignored, and the order of columns does not matter;
//   - a reader closes after its last row and before it, and the Source
//     after its readers and without having opened one;
//   - a table with a header and no rows yields io.EOF at once.
package sourcetest

import (
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"audiencematch/pipeline/errkind"
	"audiencematch/pipeline/source"
)

// Table is a table as text: its columns in the order they are stored, and
// rows with a field for each.
type Table struct {
	Columns []string
	Rows    [][]string
}

// Tables are a run's two tables.
type Tables struct {
	Users, Consent Table
}

// Suite tests one kind of source.Source.
type Suite struct {
	// Store stores tables in the source's format and returns a Source
	// that reads them; the suite closes it. Every call stores tables of
	// its own, which may be removed when t ends. The rows come in
	// ascending order of user_id and event_id, as a database source
	// returns them.
	Store func(t *testing.T, tables Tables) source.Source
	// FirstLine is the Row.Line of a table's first row: 2 where the header
	// is line or record 1 (CSV files, COPY streams), 1 where rows alone
	// are numbered (Parquet).
	FirstLine int64
	// LineBreaks is set when the format carries a line break in a value
	// (COPY streams, Parquet), and unset when it cannot (a CSV file is one
	// line a row).
	LineBreaks bool
	// MissingColumn is the kind of error a table without one of the
	// columns asked for is; errkind.ErrConfig when nil.
	MissingColumn error
}

// closeTimeout bounds every Close the suite calls.
const closeTimeout = 10 * time.Second

// RunTests runs every test of the suite.
func (s *Suite) RunTests(t *testing.T) {
	for _, c := range []struct {
		name string
		fn   func(*testing.T)
	}{
		{"Rows", s.testRows},
		{"Batches", s.testBatches},
		{"Digest", s.testDigest},
		{"MissingColumn", s.testMissingColumn},
		{"ExtraColumns", s.testExtraColumns},
		{"ColumnOrder", s.testColumnOrder},
		{"Close", s.testClose},
		{"Empty", s.testEmpty},
	} {
		t.Run(c.name, c.fn)
	}
}

// baseTables are the tables the suite stores, with a line break in two
// values when lineBreaks is set (and a space in their place otherwise).
func baseTables(lineBreaks bool) Tables {
	nl, crlf := " ", " "
	if lineBreaks {
		nl, crlf = "\n", "\r\n"
	}
	return Tables{
		Users: Table{Columns: slices.Clone(source.UserColumns), Rows: [][]string{
			{"u01", "+1 (650) 555-1212", "US"},
			{"u02", `+44 7400 "123456"`, "GB"},
			{"u03", "06 1234 5678, ext. 12", "it"},
			{"u04", "+91 ७४१०७ ३९६८३", "IN"},
			{"u05", "٠١٠٠١٢٣٤٥٦٧", "EG"},
			{"u06", "+16502531234", ""},
			{"u07", "  tel:+1-650-555-0000  ", "US"},
			{"u08", `"`, "DE"},
			{"u09", "０３-１２３４-５６７８", "JP"},
			{"u10", `"+33 1 23 45 67 89"`, "FR"},
		}},
		Consent: Table{Columns: slices.Clone(source.EventColumns), Rows: [][]string{
			{"e01", "u01", "ads_matching", "grant", "2026-10-01T12:00:00Z", "3", "app_settings"},
			{"e02", "u02", "ads_matching", "withdraw", "2026-10-02T00:00:00.123456+02:00", "4", "support ticket" + nl + "#123"},
			{"e03", "u03", "marketing,email", "grant", "2026-10-03T00:00:00Z", "3", `say "hi", then ""bye""`},
			{"e04", "u04", "ads_matching", "grant", "2026-10-04T00:00:00Z", "٣", "onboarding"},
			{"e05", "u05", "ads_matching", "revoke", "yesterday", "3", ""},
			{"e06", "u06", "ads_matching", "grant", "2026-10-06T00:00:00Z", "5", "app" + crlf + `settings, "v2"` + crlf},
			{"e07", "", "", "", "", "", ""},
		}},
	}
}

// want is tbl's rows reduced to columns, in that order.
func want(t *testing.T, tbl Table, columns []string) [][]string {
	t.Helper()
	rows := make([][]string, len(tbl.Rows))
	for i, r := range tbl.Rows {
		for _, c := range columns {
			j := slices.Index(tbl.Columns, c)
			if j < 0 {
				t.Fatalf("the suite's table lacks column %q", c)
			}
			rows[i] = append(rows[i], r[j])
		}
	}
	return rows
}

// tables names the two tables and their columns.
var tables = []struct {
	name    string
	columns []string
	of      func(*Tables) *Table
}{
	{source.TableConsent, source.EventColumns, func(ts *Tables) *Table { return &ts.Consent }},
	{source.TableUsers, source.UserColumns, func(ts *Tables) *Table { return &ts.Users }},
}

// open stores ts and returns the Source, closed when t ends.
func (s *Suite) open(t *testing.T, ts Tables) source.Source {
	t.Helper()
	src := s.Store(t, ts)
	t.Cleanup(func() { src.Close() })
	return src
}

// readAll reads every row of table with Next, checking that each is a
// good row numbered one after the other from FirstLine, and returns their
// fields and the table's digest.
func (s *Suite) readAll(t *testing.T, src source.Source, table string, columns []string) ([][]string, string) {
	t.Helper()
	r, err := src.Open(t.Context(), table, columns)
	if err != nil {
		t.Fatalf("open %s: %v", table, err)
	}
	defer r.Close()
	var rows [][]string
	for {
		row, err := r.Next()
		if err == io.EOF {
			if row != nil {
				t.Errorf("%s: io.EOF came with a row", table)
			}
			break
		}
		if err != nil {
			t.Fatalf("%s: row %d: %v", table, len(rows)+1, err)
		}
		if line := s.FirstLine + int64(len(rows)); row.Line != line {
			t.Errorf("%s: row %d has line %d, want %d", table, len(rows)+1, row.Line, line)
		}
		if row.Reject != "" {
			t.Errorf("%s: line %d rejected (%s)", table, row.Line, row.Reject)
		}
		if len(row.Fields) != len(columns) {
			t.Fatalf("%s: line %d has %d fields, want %d", table, row.Line, len(row.Fields), len(columns))
		}
		rows = append(rows, cloneAll(row.Fields))
	}
	d := r.Digest()
	if len(d) != 64 || strings.Trim(d, "0123456789abcdef") != "" {
		t.Errorf("%s: digest %q after io.EOF, want 64 hex digits", table, d)
	}
	return rows, d
}

func cloneAll(fields []string) []string {
	c := make([]string, len(fields))
	for i, f := range fields {
		c[i] = strings.Clone(f)
	}
	return c
}

// sameRows reports rows that differ from wantRows, a line each.
func sameRows(t *testing.T, what string, got, wantRows [][]string) {
	t.Helper()
	if len(got) != len(wantRows) {
		t.Errorf("%s: %d rows, want %d", what, len(got), len(wantRows))
	}
	for i := range min(len(got), len(wantRows)) {
		if !slices.Equal(got[i], wantRows[i]) {
			t.Errorf("%s: row %d: got %q, want %q", what, i+1, got[i], wantRows[i])
		}
	}
}

// testRows: both tables come back with the requested columns in order,
// every value as stored, lines one apart from FirstLine, and the tables
// have names.
func (s *Suite) testRows(t *testing.T) {
	ts := baseTables(s.LineBreaks)
	src := s.open(t, ts)
	for _, tb := range tables {
		got, _ := s.readAll(t, src, tb.name, tb.columns)
		sameRows(t, tb.name, got, want(t, *tb.of(&ts), tb.columns))
	}
	if u, c := src.Name(source.TableUsers), src.Name(source.TableConsent); u == "" || c == "" || u == c {
		t.Errorf("names %q and %q: want two different names", u, c)
	}
}

// testBatches: four goroutines taking batches at once get every row, in
// batches numbered from 0 without gaps that put back in order give the
// rows in order.
func (s *Suite) testBatches(t *testing.T) {
	ts := baseTables(s.LineBreaks)
	src := s.open(t, ts)
	for _, tb := range tables {
		r, err := src.Open(t.Context(), tb.name, tb.columns)
		if err != nil {
			t.Fatalf("open %s: %v", tb.name, err)
		}
		br := source.Batches(r)
		type batch struct {
			lines []int64
			rows  [][]string
		}
		var mu sync.Mutex
		bySeq := map[int]batch{}
		var wg sync.WaitGroup
		for range 4 {
			wg.Go(func() {
				var b source.Batch
				for {
					err := br.NextBatch(&b)
					if err == io.EOF {
						return
					}
					if err != nil {
						t.Errorf("%s: %v", tb.name, err)
						return
					}
					var c batch
					for _, row := range b.Rows {
						c.lines = append(c.lines, row.Line)
						c.rows = append(c.rows, cloneAll(row.Fields))
					}
					br.Release(&b)
					mu.Lock()
					if _, dup := bySeq[b.Seq]; dup {
						t.Errorf("%s: batch %d twice", tb.name, b.Seq)
					}
					bySeq[b.Seq] = c
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		if err := br.NextBatch(new(source.Batch)); err != io.EOF {
			t.Errorf("%s: NextBatch after io.EOF: %v, want io.EOF again", tb.name, err)
		}
		if r.Digest() == "" {
			t.Errorf("%s: no digest after io.EOF", tb.name)
		}
		r.Close()
		var got [][]string
		for seq := range len(bySeq) {
			b, ok := bySeq[seq]
			if !ok {
				t.Fatalf("%s: batch %d missing of %d", tb.name, seq, len(bySeq))
			}
			for i, line := range b.lines {
				if want := s.FirstLine + int64(len(got)+i); line != want {
					t.Errorf("%s: batch %d: line %d, want %d", tb.name, seq, line, want)
				}
			}
			got = append(got, b.rows...)
		}
		sameRows(t, tb.name+" in batches", got, want(t, *tb.of(&ts), tb.columns))
	}
}

// testDigest: two reads of a table give one digest; another value in it
// gives another.
func (s *Suite) testDigest(t *testing.T) {
	ts := baseTables(s.LineBreaks)
	src := s.open(t, ts)
	changed := baseTables(s.LineBreaks)
	changed.Users.Rows[2][1] = "06 1234 5679, ext. 12"
	changed.Consent.Rows[1][3] = "grant"
	other := s.open(t, changed)
	for _, tb := range tables {
		_, d1 := s.readAll(t, src, tb.name, tb.columns)
		_, d2 := s.readAll(t, src, tb.name, tb.columns)
		if d1 != d2 {
			t.Errorf("%s: digests %s and %s of two reads", tb.name, d1, d2)
		}
		if _, d3 := s.readAll(t, other, tb.name, tb.columns); d3 == d1 {
			t.Errorf("%s: digest %s of another table is the same", tb.name, d3)
		}
	}
}

// testMissingColumn: a table without a column asked for fails, at Open or
// at the first Next, with an error of the suite's kind naming the column.
func (s *Suite) testMissingColumn(t *testing.T) {
	kind := s.MissingColumn
	if kind == nil {
		kind = errkind.ErrConfig
	}
	for _, c := range []struct{ table, column string }{
		{source.TableUsers, "country"},
		{source.TableConsent, "policy_version"},
	} {
		t.Run(c.table, func(t *testing.T) {
			ts := baseTables(s.LineBreaks)
			for _, tb := range tables {
				if tb.name == c.table {
					*tb.of(&ts) = dropColumn(*tb.of(&ts), c.column)
				}
			}
			src := s.open(t, ts)
			columns := source.UserColumns
			if c.table == source.TableConsent {
				columns = source.EventColumns
			}
			r, err := src.Open(t.Context(), c.table, columns)
			if err == nil {
				_, err = r.Next()
				r.Close()
			}
			if !errors.Is(err, kind) || !strings.Contains(err.Error(), c.column) {
				t.Errorf("without %s: err = %v, want %v naming the column", c.column, err, kind)
			}
		})
	}
}

// dropColumn is tbl without column.
func dropColumn(tbl Table, column string) Table {
	j := slices.Index(tbl.Columns, column)
	out := Table{Columns: slices.Delete(slices.Clone(tbl.Columns), j, j+1)}
	for _, r := range tbl.Rows {
		out.Rows = append(out.Rows, slices.Delete(slices.Clone(r), j, j+1))
	}
	return out
}

// permute is tbl with its columns in the order of order (indexes of tbl's),
// and extra columns where order has -1, -2, ...: their values are text
// that would break a careless reader.
func permute(tbl Table, order []int) Table {
	var out Table
	for _, j := range order {
		name := tbl.Columns[max(j, 0)]
		if j < 0 {
			name = fmt.Sprintf("extra_%d", -j)
		}
		out.Columns = append(out.Columns, name)
	}
	for i, r := range tbl.Rows {
		var row []string
		for _, j := range order {
			v := fmt.Sprintf(`x%d,"%d"`, -j, i)
			if j >= 0 {
				v = r[j]
			}
			row = append(row, v)
		}
		out.Rows = append(out.Rows, row)
	}
	return out
}

// reorder reads tables stored with their columns permuted by order and
// checks that the rows are those of the base tables.
func (s *Suite) reorder(t *testing.T, users, consent []int) {
	ts := baseTables(s.LineBreaks)
	stored := Tables{Users: permute(ts.Users, users), Consent: permute(ts.Consent, consent)}
	src := s.open(t, stored)
	for _, tb := range tables {
		got, _ := s.readAll(t, src, tb.name, tb.columns)
		sameRows(t, tb.name, got, want(t, *tb.of(&ts), tb.columns))
	}
}

// testExtraColumns: columns beyond the contract's, before, between and
// after them, are ignored.
func (s *Suite) testExtraColumns(t *testing.T) {
	s.reorder(t, []int{-1, 0, 1, -2, 2, -3}, []int{0, 1, 2, 3, -1, 4, 5, 6, -2})
}

// testColumnOrder: the columns may come in any order.
func (s *Suite) testColumnOrder(t *testing.T) {
	s.reorder(t, []int{2, 0, 1}, []int{6, 5, 4, 3, 2, 1, 0})
}

// closes runs fn, failing t if it takes longer than closeTimeout.
func (s *Suite) closes(t *testing.T, what string, fn func() error) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- fn() }()
	select {
	case err := <-done:
		return err
	case <-time.After(closeTimeout):
		t.Fatalf("%s did not return in %v", what, closeTimeout)
		return nil
	}
}

// testClose: a reader closes after its last row and before its first;
// a Source closes with its readers closed, and without having opened one.
func (s *Suite) testClose(t *testing.T) {
	ts := baseTables(s.LineBreaks)
	t.Run("unopened", func(t *testing.T) {
		src := s.Store(t, ts)
		if err := s.closes(t, "Source.Close", src.Close); err != nil {
			t.Errorf("Source.Close without Open: %v", err)
		}
	})
	t.Run("after the end", func(t *testing.T) {
		src := s.Store(t, ts)
		for _, tb := range tables {
			s.readAll(t, src, tb.name, tb.columns) // closes its reader
		}
		if err := s.closes(t, "Source.Close", src.Close); err != nil {
			t.Errorf("Source.Close after both tables: %v", err)
		}
	})
	t.Run("before the end", func(t *testing.T) {
		src := s.Store(t, ts)
		r, err := src.Open(t.Context(), source.TableConsent, source.EventColumns)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := r.Next(); err != nil {
			t.Fatal(err)
		}
		if err := s.closes(t, "RowReader.Close before the end", r.Close); err != nil {
			t.Errorf("RowReader.Close before the end: %v", err)
		}
		s.closes(t, "Source.Close after a reader closed early", src.Close)
	})
}

// testEmpty: tables of a header and no rows yield io.EOF at once, from
// Next and from Batches, with a digest.
func (s *Suite) testEmpty(t *testing.T) {
	ts := baseTables(s.LineBreaks)
	ts.Users.Rows, ts.Consent.Rows = nil, nil
	src := s.open(t, ts)
	for _, tb := range tables {
		if rows, _ := s.readAll(t, src, tb.name, tb.columns); len(rows) != 0 {
			t.Errorf("%s: %d rows, want none", tb.name, len(rows))
		}
		r, err := src.Open(t.Context(), tb.name, tb.columns)
		if err != nil {
			t.Fatal(err)
		}
		br, b := source.Batches(r), new(source.Batch)
		for {
			err := br.NextBatch(b)
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(b.Rows) > 0 {
				t.Errorf("%s: a batch of %d rows", tb.name, len(b.Rows))
			}
		}
		r.Close()
	}
}
