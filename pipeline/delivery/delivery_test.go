package delivery

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"audiencematch/consent/audit"
	"audiencematch/pipeline/errkind"
	"audiencematch/pipeline/manifest"
)

// sliceIter streams ids from a slice.
type sliceIter struct{ ids []string }

func (s *sliceIter) Next() (string, bool, error) {
	if len(s.ids) == 0 {
		return "", false, nil
	}
	id := s.ids[0]
	s.ids = s.ids[1:]
	return id, true, nil
}
func (s *sliceIter) Close() {}

func iter(ids ...string) *sliceIter { return &sliceIter{slices.Clone(ids)} }

func TestMergeDelta(t *testing.T) {
	prev, cur := []string{"a", "b", "d", "f"}, []string{"b", "c", "d", "e"}
	cases := []struct {
		name          string
		sameKey       bool
		adds, removes []string
		want          string // "" when the deltas are right
	}{
		{"exact", true, []string{"c", "e"}, []string{"a", "f"}, ""},
		{"a withdrawal hidden", true, []string{"c", "e"}, []string{"a"}, "removes ends"},
		{"an add hidden", true, []string{"c"}, []string{"a", "f"}, "adds ends"},
		{"one of each hidden", true, []string{"c"}, []string{"a"}, "ends"},
		{"a remove planted", true, []string{"c", "e"}, []string{"a", "b", "f"}, "removes: identifier 2"},
		{"an add planted", true, []string{"c", "e", "z"}, []string{"a", "f"}, "beyond"},
		{"after a key change: everything", false, cur, prev, ""},
		{"after a key change: only the difference", false, []string{"c", "e"}, []string{"a", "f"}, "removes: identifier 2"},
	}
	for _, c := range cases {
		nAdds, nRemoves, err := MergeDelta(iter(prev...), iter(cur...), c.sameKey, iter(c.adds...), iter(c.removes...))
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%s: %v", c.name, err)
		case c.want == "" && (nAdds != int64(len(c.adds)) || nRemoves != int64(len(c.removes))):
			t.Errorf("%s: counted %d adds and %d removes, want %d and %d", c.name, nAdds, nRemoves, len(c.adds), len(c.removes))
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%s: err = %v, want one mentioning %q", c.name, err, c.want)
		}
	}
	// With the delta files gone, the counts are what is checked.
	nAdds, nRemoves, err := MergeDelta(iter(prev...), iter(cur...), true, &countingIter{}, &countingIter{})
	if err != nil || nAdds != 2 || nRemoves != 2 {
		t.Errorf("counting: %d adds, %d removes, %v", nAdds, nRemoves, err)
	}
}

func TestCheckCutoff(t *testing.T) {
	head := &audit.Record{RunID: "r", AsOf: "2026-11-01T00:00:00Z"}
	day := func(d int) time.Time { return time.Date(2026, 11, d, 0, 0, 0, 0, time.UTC) }
	cases := []struct {
		asOf     time.Time
		backfill bool
		head     *audit.Record
		ok       bool
	}{
		{day(2), false, head, true},
		{day(1), false, head, true}, // the same cutoff: a forced re-run
		{day(1).Add(-time.Second), false, head, false},
		{day(1).Add(-time.Second), true, head, true},
		{day(2), true, head, false},
		{day(2), true, nil, false},
		{day(2), false, nil, true},
	}
	for _, c := range cases {
		err := CheckCutoff("meta-ads", c.asOf, c.backfill, c.head)
		if (err == nil) != c.ok || (err != nil && !errors.Is(err, errkind.ErrUsage)) {
			t.Errorf("as_of %s, backfill %v, head %v: err = %v", c.asOf, c.backfill, c.head != nil, err)
		}
	}
}

func TestCheckDrop(t *testing.T) {
	run := func(prev, now, users, events int64) *manifest.Manifest {
		m := manifest.New()
		m.Destination, m.PreviousTotalRows, m.TotalRows, m.Users.Rows, m.ConsentEvents.Rows = "meta-ads", prev, now, users, events
		if prev > 0 {
			m.PreviousRunID = "r"
		}
		return m
	}
	cases := []struct {
		m    *manifest.Manifest
		want string
	}{
		{run(100, 80, 10, 10), ""},
		{run(100, 79, 10, 10), "21.0% fewer"},
		{run(100, 120, 10, 10), ""},
		{run(0, 0, 10, 10), ""},
		{run(100, 100, 0, 10), "0 user rows"},
		{run(100, 100, 10, 0), "0 consent event rows"},
	}
	for _, c := range cases {
		err := CheckDrop(c.m, 0.2)
		if (c.want == "") != (err == nil) || (err != nil && (!errors.Is(err, errkind.ErrData) || !strings.Contains(err.Error(), c.want))) {
			t.Errorf("%d -> %d rows: err = %v, want %q", c.m.PreviousTotalRows, c.m.TotalRows, err, c.want)
		}
	}
}

// TestFileURLRoot: a file:// delivery root is its directory, for the
// publish, the marker, _LATEST and the listing alike (never a relative
// "file:" directory in the working directory), and Roots resolves a run
// under it.
func TestFileURLRoot(t *testing.T) {
	dir := t.TempDir()
	root := "file://" + dir
	staged := filepath.Join(t.TempDir(), "publish")
	if err := os.MkdirAll(filepath.Join(staged, SnapshotDir), 0o700); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(staged, "manifest.json"), []byte("{}\n"), 0o644)
	rel := "meta-ads/dt=2026-11-01/run=r1"
	if already, err := Publish(t.Context(), root, rel, staged, DefaultDirMode, nil); err != nil || already {
		t.Fatalf("publish: %v, already %v", err, already)
	}
	if ok, err := Published(t.Context(), root, rel); err != nil || !ok {
		t.Fatalf("published: %v %v", ok, err)
	}
	if _, err := os.Stat(filepath.Join(dir, filepath.FromSlash(rel), SuccessMarker)); err != nil {
		t.Fatalf("the run is not in %s: %v", dir, err)
	}
	if err := PointLatest(t.Context(), root, "meta-ads", rel); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "meta-ads", LatestPointer)); err != nil || string(b) != "dt=2026-11-01/run=r1\n" {
		t.Fatalf("_LATEST: %q %v", b, err)
	}
	if _, err := os.Stat("file:"); err == nil {
		t.Fatal("a relative file: directory was made")
	}
	roots := Roots{Override: root}
	dirs, err := roots.RunDirs("meta-ads")
	if err != nil || dirs["r1"] != filepath.Join(dir, filepath.FromSlash(rel)) {
		t.Fatalf("RunDirs = %v, %v", dirs, err)
	}
	got, err := roots.RunDir(&audit.Record{Version: audit.RecordVersionV2, Destination: "meta-ads", Published: rel})
	if err != nil || got != dirs["r1"] {
		t.Fatalf("RunDir = %q, %v", got, err)
	}
}
