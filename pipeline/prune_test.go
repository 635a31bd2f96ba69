package pipeline_test

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"audiencematch/consent/audit"
	"audiencematch/pipeline"
	"audiencematch/pipeline/auditor"
	"audiencematch/pipeline/delivery"
	"audiencematch/pipeline/destinations"
	"audiencematch/pipeline/errkind"
	"audiencematch/pipeline/statedir"
)

// nights runs the fixtures on n consecutive cutoffs from 2026-11-01.
func nights(t *testing.T, dir string, n int) (pipeline.Config, []*audit.Record) {
	t.Helper()
	s, _ := signer(t)
	var cfg pipeline.Config
	for i := range n {
		asOf := time.Date(2026, 11, 1+i, 0, 0, 0, 0, time.UTC)
		if i == 0 {
			_, cfg = auditedRun(t, dir, 400, s, asOf)
			continue
		}
		c := cfg
		c.Rules.AsOf = asOf
		if _, err := pipeline.Run(context.Background(), c); err != nil {
			t.Fatal(err)
		}
	}
	return cfg, committed(t, cfg.State)
}

func committed(t *testing.T, state string) []*audit.Record {
	t.Helper()
	l, err := audit.Open(statedir.Audit(state))
	if err != nil {
		t.Fatal(err)
	}
	var recs []*audit.Record
	for _, r := range l.Records() {
		if r.Type == audit.TypeRunCommitted {
			recs = append(recs, r)
		}
	}
	return recs
}

func pruneRecords(t *testing.T, state string) []*audit.Record {
	t.Helper()
	l, err := audit.Open(statedir.Audit(state))
	if err != nil {
		t.Fatal(err)
	}
	var recs []*audit.Record
	for _, r := range l.Records() {
		if r.Type == audit.TypePrune {
			recs = append(recs, r)
		}
	}
	return recs
}

func pruneConfig(cfg pipeline.Config, now time.Time) pipeline.PruneConfig {
	return pipeline.PruneConfig{State: cfg.State, Registry: cfg.Registry, Now: now, ToolVersion: "test",
		AuditSigner: cfg.AuditSigner, AuditVerifier: cfg.AuditVerifier}
}

func recordTime(t *testing.T, r *audit.Record) time.Time {
	at, err := time.Parse(time.RFC3339Nano, r.Time)
	if err != nil {
		t.Fatal(err)
	}
	return at
}

// published reports whether run's directory is under OUT.
func isPublished(cfg pipeline.Config, runID string) bool {
	m, _ := filepath.Glob(filepath.Join(cfg.Out, cfg.Destination, "dt=*", "run="+runID))
	return len(m) == 1
}

// TestPruneKeepsTheChain: of four nights, with the retention (30 days) past
// the first two only, prune removes the first run (its published directory,
// evidence and rejects), keeps the second whole (the third's deltas are
// checked against it) and records exactly what it removed; audit verify
// reports the first as pruned; later, everything but the chain head goes,
// and the next night's deltas still work.
func TestPruneKeepsTheChain(t *testing.T) {
	dir := t.TempDir()
	cfg, runs := nights(t, dir, 4)
	if len(runs) != 4 {
		t.Fatalf("%d committed runs", len(runs))
	}
	days := time.Duration(cfg.Registry.Destinations[0].RetentionDays) * 24 * time.Hour
	// Runs 1 and 2 were recorded before the third: expired; 3 and 4 not.
	now := recordTime(t, runs[2]).Add(days - time.Microsecond)
	dry := pruneConfig(cfg, now)
	dry.DryRun = true
	rms, err := pipeline.Prune(context.Background(), dry)
	if err != nil || len(rms) != 1 || !slices.Equal(rms[0].Runs, []string{runs[0].RunID}) {
		t.Fatalf("dry run: %v, %+v", err, rms)
	}
	if len(pruneRecords(t, cfg.State)) != 0 || !fileExists(statedir.Evidence(cfg.State, runs[0].RunID)) {
		t.Fatal("a dry run removed or recorded something")
	}
	if _, err := pipeline.Prune(context.Background(), pruneConfig(cfg, now)); err != nil {
		t.Fatal(err)
	}
	recs := pruneRecords(t, cfg.State)
	if len(recs) != 1 || recs[0].Destination != "meta-ads" || recs[0].RetentionDays != 30 || !slices.Equal(recs[0].PrunedRuns, []string{runs[0].RunID}) {
		t.Fatalf("prune records: %+v", recs)
	}
	for i, kept := range []bool{false, true, true, true} {
		id := runs[i].RunID
		for what, there := range map[string]bool{
			"published": isPublished(cfg, id),
			"evidence":  fileExists(statedir.Evidence(cfg.State, id)),
			"rejects":   fileExists(filepath.Join(statedir.Run(cfg.State, id), "rejects.csv")),
		} {
			if there != kept {
				t.Errorf("run %d's %s: there %v, want %v", i+1, what, there, kept)
			}
		}
		if !fileExists(filepath.Join(statedir.Run(cfg.State, id), "record.json")) {
			t.Errorf("run %d: record.json removed", i+1)
		}
	}
	if m, _ := filepath.Glob(filepath.Join(cfg.Out, "meta-ads", "dt=2026-11-01")); len(m) != 0 {
		t.Error("an emptied dt= directory is left")
	}
	// The log is intact and signed, and audit verify reports the pruned run.
	rep, err := auditor.VerifyAudit(cfg.State, cfg.AuditVerifier, auditor.VerifyOptions{Roots: delivery.RootsFor("meta-ads", cfg.Out), Now: now})
	if err != nil || rep.Records != 5 || len(rep.Pruned) != 1 || rep.Pruned[0].RunID != runs[0].RunID {
		t.Fatalf("audit verify after the prune: %v %+v", err, rep)
	}
	// A second prune at the same time finds nothing more.
	if rms, err := pipeline.Prune(context.Background(), pruneConfig(cfg, now)); err != nil || len(rms) != 0 {
		t.Fatalf("second prune: %v %+v", err, rms)
	}
	// Far later, everything but the chain head goes: the next night's
	// removes come from its snapshot.
	later := now.Add(10 * days)
	if _, err := pipeline.Prune(context.Background(), pruneConfig(cfg, later)); err != nil {
		t.Fatal(err)
	}
	for i, id := range []string{runs[1].RunID, runs[2].RunID} {
		if isPublished(cfg, id) || fileExists(statedir.Evidence(cfg.State, id)) {
			t.Errorf("run %d kept", i+2)
		}
	}
	if !isPublished(cfg, runs[3].RunID) || !fileExists(statedir.Evidence(cfg.State, runs[3].RunID)) {
		t.Error("the chain head was pruned")
	}
	if rep, err := auditor.VerifyAudit(cfg.State, cfg.AuditVerifier, auditor.VerifyOptions{Roots: delivery.RootsFor("meta-ads", cfg.Out), Now: later}); err != nil || len(rep.Pruned) != 3 {
		t.Fatalf("audit verify after the second prune: %v %+v", err, rep)
	}
	c := cfg
	c.Rules.AsOf = time.Date(2026, 11, 5, 0, 0, 0, 0, time.UTC)
	res, err := pipeline.Run(context.Background(), c)
	if err != nil || res.Manifest.PreviousRunID != runs[3].RunID || res.Manifest.Removes == nil {
		t.Fatalf("the night after the prune: %v", err)
	}
}

// TestPruneFailedRunsAtTheEndOfARun: a run with Prune set removes a failed
// run's directory (raw rows) older than the retention, and records it; a
// recent one stays.
func TestPruneFailedRunsAtTheEndOfARun(t *testing.T) {
	dir := t.TempDir()
	s, _ := signer(t)
	_, cfg := auditedRun(t, dir, 200, s, time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC))
	old := filepath.Join(cfg.State, "failed", "20261020T000000Z-0123456789ab")
	recent := filepath.Join(cfg.State, "failed", "20261030T000000Z-ba9876543210")
	for _, d := range []string{old, recent} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
		b, _ := json.Marshal(map[string]string{"destination": "meta-ads"})
		os.WriteFile(filepath.Join(d, "manifest.json"), b, 0o600)
		os.WriteFile(filepath.Join(d, "rejects.csv"), []byte("table,line,reason,raw\n"), 0o600)
	}
	past := time.Now().Add(-31 * 24 * time.Hour)
	os.Chtimes(old, past, past)
	c := cfg
	c.Prune = true
	c.Rules.AsOf = time.Date(2026, 11, 2, 0, 0, 0, 0, time.UTC)
	res, err := pipeline.Run(context.Background(), c)
	if err != nil {
		t.Fatal(err)
	}
	if fileExists(old) || !fileExists(recent) {
		t.Errorf("old failed run kept %v, recent removed %v", fileExists(old), !fileExists(recent))
	}
	recs := pruneRecords(t, cfg.State)
	if len(recs) != 1 || len(recs[0].PrunedRuns) != 0 || !slices.Equal(recs[0].PrunedFailed, []string{filepath.Base(old)}) {
		t.Fatalf("prune records: %+v", recs)
	}
	if len(res.Pruned) != 1 {
		t.Errorf("result's prune: %+v", res.Pruned)
	}
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// TestRegistryPolicyIsTheFloor: rules given directly (library use) looser
// than the registry's policy for the destination and purpose are refused
// before anything is read or recorded.
func TestRegistryPolicyIsTheFloor(t *testing.T) {
	dir := t.TempDir()
	s, _ := signer(t)
	_, cfg := auditedRun(t, dir, 100, s, time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC))
	minVersion := int64(3)
	cfg.Registry.Destinations[0].Consent["ads_matching"] = destinations.Policy{MinPolicyVersion: &minVersion, MaxConsentAge: "395d"}
	before := len(committed(t, cfg.State))
	for _, rules := range []struct {
		min int64
		age time.Duration
	}{{2, 395 * 24 * time.Hour}, {3, 0}, {3, 400 * 24 * time.Hour}} {
		c := cfg
		c.Force = true
		c.Rules.MinPolicyVersion, c.Rules.MaxAge = rules.min, rules.age
		if _, err := pipeline.Run(context.Background(), c); !errors.Is(err, errkind.ErrUsage) || !strings.Contains(err.Error(), "looser than the registry's") {
			t.Errorf("rules %+v: %v", rules, err)
		}
	}
	l, _ := audit.Open(statedir.Audit(cfg.State))
	if len(committed(t, cfg.State)) != before || l.Size() != int64(before) {
		t.Errorf("a refused run was recorded: %d records", l.Size())
	}
}
