package source

import (
	"audiencematch/pipeline/errkind"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func readAll(t *testing.T, content string) (rows []Row, err error) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "users.csv")
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	rows, _, err = readTable(p)
	return rows, err
}

// readTable reads every row of the users table at p with Next, and the
// table's digest.
func readTable(p string) (rows []Row, digest string, err error) {
	r, err := OpenTable(p, UserColumns)
	if err != nil {
		return nil, "", err
	}
	defer r.Close()
	for {
		row, err := r.Next()
		if err == io.EOF {
			return rows, r.Digest(), nil
		}
		if err != nil {
			return rows, "", err
		}
		c := *row
		if row.Fields != nil {
			c.Fields = append([]string(nil), row.Fields...)
		}
		rows = append(rows, c)
	}
}

func TestCSVRows(t *testing.T) {
	in := "\xef\xbb\xbfcountry,extra,user_id,phone\r\n" + // BOM, CRLF, other column order, extra column
		"US,x,u1,(650) 555-1212\r\n" +
		"\r\n" + // blank line: no row
		`GB,"a,b",u2,"+44 7400 ""123456"""` + "\n" +
		`US,x,u3,"(650) 555-1212` + "\n" + // unterminated quote: only this line is lost
		"US,x,u4,650 555 1212\n" +
		`US,x,u5,65"0` + "\n" + // bare quote in an unquoted field
		`US,x,"u6"z,650` + "\n" + // text after a closing quote
		"US,x,u7\n" + // too few fields
		"US,x,u8,650,extra\n" + // too many
		`US,x,u9,",US` + "\n" + // would close line 5's quote under a multi-line reading
		"US,,u10,\n" +
		"US,x,u11,+16505551212" // no final newline
	rows, err := readAll(t, in)
	if err != nil {
		t.Fatal(err)
	}
	want := []struct {
		line   int64
		reject string
		fields []string
	}{
		{2, "", []string{"u1", "(650) 555-1212", "US"}},
		{4, "", []string{"u2", `+44 7400 "123456"`, "GB"}},
		{5, RejectBrokenQuoting, []string{"u3", "", "US"}},
		{6, "", []string{"u4", "650 555 1212", "US"}},
		{7, RejectBrokenQuoting, []string{"u5", "", "US"}},
		{8, RejectBrokenQuoting, []string{"", "", "US"}},
		{9, RejectFieldCount, []string{"u7", "", "US"}},
		{10, RejectFieldCount, []string{"u8", "650", "US"}},
		{11, RejectBrokenQuoting, []string{"u9", "", "US"}},
		{12, "", []string{"u10", "", "US"}},
		{13, "", []string{"u11", "+16505551212", "US"}},
	}
	if len(rows) != len(want) {
		t.Fatalf("got %d rows, want %d: %+v", len(rows), len(want), rows)
	}
	for i, w := range want {
		g := rows[i]
		if g.Line != w.line || g.Reject != w.reject || strings.Join(g.Fields, "|") != strings.Join(w.fields, "|") {
			t.Errorf("row %d: got line %d reject %q fields %q; want line %d reject %q fields %q", i, g.Line, g.Reject, g.Fields, w.line, w.reject, w.fields)
		}
		if g.Reject != "" && g.Raw == "" {
			t.Errorf("row %d: rejected without its raw text", i)
		}
	}
}

func TestCSVLongLine(t *testing.T) {
	in := "user_id,phone,country\nu1," + strings.Repeat("9", 200<<10) + ",US\nu2,+16505551212,\n"
	rows, err := readAll(t, in)
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 2 || rows[0].Reject != RejectRecordTooLong || rows[1].Fields[0] != "u2" || rows[1].Line != 3 {
		t.Fatalf("rows = %+v", rows)
	}
}

// TestCSVRejectReadable: a rejected line still yields the requested
// columns whose fields, and every field before them, are plain (MATCHING.md
// section 2, amendment 1, needs a malformed consent row's user_id and
// purpose whenever they can be read), by the header's positions.
func TestCSVRejectReadable(t *testing.T) {
	var vectors = []struct {
		header, line, reject string
		want                 []string // event_id, user_id, purpose, action, occurred_at, policy_version, source
	}{
		{"", `e1,u1,ads_matching,withdraw,"2026-10-01T12:00:00Z"x,3,app`, RejectBrokenQuoting,
			[]string{"e1", "u1", "ads_matching", "withdraw", "", "", ""}},
		{"", `e2,u2,"ads_matching,withdraw,2026-10-01T12:00:00Z,3,app`, RejectBrokenQuoting,
			[]string{"e2", "u2", "", "", "", "", ""}},
		{"", `e3,"u3",ads_matching,withdraw,2026-10-01T12:00:00Z,3,"app`, RejectBrokenQuoting,
			[]string{"e3", "", "", "", "", "", ""}},
		{"", `e"4,u4,ads_matching,withdraw,2026-10-01T12:00:00Z,3,app`, RejectBrokenQuoting, nil},
		{"", `"e5,u5,ads_matching,withdraw,2026-10-01T12:00:00Z,3,app`, RejectBrokenQuoting, nil},
		{"", `e6,u6`, RejectFieldCount, []string{"e6", "u6", "", "", "", "", ""}},
		{"", `e7,u7,ads_matching,withdraw,2026-10-01T12:00:00Z,3,support, ticket`, RejectFieldCount,
			[]string{"e7", "u7", "ads_matching", "withdraw", "2026-10-01T12:00:00Z", "3", "support"}},
		{"", `,,,`, RejectFieldCount, nil},
		{"purpose,x,user_id,event_id,action,occurred_at,policy_version,source", `ads_matching,y,u8,e8,withdraw,"2026"x,3,app`, RejectBrokenQuoting,
			[]string{"e8", "u8", "ads_matching", "withdraw", "", "", ""}},
		{"purpose,x,user_id,event_id,action,occurred_at,policy_version,source", `ads_matching,"y,u9,e9,withdraw,2026,3,app`, RejectBrokenQuoting,
			[]string{"", "", "ads_matching", "", "", "", ""}},
	}
	for _, v := range vectors {
		header := v.header
		if header == "" {
			header = strings.Join(EventColumns, ",")
		}
		p := filepath.Join(t.TempDir(), "consent_events.csv")
		if err := os.WriteFile(p, []byte(header+"\n"+v.line+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		r, err := OpenTable(p, EventColumns)
		if err != nil {
			t.Fatal(err)
		}
		row, err := r.Next()
		if err != nil {
			t.Fatal(err)
		}
		if row.Reject != v.reject || row.Raw != v.line || row.Line != 2 {
			t.Errorf("%s: got line %d reject %q raw %q, want line 2 reject %q", v.line, row.Line, row.Reject, row.Raw, v.reject)
		}
		if got, want := strings.Join(row.Fields, "|"), strings.Join(v.want, "|"); got != want || (row.Fields == nil) != (v.want == nil) {
			t.Errorf("%s: got fields %q, want %q", v.line, row.Fields, v.want)
		}
		r.Close()
	}
}

func TestTableConfigErrors(t *testing.T) {
	cases := []struct {
		name, content, want string
	}{
		{"missing column", "user_id,telephone,country\nu,1,US\n", "missing column(s) phone"},
		{"duplicate column", "user_id,phone,phone,country\n", `column "phone" appears twice`},
		{"empty file", "", "the file is empty"},
		{"broken header", "user_id,\"phone,country\n", "header row (line 1) is not valid CSV"},
	}
	for _, c := range cases {
		_, err := readAll(t, c.content)
		if !errors.Is(err, errkind.ErrConfig) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err = %v, want errkind.ErrConfig mentioning %q", c.name, err, c.want)
		}
	}
	if _, err := OpenTable(filepath.Join(t.TempDir(), "nope.csv"), UserColumns); !errors.Is(err, errkind.ErrNoInput) {
		t.Errorf("missing file: err = %v, want errkind.ErrNoInput", err)
	}
	p := filepath.Join(t.TempDir(), "fake.parquet")
	os.WriteFile(p, []byte("user_id,phone,country\n"), 0o644)
	if _, err := OpenTable(p, UserColumns); !errors.Is(err, errkind.ErrData) {
		t.Errorf("CSV named .parquet: err = %v, want errkind.ErrData", err)
	}
}

// FuzzCSV: no panic, every non-blank line is exactly one row or one reject,
// in order, and a field-count-correct plain line comes back unchanged.
func FuzzCSV(f *testing.F) {
	f.Add("u1,+16505551212,US\nu2,\"(650) 555-1212\",US\n")
	f.Add("u\",1,2\n\"a\"\"b\",c,d\r\n\n,,\n")
	f.Add("\"open,quote\nnext,line,x\n")
	f.Fuzz(func(t *testing.T, body string) {
		p := filepath.Join(t.TempDir(), "u.csv")
		os.WriteFile(p, []byte("user_id,phone,country\n"+body), 0o644)
		r, err := OpenTable(p, UserColumns)
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		lines := strings.Split(body, "\n")
		var want []int64
		for i, l := range lines {
			if strings.TrimSuffix(l, "\r") != "" {
				want = append(want, int64(i+2))
			}
		}
		var got []int64
		for {
			row, err := r.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, row.Line)
			l := strings.TrimSuffix(lines[row.Line-2], "\r")
			if row.Reject == "" && !strings.Contains(l, `"`) && strings.Join(row.Fields, ",") != l {
				t.Fatalf("line %q read as %q", l, row.Fields)
			}
		}
		if len(got) != len(want) {
			t.Fatalf("got rows at lines %v, want %v", got, want)
		}
		for i := range got {
			if got[i] != want[i] {
				t.Fatalf("got rows at lines %v, want %v", got, want)
			}
		}
	})
}
