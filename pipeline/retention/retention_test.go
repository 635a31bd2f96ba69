package retention

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"audiencematch/consent/audit"
	"audiencematch/pipeline/destinations"
)

// TestFailedRunsByTheirDestination: a failed run's directory expires under
// the retention of the destination its manifest names, or the registry's
// shortest when it names none it knows.
func TestFailedRunsByTheirDestination(t *testing.T) {
	state := t.TempDir()
	now := time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC)
	reg := &destinations.Registry{Destinations: []destinations.Destination{
		{ID: "long", RetentionDays: 90, Delivery: filepath.Join(state, "out")},
		{ID: "short", RetentionDays: 7, Delivery: filepath.Join(state, "out")},
	}}
	failed := func(name, destination string, age time.Duration) {
		dir := filepath.Join(state, "failed", name)
		os.MkdirAll(dir, 0o700)
		if destination != "" {
			os.WriteFile(filepath.Join(dir, "manifest.json"), []byte(`{"destination":"`+destination+`"}`), 0o600)
		}
		os.Chtimes(dir, now.Add(-age), now.Add(-age))
	}
	const day = 24 * time.Hour
	failed("long-30d", "long", 30*day)   // within long's 90 days
	failed("long-100d", "long", 100*day) // past them
	failed("short-8d", "short", 8*day)   // past short's 7
	failed("unknown-8d", "", 8*day)      // no manifest: the shortest, 7
	failed("gone-6d", "gone", 6*day)     // an unregistered destination: 7
	rms, err := Prune(t.Context(), &audit.Log{}, Options{State: state, Registry: reg, Now: now, DryRun: true})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, rm := range rms {
		if len(rm.Runs) != 0 {
			t.Errorf("%s: pruned runs %v", rm.Destination, rm.Runs)
		}
		for _, name := range rm.Failed {
			got[name] = rm.Destination
		}
	}
	want := map[string]string{"long-100d": "long", "short-8d": "short", "unknown-8d": "short"}
	if len(got) != len(want) {
		t.Errorf("pruned %v, want %v", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s: pruned under %q, want %q", k, got[k], v)
		}
	}
	// A dry run removes nothing.
	if _, err := os.Stat(filepath.Join(state, "failed", "long-100d")); err != nil {
		t.Error("a dry run removed a failed run")
	}
}
