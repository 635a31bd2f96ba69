package idfile

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/parquet-go/parquet-go"

	"audiencematch/consent/audit"
	"audiencematch/hashing"
	"audiencematch/pipeline/errkind"
	"audiencematch/pipeline/manifest"
)

// TestEachPublishedID: the page decoder reads back what the part writer
// wrote, in both kinds of scheme, across pages, row groups and an early
// stop; and it refuses every column shape it does not decode rather than
// skipping values.
func TestEachPublishedID(t *testing.T) {
	const n = 20000 // several pages of 256 KiB, and three row groups below
	cfg := Layout{RowsPerFile: DefaultRowsPerFile, RowsPerGroup: 7000, ToolVersion: "test"}
	for _, s := range []hashing.Scheme{hashing.HMACSHA256, hashing.SHA256E164} {
		t.Run(string(s), func(t *testing.T) {
			h, err := hashing.NewHasher(s, hashing.DestKey{3})
			if err != nil {
				t.Fatal(err)
			}
			ids := make([]string, n)
			for i := range ids {
				ids[i] = h.ID(fmt.Sprintf("+4474%08d", i))
			}
			dir := t.TempDir()
			writeIDs(t, dir, cfg, s, ids)
			path := filepath.Join(dir, "part-00000.parquet")
			got, err := ReadPublishedIDs(path, s)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != n {
				t.Fatalf("read %d ids, wrote %d", len(got), n)
			}
			for i := range got {
				if !bytes.Equal(got[i], []byte(ids[i])) {
					t.Fatalf("id %d differs", i)
				}
			}
			seen := 0
			if err := EachPublishedID(path, s, func(i int64, _ []byte) bool { seen++; return i < 9000 }); err != nil || seen != 9001 {
				t.Fatalf("stopping at row 9000: %d ids seen, err %v", seen, err)
			}
		})
	}

	type optional struct {
		ID string `parquet:"id,optional"`
	}
	type dict struct {
		ID string `parquet:"id,dict"`
	}
	type named struct {
		Key string `parquet:"key"`
	}
	type two struct {
		ID    string `parquet:"id"`
		Phone string `parquet:"phone"`
	}
	type short struct {
		ID [16]byte `parquet:"id"`
	}
	id := strings.Repeat("ab", 32)
	for _, c := range []struct {
		name   string
		scheme hashing.Scheme
		write  func(path string)
		want   string
	}{
		{"optional column", hashing.SHA256E164, func(p string) { writePart(t, p, []optional{{id}}) }, "schema"},
		{"other name", hashing.SHA256E164, func(p string) { writePart(t, p, []named{{id}}) }, "schema"},
		{"extra column", hashing.SHA256E164, func(p string) { writePart(t, p, []two{{id, "x"}}) }, "schema"},
		{"text in a binary scheme", hashing.HMACSHA256, func(p string) { writePart(t, p, []TextIDRow{{id}}) }, "FIXED_LEN_BYTE_ARRAY(32)"},
		{"binary in a text scheme", hashing.SHA256E164, func(p string) { writePart(t, p, []BinaryIDRow{{}}) }, "schema"},
		{"16-byte ids", hashing.HMACSHA256, func(p string) { writePart(t, p, []short{{}}) }, "schema"},
		{"dictionary-encoded", hashing.SHA256E164, func(p string) { writePart(t, p, []dict{{id}, {id}}) }, "dictionary"},
	} {
		t.Run(c.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "part-00000.parquet")
			c.write(path)
			n := 0
			err := EachPublishedID(path, c.scheme, func(int64, []byte) bool { n++; return true })
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v, want one mentioning %q", err, c.want)
			}
			if n != 0 {
				t.Errorf("%d ids handed out before the error", n)
			}
		})
	}
}

// TestPublishedIter: the previous run's ids come back in order across files,
// row groups and pages, in both kinds of scheme, and a part out of order is
// refused.
func TestPublishedIter(t *testing.T) {
	cfg := Layout{RowsPerFile: 9000, RowsPerGroup: 4000, ToolVersion: "test"}
	for _, s := range []hashing.Scheme{hashing.HMACSHA256, hashing.SHA256E164} {
		t.Run(string(s), func(t *testing.T) {
			h, err := hashing.NewHasher(s, hashing.DestKey{5})
			if err != nil {
				t.Fatal(err)
			}
			ids := make([]string, 25000)
			for i := range ids {
				ids[i] = h.ID(fmt.Sprintf("+4474%08d", i))
			}
			slices.Sort(ids)
			dir := t.TempDir()
			files := writeIDs(t, dir, cfg, s, ids)
			if len(files) != 3 {
				t.Fatalf("%d files, want 3", len(files))
			}
			it := &PublishedIter{scheme: s}
			for _, f := range files {
				it.paths = append(it.paths, filepath.Join(dir, f.Path))
			}
			for i := 0; ; i++ {
				id, ok, err := it.Next()
				if err != nil {
					t.Fatal(err)
				}
				if !ok {
					if i != len(ids) {
						t.Fatalf("%d ids read, %d written", i, len(ids))
					}
					break
				}
				if i >= len(ids) || id != ids[i] {
					t.Fatalf("id %d differs", i)
				}
			}
			if it.r != nil {
				t.Error("the last file is still open")
			}

			// The same ids, the first two swapped, in one part.
			path := filepath.Join(t.TempDir(), "part-00000.parquet")
			ids[0], ids[1] = ids[1], ids[0]
			if s.Binary() {
				rows := make([]BinaryIDRow, len(ids))
				for i := range ids {
					rows[i].ID = [32]byte([]byte(ids[i]))
				}
				writePart(t, path, rows)
			} else {
				rows := make([]TextIDRow, len(ids))
				for i := range ids {
					rows[i].ID = ids[i]
				}
				writePart(t, path, rows)
			}
			it = NewPublishedIter([]string{path}, s)
			it.Next()
			if _, _, err := it.Next(); !errors.Is(err, errkind.ErrData) || !strings.Contains(err.Error(), "not sorted") {
				t.Fatalf("err = %v, want errkind.ErrData: not sorted", err)
			}
		})
	}
}

// writeIDs writes ids, sorted, as the parts of a run under dir.
func writeIDs(tb testing.TB, dir string, cfg Layout, s hashing.Scheme, ids []string) []manifest.OutputFile {
	tb.Helper()
	w, err := NewPartWriter(dir, nil, cfg, s, "")
	if err != nil {
		tb.Fatal(err)
	}
	for _, id := range ids {
		if err := w.Add(id); err != nil {
			tb.Fatal(err)
		}
	}
	files, err := w.Close()
	if err != nil {
		tb.Fatal(err)
	}
	return files
}

// TestEvidenceIter: a previous run's identifiers read from its evidence
// are its primary rows' identifiers, in order, across read batches; the
// end is reported only once their tree matches the run's record, and rows
// out of order or of the wrong shape are refused.
func TestEvidenceIter(t *testing.T) {
	const n = 3000 // several batches of the reader
	h, err := hashing.NewHasher(hashing.HMACSHA256, hashing.DestKey{4})
	if err != nil {
		t.Fatal(err)
	}
	ids := make([]string, n)
	for i := range ids {
		ids[i] = h.ID(fmt.Sprintf("+4474%08d", i))
	}
	slices.Sort(ids)
	var rows []EvidenceRow
	var tree audit.TreeRoot
	for i, id := range ids {
		rows = append(rows, EvidenceRow{ID: hex.EncodeToString([]byte(id)), UserID: fmt.Sprint("u", i), EventID: "e", Primary: true})
		if i%3 == 0 { // a second holder of the number: not an identifier of its own
			rows = append(rows, EvidenceRow{ID: rows[len(rows)-1].ID, UserID: fmt.Sprint("v", i), EventID: "e"})
		}
		tree.Append([]byte(id))
	}
	rec := &audit.Record{RunID: "prev", IDs: tree.Summary()}
	open := func(rows []EvidenceRow, rec *audit.Record) *EvidenceIter {
		path := filepath.Join(t.TempDir(), "evidence.parquet")
		if err := parquet.WriteFile(path, rows); err != nil {
			t.Fatal(err)
		}
		er, err := OpenEvidence(path)
		if err != nil {
			t.Fatal(err)
		}
		return &EvidenceIter{r: er, path: path, prev: rec, scheme: hashing.HMACSHA256}
	}
	drain := func(it *EvidenceIter) ([]string, error) {
		var got []string
		for {
			id, ok, err := it.Next()
			if !ok {
				return got, err
			}
			got = append(got, id)
		}
	}

	got, err := drain(open(rows, rec))
	if err != nil || !slices.Equal(got, ids) {
		t.Fatalf("read %d ids (err %v), want the %d primary ones in order", len(got), err, len(ids))
	}

	// Another run's record: every id is read, and the end is an error.
	other := &audit.Record{RunID: "prev", IDs: &audit.Tree{Size: rec.IDs.Size, Root: strings.Repeat("0", 64)}}
	it := open(rows, other)
	got, err = drain(it)
	if len(got) != n || !errors.Is(err, errkind.ErrData) || !strings.Contains(err.Error(), "does not match its audit record") {
		t.Fatalf("against another record: %d ids, err %v", len(got), err)
	}
	if _, ok, again := it.Next(); ok || again == nil {
		t.Error("the error is not kept")
	}

	// A primary row dropped, or its holder changed to a secondary one
	// (rows holds p0 s0 p1 p2 p3 s3 ...: rows[4] is p3).
	for name, edit := range map[string]func([]EvidenceRow) []EvidenceRow{
		"row dropped":    func(r []EvidenceRow) []EvidenceRow { return slices.Delete(r, 4, 5) },
		"primary turned": func(r []EvidenceRow) []EvidenceRow { r[4].Primary = false; return r },
	} {
		if _, err := drain(open(edit(slices.Clone(rows)), rec)); !errors.Is(err, errkind.ErrData) {
			t.Errorf("%s: err %v, want errkind.ErrData", name, err)
		}
	}

	swapped := slices.Clone(rows)
	swapped[0], swapped[2] = swapped[2], swapped[0] // p1 s0 p0: p1 is read, then p0 refused
	if got, err := drain(open(swapped, rec)); len(got) != 1 || !errors.Is(err, errkind.ErrData) || !strings.Contains(err.Error(), "not sorted") {
		t.Errorf("out of order: %d ids, err %v", len(got), err)
	}
	bad := slices.Clone(rows)
	bad[3].ID = "zz" + bad[3].ID[2:] // p2, after p0 and p1
	if got, err := drain(open(bad, rec)); len(got) != 2 || !errors.Is(err, errkind.ErrData) || !strings.Contains(err.Error(), "shape") {
		t.Errorf("not hex: %d ids, err %v", len(got), err)
	}
}

// writePart writes rows as one Parquet file at path.
func writePart[T any](t *testing.T, path string, rows []T) {
	t.Helper()
	if err := parquet.WriteFile(path, rows); err != nil {
		t.Fatal(err)
	}
}

// TestStrArena: kept strings survive until reset, whatever their size, and
// a reset arena fills its blocks again instead of allocating new ones.
func TestStrArena(t *testing.T) {
	var a strArena
	var kept, want []string
	for i := range 3000 {
		s := strings.Repeat(string(rune('a'+i%26)), 1+i*7%1500)
		if i == 1234 {
			s = strings.Repeat("z", 3<<20) // longer than a block
		}
		kept, want = append(kept, a.keep(s)), append(want, s)
	}
	if !slices.Equal(kept, want) {
		t.Fatal("a kept string changed before reset")
	}
	blocks := len(a.blocks)
	for range 3 {
		a.reset()
		kept = kept[:0]
		for _, s := range want {
			kept = append(kept, a.keep(s))
		}
		if !slices.Equal(kept, want) {
			t.Fatal("a kept string changed after a reset")
		}
	}
	if len(a.blocks) != blocks {
		t.Fatalf("the same strings after a reset took %d blocks, first %d", len(a.blocks), blocks)
	}
}

// TestSchemaRootName: a published file's schema root says what it holds,
// under every scheme.
func TestSchemaRootName(t *testing.T) {
	for _, s := range hashing.Schemes() {
		dir := t.TempDir()
		w, err := NewPartWriter(dir, nil, Layout{RowsPerFile: 10, RowsPerGroup: 10, ToolVersion: "test"}, s, "")
		if err != nil {
			t.Fatal(err)
		}
		files, err := w.Close()
		if err != nil {
			t.Fatal(err)
		}
		f, err := parquet.OpenFile(bytes.NewReader(mustRead(t, filepath.Join(dir, files[0].Path))), files[0].Bytes)
		if err != nil {
			t.Fatal(err)
		}
		if got := f.Schema().Name(); got != SchemaName {
			t.Errorf("%s: schema root %q, want %q", s, got, SchemaName)
		}
		if got := f.Metadata().Schema[0].Name; got != "identifiers" {
			t.Errorf("%s: footer's root %q, want identifiers", s, got)
		}
	}
}

func mustRead(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
