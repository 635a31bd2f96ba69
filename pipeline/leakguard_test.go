package pipeline

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/parquet-go/parquet-go"

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

func TestLeakGuard(t *testing.T) {
	for _, passBytes := range []int64{guardPassBytes, 1} {
		t.Run(fmt.Sprintf("pass of %d bytes", passBytes), func(t *testing.T) {
			defer func(old int64) { guardPassBytes = old }(guardPassBytes)
			guardPassBytes = passBytes // 1: a pass per group that has needles
			testLeakGuard(t)
		})
	}
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
func TestLeakGuardAcrossChunks(t *testing.T) {
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
		if len(g.pre) != 2 || len(g.exact) != 0 {
			t.Fatalf("%s: %d needles (want 2) and %d exact hashes (want 0) for strings that cannot be an id", s, len(g.pre), len(g.exact))
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
