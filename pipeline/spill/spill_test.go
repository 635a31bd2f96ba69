package spill

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
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

// TestOpenIndex: a digested spill opened by another process with its index
// reads back every partition as written, its Sum is the SHA-256 of its
// file, and an index that does not fit the file is refused as corrupt.
func TestOpenIndex(t *testing.T) {
	const parts = 5
	path := filepath.Join(t.TempDir(), "d.spill")
	sp, err := New(path, parts, Options{Digest: true})
	if err != nil {
		t.Fatal(err)
	}
	sw := sp.Writer()
	for i := range 5000 {
		p := i % parts
		sw.Put(p, binary.AppendUvarint(AppendStr(sw.Buf(p), strings.Repeat("r", i%50)), uint64(i)))
	}
	if err := errors.Join(sw.Flush(), sp.Sync(), sp.Close()); err != nil {
		t.Fatal(err)
	}
	body, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if sum := sha256.Sum256(body); sp.Sum() != hex.EncodeToString(sum[:]) {
		t.Errorf("Sum %s, want the file's SHA-256 %x", sp.Sum(), sum)
	}
	index := sp.Index()
	op, err := Open(path, index)
	if err != nil {
		t.Fatal(err)
	}
	defer op.Close()
	if op.Parts() != parts {
		t.Fatalf("%d partitions, want %d", op.Parts(), parts)
	}
	for p := range parts {
		got, err := op.AppendPart(nil, p)
		if err != nil {
			t.Fatal(err)
		}
		want := make([]byte, 0, sp.Size(p))
		for _, c := range sp.chunks[p] {
			want = append(want, body[c.off:c.off+c.n]...)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("partition %d: %d bytes back, want %d", p, len(got), len(want))
		}
	}
	for name, bad := range map[string][]byte{
		"empty":          nil,
		"no partitions":  {0},
		"truncated":      index[:len(index)-1],
		"trailing bytes": append(slices.Clip(index), 0),
		"past the end":   binary.AppendUvarint(binary.AppendUvarint([]byte{1, 1}, uint64(len(body))), 1),
	} {
		if _, err := Open(path, bad); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s index: %v, want ErrCorrupt", name, err)
		}
	}
}

// FuzzOpen: any index either opens a spill whose every chunk lies within
// the file, or is refused; nothing panics.
func FuzzOpen(f *testing.F) {
	path := filepath.Join(f.TempDir(), "f.spill")
	if err := os.WriteFile(path, make([]byte, 100), 0o600); err != nil {
		f.Fatal(err)
	}
	f.Add([]byte{1, 1, 0, 100})
	f.Add([]byte{2, 0, 2, 0, 50, 50, 50})
	f.Fuzz(func(t *testing.T, index []byte) {
		s, err := Open(path, index)
		if err != nil {
			return
		}
		defer s.Close()
		for p := range s.Parts() {
			if _, err := s.AppendPart(nil, p); err != nil {
				t.Fatalf("partition %d of an index Open accepted: %v", p, err)
			}
		}
	})
}

// TestSplit: every record of a partition, over several spills, goes to the
// sub-partition rec gives, once; the partition's other spills' partitions
// are left alone.
func TestSplit(t *testing.T) {
	const parts, subs = 4, 16
	dir := t.TempDir()
	var srcs []*Spill
	want := make([][]string, subs)
	for k := range 2 {
		sp, err := New(filepath.Join(dir, fmt.Sprintf("s%d.spill", k)), parts, Options{Digest: k == 1})
		if err != nil {
			t.Fatal(err)
		}
		defer sp.Drop()
		sw := sp.Writer()
		for i := range 3000 {
			rec := fmt.Sprintf("s%d-%d", k, i)
			p := i % parts
			sw.Put(p, AppendStr(sw.Buf(p), rec))
			if p == 2 {
				want[len(rec)%subs] = append(want[len(rec)%subs], rec)
			}
		}
		if err := sw.Flush(); err != nil {
			t.Fatal(err)
		}
		srcs = append(srcs, sp)
	}
	sp, err := Split(filepath.Join(dir, "split.spill"), srcs, 2, subs, func(b []byte) (int, int, error) {
		rd := NewReader(b)
		rec := rd.Str()
		return len(b) - rd.Len(), len(rec) % subs, rd.Err()
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sp.Drop()
	if sp.Parts() != subs {
		t.Fatalf("%d sub-partitions, want %d", sp.Parts(), subs)
	}
	for q := range subs {
		var got []string
		err := EachChunk([]*Spill{sp}, q, new([]byte), func(b []byte) error {
			for rd := NewReader(b); rd.More(); {
				got = append(got, strings.Clone(rd.Str()))
				if err := rd.Err(); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		slices.Sort(got)
		slices.Sort(want[q])
		if !slices.Equal(got, want[q]) {
			t.Fatalf("sub-partition %d: %d records, want %d", q, len(got), len(want[q]))
		}
	}
	// A record rec cannot place fails the split, which leaves no file.
	bad := errors.New("unplaceable")
	if _, err := Split(filepath.Join(dir, "bad.spill"), srcs, 2, subs, func([]byte) (int, int, error) { return 0, 0, bad }); !errors.Is(err, bad) {
		t.Fatalf("Split with a failing rec: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "bad.spill")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a failed split left its file: %v", err)
	}
}

// BenchmarkSpill is a spill's round trip as the users stage and the join
// make it: two writers put 1M records of about 30 bytes into 1,024
// partitions, then every partition is read back whole and decoded; with
// and without groups.
func BenchmarkSpill(b *testing.B) {
	const parts, writers, recs = 1024, 2, 1 << 20
	for _, grouped := range []bool{false, true} {
		b.Run(fmt.Sprintf("grouped=%v", grouped), func(b *testing.B) {
			o := Options{}
			if grouped {
				o.GroupWriters = writers
			}
			var buf []byte
			for b.Loop() {
				sp, err := New(filepath.Join(b.TempDir(), "t.spill"), parts, o)
				if err != nil {
					b.Fatal(err)
				}
				var wg sync.WaitGroup
				for w := range writers {
					sw := sp.Writer()
					wg.Go(func() {
						for i := range recs / writers {
							p := (i*7919 + w) % parts
							sw.Put(p, AppendStr(AppendStr(AppendStr(sw.Buf(p), "acct-0001234"), "+447400123456"), "GB"))
						}
						if err := sw.Flush(); err != nil {
							b.Error(err)
						}
					})
				}
				wg.Wait()
				n := 0
				for p := range parts {
					if buf, err = sp.AppendPart(buf[:0], p); err != nil {
						b.Fatal(err)
					}
					for rd := NewReader(buf); rd.More(); n++ {
						rd.Str()
						rd.Str()
						rd.Str()
					}
					sp.Consumed(p)
				}
				if n != recs {
					b.Fatalf("%d records, want %d", n, recs)
				}
				sp.Drop()
			}
			b.ReportMetric(float64(recs)*float64(b.N)/b.Elapsed().Seconds(), "records/s")
		})
	}
}
