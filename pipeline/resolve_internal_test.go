package pipeline

import (
	"bytes"
	"context"
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
	"time"

	"github.com/parquet-go/parquet-go"
	"golang.org/x/mod/sumdb/tlog"

	"audiencematch/consent"
	"audiencematch/consent/audit"
	"audiencematch/fixtures"
	"audiencematch/hashing"
	"audiencematch/pipeline/idfile"
	"audiencematch/pipeline/source"
	"audiencematch/pipeline/spill"
)

// TestIDBucketerSub: a bucket's sub-buckets keep identifier order, for
// every scheme: (bucket, sub-bucket) never decreases along sorted ids, and
// the sub-buckets are used evenly enough to bound their size.
func TestIDBucketerSub(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, s := range hashing.Schemes() {
		h, err := hashing.NewHasher(s, hashing.DestKey{3})
		if err != nil {
			t.Fatal(err)
		}
		n := 200000
		if s == hashing.OPRFRistretto255 {
			n = 20000 // evaluations are far dearer than HMACs; the alphabet is hmac-sha256's
		}
		ids := make([]string, n)
		for i := range ids {
			ids[i] = h.ID(string(rune(rng.Uint32())) + "+4474001" + string(rune('0'+i%10)) + string(rune(i)))
		}
		slices.Sort(ids)
		for _, parts := range []int{bucketParts, spillParts} {
			bk := newIDBucketer(s, parts)
			last, used := -1, map[int]int{}
			for _, id := range ids {
				fine := bk.of([]byte(id))*spillParts + bk.sub(id)
				if fine < last {
					t.Fatalf("%s, %d buckets: %x comes after a larger sub-bucket (%d < %d)", s, parts, id, fine, last)
				}
				last = fine
				used[fine]++
			}
			// Spread evenly, n ids over m sub-buckets use about
			// m(1-e^(-n/m)) of them.
			m := float64(parts * spillParts)
			if want := m * (1 - math.Exp(-float64(len(ids))/m)); float64(len(used)) < 0.95*want {
				t.Errorf("%s, %d buckets: %d ids in only %d sub-buckets, want about %.0f", s, parts, len(ids), len(used), want)
			}
		}
	}
}

// TestSortDigests: sorting by 8-byte keys gives the byte order, also when
// digests share their first 8 bytes (the tie-break the snapshot's random
// digests almost never reach).
func TestSortDigests(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for _, n := range []int{0, 1, 50, 5000, 100000} {
		lines := make([][sha256.Size]byte, n)
		for i := range lines {
			for j := range lines[i] {
				lines[i][j] = byte(rng.Uint32())
			}
			if i%3 == 0 { // a third share one of four 8-byte prefixes
				copy(lines[i][:8], []byte{0, 0, 0, 0, 0, 0, 0, byte(i % 4)})
			}
		}
		if n > 1 {
			lines[1] = lines[0] // and two are equal
		}
		want := slices.Clone(lines)
		slices.SortFunc(want, func(a, b [sha256.Size]byte) int { return bytes.Compare(a[:], b[:]) })
		_, got := sortDigests(lines, nil, nil)
		if !slices.Equal(got, want) {
			t.Fatalf("%d lines: sortDigests differs from sorting by bytes.Compare", n)
		}
		// Evenly spread, as SHA-256 digests are: the bins' insertion sort.
		for i := range lines {
			binary.BigEndian.PutUint64(lines[i][:8], rng.Uint64()>>(i%2)) // and a narrower range for half
		}
		want = slices.Clone(lines)
		slices.SortFunc(want, func(a, b [sha256.Size]byte) int { return bytes.Compare(a[:], b[:]) })
		if _, got = sortDigests(lines, nil, got[:0]); !slices.Equal(got, want) {
			t.Fatalf("%d spread lines: sortDigests differs from sorting by bytes.Compare", n)
		}
	}
}

// TestUserIndex: users are numbered in order of addition and found again,
// also when their hashes clash (here, all of them or every other one), and
// a partition's users are gone after a reset, whether the next partition
// is as large (the whole table emptied) or much smaller (only its slots).
func TestUserIndex(t *testing.T) {
	for _, hash := range []func(i int) uint64{
		func(i int) uint64 { return uint64(i) * 0x9e3779b97f4a7c15 },
		func(int) uint64 { return 7 },
		func(i int) uint64 { return uint64(i / 2) },
	} {
		x := newUserIndex()
		sizes := []int{1000, 1000, 20000, 10, 10, 3000}
		for round, n := range sizes {
			x.reset()
			if slices.ContainsFunc(x.keys, func(k uint64) bool { return k != 0 }) {
				t.Fatalf("round %d: slots still full after the reset", round)
			}
			for i := range sizes[max(round-1, 0)] {
				if k, ok := x.get(hash(i), fmt.Sprintf("acct-%d-%d", round-1, i)); round > 0 && ok {
					t.Fatalf("round %d: a user of round %d found after the reset (number %d)", round, round-1, k)
				}
			}
			for i := range n {
				id := fmt.Sprintf("acct-%d-%d", round, i)
				if _, ok := x.get(hash(i), id); ok {
					t.Fatalf("%s found before it was added", id)
				}
				if k := x.add(hash(i), id); k != int32(i) {
					t.Fatalf("%s numbered %d, want %d", id, k, i)
				}
			}
			for i := range n {
				id := fmt.Sprintf("acct-%d-%d", round, i)
				if k, ok := x.get(hash(i), id); !ok || k != int32(i) {
					t.Fatalf("%s: got %d, %v, want %d", id, k, ok, i)
				}
				if _, ok := x.get(hash(i), id+"x"); ok {
					t.Fatalf("%sx found, never added", id)
				}
			}
		}
	}
}

// BenchmarkSortDigests is one snapshot bucket at 10M users: 40k digests.
func BenchmarkSortDigests(b *testing.B) {
	lines := make([][sha256.Size]byte, 40000)
	for i := range lines {
		lines[i] = sha256.Sum256(binary.LittleEndian.AppendUint64(nil, uint64(i)))
	}
	var keys []sortKey
	var sorted [][sha256.Size]byte
	for b.Loop() {
		keys, sorted = sortDigests(lines, keys[:0], sorted[:0])
	}
}

// TestEvidenceWriterBatches: the evidence file holds the bucket's rows
// exactly, and their leaves are the ones the record's tree was built from,
// also when a batch is written between two holders of one number (the
// batch's strings are then reused: a row still pointing at them changed).
func TestEvidenceWriterBatches(t *testing.T) {
	var want []idfile.EvidenceRow
	var buckets []*resolvedBucket
	for b := range 2 {
		rb := &resolvedBucket{}
		for k := range 10 {
			row := exportRow{id: fmt.Sprintf("id-%d-%02d", b, k), eid: fmt.Sprintf("%064x", b*100+k)}
			for j := range k%4 + 1 {
				rb.holders = append(rb.holders, bucketHolder{userID: fmt.Sprintf("user-%d-%02d-%d", b, k, j), eventID: fmt.Sprintf("event-%d", j)})
				row.holders = append(row.holders, int32(len(rb.holders)-1))
				want = append(want, idfile.EvidenceRow{ID: row.eid, UserID: fmt.Sprintf("user-%d-%02d-%d", b, k, j), EventID: fmt.Sprintf("event-%d", j), Primary: j == 0})
			}
			rb.export = append(rb.export, row)
		}
		rb.leafHashes()
		buckets = append(buckets, rb)
	}
	for _, batch := range []int{1, 3, 4, 1000} {
		path := filepath.Join(t.TempDir(), "evidence.parquet")
		idfile.SetEvidenceBatch(t, batch)
		ew, err := idfile.NewEvidenceWriter(path, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		var leaves []tlog.Hash
		for _, rb := range buckets {
			if err := writeEvidence(ew, rb); err != nil {
				t.Fatal(err)
			}
			leaves = append(leaves, rb.evLeaves...)
		}
		if err := ew.Close(); err != nil {
			t.Fatal(err)
		}
		got, err := parquet.ReadFile[idfile.EvidenceRow](path)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(got, want) {
			t.Fatalf("batches of %d: the file's rows differ from the buckets'", batch)
		}
		for i, e := range got {
			if tlog.RecordHash(audit.EvidenceLeaf(e.ID, e.UserID, e.EventID, e.Primary)) != leaves[i] {
				t.Fatalf("batches of %d: row %d's leaf differs from the tree's", batch, i)
			}
		}
	}
}

// TestMergeRejects: shards' rejects come out in the run's order (consent
// events, then users, each by line) whatever shard holds them; a shard's
// rows out of that order, or a file that is not what its digest says,
// stop the merge.
func TestMergeRejects(t *testing.T) {
	dir := t.TempDir()
	shard := func(name string, rows ...rejectRow) (string, string) {
		var b strings.Builder
		b.WriteString("table,line,reason,raw\n")
		for _, x := range rows {
			fmt.Fprintf(&b, "%s,%d,%s,%s\n", x.table, x.line, x.reason, x.raw)
		}
		d := filepath.Join(dir, name)
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, "rejects.csv"), []byte(b.String()), 0o600); err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256([]byte(b.String()))
		return d, hex.EncodeToString(sum[:])
	}
	merge := func(shards ...[]rejectRow) ([]rejectRow, error) {
		var srcs []*shardRejects
		for i, rows := range shards {
			d, sum := shard(fmt.Sprint("s", i), rows...)
			sr, err := openShardRejects(d, sum, fmt.Sprint("shard ", i))
			if err != nil {
				return nil, err
			}
			defer sr.Close()
			srcs = append(srcs, sr)
		}
		var got []rejectRow
		err := mergeRejects(srcs, func(table string, line int64, reason, raw string) {
			got = append(got, rejectRow{table, line, reason, raw})
		})
		return got, err
	}
	c := func(line int64) rejectRow { return rejectRow{source.TableConsent, line, "bad", fmt.Sprint("c", line)} }
	u := func(line int64) rejectRow { return rejectRow{source.TableUsers, line, "bad", fmt.Sprint("u", line)} }
	got, err := merge([]rejectRow{c(2), c(9), u(1), u(7)}, nil, []rejectRow{c(5), u(3), u(4)}, []rejectRow{u(2)})
	want := []rejectRow{c(2), c(5), c(9), u(1), u(2), u(3), u(4), u(7)}
	if err != nil || !slices.Equal(got, want) {
		t.Fatalf("merged %v (%v), want %v", got, err, want)
	}
	if _, err := merge([]rejectRow{c(2)}, []rejectRow{u(4), c(3)}); err == nil || !strings.Contains(err.Error(), "out of order") {
		t.Errorf("a shard's rows out of order: %v", err)
	}
	d, _ := shard("changed", c(1), u(1))
	sr, err := openShardRejects(d, strings.Repeat("0", 64), "shard 0")
	if err != nil {
		t.Fatal(err)
	}
	defer sr.Close()
	if err := mergeRejects([]*shardRejects{sr}, func(string, int64, string, string) {}); err == nil || !strings.Contains(err.Error(), "does not match its digest") {
		t.Errorf("a file not matching its digest: %v", err)
	}
}

// TestEachResolvedHeld: fn may keep a bucket past its return until it
// releases it, from another goroutine: no worker reuses a bucket still
// held, the buckets come in order, and an error stops the run while held
// buckets are still released later. With buckets whole and split.
func TestEachResolvedHeld(t *testing.T) {
	const holders = 20_000
	s, bk := spillHolders(t, bucketParts, holders, func(i int) (int, consent.Status) { return i, consent.Valid })
	// At 4 KiB some of the buckets (about 80 holders, 4 KiB each) split.
	for _, split := range []int64{defaultSpillThresholds.splitBytes, 4 << 10} {
		t.Run(fmt.Sprintf("splitBytes=%d", split), func(t *testing.T) {
			// A slow reader checks each bucket, long after fn returned,
			// against what fn saw, then releases it.
			type held struct {
				rb      *resolvedBucket
				release func()
				ids     []string
			}
			calls := 0
			run := func(stopAt int) (got []string, err error) {
				ch := make(chan held, bucketParts)
				var wg sync.WaitGroup
				var mismatch []string
				wg.Go(func() {
					for x := range ch {
						if len(x.ids) > 0 {
							time.Sleep(50 * time.Microsecond)
						}
						for i := range x.rb.export {
							if i >= len(x.ids) || x.rb.export[i].id != x.ids[i] {
								mismatch = append(mismatch, fmt.Sprintf("bucket of %d ids changed while held", len(x.ids)))
								break
							}
						}
						got = append(got, x.ids...)
						x.release()
					}
				})
				n := 0
				err = eachResolved(t.Context(), []*spill.Spill{s}, bucketParts, 2, true, bk, t.TempDir(), split, func(rb *resolvedBucket, release func()) error {
					calls++
					if n++; n == stopAt {
						release()
						return errors.New("stop")
					}
					var ids []string
					for _, x := range rb.export {
						ids = append(ids, strings.Clone(x.id))
					}
					ch <- held{rb, release, ids}
					return nil
				})
				close(ch)
				wg.Wait()
				if len(mismatch) > 0 {
					t.Fatal(mismatch[0])
				}
				return got, err
			}
			got, err := run(-1)
			if err != nil {
				t.Fatal(err)
			}
			if split < 1<<20 && calls <= bucketParts {
				t.Fatalf("%d units at splitBytes %d: no bucket was split", calls, split)
			}
			if len(got) != holders || !slices.IsSorted(got) {
				t.Fatalf("%d ids, sorted %v; want %d in order", len(got), slices.IsSorted(got), holders)
			}
			if _, err := run(40); err == nil || err.Error() != "stop" {
				t.Fatalf("fn's error: got %v", err)
			}
		})
	}
}

// TestRunFreesSpillGroups: in a run, the join consumes every group of the
// events and users spills and the write stage every group of the holders
// and snapshot lines, so each group's files are removed as soon as it has
// been read (not when the run ends), and the output is published.
func TestRunFreesSpillGroups(t *testing.T) {
	dir := t.TempDir()
	st, err := fixtures.WriteFiles(filepath.Join(dir, "in"), fixtures.Options{Users: 20_000, Seed: 5})
	if err != nil {
		t.Fatal(err)
	}
	key, err := hashing.DeriveDestKey(hashing.TestKey(t), "meta-ads")
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "out")
	cfg := Config{Users: st.UsersPath, Consent: st.EventsPath, Destination: "meta-ads", Scheme: hashing.HMACSHA256,
		Key: key, Out: out, State: filepath.Join(dir, "state"), Rules: FixtureRules(fixtures.DefaultAsOf),
		MaxRejectRate: 0.05, Registry: TestRegistry(out, "meta-ads", hashing.HMACSHA256), ToolVersion: "test"}
	// left reports a spill that is not grouped, or still holds files.
	left := func(what string, s *spill.Spill) error {
		if grouped, held := s.GroupedFiles(); !grouped || held != 0 {
			return fmt.Errorf("%s: grouped %v, %d files left after its stage", what, grouped, held)
		}
		return nil
	}
	// At 1 KiB most join partitions (about 1.4 KB of events and users) and
	// every bucket of holders (4-5 KB) and of snapshot lines (2.5 KB) are
	// split first, and read from their splits.
	for _, split := range []int64{defaultSpillThresholds.splitBytes, 1 << 10} {
		t.Run(fmt.Sprintf("splitBytes=%d", split), func(t *testing.T) {
			// Grouped whatever the size of the inputs.
			SetSpillThresholds(&cfg, split, 0)
			cfg.Out, cfg.State = filepath.Join(t.TempDir(), "out"), filepath.Join(t.TempDir(), "state")
			cfg.Registry = TestRegistry(cfg.Out, "meta-ads", hashing.HMACSHA256)
			runFreesSpillGroups(t, cfg, left)
		})
	}
}

func runFreesSpillGroups(t *testing.T, cfg Config, left func(string, *spill.Spill) error) {
	var checked []string
	res, err := execute(t.Context(), cfg, func(r *run) []step {
		return []step{
			{"consent", r.readConsent},
			{"users", r.readUsers},
			{"join", func(ctx context.Context) error {
				ev, us := r.events, r.users // the join lets go of them
				if err := r.join(ctx); err != nil {
					return err
				}
				checked = append(checked, "join")
				return errors.Join(left("events", ev), left("users", us))
			}},
			{"write", func(ctx context.Context) error {
				if err := r.writeOutputs(ctx); err != nil {
					return err
				}
				checked = append(checked, "write")
				return errors.Join(left("holders", r.ids), left("snapshot lines", r.snap))
			}},
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(checked) != 2 || res.Manifest.TotalRows == 0 {
		t.Fatalf("stages checked %v, %d ids published", checked, res.Manifest.TotalRows)
	}
}

// TestGroupSpillsFromInputSize: a run groups its spills when its input
// files, over its shards, reach its groupFrom threshold, or when its source
// is not files (their size unknown), and not otherwise.
func TestGroupSpillsFromInputSize(t *testing.T) {
	dir := t.TempDir()
	users, events := filepath.Join(dir, "users.csv"), filepath.Join(dir, "events.csv")
	if err := os.WriteFile(users, make([]byte, 600), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(events, make([]byte, 400), 0o600); err != nil {
		t.Fatal(err)
	}
	files := source.FileSource{Users: users, Consent: events}
	for _, c := range []struct {
		from   int64
		src    source.Source
		shards int
		want   bool
	}{
		{1000, files, 0, true},
		{1001, files, 0, false},
		{500, files, 2, true},
		{501, files, 2, false},
		{1 << 40, source.FileSource{Users: users, Consent: filepath.Join(dir, "missing.csv")}, 0, true},
		{0, otherSource{}, 0, true},
		{1 << 40, otherSource{}, 0, true},
	} {
		cfg := Config{Source: c.src, Shard: Shard{Count: c.shards}}
		SetSpillThresholds(&cfg, defaultSpillThresholds.splitBytes, c.from)
		r := newRun(cfg)
		if r.groupSpills != c.want {
			t.Errorf("%T over %d shards, grouped from %d bytes: grouped %v, want %v", c.src, c.shards, c.from, r.groupSpills, c.want)
		}
	}
}

// otherSource stands for a database: a Source that is not files.
type otherSource struct{ source.FileSource }
