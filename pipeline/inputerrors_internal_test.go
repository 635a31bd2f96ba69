package pipeline

import (
	"strings"
	"testing"

	"audiencematch/consent/audit"
)

// TestOneLineReasonsReadBack: whatever an error message holds, the
// run_failed record AppendEvent builds from it is one the log reads back
// (the bug: an input's invalid UTF-8 in a reason made a line that no reader
// accepted, and the whole log with it).
func TestOneLineReasonsReadBack(t *testing.T) {
	for _, reason := range []string{
		`users: "users.csv": configuration error: missing column(s) user_id; the header has (` + "\xb5/\xfd\x00X\x01",
		"line one\nline two\r\n\ttabbed\x1b[2J",
		strings.Repeat("é", 600),
		"",
	} {
		rec := &audit.Record{Version: audit.RecordVersion, Type: audit.TypeRunFailed, Time: "2026-11-01T00:00:00Z",
			ToolVersion: "test", Destination: "meta-ads", Reason: oneLine(reason)}
		line, err := rec.Marshal()
		if err != nil {
			t.Fatalf("reason %q: %v", reason, err)
		}
		back, err := audit.ParseRecord(line)
		if err != nil || back.Reason != rec.Reason {
			t.Fatalf("reason %q: wrote %q, read back %v (%v)", reason, line, back, err)
		}
		if strings.ContainsAny(back.Reason, "\n\r\t\x1b") {
			t.Errorf("reason %q kept a control character: %q", reason, back.Reason)
		}
	}
}
