package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestRootHelpQuickStart runs the root help's quick start, line by line, in
// an empty directory: each line must succeed as printed.
func TestRootHelpQuickStart(t *testing.T) {
	help, _, _ := execute(t, "--help")
	_, rest, ok := strings.Cut(help, "Quick start")
	if !ok {
		t.Fatal("the root help has no quick start")
	}
	var lines []string
	for _, l := range strings.Split(rest, "\n") {
		if strings.HasPrefix(l, "  audiencematch ") {
			lines = append(lines, strings.TrimSpace(l))
		} else if len(lines) > 0 && strings.TrimSpace(l) == "" {
			break
		}
	}
	if len(lines) < 5 {
		t.Fatalf("the quick start has %d lines", len(lines))
	}
	t.Chdir(t.TempDir())
	for _, l := range lines {
		args := strings.Fields(l)[1:]
		if out, stderr, code := execute(t, args...); code != 0 {
			t.Fatalf("%s\nexit %d: %s %s", l, code, out, stderr)
		}
	}
	if m, _ := filepath.Glob("demo/out/meta-ads/dt=2026-11-01/run=*/snapshot/part-00000.parquet"); len(m) != 1 {
		t.Errorf("the quick start published %v", m)
	}
}

// TestReadmeQuickStart runs the README's quick start as a new operator
// would: its lines, as written, fed one by one to a shell, from the root of
// the clone. It builds the binary and runs 100,000 users twice, so it is
// skipped by -short (scripts/test.sh --quick).
func TestReadmeQuickStart(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: the README's quick start builds the binary and runs 100,000 users twice")
	}
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(b), "## Quick start")
	if !ok {
		t.Fatal("README has no quick start")
	}
	_, rest, _ = strings.Cut(rest, "```sh\n")
	block, _, ok := strings.Cut(rest, "```")
	if !ok || !strings.Contains(block, "audiencematch run") {
		t.Fatalf("README's quick start block: %q", block)
	}
	// A shell reading the lines from its input, as if pasted one at a time,
	// stopping at the first that fails; mktemp -d under the test's directory.
	sh := exec.Command("bash", "-e")
	sh.Dir = "../.."
	sh.Stdin = strings.NewReader(block)
	sh.Env = append(os.Environ(), "TMPDIR="+t.TempDir())
	out, err := sh.CombinedOutput()
	if err != nil {
		t.Fatalf("the README's quick start failed: %v\n%s", err, out)
	}
	for _, want := range []string{"plan: would publish", "published ", "since run 20261101T", "ok: 2 records, 2 committed runs verified", "dt=2026-11-04"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("the quick start's output lacks %q:\n%s", want, out)
		}
	}
	t.Logf("%s", out)
}
