package fsutil

import (
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestCopyDir: a run directory, with its adds/ and removes/, is copied
// whole, files and permissions; a symlink in it is refused (a run never
// writes one).
func TestCopyDir(t *testing.T) {
	src, dst := t.TempDir(), t.TempDir()
	files := map[string]string{"manifest.json": "{}", "part-00000.parquet": "p", "adds/part-00000.parquet": "a", "removes/part-00000.parquet": "r"}
	for name, body := range files {
		p := filepath.Join(src, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := CopyDir(src, dst); err != nil {
		t.Fatal(err)
	}
	for name, body := range files {
		b, err := os.ReadFile(filepath.Join(dst, name))
		if err != nil || string(b) != body {
			t.Errorf("%s: %q, %v", name, b, err)
		}
	}
	if st, err := os.Stat(filepath.Join(dst, "adds")); err != nil || st.Mode().Perm() != 0o755 {
		t.Errorf("adds/: %v, %v", st, err)
	}
	os.Symlink("/etc/passwd", filepath.Join(src, "adds", "link"))
	if err := CopyDir(src, t.TempDir()); err == nil || !strings.Contains(err.Error(), "neither a regular file nor a directory") {
		t.Errorf("a symlink: %v", err)
	}
}

func TestSHA256File(t *testing.T) {
	p := filepath.Join(t.TempDir(), "f")
	os.WriteFile(p, []byte("abc"), 0o600)
	sum, err := SHA256File(p)
	if want := "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"; err != nil || sum != want {
		t.Errorf("SHA256File = %s, %v; want %s", sum, err, want)
	}
	sum2, b, err := ReadFileSHA256(p)
	if err != nil || sum2 != sum || string(b) != "abc" {
		t.Errorf("ReadFileSHA256 = %s, %q, %v", sum2, b, err)
	}
}

// TestCreateDurableNeverReplaces: CreateDurable refuses an existing file
// and leaves it as it was, with no temp file beside it; WriteDurable
// replaces it; a failing writer leaves nothing.
func TestCreateDurableNeverReplaces(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "blinds")
	write := func(s string) func(io.Writer) error {
		return func(w io.Writer) error { _, err := io.WriteString(w, s); return err }
	}
	if err := CreateDurable(path, 0o600, write("first")); err != nil {
		t.Fatal(err)
	}
	if err := CreateDurable(path, 0o600, write("second")); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("a second create: %v, want fs.ErrExist", err)
	}
	if b, _ := os.ReadFile(path); string(b) != "first" {
		t.Fatalf("the existing file holds %q", b)
	}
	if err := WriteDurable(path, 0o600, write("replaced")); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(path); string(b) != "replaced" {
		t.Fatalf("after WriteDurable: %q", b)
	}
	if err := WriteDurable(filepath.Join(dir, "never"), 0o644, func(io.Writer) error { return io.ErrShortWrite }); err == nil {
		t.Fatal("a failing writer succeeded")
	}
	if es, _ := os.ReadDir(dir); len(es) != 1 {
		t.Fatalf("left behind: %v", es)
	}
}
