package objstore

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"audiencematch/pipeline/errkind"
)

// TestChecksumRefused: the store checks the SHA-256 Put sends; an object
// sent with another digest is refused, and nothing is stored.
func TestChecksumRefused(t *testing.T) {
	u := os.Getenv("AUDIENCEMATCH_TEST_S3_URL")
	if u == "" {
		t.Skip("AUDIENCEMATCH_TEST_S3_URL is not set: run scripts/test.sh, or eval \"$(scripts/s3.sh start)\" first")
	}
	s, err := Open(t.Context(), Join(u, fmt.Sprintf("sum%d", time.Now().UnixNano())))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	p := filepath.Join(t.TempDir(), "f")
	os.WriteFile(p, []byte("identifiers"), 0o600)
	wrong := strings.Repeat("ab", 32)
	err = s.Put(t.Context(), s.Key("f"), p, wrong)
	if err == nil || errors.Is(err, ErrConflict) {
		t.Fatalf("a wrong SHA-256: %v, want the store's refusal", err)
	}
	if err := Err(err, "write", s.Loc); !errors.Is(err, errkind.ErrTempFail) || !strings.Contains(err.Error(), "another SHA-256") {
		t.Errorf("the refusal reads %v, want a temporary failure naming the digest", err)
	}
	if ok, _ := s.Exists(t.Context(), s.Key("f")); ok {
		t.Fatal("the object was stored despite the wrong checksum")
	}
	if err := s.PutBytes(t.Context(), s.Key("g"), []byte("a")); err != nil {
		t.Fatal(err)
	}
	if err := s.PutBytes(t.Context(), s.Key("g"), []byte("a")); err != nil {
		t.Fatalf("the same object again: %v, want it accepted", err)
	}
	if err := s.PutBytes(t.Context(), s.Key("g"), []byte("b")); !errors.Is(err, ErrConflict) {
		t.Fatalf("another object under the key: %v, want ErrConflict", err)
	}
}

func TestJoinAndRedact(t *testing.T) {
	for _, c := range []struct{ loc, rel, want string }{
		{"s3://b/p?region=us-east-1&endpoint=http://h:1", "d/_LATEST", "s3://b/p/d/_LATEST?region=us-east-1&endpoint=http://h:1"},
		{"s3://b", "x", "s3://b/x"},
		{"/srv/out", "d/x", "/srv/out/d/x"},
	} {
		if got := Join(c.loc, c.rel); got != c.want {
			t.Errorf("Join(%q, %q) = %q, want %q", c.loc, c.rel, got, c.want)
		}
	}
	if got := Redact("s3://b/p?endpoint=http://internal:9000"); got != "s3://b/p" {
		t.Errorf("Redact = %q", got)
	}
	if p, ok := LocalPath("file:///srv/exports"); !ok || p != "/srv/exports" {
		t.Errorf("LocalPath(file:///srv/exports) = %q, %v", p, ok)
	}
}
