package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/parquet-go/parquet-go"

	"audiencematch/consent/audit"
	"audiencematch/hashing"
	"audiencematch/pipeline"
	"audiencematch/pipeline/idfile"
	"audiencematch/pipeline/manifest"
	"audiencematch/pipeline/statedir"
)

// world is a small user base whose consent history a test changes night by
// night, with its own oracle of MATCHING.md sections 2 and 3: numbers are
// unique, so the shared-number rule never applies and the audience is the
// set of numbers whose holder's latest event (withdraw winning ties) is a
// grant.
type world struct {
	rng     *rand.Rand
	users   map[string]string // user id -> E.164 number
	events  []worldEvent
	free    []string // valid numbers not held by anyone
	nextID  int
	nextEvt int
}

type worldEvent struct {
	id, user, action string
	at               time.Time
}

func newWorld(t *testing.T, seed uint64, n int) *world {
	t.Helper()
	w := &world{rng: rand.New(rand.NewPCG(seed, 7)), users: map[string]string{}}
	for i := range 10000 {
		p := fmt.Sprintf("+1650253%04d", i)
		if e, err := hashing.Normalize(p, ""); err == nil && e == p {
			w.free = append(w.free, p)
		}
	}
	if len(w.free) < 2*n {
		t.Fatalf("only %d valid numbers for %d users", len(w.free), n)
	}
	w.rng.Shuffle(len(w.free), func(i, j int) { w.free[i], w.free[j] = w.free[j], w.free[i] })
	for range n {
		w.addUser(time.Date(2026, 9, 1, 0, 0, 0, 0, time.UTC))
	}
	return w
}

func (w *world) takeNumber() string {
	p := w.free[len(w.free)-1]
	w.free = w.free[:len(w.free)-1]
	return p
}

func (w *world) event(user, action string, at time.Time) {
	w.nextEvt++
	w.events = append(w.events, worldEvent{fmt.Sprintf("ev%06d", w.nextEvt), user, action, at})
}

// addUser creates an account holding a free number; most grant at once.
func (w *world) addUser(at time.Time) {
	w.nextID++
	id := fmt.Sprintf("acct-%05d", w.nextID)
	w.users[id] = w.takeNumber()
	if w.rng.IntN(10) < 8 {
		w.event(id, "grant", at)
	}
}

func (w *world) userIDs() []string {
	ids := make([]string, 0, len(w.users))
	for id := range w.users {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	return ids
}

// night changes the world before a cutoff: withdrawals, new grants, number
// changes, deletions and new accounts, each a few percent, under the drop
// guard's threshold.
func (w *world) night(at time.Time) {
	for _, id := range w.userIDs() {
		switch r := w.rng.IntN(100); {
		case r < 5:
			w.event(id, "withdraw", at)
		case r < 9:
			w.event(id, "grant", at)
		case r < 11: // a new number: the old one must be removed
			w.free = append([]string{w.users[id]}, w.free...)
			w.users[id] = w.takeNumber()
		case r < 13: // the account is deleted
			w.free = append([]string{w.users[id]}, w.free...)
			delete(w.users, id)
		}
	}
	for range w.rng.IntN(len(w.users)/20 + 1) {
		w.addUser(at)
	}
}

// write writes the world's tables into dir.
func (w *world) write(t *testing.T, dir string) (users, events string) {
	t.Helper()
	var u, e strings.Builder
	u.WriteString("user_id,phone,country\n")
	for _, id := range w.userIDs() {
		fmt.Fprintf(&u, "%s,%s,US\n", id, w.users[id])
	}
	e.WriteString("event_id,user_id,purpose,action,occurred_at,policy_version,source\n")
	for _, ev := range w.events {
		fmt.Fprintf(&e, "%s,%s,ads_matching,%s,%s,3,app_settings\n", ev.id, ev.user, ev.action, ev.at.Format(time.RFC3339))
	}
	return writeFile(t, filepath.Join(dir, "users.csv"), u.String(), 0o644),
		writeFile(t, filepath.Join(dir, "consent_events.csv"), e.String(), 0o644)
}

// audience is the oracle: the identifiers the world's consent allows as of
// asOf, sorted.
func (w *world) audience(h *hashing.Hasher, asOf time.Time) []string {
	latest := map[string]worldEvent{}
	for _, ev := range w.events {
		if ev.at.After(asOf) {
			continue
		}
		cur, ok := latest[ev.user]
		if !ok || ev.at.After(cur.at) || (ev.at.Equal(cur.at) && ev.action == "withdraw") {
			latest[ev.user] = ev
		}
	}
	var ids []string
	for id, phone := range w.users {
		if ev, ok := latest[id]; ok && ev.action == "grant" {
			ids = append(ids, h.ID(phone))
		}
	}
	slices.Sort(ids)
	return ids
}

// hasherOf is the destination's hasher, from a master key file.
func hasherOf(t *testing.T, keyFile, destination string) *hashing.Hasher {
	t.Helper()
	mk, err := hashing.LoadMasterKey(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	k, err := hashing.DeriveDestKey(mk, destination)
	if err != nil {
		t.Fatal(err)
	}
	h, err := hashing.NewHasher(hashing.HMACSHA256, k)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// readIDs reads the identifiers of a run's files, sorted as published.
func readIDs(t *testing.T, dir string, files []audit.File) []string {
	t.Helper()
	var ids []string
	for _, f := range files {
		rows, err := parquet.ReadFile[idfile.BinaryIDRow](filepath.Join(dir, f.Path))
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rows {
			ids = append(ids, string(r.ID[:]))
		}
	}
	return ids
}

// chain returns the destination's committed runs outside backfills, in log
// order, and every committed record.
func chain(t *testing.T, state, destination string) (runs, all []*audit.Record) {
	t.Helper()
	l, err := audit.Open(statedir.Audit(state))
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range l.Records() {
		if r.Type != audit.TypeRunCommitted || r.Destination != destination {
			continue
		}
		all = append(all, r)
		if !r.Backfill {
			runs = append(runs, r)
		}
	}
	return runs, all
}

// replay applies every run's removes, then its adds, in log order, to the
// first run's snapshot, as the platform does, and checks the result equals
// the latest snapshot; it returns that snapshot.
func replay(t *testing.T, state, destination string) []string {
	t.Helper()
	runs, _ := chain(t, state, destination)
	if len(runs) == 0 {
		return nil
	}
	held := map[string]bool{}
	for _, id := range readIDs(t, publishedDir(state, runs[0]), runs[0].Files) {
		held[id] = true
	}
	for i, r := range runs[1:] {
		if r.PreviousRunID != runs[i].RunID {
			t.Fatalf("run %s names %q as its previous run, the log's chain %s", r.RunID, r.PreviousRunID, runs[i].RunID)
		}
		for _, id := range readIDs(t, publishedDir(state, r), r.Removes) {
			if !held[id] {
				t.Fatalf("run %s removes an identifier the platform does not hold", r.RunID)
			}
			delete(held, id)
		}
		for _, id := range readIDs(t, publishedDir(state, r), r.Adds) {
			if held[id] {
				t.Fatalf("run %s adds an identifier the platform holds", r.RunID)
			}
			held[id] = true
		}
	}
	last := runs[len(runs)-1]
	snap := readIDs(t, publishedDir(state, last), last.Files)
	got := make([]string, 0, len(held))
	for id := range held {
		got = append(got, id)
	}
	slices.Sort(got)
	if !slices.Equal(got, snap) {
		t.Fatalf("replaying the deltas gives %d identifiers, the latest snapshot (run %s) has %d", len(got), last.RunID, len(snap))
	}
	return snap
}

// nightsEnv runs the real binary night after night on a world.
type nightsEnv struct {
	bin, dir, state, out, users, events string
}

func (e nightsEnv) cmd(crashAt string, asOf time.Time, extra ...string) *exec.Cmd {
	args := append([]string{"run", "--users", e.users, "--consent", e.events, "--destination", "meta-ads",
		"--state", e.state, "--as-of", asOf.Format(time.RFC3339), "--min-policy-version", "3"}, extra...)
	c := exec.Command(e.bin, args...)
	c.Env = append(os.Environ(), pipeline.CrashEnv+"="+crashAt)
	return c
}

// attempt runs once, killing the process at random (not at all, at a late
// named stage, or after random delays), then runs again with the same flags;
// that run must succeed. With lose set, a killed night may instead be left
// as it is, as when nobody re-runs a failed cron job: the next night's run
// must then cope with whatever the kill left (lost reports it).
func (e nightsEnv) attempt(t *testing.T, rng *rand.Rand, typical time.Duration, lose bool, asOf time.Time, extra ...string) (how string, lost bool) {
	t.Helper()
	late := []string{"write", "staged", "evidence", "published", "committed"}
	switch r := rng.IntN(4); r {
	case 0:
		how = "no kill"
	case 1, 2:
		stage := late[rng.IntN(len(late))]
		how = "killed at " + stage
		if err := e.cmd(stage, asOf, extra...).Run(); !killedBySIGKILL(err) {
			t.Fatalf("%s %v: the run was not killed: %v", how, extra, err)
		}
	case 3:
		how = "killed at random moments"
		for range 1 + rng.IntN(3) {
			killRandomly(t, e.cmd("", asOf, extra...), rng, typical)
		}
	}
	if lose && how != "no kill" && rng.IntN(2) == 0 {
		return how + ", not run again", true
	}
	if out, err := e.cmd("", asOf, extra...).CombinedOutput(); err != nil {
		t.Fatalf("%s %v, then run again: %v\n%s", how, extra, err, out)
	}
	return how, false
}

func (e nightsEnv) verify(t *testing.T) error {
	t.Helper()
	out, err := exec.Command(e.bin, "audit", "verify", "--state", e.state).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%v: %s", err, out)
	}
	return nil
}

// TestNightsRandomized: nights of withdrawals, grants, number changes,
// deletions and new accounts; every run killed at random stages and
// moments, late ones too, then run again; backfills and forced re-runs
// between them. After every night the platform, replaying the deltas in log
// order, holds exactly the oracle's audience, each cutoff date has one
// published run unless --force made another, and audit verify passes.
func TestNightsRandomized(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the binary many times")
	}
	seed := uint64(time.Now().UnixNano())
	if s, err := strconv.ParseUint(os.Getenv("AUDIENCEMATCH_TEST_SEED"), 10, 64); err == nil {
		seed = s
	}
	t.Logf("seed %d (AUDIENCEMATCH_TEST_SEED repeats it)", seed)
	rng := rand.New(rand.NewPCG(seed, 3))
	w := newWorld(t, seed, 1500)
	bin := buildBinary(t)
	d := t.TempDir()
	e := nightsEnv{bin: bin, dir: d, state: filepath.Join(d, "state"), out: filepath.Join(d, "out")}
	if out, err := exec.Command(bin, "keys", "init", "--state", e.state).CombinedOutput(); err != nil {
		t.Fatalf("keys init: %v %s", err, out)
	}
	env{state: e.state, out: e.out}.writeRegistry(t, "hmac-sha256")
	h := hasherOf(t, filepath.Join(statedir.Keys(e.state), "master.key"), "meta-ads")
	forced := map[string]int{} // dt= -> extra runs --force made
	asOf := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	typical := time.Duration(0)
	for night := range 8 {
		asOf = asOf.Add(24 * time.Hour)
		w.night(asOf.Add(-2 * time.Hour))
		e.users, e.events = w.write(t, filepath.Join(d, "in"))
		if night >= 2 && rng.IntN(3) == 0 {
			// A cutoff of a date no run has committed yet (before the
			// first night), earlier than the chain's head.
			bf := time.Date(2026, 10, 10+night, 6, 0, 0, 0, time.UTC)
			how, _ := e.attempt(t, rng, typical, false, bf, "--backfill")
			if _, all := chain(t, e.state, "meta-ads"); !all[len(all)-1].Backfill || all[len(all)-1].AsOf != bf.Format(time.RFC3339) {
				t.Fatalf("night %d: the backfill is not the last committed run", night)
			}
			t.Logf("night %d: backfill, %s", night, how)
		}
		start := time.Now()
		how, lost := e.attempt(t, rng, max(typical, time.Second), night > 0 && night < 7, asOf)
		if typical == 0 {
			typical = time.Since(start)
		}
		t.Logf("night %d: %s", night, how)
		if lost {
			// Until the next night's run records it, a published run the
			// log does not show fails audit verify.
			_, all := chain(t, e.state, "meta-ads")
			dirs, _ := filepath.Glob(filepath.Join(e.out, "meta-ads", "dt=*", "run=*"))
			// A kill between a record's append and its checkpoint's signing
			// leaves a record no signature covers yet: verify refuses it too,
			// and the next run signs it.
			unrecorded := len(dirs) > len(all)
			err := e.verify(t)
			if unrecorded && err == nil {
				t.Fatalf("night %d: %d published runs, %d recorded, and audit verify passed", night, len(dirs), len(all))
			}
			if !unrecorded && err != nil && !strings.Contains(err.Error(), "checkpoint covers") {
				t.Fatalf("night %d: every published run recorded, but audit verify: %v", night, err)
			}
			continue // the next night's run finds what this one left
		}
		if night >= 1 && rng.IntN(3) == 0 {
			// New withdrawals for the same cutoff: the operator re-runs it.
			for _, id := range w.userIDs()[:40] {
				w.event(id, "withdraw", asOf.Add(-time.Hour))
			}
			e.users, e.events = w.write(t, filepath.Join(d, "in"))
			how, _ := e.attempt(t, rng, typical, false, asOf, "--force")
			forced[asOf.Format(time.DateOnly)]++
			t.Logf("night %d: forced re-run, %s", night, how)
		}
		got := replay(t, e.state, "meta-ads")
		if want := w.audience(h, asOf); !slices.Equal(got, want) {
			t.Fatalf("night %d: the platform holds %d identifiers, the oracle's audience is %d", night, len(got), len(want))
		}
		runs, _ := chain(t, e.state, "meta-ads")
		if head := runs[len(runs)-1]; head.AsOf != asOf.Format(time.RFC3339) {
			t.Fatalf("night %d: the chain's head has the cutoff %s, want %s", night, head.AsOf, asOf.Format(time.RFC3339))
		}
		dts, _ := filepath.Glob(filepath.Join(e.out, "meta-ads", "dt=*"))
		for _, dt := range dts {
			runDirs, _ := filepath.Glob(filepath.Join(dt, "run=*"))
			if want := 1 + forced[strings.TrimPrefix(filepath.Base(dt), "dt=")]; len(runDirs) > want {
				t.Fatalf("night %d: %s holds %d runs, want at most %d", night, dt, len(runDirs), want)
			}
		}
		if err := e.verify(t); err != nil {
			t.Fatalf("night %d: audit verify: %v", night, err)
		}
	}
	t.Run("tampered", func(t *testing.T) { tamperChain(t, e) })
}

// forger rewrites a state the way an operator with the signing key could:
// files, manifests and records changed consistently and the checkpoint
// signed again. Each forgery is undone afterwards.
type forger struct {
	t     *testing.T
	state string
	saved map[string][]byte // path -> original bytes
}

func (f *forger) keep(path string) {
	if _, ok := f.saved[path]; ok {
		return
	}
	b, err := os.ReadFile(path)
	if err != nil {
		f.t.Fatal(err)
	}
	f.saved[path] = b
}

func (f *forger) restore() {
	for p, b := range f.saved {
		if err := os.WriteFile(p, b, 0o600); err != nil {
			f.t.Fatal(err)
		}
	}
	f.saved = map[string][]byte{}
}

// records returns the log's records; write replaces them and signs.
func (f *forger) records() []*audit.Record {
	l, err := audit.Open(statedir.Audit(f.state))
	if err != nil {
		f.t.Fatal(err)
	}
	return l.Records()
}

func (f *forger) write(recs []*audit.Record) {
	dir := statedir.Audit(f.state)
	f.keep(filepath.Join(dir, audit.RecordsFile))
	f.keep(filepath.Join(dir, audit.CheckpointFile))
	var b []byte
	for _, r := range recs {
		line, err := r.Marshal()
		if err != nil {
			f.t.Fatal(err)
		}
		b = append(append(b, line...), '\n')
	}
	if err := os.WriteFile(filepath.Join(dir, audit.RecordsFile), b, 0o600); err != nil {
		f.t.Fatal(err)
	}
	signer, err := audit.LoadSigner(statedir.Keys(f.state))
	if err != nil {
		f.t.Fatal(err)
	}
	l, err := audit.OpenForAppend(dir)
	if err != nil {
		f.t.Fatal(err)
	}
	if err := l.WriteCheckpoint(signer); err != nil {
		f.t.Fatal(err)
	}
}

// dropLast rewrites a delta's first file without its last identifier and
// returns the file's new entry.
func (f *forger) dropLast(dir string, file audit.File) audit.File {
	path := filepath.Join(dir, file.Path)
	f.keep(path)
	rows, err := parquet.ReadFile[idfile.BinaryIDRow](path)
	if err != nil || len(rows) == 0 {
		f.t.Fatalf("%s: %d rows, %v", path, len(rows), err)
	}
	if err := parquet.WriteFile(path, rows[:len(rows)-1]); err != nil {
		f.t.Fatal(err)
	}
	sum, err := fileSHA256(path)
	if err != nil {
		f.t.Fatal(err)
	}
	return audit.File{Path: file.Path, SHA256: sum, Rows: file.Rows - 1}
}

// rewriteManifest applies edit to a run's manifest and returns its digest.
func (f *forger) rewriteManifest(rec *audit.Record, edit func(*manifest.Manifest)) string {
	path := filepath.Join(publishedDir(f.state, rec), rec.Manifest.Path)
	f.keep(path)
	b, err := os.ReadFile(path)
	if err != nil {
		f.t.Fatal(err)
	}
	m, err := manifest.ReadManifest(b)
	if err != nil {
		f.t.Fatal(err)
	}
	edit(m)
	b, _ = json.MarshalIndent(m, "", "  ")
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		f.t.Fatal(err)
	}
	sum, _ := fileSHA256(path)
	return sum
}

func fileSHA256(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:]), nil
}

// tamperChain forges the state of e in the ways that would hide a
// withdrawal from the platform or from an auditor, each time with the
// checkpoint signed again and an auditor's checkpoint saved before the
// forged run; audit verify must fail every time, naming the run.
func tamperChain(t *testing.T, e nightsEnv) {
	f := &forger{t: t, state: e.state, saved: map[string][]byte{}}
	trusted := filepath.Join(e.dir, "trusted.checkpoint")
	recs := f.records()
	index := map[string]int{}
	var chainIdx []int // log indexes of the chain's runs
	for i, r := range recs {
		index[r.RunID] = i
		if r.Type == audit.TypeRunCommitted && !r.Backfill {
			chainIdx = append(chainIdx, i)
		}
	}
	if len(chainIdx) < 4 {
		t.Fatalf("only %d runs in the chain", len(chainIdx))
	}
	// The victim: a run with adds and removes, after at least two runs
	// (the auditor's checkpoint below is taken before it) and before another.
	k := 2
	for k+1 < len(chainIdx) && (rowsOf(recs[chainIdx[k]].Adds) == 0 || rowsOf(recs[chainIdx[k]].Removes) == 0) {
		k++
	}
	if k+1 >= len(chainIdx) {
		t.Fatal("no run with both adds and removes to forge")
	}
	victim := recs[chainIdx[k]]
	cut := recs[:chainIdx[k-1]+1]
	fullCheckpoint, _ := os.ReadFile(filepath.Join(statedir.Audit(e.state), audit.CheckpointFile))
	// The auditor's checkpoint, saved on a visit before the victim ran.
	f.write(cut)
	cp, _ := os.ReadFile(filepath.Join(statedir.Audit(e.state), audit.CheckpointFile))
	os.WriteFile(trusted, cp, 0o600)
	f.restore()
	if got, _ := os.ReadFile(filepath.Join(statedir.Audit(e.state), audit.CheckpointFile)); !bytes.Equal(got, fullCheckpoint) {
		t.Fatal("the log was not restored")
	}
	verifyFails := func(name, runID string) {
		t.Helper()
		out, err := exec.Command(e.bin, "audit", "verify", "--state", e.state, "--trusted-checkpoint", trusted).CombinedOutput()
		if err == nil {
			t.Errorf("%s: audit verify passed", name)
		} else if !strings.Contains(string(out), runID) {
			t.Errorf("%s: audit verify failed without naming run %s: %s", name, runID, out)
		}
		f.restore()
		if err := e.verify(t); err != nil {
			t.Fatalf("%s: the restored state fails: %v", name, err)
		}
	}
	if err := e.verify(t); err != nil {
		t.Fatal(err)
	}
	withRecord := func(i int, edit func(r *audit.Record)) []*audit.Record {
		out := slices.Clone(f.records())
		r := *out[i]
		edit(&r)
		out[i] = &r
		return out
	}

	// A withdrawal hidden: one identifier dropped from the removes and one
	// from the adds, so that the counts still balance.
	adds, removes := f.dropLast(publishedDir(f.state, victim), victim.Adds[0]), f.dropLast(publishedDir(f.state, victim), victim.Removes[0])
	sum := f.rewriteManifest(victim, func(m *manifest.Manifest) {
		m.Adds.Files[0].SHA256, m.Adds.Files[0].Rows, m.Adds.Rows = adds.SHA256, adds.Rows, m.Adds.Rows-1
		m.Removes.Files[0].SHA256, m.Removes.Files[0].Rows, m.Removes.Rows = removes.SHA256, removes.Rows, m.Removes.Rows-1
	})
	f.write(withRecord(index[victim.RunID], func(r *audit.Record) {
		r.Manifest = &audit.File{Path: r.Manifest.Path, SHA256: sum}
		r.Adds = append([]audit.File{adds}, r.Adds[1:]...)
		r.Removes = append([]audit.File{removes}, r.Removes[1:]...)
	}))
	verifyFails("a withdrawn identifier dropped from the removes", victim.RunID)

	// A withdrawal hidden, with the manifest's previous total adjusted.
	removes = f.dropLast(publishedDir(f.state, victim), victim.Removes[0])
	sum = f.rewriteManifest(victim, func(m *manifest.Manifest) {
		m.Removes.Files[0].SHA256, m.Removes.Files[0].Rows, m.Removes.Rows = removes.SHA256, removes.Rows, m.Removes.Rows-1
		m.PreviousTotalRows--
	})
	f.write(withRecord(index[victim.RunID], func(r *audit.Record) {
		r.Manifest = &audit.File{Path: r.Manifest.Path, SHA256: sum}
		r.Removes = append([]audit.File{removes}, r.Removes[1:]...)
	}))
	verifyFails("a removes file one short", victim.RunID)

	// A whole run cut out of the log.
	next := recs[chainIdx[k+1]]
	f.write(slices.Delete(slices.Clone(recs), chainIdx[k], chainIdx[k]+1))
	verifyFails("a run cut out of the chain", next.RunID)

	// previous_run_id pointed past a run.
	f.write(withRecord(chainIdx[k+1], func(r *audit.Record) { r.PreviousRunID = recs[chainIdx[k-1]].RunID }))
	verifyFails("previous_run_id skipping a run", next.RunID)

	// Two runs in the wrong order.
	swapped := slices.Clone(recs)
	swapped[chainIdx[k]], swapped[chainIdx[k+1]] = swapped[chainIdx[k+1]], swapped[chainIdx[k]]
	f.write(swapped)
	verifyFails("two runs swapped", next.RunID)

	// A run turned into a backfill, taking it out of the chain.
	f.write(withRecord(chainIdx[k], func(r *audit.Record) {
		r.Backfill, r.PreviousRunID, r.Adds, r.Removes, r.RemovesScheme, r.RemovesKeyID = true, "", nil, nil, "", ""
	}))
	verifyFails("a run relabelled as a backfill", victim.RunID)
}
