package source

import (
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/parquet-go/parquet-go"
)

// pqUser has the users table's columns: a required one, an optional one
// with nulls and a dictionary-encoded one.
type pqUser struct {
	UserID  string  `parquet:"user_id"`
	Phone   *string `parquet:"phone,optional"`
	Country string  `parquet:"country,dict"`
	Extra   int64   `parquet:"extra"` // not requested
}

func writePQ[T any](t *testing.T, path string, rows []T, opts ...parquet.WriterOption) {
	t.Helper()
	if err := parquet.WriteFile(path, rows, opts...); err != nil {
		t.Fatal(err)
	}
}

// pqUsers are n users whose texts say which row they are; every seventh
// phone is null (read as "").
func pqUsers(n int) (rows []pqUser, want [][]string) {
	for i := range n {
		u := pqUser{UserID: fmt.Sprintf("u%d", i), Country: []string{"US", "DE", "", "IN"}[i%4], Extra: int64(i)}
		phone := ""
		if i%7 != 3 {
			phone = fmt.Sprintf("+1 555 %07d", i)
			if i%11 == 0 {
				phone = "" // present but empty
			}
			u.Phone = &phone
		}
		rows = append(rows, u)
		want = append(want, []string{u.UserID, phone, u.Country})
	}
	return rows, want
}

// cloneFields copies a row's fields: their bytes are the reader's.
func cloneFields(f []string) []string {
	c := make([]string, len(f))
	for i, s := range f {
		c[i] = strings.Clone(s)
	}
	return c
}

// readRows reads every row of tbl with Next.
func readRows(t *testing.T, tbl RowReader) [][]string {
	t.Helper()
	var got [][]string
	for want := int64(1); ; want++ {
		row, err := tbl.Next()
		if err == io.EOF {
			return got
		}
		if err != nil {
			t.Fatal(err)
		}
		if row.Line != want || row.Reject != "" {
			t.Fatalf("row %d: line %d, reject %q", want, row.Line, row.Reject)
		}
		got = append(got, cloneFields(row.Fields))
	}
}

// TestParquetStrings: flat string columns are read from their pages
// (parquetStrings) to the same texts as through arrow's record batches,
// across row groups, pages, nulls, dictionaries, page versions and codecs,
// by Next and by concurrent batches.
func TestParquetStrings(t *testing.T) {
	rows, want := pqUsers(30_000)
	for _, c := range []struct {
		name string
		opts []parquet.WriterOption
	}{
		{"zstd v2 small pages", []parquet.WriterOption{parquet.Compression(&parquet.Zstd), parquet.MaxRowsPerRowGroup(7_001), parquet.PageBufferSize(2 << 10)}},
		{"snappy v1", []parquet.WriterOption{parquet.Compression(&parquet.Snappy), parquet.DataPageVersion(1), parquet.MaxRowsPerRowGroup(20_000)}},
		{"one row group", nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "users.parquet")
			writePQ(t, p, rows, c.opts...)
			open := func(rowsOnly bool) RowReader {
				tbl, err := openParquetTable(p, UserColumns, rowsOnly)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { tbl.Close() })
				return tbl
			}
			fast := open(false)
			if _, ok := fast.(*parquetStrings); !ok {
				t.Fatalf("string columns read by %T, want *parquetStrings", fast)
			}
			slow := open(true)
			if _, ok := slow.(*parquetTable); !ok {
				t.Fatalf("rowsOnly gives %T", slow)
			}
			got, viaArrow := readRows(t, fast), readRows(t, slow)
			if !slices.EqualFunc(viaArrow, want, slices.Equal) {
				t.Fatalf("arrow's rows differ from the rows written (%d of %d)", len(viaArrow), len(want))
			}
			if len(got) != len(want) {
				t.Fatalf("parquetStrings read %d rows of %d", len(got), len(want))
			}
			for i := range want {
				if !slices.Equal(got[i], want[i]) {
					t.Fatalf("parquetStrings' row %d: %q, want %q", i+1, got[i], want[i])
				}
			}
			if fast.Digest() == "" || fast.Digest() != slow.Digest() {
				t.Errorf("digests %q and %q", fast.Digest(), slow.Digest())
			}

			// Batches taken by four goroutines: numbered in order from 0,
			// each row where its line says.
			br := open(false).(BatchReader)
			byLine := make([][]string, len(want))
			seqs := map[int]bool{}
			var mu sync.Mutex
			var wg sync.WaitGroup
			for range 4 {
				wg.Go(func() {
					var b Batch
					for {
						err := br.NextBatch(&b)
						if errors.Is(err, io.EOF) {
							return
						}
						if err != nil {
							t.Error(err)
							return
						}
						mu.Lock()
						seqs[b.Seq] = true
						for _, r := range b.Rows {
							byLine[r.Line-1] = cloneFields(r.Fields)
						}
						mu.Unlock()
					}
				})
			}
			wg.Wait()
			for i := range len(seqs) {
				if !seqs[i] {
					t.Errorf("batch numbers %v: %d is missing", seqs, i)
				}
			}
			if !slices.EqualFunc(byLine, want, slices.Equal) {
				t.Error("rows read in concurrent batches differ from the rows written")
			}
		})
	}
}

// pqEvent has typed columns, which arrow turns into text (parquetTable).
type pqEvent struct {
	EventID       string     `parquet:"event_id"`
	UserID        string     `parquet:"user_id"`
	Purpose       string     `parquet:"purpose"`
	Action        string     `parquet:"action"`
	OccurredAt    *time.Time `parquet:"occurred_at,optional,timestamp(microsecond)"`
	PolicyVersion int32      `parquet:"policy_version"`
	Source        string     `parquet:"source"`
}

// TestParquetTypedColumns: integers are read in decimal, timestamps in RFC
// 3339 (UTC), a null as "": the texts the consent rules parse.
func TestParquetTypedColumns(t *testing.T) {
	at := time.Date(2026, 7, 23, 16, 21, 22, 123456000, time.FixedZone("", 5*3600+1800))
	var rows []pqEvent
	var want [][]string
	for i := range 20_000 {
		e := pqEvent{EventID: fmt.Sprintf("ev-%d", i), UserID: fmt.Sprintf("u%d", i/2), Purpose: "ads_matching",
			Action: "grant", PolicyVersion: int32(i%5 - 1), Source: "app"}
		when := ""
		if i%9 != 0 {
			ts := at.Add(time.Duration(i) * time.Second)
			e.OccurredAt = &ts
			when = ts.UTC().Format(time.RFC3339Nano)
		}
		rows = append(rows, e)
		want = append(want, []string{e.EventID, e.UserID, e.Purpose, e.Action, when, fmt.Sprint(e.PolicyVersion), e.Source})
	}
	p := filepath.Join(t.TempDir(), "events.parquet")
	writePQ(t, p, rows, parquet.MaxRowsPerRowGroup(6_000))
	tbl, err := openParquetTable(p, EventColumns, false)
	if err != nil {
		t.Fatal(err)
	}
	defer tbl.Close()
	if _, ok := tbl.(*parquetTable); !ok {
		t.Fatalf("typed columns read by %T, want *parquetTable", tbl)
	}
	got := readRows(t, tbl)
	if len(got) != len(want) {
		t.Fatalf("%d rows, want %d", len(got), len(want))
	}
	for i := range want {
		if !slices.Equal(got[i], want[i]) {
			t.Fatalf("row %d: %q, want %q", i+1, got[i], want[i])
		}
	}
}
