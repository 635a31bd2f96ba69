package pipeline

import (
	"encoding/binary"
	"fmt"
	"hash/maphash"
	"path/filepath"
	"testing"
	"time"

	"audiencematch/consent"
	"audiencematch/fixtures"
	"audiencematch/hashing"
	"audiencematch/pipeline/destinations"
	"audiencematch/pipeline/spill"
)

// benchJoinRun is a run whose events and users spills hold one partition
// of n fixture users (partition 0, where joinOne reads), as a run of
// n*1,024 users has: 1M users give partitions of about 1k, 10M of 10k.
func benchJoinRun(b *testing.B, n int) *run {
	b.Helper()
	asOf := fixtures.DefaultAsOf
	cfg := Config{Destination: "meta-ads", Scheme: hashing.HMACSHA256, Out: b.TempDir(), State: b.TempDir(),
		Rules:    consent.Rules{Purpose: fixtures.DefaultPurpose, AsOf: asOf, MinPolicyVersion: 3, MaxAge: 395 * 24 * time.Hour},
		Registry: &destinations.Registry{}, Users: "-", Consent: "-", Workers: 1}
	master, err := hashing.NewMasterKey(make([]byte, 32))
	if err != nil {
		b.Fatal(err)
	}
	key, err := hashing.DeriveDestKey(master, cfg.Destination)
	if err != nil {
		b.Fatal(err)
	}
	cfg.Key = key
	if err := cfg.check(); err != nil {
		b.Fatal(err)
	}
	r := newRun(cfg)
	r.staging = b.TempDir()
	r.guard.SetDir(r.staging)
	if r.events, err = spill.New(filepath.Join(r.staging, "events.spill"), spillParts, spill.Options{}); err != nil {
		b.Fatal(err)
	}
	if r.users, err = spill.New(filepath.Join(r.staging, "users.spill"), spillParts, spill.Options{}); err != nil {
		b.Fatal(err)
	}
	ew, uw := r.events.Writer(), r.users.Writer()
	line := int64(1)
	fixtures.Generate(fixtures.Options{Users: n, Seed: 7}, func(u fixtures.User) {
		line++
		if u.UserID == "" || u.Broken {
			return
		}
		buf := binary.AppendUvarint(uw.Buf(0), uint64(line))
		uw.Put(0, spill.AppendStr(spill.AppendStr(spill.AppendStr(buf, u.UserID), u.Phone), u.Country))
	}, func(f fixtures.Event) {
		e, err := consent.ParseEvent(f.EventID, f.UserID, f.Purpose, f.Action, f.OccurredAt, f.PolicyVersion, f.Source)
		if err != nil || f.Broken || cfg.Rules.Classify(&e) != consent.ClassUsed {
			return
		}
		ew.Put(0, appendEvent(ew.Buf(0), &e))
	})
	if err := ew.Flush(); err != nil {
		b.Fatal(err)
	}
	if err := uw.Flush(); err != nil {
		b.Fatal(err)
	}
	if r.ids, err = spill.New(filepath.Join(r.staging, "ids.spill"), bucketParts, spill.Options{}); err != nil {
		b.Fatal(err)
	}
	if r.snap, err = spill.New(filepath.Join(r.staging, "snapshot.spill"), bucketParts, spill.Options{}); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(r.closeSpills)
	return r
}

// BenchmarkJoinPartition is the join of one partition: 1k users (a 1M-user
// run's partitions) and 10k (10M users'), one goroutine. On 25 November they
// ran at 800-810 ns a user and 800-930: a 10k partition's index and states
// cost at most a seventh more per user, so most of what the 10M run's join
// spends beyond ten times 1M's CPU time (1.3-1.6 times) comes from elsewhere (its spill writes land on memory
// new to the VM's guest; see the README).
func BenchmarkJoinPartition(b *testing.B) {
	hashing.Preload()
	for _, n := range []int{1000, 10000} {
		b.Run(fmt.Sprintf("users=%d", n), func(b *testing.B) {
			r := benchJoinRun(b, n)
			jw := &joinWorker{}
			if err := r.newJoinWorker(jw); err != nil {
				b.Fatal(err)
			}
			bucket := newIDBucketer(r.cfg.Scheme, bucketParts)
			// Once untimed, so that -benchtime 3x (scripts/bench.sh) times
			// a worker whose buffers have grown, as they have after a few
			// of a run's 1,024 partitions.
			if err := r.joinOne(jw, r.events, r.users, 0, bucket); err != nil {
				b.Fatal(err)
			}
			for b.Loop() {
				if err := r.joinOne(jw, r.events, r.users, 0, bucket); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(n)*float64(b.N)/b.Elapsed().Seconds(), "users/s")
		})
	}
}

// BenchmarkUserIndex is the join's use of its index on one partition of a
// 10M-user run: 11.5k events of 10k users (a lookup each, an addition for
// each new user), then the 10k users' lookups.
func BenchmarkUserIndex(b *testing.B) {
	seed := maphash.MakeSeed()
	ids := make([]string, 10000)
	hs := make([]uint64, len(ids))
	for i := range ids {
		ids[i] = fmt.Sprintf("acct-%07d", i*7919%10000019)
		hs[i] = maphash.String(seed, ids[i])
	}
	x := newUserIndex()
	for b.Loop() {
		x.reset()
		for i := range 11500 {
			u := i * 7 % len(ids)
			if _, ok := x.get(hs[u], ids[u]); !ok {
				x.add(hs[u], ids[u])
			}
		}
		for u := range ids {
			if _, ok := x.get(hs[u], ids[u]); !ok {
				b.Fatal("a user added is not found")
			}
		}
	}
	b.ReportMetric(float64(21500*b.N)/b.Elapsed().Seconds(), "lookups/s")
}
