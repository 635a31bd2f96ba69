package idcache

import (
	"bytes"
	"crypto/sha512"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"audiencematch/hashing"
)

func testKey(t *testing.T) Key {
	t.Helper()
	sk, err := hashing.DeriveOPRFKey(hashing.TestKey(t), "meta-ads")
	if err != nil {
		t.Fatal(err)
	}
	k, err := DeriveKey(sk, "meta-ads")
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// fakeID stands in for an evaluation: the cache never computes one.
func fakeID(e164 string) []byte { s := sha512.Sum512([]byte(e164)); return s[:] }

func build(t *testing.T, dir, path string, key Key, keyID string, numbers []string) int64 {
	t.Helper()
	b, err := NewBuilder(filepath.Join(dir, fmt.Sprintf("cache-%d.spill", len(numbers))))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Drop()
	tg := NewTagger(key)
	w := b.Writer()
	for _, n := range numbers {
		tag := tg.Tag(n)
		w.Add(&tag, fakeID(n))
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	n, err := b.Write(path, key, keyID)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func TestRoundTrip(t *testing.T) {
	if len(version)+1 != 25 {
		t.Fatalf("headerLen assumes a 24-byte version, %q has %d", version, len(version))
	}
	dir := t.TempDir()
	path := Path(filepath.Join(dir, "state"), "meta-ads")
	key := testKey(t)
	var numbers []string
	for i := range 5000 {
		numbers = append(numbers, fmt.Sprintf("+1650555%04d", i))
	}
	numbers = append(numbers, numbers[:100]...) // shared numbers are looked up twice
	if n := build(t, dir, path, key, "89fa0444ee6d7862", numbers); n != 5000 {
		t.Fatalf("wrote %d entries, want 5000 distinct", n)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("cache mode %v, want 0600", st.Mode().Perm())
	}
	if dst, _ := os.Stat(filepath.Dir(path)); dst.Mode().Perm() != 0o700 {
		t.Errorf("cache directory mode %v, want 0700", dst.Mode().Perm())
	}
	raw, _ := os.ReadFile(path)
	for _, n := range numbers[:50] {
		if bytes.Contains(raw, []byte(n)) || bytes.Contains(raw, []byte(n[1:])) {
			t.Fatalf("the cache holds a phone number in clear")
		}
	}
	c, why, err := Open(path, key, "89fa0444ee6d7862")
	if err != nil || why != "" {
		t.Fatalf("Open: %q, %v", why, err)
	}
	defer c.Close()
	if c.Len() != 5000 {
		t.Errorf("Len = %d, want 5000", c.Len())
	}
	tg := NewTagger(key)
	for _, n := range numbers {
		tag := tg.Tag(n)
		if got := c.Lookup(&tag); !bytes.Equal(got, fakeID(n)) {
			t.Fatalf("Lookup(%s) = %x, want its id", n, got)
		}
	}
	for _, n := range []string{"+16505559999", "+447400123456"} {
		tag := tg.Tag(n)
		if got := c.Lookup(&tag); got != nil {
			t.Errorf("Lookup of a number never cached = %x", got)
		}
	}
	// Another key finds nothing: its tags differ.
	other := key
	other[0] ^= 1
	tag := NewTagger(other).Tag(numbers[0])
	if c.Lookup(&tag) != nil {
		t.Error("a tag under another key found an entry")
	}
}

func TestOpenDiscardsWhatItCannotTrust(t *testing.T) {
	key := testKey(t)
	const keyID = "89fa0444ee6d7862"
	numbers := []string{"+16505551212", "+16505551213", "+447400123456"}
	cases := []struct {
		name   string
		keyID  string
		key    Key
		tamper func(t *testing.T, path string)
		want   string
	}{
		{"rotated key", "0123456789abcdef", key, nil, "another key_id"},
		{"flipped id byte", keyID, key, func(t *testing.T, p string) { flip(t, p, headerLen+TagLen+3) }, "MAC does not match"},
		{"flipped mac", keyID, key, func(t *testing.T, p string) { flip(t, p, -1) }, "MAC does not match"},
		{"other cache key", keyID, func() Key { k := key; k[5] ^= 1; return k }(), nil, "MAC does not match"},
		{"truncated", keyID, key, func(t *testing.T, p string) {
			b, _ := os.ReadFile(p)
			os.WriteFile(p, b[:len(b)-EntryLen], 0o600)
		}, "do not hold"},
		{"readable by others", keyID, key, func(t *testing.T, p string) { os.Chmod(p, 0o644) }, "owner-only"},
		{"not a cache", keyID, key, func(t *testing.T, p string) { os.WriteFile(p, bytes.Repeat([]byte("x"), 200), 0o600) }, "not a version 1"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			path := Path(dir, "meta-ads")
			build(t, dir, path, key, keyID, numbers)
			if c.tamper != nil {
				c.tamper(t, path)
			}
			cache, why, err := Open(path, c.key, c.keyID)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(why, c.want) || cache.Len() != 0 {
				t.Errorf("Open: discarded %q with %d entries, want a reason mentioning %q and an empty cache", why, cache.Len(), c.want)
			}
			if _, err := os.Stat(path); !os.IsNotExist(err) {
				t.Errorf("a discarded cache is still there: %v", err)
			}
		})
	}
	c, why, err := Open(filepath.Join(t.TempDir(), "none.cache"), key, keyID)
	if err != nil || why != "" || c.Len() != 0 {
		t.Errorf("a missing cache: %d entries, %q, %v; want an empty cache", c.Len(), why, err)
	}
}

func flip(t *testing.T, path string, at int) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if at < 0 {
		at += len(b)
	}
	b[at] ^= 0x40
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestKeysRedact(t *testing.T) {
	k := testKey(t)
	for _, s := range []string{k.String(), fmt.Sprintf("%v %#v", k, k)} {
		if !strings.Contains(s, "redacted") || strings.Contains(s, fmt.Sprintf("%x", k[:4])) {
			t.Errorf("%q", s)
		}
	}
}
