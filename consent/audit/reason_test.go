package audit

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"unicode/utf8"
)

// failedRecord is a run_failed record as pipeline.AppendEvent builds it.
func failedRecord(reason string) *Record {
	return &Record{Version: RecordVersion, Type: TypeRunFailed, Time: "2026-11-01T00:00:00Z", ToolVersion: "0.1.0",
		ConfigDigest: strings.Repeat("ab", 32), Destination: "meta-ads", Scheme: "hmac-sha256", KeyID: "6a5bcda03de36eb1",
		AsOf: "2026-11-01T00:00:00Z", Purpose: "ads_matching", Reason: reason}
}

// TestValidateRejectsInvalidUTF8: encoding/json writes invalid UTF-8 as
// \ufffd, which reads back as another string, so such a record would never
// be in canonical form; Marshal refuses it instead of writing it.
func TestValidateRejectsInvalidUTF8(t *testing.T) {
	cases := []struct {
		field string
		set   func(r *Record)
	}{
		{"reason", func(r *Record) { r.Reason = "users: the header has \xff\xfe" }},
		{"destination", func(r *Record) { r.Destination = "meta\xc3" }},
		{"purpose", func(r *Record) { r.Purpose = "\x80" }},
		{"files[0].path", func(r *Record) {
			r.Files = []File{{Path: "part-\xff.parquet", SHA256: strings.Repeat("0", 64)}}
		}},
		{"counts.excluded (a key)", func(r *Record) { r.Counts = &Counts{Excluded: map[string]int64{"bad\xff": 1}} }},
		{"extra[1]", func(r *Record) { r.Extra = []string{"ok", "\xed\xa0\x80"} }}, // a UTF-16 surrogate
	}
	for _, c := range cases {
		r := failedRecord("x")
		c.set(r)
		err := r.Validate()
		if err == nil || !strings.Contains(err.Error(), "record field "+c.field+" is not valid UTF-8") {
			t.Errorf("%s: Validate = %v", c.field, err)
		}
		if line, err := r.Marshal(); err == nil {
			t.Errorf("%s: Marshal wrote %q", c.field, line)
		}
	}
}

var reasonVectors = []struct{ in, want string }{
	{"plain", "plain"},
	{"two\nlines\r\n", "two lines  "},
	{"tab\there", "tab here"},
	{"\x1b[31mred\x1b[0m", " [31mred [0m"},
	{"bad \xff\xfe bytes", "bad \ufffd bytes"},
	{"\xc3", "\ufffd"},
	{"sep\u2028par\u2029", "sep par "},
	{"", "(no reason given)"},
	{" \n ", "(no reason given)"},
	{strings.Repeat("a", 999) + "é", strings.Repeat("a", 999) + "…"}, // é would straddle the cut
	{strings.Repeat("b", 1000), strings.Repeat("b", 1000)},
}

func TestSanitizeReason(t *testing.T) {
	for _, v := range reasonVectors {
		if got := SanitizeReason(v.in); got != v.want {
			t.Errorf("SanitizeReason(%q): got %q, want %q", v.in, got, v.want)
		}
	}
}

// FuzzRecordReason: whatever a failure's message holds, the record built
// from it the way pipeline.AppendEvent does marshals to a line ParseRecord
// accepts and reads back to the same record; and Marshal never writes a
// line ParseRecord refuses, even given an unsanitized reason.
func FuzzRecordReason(f *testing.F) {
	for _, v := range reasonVectors {
		f.Add(v.in)
	}
	f.Add("users: \"users.csv\": the header has (\xb5/\xfd\x00\x58")
	f.Add("<script>&\"\\\u00e9\ufffd")
	f.Fuzz(func(t *testing.T, reason string) {
		clean := SanitizeReason(reason)
		if !utf8.ValidString(clean) || strings.ContainsAny(clean, "\n\r") || len(clean) > maxReasonBytes+len("…") {
			t.Fatalf("SanitizeReason(%q) = %q", reason, clean)
		}
		r := failedRecord(clean)
		line, err := r.Marshal()
		if err != nil {
			t.Fatalf("reason %q: %v", clean, err)
		}
		back, err := ParseRecord(line)
		if err != nil {
			t.Fatalf("reason %q: wrote %q, which does not parse: %v", clean, line, err)
		}
		if back.Reason != clean {
			t.Fatalf("reason %q read back as %q", clean, back.Reason)
		}
		if raw, err := failedRecord(reason).Marshal(); err == nil {
			if _, err := ParseRecord(raw); err != nil {
				t.Fatalf("Marshal wrote %q, which ParseRecord refuses: %v", raw, err)
			}
		}
	})
}

// plantLine appends line to the log as it is, with no checkpoint: what a
// writer without Marshal's checks did, up to its signing.
func plantLine(t *testing.T, dir string, line []byte) {
	t.Helper()
	f, err := os.OpenFile(filepath.Join(dir, RecordsFile), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Write(append(line, '\n'))
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestUnreadableRecordDoesNotStopTheLog: a non-canonical record (as an
// earlier version wrote for a reason holding invalid UTF-8), signed into
// the log, leaves the log usable: it opens, takes new records, recovers;
// VerifyLog fails naming the record, VerifyTree lists the rest.
func TestUnreadableRecordDoesNotStopTheLog(t *testing.T) {
	s, v := newSigner(t)
	dir := t.TempDir()
	appendN(t, dir, s, 2)
	bad, err := json.Marshal(failedRecord("users: the header has \x28\xb5\x2f\xfd"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ParseRecord(bad); err == nil || !strings.Contains(err.Error(), "canonical") {
		t.Fatalf("the planted line parses: %v", err)
	}
	plantLine(t, dir, bad)
	if err := Recover(dir, s, v); err != nil { // signs the record past the checkpoint
		t.Fatalf("Recover: %v", err)
	}

	l, err := Open(dir)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	if !slices.Equal(l.Unreadable(), []int64{2}) || l.Size() != 3 || !bytes.Equal(l.Line(2), bad) {
		t.Fatalf("unreadable %v, size %d, line 2 %q", l.Unreadable(), l.Size(), l.Line(2))
	}
	if r := l.Records()[2]; r.Type != TypeUnreadable || !strings.Contains(r.Reason, "record 2 (line 3)") || r.Validate() == nil {
		t.Fatalf("placeholder %+v", r)
	}

	// The writer goes on.
	appendN(t, dir, s, 2)
	if err := Recover(dir, s, v); err != nil {
		t.Fatalf("Recover after append: %v", err)
	}
	_, _, err = VerifyLog(dir, v, nil)
	if err == nil || !strings.Contains(err.Error(), "record 2 (line 3) cannot be read") {
		t.Fatalf("VerifyLog: %v, want a failure naming record 2", err)
	}
	l, cp, err := VerifyTree(dir, v, nil)
	if err != nil || cp.Size != 5 || len(l.Records()) != 5 {
		t.Fatalf("VerifyTree: %v, %+v", err, cp)
	}
	for i, r := range l.Records() {
		if (r.Type == TypeUnreadable) != (i == 2) {
			t.Errorf("record %d: type %s", i, r.Type)
		}
	}

	// Tampering is still caught first: the unreadable line's bytes are a leaf.
	b := mustRead(t, filepath.Join(dir, RecordsFile))
	os.WriteFile(filepath.Join(dir, RecordsFile), bytes.Replace(b, []byte(`\ufffd`), []byte(`\ufffe`), 1), 0o600)
	if _, _, err := VerifyTree(dir, v, nil); err == nil || !strings.Contains(err.Error(), "a record was changed") {
		t.Errorf("a changed unreadable line: %v", err)
	}
}

// TestUnreadableLineUnsigned: a line planted after the checkpoint is caught
// as an unsigned addition before anything else.
func TestUnreadableLineUnsigned(t *testing.T) {
	s, v := newSigner(t)
	dir := t.TempDir()
	appendN(t, dir, s, 1)
	plantLine(t, dir, []byte("not json"))
	if _, _, err := VerifyLog(dir, v, nil); err == nil || !strings.Contains(err.Error(), "covers 1") {
		t.Errorf("VerifyLog: %v", err)
	}
	l := appendN(t, dir, s, 1) // and the writer still appends
	if l.Size() != 3 || !slices.Equal(l.Unreadable(), []int64{1}) {
		t.Errorf("size %d, unreadable %v", l.Size(), l.Unreadable())
	}
}
