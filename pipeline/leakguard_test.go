package pipeline

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/parquet-go/parquet-go"
	"github.com/parquet-go/parquet-go/encoding/thrift"
	"github.com/parquet-go/parquet-go/format"

	"audiencematch/hashing"
)

func writePart[T any](t *testing.T, path string, rows []T, opts ...parquet.WriterOption) {
	t.Helper()
	os.MkdirAll(filepath.Dir(path), 0o755)
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	w := parquet.NewGenericWriter[T](f, opts...)
	if _, err := w.Write(rows); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	f.Close()
}

func TestLeakGuard(t *testing.T) { withGuardSizes(t, testLeakGuard) }

// withGuardSizes runs fn with the default passes and batches, then with
// the smallest.
func withGuardSizes(t *testing.T, fn func(t *testing.T)) {
	for _, small := range []bool{false, true} {
		t.Run(fmt.Sprintf("small passes and batches %v", small), func(t *testing.T) {
			if small {
				smallGuardPasses(t)
			}
			fn(t)
		})
	}
}

// smallGuardPasses makes the guard take an exact pass per group that has
// hashes, and index as few raw bytes at once as it can, until t ends.
func smallGuardPasses(t *testing.T) {
	setUntilEnd(t, &guardPassBytes, 1)
	setUntilEnd(t, &guardRawBytes, 1)
}

func testLeakGuard(t *testing.T) {
	g := newLeakGuard(1, t.TempDir())
	hexUser := strings.Repeat("ab", 32) // a user id that looks like a hex identifier
	for _, s := range []string{"acct-zbh251", " +44 7400 123456 ", "+447400123456", hexUser, "u1"} {
		g.Add(s)
	}
	h, _ := hashing.NewHasher(hashing.SHA256E164, hashing.DestKey{})
	good := TextIDRow{ID: h.ID("+447400123456")}
	cases := []struct {
		name  string
		plant func(dir string)
		want  string
	}{
		{"clean", func(dir string) {
			writePart(t, filepath.Join(dir, "part-00000.parquet"), []TextIDRow{good})
			os.WriteFile(filepath.Join(dir, "manifest.json"), []byte(`{"run_id":"x"}`), 0o644)
		}, ""},
		{"a needle's first 8 bytes, then others", func(dir string) {
			writePart(t, filepath.Join(dir, "part-00000.parquet"), []TextIDRow{good})
			os.WriteFile(filepath.Join(dir, "manifest.json"), []byte(`{"n":"+447400199999","m":"acct-zbh2","u":"u1"}`), 0o644)
		}, ""},
		{"raw phone in metadata", func(dir string) {
			writePart(t, filepath.Join(dir, "part-00000.parquet"), []TextIDRow{good}, parquet.KeyValueMetadata(metaScheme, "+44 7400 123456"))
		}, "byte"},
		{"user id in manifest", func(dir string) {
			writePart(t, filepath.Join(dir, "part-00000.parquet"), []TextIDRow{good})
			os.WriteFile(filepath.Join(dir, "manifest.json"), []byte(`{"note":"acct-zbh251"}`), 0o644)
		}, "manifest.json: byte 9"},
		{"E.164 in a removes file", func(dir string) {
			writePart(t, filepath.Join(dir, "removes", "part-00000.parquet"), []TextIDRow{good}, parquet.KeyValueMetadata(metaKeyID, "+447400123456"))
		}, "removes"},
		{"user id as an identifier", func(dir string) {
			writePart(t, filepath.Join(dir, "part-00000.parquet"), []TextIDRow{{ID: hexUser}})
		}, "equals a phone number or user id"},
		{"extra column", func(dir string) {
			type row struct {
				ID    string `parquet:"id"`
				Phone string `parquet:"phone"`
			}
			writePart(t, filepath.Join(dir, "part-00000.parquet"), []row{{good.ID, "x"}})
		}, "columns other than"},
		{"unknown metadata", func(dir string) {
			writePart(t, filepath.Join(dir, "part-00000.parquet"), []TextIDRow{good}, parquet.KeyValueMetadata("note", "hello"))
		}, "unexpected key-value metadata"},
		{"dictionary-encoded ids", func(dir string) {
			type row struct {
				ID string `parquet:"id,dict"`
			}
			writePart(t, filepath.Join(dir, "part-00000.parquet"), []row{{good.ID}, {good.ID}})
		}, "DICTIONARY_PAGE page"},
		{"leak in the second of many files", func(dir string) {
			for i := range 5 {
				writePart(t, filepath.Join(dir, fmt.Sprintf("part-%05d.parquet", i)), []TextIDRow{good, good})
			}
			os.WriteFile(filepath.Join(dir, "a.json"), []byte(`{}`), 0o644)
			os.WriteFile(filepath.Join(dir, "b.json"), []byte(`{"user": "acct-zbh251", "phone": "+447400123456"}`), 0o644)
		}, "b.json: byte 10"},
		{"wrong shape", func(dir string) {
			writePart(t, filepath.Join(dir, "part-00000.parquet"), []TextIDRow{{ID: "not-an-id"}})
		}, "exact shape"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			c.plant(dir)
			err := g.Check(dir, hashing.SHA256E164, hashing.SHA256E164)
			var le *LeakError
			if c.want == "" && err != nil {
				t.Fatalf("clean output flagged: %v", err)
			}
			if c.want != "" && (!errors.As(err, &le) || !strings.Contains(err.Error(), c.want)) {
				t.Fatalf("err = %v, want a LeakError mentioning %q", err, c.want)
			}
			if err != nil && (strings.Contains(err.Error(), "7400") || strings.Contains(err.Error(), "acct-")) {
				t.Errorf("the error repeats the leaked value: %v", err)
			}
		})
	}
}

// TestLeakGuardAcrossChunks: a needle straddling the scan's chunk boundary
// is still found.
func TestLeakGuardAcrossChunks(t *testing.T) { withGuardSizes(t, testLeakGuardAcrossChunks) }

func testLeakGuardAcrossChunks(t *testing.T) {
	g := newLeakGuard(1, t.TempDir())
	g.Add("acct-straddle")
	dir := t.TempDir()
	b := []byte(strings.Repeat("x", (1<<20)-5) + "acct-straddle" + strings.Repeat("y", 100))
	os.WriteFile(filepath.Join(dir, "manifest.json"), b, 0o644)
	if err := g.Check(dir, hashing.HMACSHA256, hashing.HMACSHA256); err == nil || !strings.Contains(err.Error(), "byte 1048571") {
		t.Fatalf("err = %v", err)
	}
}

// TestLeakGuardExactEveryScheme: an input string shaped like an identifier
// of any scheme is caught when published as that scheme's id, while strings
// that cannot be an id stay out of the exact index.
func TestLeakGuardExactEveryScheme(t *testing.T) {
	for _, s := range hashing.Schemes() {
		h, err := hashing.NewHasher(s, hashing.DestKey{1})
		if err != nil {
			t.Fatal(err)
		}
		id := h.ID("+447400123456") // an input value that happens to be a valid id
		g := newLeakGuard(7, t.TempDir())
		g.Add("acct-zbh251")
		g.Add("+447400123456")
		if err := g.finish(); err != nil {
			t.Fatal(err)
		}
		if err := g.load(0, guardGroups); err != nil {
			t.Fatal(err)
		}
		if n := prefixNeedles(t, g); n != 2 || len(g.exact) != 0 {
			t.Fatalf("%s: %d needles (want 2) and %d exact hashes (want 0) for strings that cannot be an id", s, n, len(g.exact))
		}
		g.Add(id)
		dir := t.TempDir()
		if s.Binary() {
			writePart(t, filepath.Join(dir, "part-00000.parquet"), []BinaryIDRow{{ID: [32]byte([]byte(id))}})
		} else {
			writePart(t, filepath.Join(dir, "part-00000.parquet"), []TextIDRow{{ID: id}})
		}
		// Binary and base64 ids are also in the raw scan, which may see
		// them first; hex ids are left to the exact check alone.
		err = g.Check(dir, s, s)
		var le *LeakError
		if !errors.As(err, &le) {
			t.Errorf("%s: err = %v, want a LeakError", s, err)
		} else if strings.Trim(id, "0123456789abcdef") == "" && !strings.Contains(err.Error(), "equals a phone number or user id") {
			t.Errorf("%s: err = %v, want the exact check to refuse", s, err)
		}
	}
}

// prefixNeedles counts the raw scan's needles.
func prefixNeedles(t *testing.T, g *leakGuard) int {
	n := 0
	var buf []byte
	for p := guardGroups; p < guardParts; p++ {
		err := eachChunk(g.srcs, p, &buf, func(b []byte) error {
			rd := spillReader{b: b}
			for rd.more() {
				readNeedle(&rd)
				n++
			}
			return rd.err()
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	return n
}

// TestLeakGuardCountsEveryPage: every id in the data pages is checked, even
// past the row count a patched footer gives (the reader decodes the pages'
// values; checkIDs would refuse a file it decoded fewer of), and a file
// whose column chunk counts fewer values than its pages is refused.
func TestLeakGuardCountsEveryPage(t *testing.T) {
	h, _ := hashing.NewHasher(hashing.SHA256E164, hashing.DestKey{})
	hexUser := strings.Repeat("ab", 32)
	for _, c := range []struct {
		name  string
		patch func(md *format.FileMetaData)
		want  string
	}{
		{"rows", func(md *format.FileMetaData) { md.NumRows, md.RowGroups[0].NumRows = 1, 1 }, "row 1: id equals a phone number or user id"},
		{"values", func(md *format.FileMetaData) { md.RowGroups[0].Columns[0].MetaData.NumValues = 1 }, "pages hold 2 values, the column chunk says 1"},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "part-00000.parquet")
			writePart(t, path, []TextIDRow{{ID: h.ID("+447400123456")}, {ID: hexUser}})
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			pf, err := parquet.OpenFile(bytes.NewReader(b), int64(len(b)))
			if err != nil {
				t.Fatal(err)
			}
			md := *pf.Metadata()
			c.patch(&md)
			footer, err := thrift.Marshal(new(thrift.CompactProtocol), &md)
			if err != nil {
				t.Fatal(err)
			}
			old := int(binary.LittleEndian.Uint32(b[len(b)-8:]))
			b = append(b[:len(b)-8-old], footer...)
			b = append(binary.LittleEndian.AppendUint32(b, uint32(len(footer))), "PAR1"...)
			if err := os.WriteFile(path, b, 0o644); err != nil {
				t.Fatal(err)
			}
			g := newLeakGuard(1, t.TempDir())
			g.Add(hexUser)
			err = g.Check(dir, hashing.SHA256E164, hashing.SHA256E164)
			var le *LeakError
			if !errors.As(err, &le) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v, want a LeakError mentioning %q", err, c.want)
			}
		})
	}
}

// TestLeakGuardFirstLeakInOrder: the id check runs a row group per task on
// every core, and still reports the first leak in file and row order, with
// its row number in the file.
func TestLeakGuardFirstLeakInOrder(t *testing.T) {
	h, _ := hashing.NewHasher(hashing.SHA256E164, hashing.DestKey{})
	hexUser := strings.Repeat("ab", 32)
	rows := func(leaks ...int) []TextIDRow {
		out := make([]TextIDRow, 10)
		for i := range out {
			out[i].ID = h.ID(fmt.Sprintf("+4474001234%02d", i))
		}
		for _, i := range leaks {
			out[i].ID = hexUser
		}
		return out
	}
	small := parquet.MaxRowsPerRowGroup(3) // four row groups a file
	for _, c := range []struct {
		name   string
		a, b   []int // leaking rows of part 0 and part 1
		badEnd bool  // part 0's last id has the wrong shape
		want   string
	}{
		{"one leak in the third group", nil, []int{7}, false, "part-00001.parquet: row 7: id equals"},
		{"two leaks, the first reported", []int{8, 4}, []int{1}, false, "part-00000.parquet: row 4: id equals"},
		{"a shape error in the first file wins", nil, []int{1}, true, "part-00000.parquet: row 9: id does not have the exact shape"},
		{"clean", nil, nil, false, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			a := rows(c.a...)
			if c.badEnd {
				a[9].ID = "not-an-id"
			}
			writePart(t, filepath.Join(dir, "part-00000.parquet"), a, small)
			writePart(t, filepath.Join(dir, "part-00001.parquet"), rows(c.b...), small)
			g := newLeakGuard(1, t.TempDir())
			g.Add(hexUser)
			err := g.Check(dir, hashing.SHA256E164, hashing.SHA256E164)
			if c.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v, want %q", err, c.want)
			}
		})
	}
}
