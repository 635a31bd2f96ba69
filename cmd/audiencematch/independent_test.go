package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"audiencematch/consent/audit"
	"audiencematch/pipeline/statedir"
)

// independent runs scripts/verify-audit.mjs, the verifier written in
// another language from docs/AUDITORS.md alone, and reports whether it
// accepted, with its output.
func independent(t *testing.T, args ...string) (bool, string) {
	t.Helper()
	node, err := exec.LookPath("node")
	if err != nil {
		t.Skip("node is not installed: the independent verifier (scripts/verify-audit.mjs) cannot run")
	}
	cmd := exec.Command(node, append([]string{filepath.Join("..", "..", "scripts", "verify-audit.mjs")}, args...)...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err = cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok && ee.ExitCode() == 1 {
		return false, out.String()
	}
	if err != nil {
		t.Fatalf("verify-audit.mjs %v: %v\n%s", args, err, out.String())
	}
	return true, out.String()
}

// TestIndependentVerifierAgrees: audit verify and the independent verifier
// give the same verdict on an honest state and on every tampering in the
// table, each on its own copy of the state.
func TestIndependentVerifierAgrees(t *testing.T) {
	e, vkey := twoNights(t)
	runs := l0(t, e.state)
	cases := []struct {
		name   string
		honest bool
		edit   func(t *testing.T, state, out string)
	}{
		{"honest", true, func(*testing.T, string, string) {}},
		{"a record's byte changed", false, func(t *testing.T, state, _ string) {
			p := filepath.Join(statedir.Audit(state), audit.RecordsFile)
			b, _ := os.ReadFile(p)
			os.WriteFile(p, bytes.Replace(b, []byte(`"user_rows":4`), []byte(`"user_rows":5`), 1), 0o600)
		}},
		{"the checkpoint's signature changed", false, func(t *testing.T, state, _ string) {
			p := filepath.Join(statedir.Audit(state), audit.CheckpointFile)
			b, _ := os.ReadFile(p)
			i := bytes.LastIndexByte(b[:len(b)-1], ' ') + 5
			b[i] ^= 1
			os.WriteFile(p, b, 0o644)
		}},
		{"a published part changed", false, func(t *testing.T, state, out string) {
			p := filepath.Join(out, runs[0].Published, runs[0].Files[0].Path)
			b, _ := os.ReadFile(p)
			b[len(b)/2] ^= 1
			os.WriteFile(p, b, 0o644)
		}},
		{"a file planted beside a run's", false, func(t *testing.T, state, out string) {
			os.WriteFile(filepath.Join(out, runs[1].Published, "extra.parquet"), []byte("x"), 0o644)
		}},
		{"a published run the log does not record", false, func(t *testing.T, state, out string) {
			src := filepath.Join(out, runs[1].Published)
			if err := copyTree(src, strings.Replace(src, runs[1].RunID, "20261102T000000Z-000000000000", 1)); err != nil {
				t.Fatal(err)
			}
		}},
		{"a run cut out of the log, re-signed", false, func(t *testing.T, state, out string) {
			l, _ := audit.Open(statedir.Audit(state))
			recs := l.Records()
			os.RemoveAll(filepath.Join(out, recs[0].Published))
			rewriteLog(t, state, recs[1:])
		}},
		{"a run's directory removed within its retention", false, func(t *testing.T, state, out string) {
			os.RemoveAll(filepath.Join(out, runs[0].Published))
		}},
		{"a run's directory removed past its retention", true, func(t *testing.T, state, out string) {
			os.RemoveAll(filepath.Join(out, runs[0].Published))
			rewriteRetention(t, state, 3)
		}},
		{"an unknown record version, re-signed", false, func(t *testing.T, state, out string) {
			l, _ := audit.Open(statedir.Audit(state))
			recs := l.Records()
			recs[1].Version = "audiencematch.audit/v3"
			rewriteLog(t, state, recs)
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := copyTree(e.dir, dir); err != nil {
				t.Fatal(err)
			}
			state, out := filepath.Join(dir, "state"), filepath.Join(dir, "out")
			c.edit(t, state, out)
			_, stderr, code := execute(t, "audit", "verify", "--state", state, "--verifier", vkey, "--delivery", out)
			ok, nodeOut := independent(t, "verify", "--state", state, "--verifier", vkey, "--delivery", out)
			if (code == 0) != c.honest || ok != c.honest {
				t.Errorf("audit verify exit %d (%s), independent verifier accepted=%v (%s); want accepted=%v",
					code, strings.TrimSpace(stderr), ok, strings.TrimSpace(nodeOut), c.honest)
			}
			t.Logf("go: exit %d %s| node: %s", code, strings.TrimSpace(stderr), strings.TrimSpace(nodeOut))
		})
	}
}

// copyTree copies the directory src to dst (which may exist), keeping
// modes: the keys must stay owner-only.
func copyTree(src, dst string) error {
	if out, err := exec.Command("cp", "-a", src+"/.", dst).CombinedOutput(); err != nil {
		return fmt.Errorf("cp -a: %v: %s", err, out)
	}
	return nil
}
