package pipeline

import (
	"bytes"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"audiencematch/hashing"
)

// TestEachPublishedID: the page decoder reads back what the part writer
// wrote, in both kinds of scheme, across pages, row groups and an early
// stop; and it refuses every column shape it does not decode rather than
// skipping values.
func TestEachPublishedID(t *testing.T) {
	const n = 20000 // several pages of 256 KiB, and three row groups below
	cfg := &Config{RowsPerFile: DefaultRowsPerFile, RowsPerGroup: 7000, ToolVersion: "test"}
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
			if err := eachPublishedID(path, s, func(i int64, _ []byte) bool { seen++; return i < 9000 }); err != nil || seen != 9001 {
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
			err := eachPublishedID(path, c.scheme, func(int64, []byte) bool { n++; return true })
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
	cfg := &Config{RowsPerFile: 9000, RowsPerGroup: 4000, ToolVersion: "test"}
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
			it := &publishedIter{scheme: s}
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
			it = &publishedIter{scheme: s, paths: []string{path}}
			it.Next()
			if _, _, err := it.Next(); !errors.Is(err, ErrData) || !strings.Contains(err.Error(), "not sorted") {
				t.Fatalf("err = %v, want ErrData: not sorted", err)
			}
		})
	}
}

// writeIDs writes ids, sorted, as the parts of a run under dir.
func writeIDs(tb testing.TB, dir string, cfg *Config, s hashing.Scheme, ids []string) []OutputFile {
	tb.Helper()
	w, err := newPartWriter(dir, nil, cfg, s, "")
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
