package spill

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
)

// TestSpillReaderVarint: varint reads what binary.AppendVarint wrote,
// negative and extreme values included, and a truncated one is an error.
func TestSpillReaderVarint(t *testing.T) {
	vals := []int64{0, 1, -1, 63, -64, 64, -65, 1 << 40, -(1 << 40), math.MaxInt64, math.MinInt64}
	var b []byte
	for _, v := range vals {
		b = binary.AppendVarint(b, v)
	}
	rd := NewReader(b)
	for _, want := range vals {
		if got := rd.Varint(); got != want {
			t.Fatalf("varint = %d, want %d", got, want)
		}
	}
	if rd.More() || rd.Err() != nil {
		t.Fatalf("after every value: more %v, err %v", rd.More(), rd.Err())
	}
	rd = NewReader(binary.AppendVarint(nil, math.MinInt64)[:3])
	if rd.Varint(); rd.Err() == nil {
		t.Fatal("a truncated varint was read without an error")
	}
}

// TestSpillRoundTrip: every record written by concurrent writers comes
// back from its own partition, and nothing else does, for a digested spill
// (one file, written in order) and an undigested one (a file per writer,
// chunks staged): short records, records that fill a chunk, and records
// longer than a chunk and than a writer's whole stage.
func TestSpillRoundTrip(t *testing.T) {
	const parts, writers = 37, 3
	for _, digest := range []bool{false, true} {
		sp, err := New(filepath.Join(t.TempDir(), "t.spill"), parts, Options{Digest: digest})
		if err != nil {
			t.Fatal(err)
		}
		want := make([][]string, parts)
		var mu sync.Mutex
		var wg sync.WaitGroup
		for w := range writers {
			sw := sp.Writer()
			wg.Go(func() {
				rng := rand.New(rand.NewPCG(uint64(w), 9))
				for i := range 20000 {
					size := rng.IntN(40)
					switch i % 1000 {
					case 7:
						size = spillChunk + rng.IntN(100)
					case 500:
						size = stageSize + rng.IntN(5000)
					}
					rec := fmt.Sprintf("w%d-%d-", w, i) + strings.Repeat("x", size)
					p := rng.IntN(parts)
					sw.Put(p, AppendStr(sw.Buf(p), rec))
					mu.Lock()
					want[p] = append(want[p], rec)
					mu.Unlock()
				}
				if err := sw.Flush(); err != nil {
					t.Error(err)
				}
			})
		}
		wg.Wait()
		if digest != (len(sp.own) == 0) {
			t.Fatalf("digest %v: %d writer files", digest, len(sp.own))
		}
		total := 0
		for p := range parts {
			b, err := sp.AppendPart(nil, p)
			if err != nil {
				t.Fatal(err)
			}
			if int64(len(b)) != sp.Size(p) {
				t.Fatalf("partition %d: read %d bytes, size says %d", p, len(b), sp.Size(p))
			}
			var got []string
			rd := NewReader(b)
			for rd.More() {
				got = append(got, strings.Clone(rd.Str()))
			}
			if rd.Err() != nil {
				t.Fatalf("partition %d: %v", p, rd.Err())
			}
			slices.Sort(got)
			slices.Sort(want[p])
			if !slices.Equal(got, want[p]) {
				t.Fatalf("digest %v, partition %d: %d records back, %d written, or different ones", digest, p, len(got), len(want[p]))
			}
			total += len(got)
		}
		if total != writers*20000 {
			t.Fatalf("%d records in all, want %d", total, writers*20000)
		}
		sp.Drop()
	}
}

// TestSpillGroups: a grouped spill keeps each group of partitions in
// files of its own and removes them once every partition of the group has
// been consumed, not before: partitions read in any order read back what
// was written, and a group's files go with its last partition.
func TestSpillGroups(t *testing.T) {
	const parts, writers, per = 4 * spillGroups, 3, 4
	sp, err := New(filepath.Join(t.TempDir(), "t.spill"), parts, Options{GroupWriters: writers})
	if err != nil {
		t.Fatal(err)
	}
	defer sp.Drop()
	if sp.per != per {
		t.Fatalf("%d partitions a group, want %d", sp.per, per)
	}
	want := make([][]string, parts)
	for w := range writers {
		sw := sp.Writer()
		rng := rand.New(rand.NewPCG(uint64(w), 3))
		for i := range 20000 {
			rec := fmt.Sprintf("w%d-%d-", w, i) + strings.Repeat("x", rng.IntN(40))
			p := rng.IntN(parts)
			sw.Put(p, AppendStr(sw.Buf(p), rec))
			want[p] = append(want[p], rec)
		}
		if err := sw.Flush(); err != nil {
			t.Fatal(err)
		}
	}
	files := make([][]string, spillGroups) // each group's file names
	for g, fs := range sp.gfiles {
		if len(fs) != writers {
			t.Fatalf("group %d has %d files, want one a writer", g, len(fs))
		}
		for _, f := range fs {
			files[g] = append(files[g], f.Name())
		}
	}
	exists := func(name string) bool { _, err := os.Stat(name); return err == nil }
	left := make([]int, spillGroups)
	for g := range left {
		left[g] = per
	}
	for _, p := range rand.New(rand.NewPCG(1, 2)).Perm(parts) {
		b, err := sp.AppendPart(nil, p)
		if err != nil {
			t.Fatalf("partition %d, after %v left of each group: %v", p, left, err)
		}
		var got []string
		for rd := NewReader(b); rd.More(); {
			got = append(got, strings.Clone(rd.Str()))
		}
		slices.Sort(got)
		slices.Sort(want[p])
		if !slices.Equal(got, want[p]) {
			t.Fatalf("partition %d: %d records back, %d written, or different ones", p, len(got), len(want[p]))
		}
		sp.Consumed(p)
		g := p / per
		left[g]--
		for _, name := range files[g] {
			if exists(name) != (left[g] > 0) {
				t.Fatalf("group %d with %d partitions left: %s exists %v", g, left[g], name, exists(name))
			}
		}
	}
	if len(sp.own) != 0 {
		t.Errorf("%d writer files still held after every group was consumed", len(sp.own))
	}

	// A digested spill is one file written in order: never grouped.
	dg, err := New(filepath.Join(t.TempDir(), "d.spill"), parts, Options{Digest: true, GroupWriters: writers})
	if err != nil {
		t.Fatal(err)
	}
	defer dg.Drop()
	if dg.per != 0 {
		t.Fatal("a digested spill was grouped")
	}

	// Many writers: fewer groups, so that the files stay within
	// maxGroupFiles; one group is no grouping.
	for _, c := range []struct{ writers, groups int }{{8, 16}, {9, 8}, {64, 2}, {65, 0}} {
		many, err := New(filepath.Join(t.TempDir(), "m.spill"), parts, Options{GroupWriters: c.writers})
		if err != nil {
			t.Fatal(err)
		}
		if len(many.gfiles) != c.groups || (c.groups > 0 && many.per*c.groups != parts) {
			t.Errorf("%d writers: %d groups of %d partitions, want %d groups", c.writers, len(many.gfiles), many.per, c.groups)
		}
		many.Drop()
	}
	dg.Consumed(0) // a no-op
}
