package pipeline_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/gzip"

	"audiencematch/fixtures"
	"audiencematch/hashing"
	"audiencematch/internal/objstore"
	"audiencematch/pipeline"
	"audiencematch/pipeline/auditor"
	"audiencematch/pipeline/delivery"
	"audiencematch/pipeline/errkind"
)

// S3URLEnv names the bucket URL of the S3-compatible server the tests use
// (scripts/s3.sh starts one and scripts/test.sh exports it).
const S3URLEnv = "AUDIENCEMATCH_TEST_S3_URL"

// deliveryRoots are the delivery roots the delivery suite runs on: a
// file:// URL, and a prefix of the S3 bucket when a server is there.
func deliveryRoots(t *testing.T) map[string]func(t *testing.T) string {
	return map[string]func(t *testing.T) string{
		"file": func(t *testing.T) string { return "file://" + t.TempDir() },
		"s3": func(t *testing.T) string {
			u := os.Getenv(S3URLEnv)
			if u == "" {
				t.Skipf("%s is not set: run scripts/test.sh, or eval \"$(scripts/s3.sh start)\" first", S3URLEnv)
			}
			return objstore.Join(u, fmt.Sprintf("t%d", time.Now().UnixNano()))
		},
	}
}

// TestDeliverySuite publishes to each delivery root: an interrupted upload
// is completed by the next run, a re-run changes nothing, _SUCCESS and
// _LATEST are there, audit verify reads the run from the root and notices
// a changed object, a planted object of another writer is never
// overwritten, and inputs are read from the same store.
func TestDeliverySuite(t *testing.T) {
	for name, root := range deliveryRoots(t) {
		t.Run(name, func(t *testing.T) { testDelivery(t, root(t)) })
	}
}

func deliveryConfig(t *testing.T, dir, root string, s interface{}) pipeline.Config {
	t.Helper()
	st, err := fixtures.WriteFiles(filepath.Join(dir, "in"), fixtures.Options{Users: 150, Seed: 9})
	if err != nil {
		t.Fatal(err)
	}
	sg, _ := signer(t)
	cfg := pipeline.Config{
		Users: st.UsersPath, Consent: st.EventsPath, Destination: "meta-ads", Scheme: hashing.HMACSHA256,
		Key: destKey(t, "meta-ads"), Out: root, State: filepath.Join(dir, "state"),
		Rules: fixtureRules(fixtures.DefaultAsOf), MaxRejectRate: 0.05, ToolVersion: "test",
		AuditSigner: sg, AuditVerifier: verifierOf[sg],
		Registry: testRegistry(root, "meta-ads", hashing.HMACSHA256),
	}
	return cfg
}

// rootOpts are audit verify's options for runs delivered under root, a
// path or a URL (--delivery).
func rootOpts(root string) auditor.VerifyOptions {
	return auditor.VerifyOptions{Roots: delivery.Roots{Override: root}}
}

// readObject reads rel under root, a path or a URL.
func readObject(t *testing.T, root, rel string) ([]byte, error) {
	t.Helper()
	if p, ok := objstore.LocalPath(root); ok {
		return os.ReadFile(filepath.Join(p, filepath.FromSlash(rel)))
	}
	s, err := objstore.Open(t.Context(), root)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	return s.ReadAll(t.Context(), s.Key(rel))
}

// removeObjects removes rel under root, and everything under it.
func removeObjects(t *testing.T, root, rel string) {
	t.Helper()
	if p, ok := objstore.LocalPath(root); ok {
		if err := os.RemoveAll(filepath.Join(p, filepath.FromSlash(rel))); err != nil {
			t.Fatal(err)
		}
		return
	}
	s, err := objstore.Open(t.Context(), root)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	keys, err := s.List(t.Context(), s.Key(rel))
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		if err := s.Delete(t.Context(), s.Key(rel+"/"+k)); err != nil {
			t.Fatal(err)
		}
	}
	if ok, _ := s.Exists(t.Context(), s.Key(rel)); ok {
		if err := s.Delete(t.Context(), s.Key(rel)); err != nil {
			t.Fatal(err)
		}
	}
}

// writeObject replaces rel under root.
func writeObject(t *testing.T, root, rel string, b []byte) {
	t.Helper()
	if p, ok := objstore.LocalPath(root); ok {
		p = filepath.Join(p, filepath.FromSlash(rel))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	s, err := objstore.Open(t.Context(), root)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.WriteAll(t.Context(), s.Key(rel), b, nil); err != nil {
		t.Fatal(err)
	}
}

func testDelivery(t *testing.T, root string) {
	ctx := context.Background()
	dir := t.TempDir()
	cfg := deliveryConfig(t, dir, root, nil)
	remote := objstore.IsURL(root)

	// An upload interrupted after its first part: nothing is whole, the
	// next run completes it.
	if remote {
		delivery.SetAfterPut(t, func(rel string) error { return errors.New("interrupted") })
		if _, err := pipeline.Run(ctx, cfg); err == nil || !strings.Contains(err.Error(), "interrupted") {
			t.Fatalf("interrupted upload: %v", err)
		}
		delivery.SetAfterPut(t, nil)
		// Another run's interrupted upload: removed once this run is committed.
		writeObject(t, root, "meta-ads/dt=2026-10-31/run=20261031T000000Z-000000000000/snapshot/part-00000.parquet", []byte("PAR1"))
	}
	res, err := pipeline.Run(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if res.AlreadyPublished {
		t.Fatal("first complete run reported as already published")
	}
	rel := delivery.RunDir("meta-ads", fixtures.DefaultAsOf, res.Manifest.RunID)
	if b, err := readObject(t, root, rel+"/_SUCCESS"); err != nil || len(b) != 0 {
		t.Fatalf("_SUCCESS: %q, %v", b, err)
	}
	latest, err := readObject(t, root, "meta-ads/_LATEST")
	if want := strings.TrimPrefix(rel, "meta-ads/") + "\n"; err != nil || string(latest) != want {
		t.Fatalf("_LATEST = %q, %v; want %q", latest, err, want)
	}
	if remote {
		if _, err := readObject(t, root, "meta-ads/dt=2026-10-31/run=20261031T000000Z-000000000000/snapshot/part-00000.parquet"); err == nil {
			t.Error("another run's interrupted upload was left in place")
		}
	}
	part, err := readObject(t, root, rel+"/snapshot/part-00000.parquet")
	if err != nil || !bytes.HasPrefix(part, []byte("PAR1")) {
		t.Fatalf("snapshot part: %v", err)
	}
	if !remote {
		p, _ := objstore.LocalPath(root)
		st, err := os.Stat(filepath.Join(p, filepath.FromSlash(rel)))
		if err != nil || st.Mode().Perm() != 0o750 {
			t.Fatalf("run directory mode %v (%v), want 0750", st.Mode().Perm(), err)
		}
	}

	// The same run again: recognised, nothing written twice.
	again := cfg
	again.Force = true
	res2, err := pipeline.Run(ctx, again)
	if err != nil || !res2.AlreadyPublished || res2.Manifest.RunID != res.Manifest.RunID {
		t.Fatalf("re-run: %+v, %v", res2, err)
	}

	// audit verify reads the run from the root, and notices a change there.
	if _, err := auditor.VerifyAudit(cfg.State, verifierOf[cfg.AuditSigner], rootOpts(root)); err != nil {
		t.Fatalf("audit verify: %v", err)
	}
	if remote {
		t.Run("wrong credentials", func(t *testing.T) {
			// A store that refuses audit verify's credentials is a setup
			// problem (78), not a finding about the run (65).
			t.Setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
			_, err := auditor.VerifyAudit(cfg.State, verifierOf[cfg.AuditSigner], rootOpts(root))
			if !errors.Is(err, errkind.ErrConfig) || errors.Is(err, errkind.ErrData) || !strings.Contains(err.Error(), "credentials") {
				t.Fatalf("audit verify with wrong credentials: %v", err)
			}
		})
	}
	// audit subject proves an exported user's identifier present in the
	// run's published files, read from the root.
	users, err := os.ReadFile(cfg.Users)
	if err != nil {
		t.Fatal(err)
	}
	proved := false
	for _, line := range strings.Split(string(users), "\n")[1:40] {
		uid, _, _ := strings.Cut(line, ",")
		rep, err := auditor.Subject(cfg.State, rootOpts(root).Roots, verifierOf[cfg.AuditSigner], auditor.SubjectQuery{UserID: uid})
		if err != nil {
			t.Fatalf("audit subject: %v", err)
		}
		for _, r := range rep.Runs {
			proved = proved || (r.Status == "exported" && r.Membership != nil)
		}
	}
	if !proved {
		t.Fatal("audit subject proved no user's identifier in the published run")
	}
	tampered := bytes.Clone(part)
	tampered[len(tampered)/2] ^= 1
	writeObject(t, root, rel+"/snapshot/part-00000.parquet", tampered)
	if _, err := auditor.VerifyAudit(cfg.State, verifierOf[cfg.AuditSigner], rootOpts(root)); err == nil {
		t.Fatal("audit verify missed a changed part in the store")
	}
	writeObject(t, root, rel+"/snapshot/part-00000.parquet", part)
	writeObject(t, root, rel+"/snapshot/planted.parquet", part)
	if _, err := auditor.VerifyAudit(cfg.State, verifierOf[cfg.AuditSigner], rootOpts(root)); err == nil {
		t.Fatal("audit verify missed a planted object")
	}
	removeObjects(t, root, rel+"/snapshot/planted.parquet")

	// Retention: the run's objects removed from the store. Within its
	// retention that is a failure; past it, the run is verified from its
	// record and evidence and reported as pruned.
	// (TestRegistry's retention_days is 30.)
	removeObjects(t, root, rel)
	early := rootOpts(root)
	early.Now = fixtures.DefaultAsOf.AddDate(0, 0, 10)
	_, err = auditor.VerifyAudit(cfg.State, verifierOf[cfg.AuditSigner], early)
	if err == nil || !strings.Contains(err.Error(), "within its retention") {
		t.Fatalf("audit verify with the run removed within its retention: %v", err)
	}
	if remote && !strings.Contains(err.Error(), objstore.Redact(objstore.Join(root, rel))) {
		t.Errorf("the error does not name the run's location in the store: %v", err)
	}
	late := rootOpts(root)
	late.Now = fixtures.DefaultAsOf.AddDate(0, 0, 31)
	if rep, err := auditor.VerifyAudit(cfg.State, verifierOf[cfg.AuditSigner], late); err != nil || len(rep.Pruned) != 1 {
		t.Fatalf("audit verify with the run removed past its retention: %v (%+v)", err, rep)
	}

	// Another writer's object where this run writes: refused, never
	// overwritten, and the run is not marked whole.
	other := objstore.Join(root, "other")
	ocfg := deliveryConfig(t, t.TempDir(), other, nil)
	writeObject(t, other, rel+"/snapshot/part-00000.parquet", []byte("another writer's part"))
	_, err = pipeline.Run(ctx, ocfg)
	if remote {
		if !errors.Is(err, errkind.ErrData) || !strings.Contains(err.Error(), "another writer") {
			t.Fatalf("conflicting writer: %v", err)
		}
		if _, err := readObject(t, other, rel+"/_SUCCESS"); err == nil {
			t.Fatal("a run that met another writer's object was marked whole")
		}
		if b, _ := readObject(t, other, rel+"/snapshot/part-00000.parquet"); string(b) != "another writer's part" {
			t.Fatal("another writer's object was overwritten")
		}
	} else if err == nil {
		// Locally the run directory appears with one rename: a directory
		// already there is this run, and its files are checked by the next
		// audit verify, which must fail.
		if _, err := auditor.VerifyAudit(ocfg.State, verifierOf[ocfg.AuditSigner], rootOpts(other)); err == nil {
			t.Fatal("a directory planted where the run publishes passed audit verify")
		}
	}

	// Inputs read from the store give the same run (the digests are of the
	// content, a compressed CSV's of its text), published to a third root.
	in := objstore.Join(root, "inputs")
	users, _ = os.ReadFile(cfg.Users)
	events, _ := os.ReadFile(cfg.Consent)
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(users)
	zw.Close()
	writeObject(t, in, "users.csv.gz", gz.Bytes())
	writeObject(t, in, "events/part=1/part-0.csv", events)
	writeObject(t, in, "events/_SUCCESS", nil)
	third := objstore.Join(root, "third")
	icfg := deliveryConfig(t, t.TempDir(), third, nil)
	icfg.Users, icfg.Consent = objstore.Join(in, "users.csv.gz"), objstore.Join(in, "events")
	ires, err := pipeline.Run(ctx, icfg)
	if err != nil {
		t.Fatalf("inputs from the store: %v", err)
	}
	if ires.Manifest.RunID != res.Manifest.RunID {
		t.Errorf("inputs from the store give run %s, the same files on disk %s", ires.Manifest.RunID, res.Manifest.RunID)
	}
	if got := ires.Manifest.Inputs; len(got) != 2 || len(got[0].Parts) != 1 || got[0].Parts[0].Name != "part=1/part-0.csv" {
		t.Errorf("inputs %+v: want the events' one part listed", got)
	}
}

// TestWrongCredentials: a store that refuses the credentials is a
// configuration error (exit 78) that says so, and nothing is published.
func TestWrongCredentials(t *testing.T) {
	root := deliveryRoots(t)["s3"](t)
	t.Setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
	cfg := deliveryConfig(t, t.TempDir(), root, nil)
	_, err := pipeline.Run(context.Background(), cfg)
	if !errors.Is(err, errkind.ErrConfig) || !strings.Contains(err.Error(), "credentials") {
		t.Fatalf("wrong credentials: %v, want a configuration error about the credentials", err)
	}
	if strings.Contains(err.Error(), "not-the-secret") {
		t.Fatal("the error quotes the secret")
	}
}

// TestShardStore: shards that share no file system (each its own state
// directory, as the pods of an Indexed Job) leave their outputs in the
// object store, and the commit, in a third state directory, publishes what
// an unsharded run does; an object changed in the store is refused with
// the same integrity checks as a local shard.
func TestShardStore(t *testing.T) {
	store := deliveryRoots(t)["s3"](t)
	dir, st := shardFixtures(t, fixtures.Options{Users: 3000, Seed: 7})
	ctx := context.Background()
	base, err := pipeline.Run(ctx, shardConfig(t, filepath.Join(dir, "whole"), st))
	if err != nil {
		t.Fatal(err)
	}
	const n = 3
	commitCfg := shardConfig(t, filepath.Join(dir, "commit"), st)
	commitCfg.ShardStore = store
	for i := range n {
		pod := shardConfig(t, filepath.Join(dir, fmt.Sprintf("pod%d", i)), st)
		pod.ShardStore = store
		res, err := runShard(ctx, pod, i, n)
		if err != nil {
			t.Fatalf("shard %d: %v", i, err)
		}
		if !strings.HasPrefix(res.ShardDir, "s3://") {
			t.Fatalf("shard %d left in %s, not the store", i, res.ShardDir)
		}
	}
	// A changed object: refused, nothing published.
	s, err := objstore.Open(ctx, store)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	keys, err := s.List(ctx, s.Prefix)
	if err != nil || len(keys) == 0 {
		t.Fatalf("the store holds %d objects (%v)", len(keys), err)
	}
	var victim string
	for _, k := range keys {
		if strings.HasSuffix(k, "ids.spill") {
			victim = k
		}
	}
	orig, err := s.ReadAll(ctx, s.Key(victim))
	if err != nil {
		t.Fatal(err)
	}
	bad := bytes.Clone(orig)
	bad[len(bad)/2] ^= 1
	s.WriteAll(ctx, s.Key(victim), bad, nil)
	bcfg := shardConfig(t, filepath.Join(dir, "badcommit"), st)
	bcfg.ShardStore = store
	if _, err := pipeline.Commit(ctx, bcfg, n); !errors.Is(err, errkind.ErrData) {
		t.Fatalf("commit over a changed object: %v, want a data error", err)
	}
	s.WriteAll(ctx, s.Key(victim), orig, nil)

	res, err := pipeline.Commit(ctx, commitCfg, n)
	if err != nil {
		t.Fatal(err)
	}
	want, got := filesUnder(t, base.PublishedDir), filesUnder(t, res.PublishedDir)
	if len(got) != len(want) {
		t.Fatalf("commit published %d files, the unsharded run %d", len(got), len(want))
	}
	for k, b := range want {
		if !bytes.Equal(got[k], b) {
			t.Errorf("%s differs from the unsharded run's", k)
		}
	}
	if left, _ := s.List(ctx, s.Prefix); len(left) != 0 {
		t.Errorf("the store still holds %d objects of the committed shards", len(left))
	}
}

// TestPruneDeliverySuite prunes runs published to each delivery root (a
// file:// URL, and the S3 bucket when a server is there): expired runs'
// objects go, _SUCCESS with them, and are recorded; the chain head and the
// run _LATEST names stay whatever the log says; a run whose removal was
// interrupted (objects left, no _SUCCESS) is completed, and recorded again,
// by the next prune; audit verify then reports the removed runs as pruned.
func TestPruneDeliverySuite(t *testing.T) {
	for name, root := range deliveryRoots(t) {
		t.Run(name, func(t *testing.T) { testPruneDelivery(t, root(t)) })
	}
}

func testPruneDelivery(t *testing.T, root string) {
	ctx := context.Background()
	cfg := deliveryConfig(t, t.TempDir(), root, nil)
	var rels []string
	for i := range 3 {
		c := cfg
		c.Rules.AsOf = fixtures.DefaultAsOf.AddDate(0, 0, i)
		res, err := pipeline.Run(ctx, c)
		if err != nil {
			t.Fatalf("night %d: %v", i, err)
		}
		rels = append(rels, delivery.RunDir("meta-ads", c.Rules.AsOf, res.Manifest.RunID))
	}
	runs := committed(t, cfg.State)
	if len(runs) != 3 {
		t.Fatalf("%d committed runs", len(runs))
	}
	stored := func(rel string) bool {
		t.Helper()
		ok, err := delivery.RunStored(ctx, objstore.Join(root, rel))
		if err != nil {
			t.Fatal(err)
		}
		return ok
	}
	whole := func(rel string) bool {
		t.Helper()
		ok, err := delivery.Published(ctx, root, rel)
		if err != nil {
			t.Fatal(err)
		}
		return ok
	}
	// Every run is past its retention (30 days); the chain needs only the
	// head, run 3. _LATEST is made to name run 1: it stays.
	now := time.Now().AddDate(0, 0, 31)
	writeObject(t, root, "meta-ads/_LATEST", []byte(strings.TrimPrefix(rels[0], "meta-ads/")+"\n"))
	rms, err := pipeline.Prune(ctx, pruneConfig(cfg, now))
	if err != nil || len(rms) != 1 || !slices.Equal(rms[0].Runs, []string{runs[1].RunID}) {
		t.Fatalf("prune with _LATEST naming run 1: %v, %+v; want run 2 only", err, rms)
	}
	if !whole(rels[0]) || stored(rels[1]) || !whole(rels[2]) {
		t.Fatalf("after the first prune: run 1 whole %v, run 2 stored %v, run 3 whole %v; want true, false, true",
			whole(rels[0]), stored(rels[1]), whole(rels[2]))
	}
	for _, p := range rms[0].Paths {
		if strings.Contains(p, "?") {
			t.Errorf("a removed path is shown with its URL's query: %s", p)
		}
	}

	// A removal interrupted: in a store, objects left after _SUCCESS went,
	// the run not whole; locally, the directory already renamed to its
	// hidden name. The next prune finishes it.
	part, err := readObject(t, root, rels[2]+"/snapshot/part-00000.parquet")
	if err != nil {
		t.Fatal(err)
	}
	left := rels[1]
	if !objstore.IsURL(root) {
		left = path.Join(path.Dir(rels[1]), ".removing-"+path.Base(rels[1]))
	}
	writeObject(t, root, left+"/snapshot/part-00000.parquet", part)
	if whole(rels[1]) {
		t.Fatal("a run whose removal was interrupted is taken for a whole one")
	}
	if !stored(rels[1]) {
		t.Fatal("what an interrupted removal left is not seen")
	}
	writeObject(t, root, "meta-ads/_LATEST", []byte(strings.TrimPrefix(rels[2], "meta-ads/")+"\n"))
	rms, err = pipeline.Prune(ctx, pruneConfig(cfg, now))
	if err != nil || len(rms) != 1 || !slices.Equal(rms[0].Runs, []string{runs[0].RunID, runs[1].RunID}) {
		t.Fatalf("second prune: %v, %+v; want runs 1 and 2", err, rms)
	}
	if stored(rels[0]) || stored(rels[1]) || !whole(rels[2]) {
		t.Fatal("after the second prune, want runs 1 and 2 gone and run 3 whole")
	}
	if latest, err := delivery.Latest(ctx, root, "meta-ads"); err != nil || latest != rels[2] {
		t.Fatalf("_LATEST = %q, %v; want %q", latest, err, rels[2])
	}
	recs := pruneRecords(t, cfg.State)
	if len(recs) != 2 || !slices.Equal(recs[1].PrunedRuns, []string{runs[0].RunID, runs[1].RunID}) {
		t.Fatalf("prune records %+v", recs)
	}
	// Nothing is left to prune: the head stays, and no record is added.
	if rms, err := pipeline.Prune(ctx, pruneConfig(cfg, now)); err != nil || len(rms) != 0 || len(pruneRecords(t, cfg.State)) != 2 {
		t.Fatalf("a third prune: %v, %+v", err, rms)
	}
	opts := rootOpts(root)
	opts.Now = now
	rep, err := auditor.VerifyAudit(cfg.State, verifierOf[cfg.AuditSigner], opts)
	if err != nil || len(rep.Pruned) != 2 {
		t.Fatalf("audit verify after the prunes: %v (%+v)", err, rep)
	}
	// The next night's deltas come from the head, which is still there.
	c := cfg
	c.Rules.AsOf = fixtures.DefaultAsOf.AddDate(0, 0, 3)
	if _, err := pipeline.Run(ctx, c); err != nil {
		t.Fatalf("the night after the prunes: %v", err)
	}
}
