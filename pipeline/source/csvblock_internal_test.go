package source

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
)

// randomCSVBody is lines of every kind the block reader must cut right:
// plain, quoted with doubled quotes, CRLF, blank, broken, wrong field
// count, and lines longer than maxRecordBytes; sometimes without a final
// line break.
func randomCSVBody(rng *rand.Rand, lines int) string {
	var b strings.Builder
	for i := range lines {
		switch rng.IntN(10) {
		case 0:
			b.WriteString("u" + strings.Repeat("9", maxRecordBytes+rng.IntN(3*maxRecordBytes)) + ",x,US")
		case 1:
			// blank
		case 2:
			b.WriteString(`"u""q",+1 650,US` + "\r")
		case 3:
			b.WriteString(`u,"open,US`)
		case 4:
			b.WriteString("u,1")
		default:
			b.WriteString("u" + strings.Repeat("x", rng.IntN(40)) + ",+44 7400 123456,GB")
		}
		if i < lines-1 || rng.IntN(2) == 0 {
			b.WriteString("\n")
		}
	}
	return b.String()
}

// wantRows reads body line by line, the reference the block reader must
// equal whatever its block size.
func wantRows(body string, firstLine int64) []Row {
	var rows []Row
	lines := strings.Split(body, "\n")
	for i, l := range lines {
		if i == len(lines)-1 && l == "" {
			break
		}
		n := firstLine + int64(i)
		size := len(l)
		if i < len(lines)-1 {
			size++
		}
		if size > maxRecordBytes+2 {
			rows = append(rows, Row{Line: n, Reject: RejectRecordTooLong})
			continue
		}
		l = strings.TrimSuffix(l, "\r")
		if l == "" {
			continue
		}
		f, err := splitCSV(l, nil)
		switch {
		case err != nil:
			rows = append(rows, Row{Line: n, Reject: RejectBrokenQuoting, Raw: l, Fields: readableRef(l, 3)})
		case len(f) != 3:
			rows = append(rows, Row{Line: n, Reject: RejectFieldCount, Raw: l, Fields: readableRef(l, 3)})
		default:
			rows = append(rows, Row{Line: n, Fields: f})
		}
	}
	return rows
}

// readableRef is the first n fields of a rejected line that can still be
// read: split at every comma, up to the first part with a quote in it.
func readableRef(l string, n int) []string {
	parts := strings.Split(l, ",")
	out, some := make([]string, n), false
	for i := range n {
		if i >= len(parts) || strings.Contains(parts[i], `"`) {
			break
		}
		out[i], some = parts[i], some || parts[i] != ""
	}
	if !some {
		return nil
	}
	return out
}

func sameRows(a, b []Row) bool {
	return slices.EqualFunc(a, b, func(x, y Row) bool {
		return x.Line == y.Line && x.Reject == y.Reject && x.Raw == y.Raw && slices.Equal(x.Fields, y.Fields)
	})
}

// TestCSVBlocks: for block sizes from a few bytes (lines straddle blocks,
// long lines span many) to the default, Next and parallel NextBatch return
// exactly the line-by-line reading, and the digest is the file's SHA-256.
func TestCSVBlocks(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for trial := range 20 {
		body := randomCSVBody(rng, 1+rng.IntN(40))
		file := "\xef\xbb\xbf\nuser_id,phone,country\n" + body
		p := filepath.Join(t.TempDir(), "u.csv")
		if err := os.WriteFile(p, []byte(file), 0o644); err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256([]byte(file))
		want := wantRows(body, 3)
		for _, size := range []int{16, 1000, maxRecordBytes + 3, 4 << 20} {
			SetCSVBlockSize(t, size)
			got, digest, err := readTable(p)
			if err != nil {
				t.Fatal(err)
			}
			if !sameRows(got, want) {
				t.Fatalf("trial %d, block size %d: Next read\n%.500v\nwant\n%.500v", trial, size, got, want)
			}
			if digest != hex.EncodeToString(sum[:]) {
				t.Fatalf("trial %d, block size %d: digest %s", trial, size, digest)
			}

			// Four workers taking batches at once, put back in order.
			tbl, err := OpenTable(p, UserColumns)
			if err != nil {
				t.Fatal(err)
			}
			br := Batches(tbl)
			var mu sync.Mutex
			bySeq := map[int][]Row{}
			var wg sync.WaitGroup
			for range 4 {
				wg.Go(func() {
					var b Batch
					for br.NextBatch(&b) == nil {
						rows := make([]Row, len(b.Rows))
						for i, r := range b.Rows {
							r.Fields = slices.Clone(r.Fields)
							rows[i] = r
						}
						mu.Lock()
						bySeq[b.Seq] = rows
						mu.Unlock()
					}
				})
			}
			wg.Wait()
			tbl.Close()
			got = got[:0]
			for seq := range len(bySeq) {
				rows, ok := bySeq[seq]
				if !ok {
					t.Fatalf("block size %d: batch %d missing of %d", size, seq, len(bySeq))
				}
				got = append(got, rows...)
			}
			if !sameRows(got, want) {
				t.Fatalf("trial %d, block size %d: batches read\n%.500v\nwant\n%.500v", trial, size, got, want)
			}
		}
	}
}

// TestCSVCloseEarly: closing a table before its end stops the reader.
func TestCSVCloseEarly(t *testing.T) {
	SetCSVBlockSize(t, 16)
	p := filepath.Join(t.TempDir(), "u.csv")
	os.WriteFile(p, []byte("user_id,phone,country\n"+strings.Repeat("u1,+16505551212,US\n", 10000)), 0o644)
	tbl, err := OpenTable(p, UserColumns)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tbl.Next(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { tbl.Close(); close(done) }()
	<-done
	ct := tbl.(*csvTable)
	for range ct.blocks { // the reader goroutine closes blocks once it stops
	}
}

// BenchmarkSplitCSV is the split of the fixtures' lines into fields:
// 10k lines an op (so that scripts/bench.sh's -benchtime 3x means
// something), consent events (7 fields) and user rows (3) in turn.
func BenchmarkSplitCSV(b *testing.B) {
	lines := make([]string, 10000)
	for i := range lines {
		if i%2 == 0 {
			lines[i] = fmt.Sprintf("ev-%d,acct-%06x,ads_matching,grant,2026-07-23T21:51:22+05:30,3,app_settings", i, i*7919)
		} else {
			lines[i] = fmt.Sprintf("acct-%06x,+31 6 %08d,NL", i*7919, i*104729%100000000)
		}
	}
	var fields []string
	for b.Loop() {
		for _, l := range lines {
			var err error
			if fields, err = splitCSV(l, fields[:0]); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.ReportMetric(float64(len(lines)*b.N)/b.Elapsed().Seconds(), "lines/s")
}

// TestCommaOrQuote: the 8-bytes-a-step search finds what a byte loop
// finds, from every start, in strings of bytes next to ',' and '"' in
// value (where a borrow could go wrong), high bytes and zeros.
func TestCommaOrQuote(t *testing.T) {
	alphabet := []byte{',', '"', ',' - 1, ',' + 1, '"' - 1, '"' + 1, 0, 1, 0x7f, 0x80, 0xac, 0xa2, 0xff, 'a', '0'}
	rng := rand.New(rand.NewPCG(3, 4))
	for range 20000 {
		b := make([]byte, rng.IntN(40))
		for i := range b {
			b[i] = alphabet[rng.IntN(len(alphabet))]
			if rng.IntN(3) > 0 { // mostly other bytes: long runs without a match
				b[i] = alphabet[2+rng.IntN(len(alphabet)-2)]
			}
		}
		s := string(b)
		for i := 0; i <= len(s); i++ {
			want := i
			for want < len(s) && s[want] != ',' && s[want] != '"' {
				want++
			}
			if got := commaOrQuote(s, i); got != want {
				t.Fatalf("commaOrQuote(%q, %d) = %d, want %d", s, i, got, want)
			}
		}
	}
}

// TestCopyRecords: NewCopyReader reads PostgreSQL's COPY CSV with its
// quoting, whatever the block size and with batches taken in parallel: a
// line break (LF or CRLF) inside quotes is data, Row.Line counts records
// (the header is 1), a record longer than maxRecordBytes is one reject and
// the next one is intact, and the digest is the stream's SHA-256.
func TestCopyRecords(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	values := []string{"", "u1", "+1 650 555 1212", "support ticket\n#123", "a\r\nb", `say "hi"`, "a,b", "\n", `"`, "x\n\n\"y\"\r\n"}
	quote := func(v string) string { // as COPY does: an empty string quoted, NULL not
		if v == "" || strings.ContainsAny(v, ",\"\r\n") {
			return `"` + strings.ReplaceAll(v, `"`, `""`) + `"`
		}
		return v
	}
	for trial := range 20 {
		var body strings.Builder
		var want []Row
		for i := range 1 + rng.IntN(60) {
			line := int64(i + 2)
			if rng.IntN(12) == 0 {
				long := "u" + strings.Repeat("\n9", maxRecordBytes/2+rng.IntN(maxRecordBytes))
				body.WriteString(quote(long) + ",x,US\n")
				want = append(want, Row{Line: line, Reject: RejectRecordTooLong})
				continue
			}
			f := []string{values[rng.IntN(len(values))], values[rng.IntN(len(values))], values[rng.IntN(len(values))]}
			body.WriteString(quote(f[0]) + "," + quote(f[1]) + "," + quote(f[2]) + "\n")
			want = append(want, Row{Line: line, Fields: f})
		}
		stream := "user_id,phone,country\n" + body.String()
		sum := sha256.Sum256([]byte(stream))
		for _, size := range []int{16, 1000, maxRecordBytes + 3, 4 << 20} {
			SetCSVBlockSize(t, size)
			r, err := NewCopyReader(io.NopCloser(strings.NewReader(stream)), UserColumns)
			if err != nil {
				t.Fatal(err)
			}
			var got []Row
			for {
				row, err := r.Next()
				if err == io.EOF {
					break
				}
				if err != nil {
					t.Fatal(err)
				}
				c := *row
				c.Fields = slices.Clone(row.Fields)
				got = append(got, c)
			}
			if !sameRows(got, want) {
				t.Fatalf("trial %d, block size %d: read\n%.500v\nwant\n%.500v", trial, size, got, want)
			}
			if d := r.Digest(); d != hex.EncodeToString(sum[:]) {
				t.Fatalf("trial %d, block size %d: digest %s", trial, size, d)
			}
			r.Close()

			r, _ = NewCopyReader(io.NopCloser(strings.NewReader(stream)), UserColumns)
			if got := readBatches(t, r); !sameRows(got, want) {
				t.Fatalf("trial %d, block size %d: batches read\n%.500v\nwant\n%.500v", trial, size, got, want)
			}
			r.Close()
		}
	}
}

// readBatches takes r's batches with four workers at once and puts them
// back in order.
func readBatches(t *testing.T, r RowReader) []Row {
	t.Helper()
	br := Batches(r)
	var mu sync.Mutex
	bySeq := map[int][]Row{}
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			var b Batch
			for br.NextBatch(&b) == nil {
				rows := make([]Row, len(b.Rows))
				for i, r := range b.Rows {
					r.Fields = slices.Clone(r.Fields)
					rows[i] = r
				}
				mu.Lock()
				bySeq[b.Seq] = rows
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	var got []Row
	for seq := range len(bySeq) {
		rows, ok := bySeq[seq]
		if !ok {
			t.Fatalf("batch %d missing of %d", seq, len(bySeq))
		}
		got = append(got, rows...)
	}
	return got
}

func TestRecordEnd(t *testing.T) {
	var vectors = []struct {
		s       string
		inQuote bool
		end     int
		after   bool
	}{
		{"a,b\nc", false, 3, false},
		{"\"a\nb\",c\nd", false, 7, false},
		{"\"a\"\"\n\"\"b\"\n", false, 9, false}, // "a""<LF>""b": the line break is inside quotes
		{"\"a\r\nb\"\r\n", false, 7, false},
		{"\"open\n", false, -1, true},
		{"abc", false, -1, false},
		{"x\"\ny\n", true, 2, false}, // a quoted value that began in an earlier buffer
		{"", false, -1, false},
	}
	for _, v := range vectors {
		if end, after := recordEnd(v.s, 0, v.inQuote); end != v.end || after != v.after {
			t.Errorf("recordEnd(%q, %v) = %d, %v; want %d, %v", v.s, v.inQuote, end, after, v.end, v.after)
		}
	}
}
