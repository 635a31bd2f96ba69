package idcache

import (
	"bytes"
	"crypto/sha512"
	"fmt"
	"os"
	"path/filepath"
	"slices"
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
	n, _, err := b.Write(path, key, keyID, EmptySet())
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

// TestNextGeneration: the next cache keeps the entries the run found, drops
// those it did not look up, adds its new ones in order; a run that found
// everything and added nothing leaves the file as it is.
func TestNextGeneration(t *testing.T) {
	dir := t.TempDir()
	path := Path(dir, "meta-ads")
	key := testKey(t)
	const keyID = "89fa0444ee6d7862"
	var first []string
	for i := range 3000 {
		first = append(first, fmt.Sprintf("+1650555%04d", i))
	}
	build(t, dir, path, key, keyID, first)
	c, _, err := OpenSet(path, key, keyID)
	if err != nil {
		t.Fatal(err)
	}
	tg := NewTagger(key)
	b, err := NewBuilder(filepath.Join(dir, "next.spill"))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Drop()
	w := b.Writer()
	var second []string // every other old number, and 500 new ones
	for i, n := range first {
		if i%2 == 0 {
			second = append(second, n)
		}
	}
	for i := range 500 {
		second = append(second, fmt.Sprintf("+4474001%05d", i))
	}
	for _, n := range second {
		tag := tg.Tag(n)
		if c.Lookup(&tag) == nil {
			w.Add(&tag, fakeID(n))
		}
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	n, wrote, err := b.Write(path, key, keyID, c)
	if err != nil || !wrote || n != 2000 {
		t.Fatalf("Write: %d entries, wrote %v, %v; want 2000", n, wrote, err)
	}
	c.Close()
	c2, why, err := OpenSet(path, key, keyID)
	if err != nil || len(why) != 0 || c2.Len() != 2000 || c2.Delta.Len() != 0 {
		t.Fatalf("the next cache: %d entries, %q, %v", c2.Len(), why, err)
	}
	for i := 1; i < c2.Base.Len(); i++ {
		if bytes.Compare(c2.Base.tag(i-1), c2.Base.tag(i)) >= 0 {
			t.Fatalf("entries %d and %d out of order", i-1, i)
		}
	}
	for _, n := range second {
		tag := tg.Tag(n)
		if got := c2.Lookup(&tag); !bytes.Equal(got, fakeID(n)) {
			t.Fatalf("%s: %x", n, got)
		}
	}
	tag := tg.Tag(first[1])
	if c2.Lookup(&tag) != nil {
		t.Error("an entry the run did not look up was kept")
	}
	// Everything found again, nothing new: no rewrite.
	st0, _ := os.Stat(path)
	b3, _ := NewBuilder(filepath.Join(dir, "third.spill"))
	defer b3.Drop()
	for _, n := range second {
		tag := tg.Tag(n)
		c2.Lookup(&tag)
	}
	if n, wrote, err := b3.Write(path, key, keyID, c2); err != nil || wrote || n != 2000 {
		t.Errorf("an unchanged cache: %d entries, wrote %v, %v; want no rewrite", n, wrote, err)
	}
	if st1, _ := os.Stat(path); !os.SameFile(st0, st1) {
		t.Error("the unchanged cache file was replaced")
	}
	// A few new numbers: a delta beside the same base.
	b4, _ := NewBuilder(filepath.Join(dir, "fourth.spill"))
	defer b4.Drop()
	w4 := b4.Writer()
	third := append(slices.Clone(second), "+61412000001", "+61412000002", "+61412000002")
	for _, n := range third {
		tag := tg.Tag(n)
		if c2.Lookup(&tag) == nil {
			w4.Add(&tag, fakeID(n))
		}
	}
	w4.Flush()
	if n, wrote, err := b4.Write(path, key, keyID, c2); err != nil || !wrote || n != 2002 {
		t.Fatalf("a delta: %d entries, wrote %v, %v; want 2002", n, wrote, err)
	}
	c2.Close()
	if st1, _ := os.Stat(path); !os.SameFile(st0, st1) {
		t.Error("a small change rewrote the base")
	}
	c3, why, err := OpenSet(path, key, keyID)
	if err != nil || len(why) != 0 || c3.Base.Len() != 2000 || c3.Delta.Len() != 2 {
		t.Fatalf("base and delta: %d and %d entries, %q, %v", c3.Base.Len(), c3.Delta.Len(), why, err)
	}
	for _, n := range third {
		tag := tg.Tag(n)
		if got := c3.Lookup(&tag); !bytes.Equal(got, fakeID(n)) {
			t.Fatalf("%s: %x", n, got)
		}
	}
	c3.Close()
	// A base that cannot be trusted takes its delta with it.
	flip(t, path, headerLen+5)
	c4, why, err := OpenSet(path, key, keyID)
	if err != nil || c4.Len() != 0 || len(why) != 1 {
		t.Fatalf("a tampered base: %d entries, %q, %v", c4.Len(), why, err)
	}
	if _, err := os.Stat(path + DeltaSuffix); !os.IsNotExist(err) {
		t.Error("the delta of a discarded base is still there")
	}
}

// BenchmarkLookup is a hit's cost in a run: the tag, then the lookup, in a
// cache of 200k entries.
func BenchmarkLookup(b *testing.B) {
	dir := b.TempDir()
	path := Path(dir, "meta-ads")
	sk, _ := hashing.DeriveOPRFKey(hashing.TestKey(b), "meta-ads")
	key, _ := DeriveKey(sk, "meta-ads")
	var numbers []string
	for i := range 200000 {
		numbers = append(numbers, fmt.Sprintf("+4474%08d", i))
	}
	bl, _ := NewBuilder(filepath.Join(dir, "b.spill"))
	w, tg := bl.Writer(), NewTagger(key)
	for _, n := range numbers {
		tag := tg.Tag(n)
		w.Add(&tag, fakeID(n))
	}
	w.Flush()
	if _, _, err := bl.Write(path, key, "89fa0444ee6d7862", EmptySet()); err != nil {
		b.Fatal(err)
	}
	bl.Drop()
	c, _, err := Open(path, key, "89fa0444ee6d7862")
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	b.Run("tag", func(b *testing.B) {
		i := 0
		for b.Loop() {
			tg.Tag(numbers[i%len(numbers)])
			i++
		}
	})
	b.Run("tag+lookup", func(b *testing.B) {
		i := 0
		for b.Loop() {
			tag := tg.Tag(numbers[(i*7919)%len(numbers)])
			if c.Lookup(&tag) == nil {
				b.Fatal("miss")
			}
			i++
		}
	})
}
