package source

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/parquet-go/parquet-go"

	"audiencematch/pipeline/errkind"
)

// personal is what the inputs below hold that no error may repeat: user
// ids and phone numbers, as typed and as digits.
var personal = []string{"acct-zbh251", "+91 74107 39683", "74107", "7410739683", "acct-q7", "650", "5551212"}

// checkNoPersonalData fails t if text holds any of personal. Callers take
// the file's path out first: it is the test's, and t.TempDir's random
// digits may hold "650".
func checkNoPersonalData(t *testing.T, what, text string) {
	t.Helper()
	for _, p := range personal {
		if strings.Contains(text, p) {
			t.Errorf("%s repeats the input's %q: %s", what, p, text)
		}
	}
}

// TestHeaderErrorsHoldNoInput: a users file that is not what it should be
// fails with errkind.ErrConfig, and the error says what is wrong and how to fix it
// without a byte of the file: only expected column names, positions, line
// numbers and counts.
func TestHeaderErrorsHoldNoInput(t *testing.T) {
	rows := "acct-q7,(650) 555-1212,US\n"
	cases := []struct {
		name, content string
		want          []string
	}{
		{"no header", "acct-zbh251,+91 74107 39683,US\n" + rows,
			[]string{"missing column(s) user_id, phone, country", "3 column(s) must include user_id, phone, country", "without a header row?"}},
		{"no header, one column", "+91 74107 39683\n" + rows, []string{"missing column(s) user_id, phone, country", "1 column(s)"}},
		{"header not UTF-8", "user_id,ph\xffone,country\n" + rows, []string{"header row (line 1) is not valid UTF-8", "compressed"}},
		{"header not UTF-8 after blank lines", "\n\r\nacct-zbh251\xe9,+91 74107 39683,US\n" + rows, []string{"header row (line 3) is not valid UTF-8"}},
		{"xlsx", "PK\x03\x04acct-zbh251,+91 74107 39683\n", []string{"ZIP archive"}},
		{"UTF-16", "\xff\xfeu\x00s\x00e\x00r\x00", []string{"UTF-16"}},
		{"unknown columns", "acct-zbh251,phone,+91 74107 39683\n" + rows, []string{"missing column(s) user_id, country"}},
		{"near miss", "User_ID, phone ,country\n" + rows,
			[]string{"missing column(s) user_id, phone", "column 1 would be user_id but for case or white space", "column 2 would be phone"}},
		{"duplicate unknown column", "user_id,phone,country,acct-zbh251,acct-zbh251\n" + rows, []string{"columns 4 and 5 of the header have the same name"}},
		{"duplicate wanted column", "user_id,phone,phone,country\n" + rows, []string{`column "phone" appears twice in the header (columns 2 and 3)`}},
		{"long binary header", "acct-zbh251," + strings.Repeat("+91 74107 39683", 5000), []string{"longer than", "compressed"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "users.csv")
			if err := os.WriteFile(p, []byte(c.content), 0o644); err != nil {
				t.Fatal(err)
			}
			r, err := OpenTable(p, UserColumns)
			if err == nil {
				r.Close()
				t.Fatal("opened")
			}
			if !errors.Is(err, errkind.ErrConfig) {
				t.Errorf("err = %v, want errkind.ErrConfig", err)
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("err = %v, want it to mention %q", err, w)
				}
			}
			checkNoPersonalData(t, "the error", strings.ReplaceAll(err.Error(), p, "PATH"))
		})
	}
}

// TestCorruptCompressedInput: gzip and zstd inputs are read (package doc,
// "Inputs"), and one that is damaged is bad data, said without its bytes.
func TestCorruptCompressedInput(t *testing.T) {
	cases := []struct {
		name, content string
		want          []string
	}{
		{"zstd", "\x28\xb5\x2f\xfd\x04\x58acct-zbh251,+91 74107 39683,US\n", []string{"zstd stream is corrupt"}},
		{"gzip", "\x1f\x8b\x08\x00acct-zbh251,+91 74107 39683\n", []string{"gzip stream is corrupt"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "users.csv")
			if err := os.WriteFile(p, []byte(c.content), 0o644); err != nil {
				t.Fatal(err)
			}
			r, err := OpenTable(p, UserColumns)
			if err == nil {
				r.Close()
				t.Fatal("opened")
			}
			if !errors.Is(err, errkind.ErrData) {
				t.Errorf("err = %v, want errkind.ErrData", err)
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("err = %v, want it to mention %q", err, w)
				}
			}
			checkNoPersonalData(t, "the error", strings.ReplaceAll(err.Error(), p, "PATH"))
		})
	}
}

// TestParquetHeaderErrorsHoldNoInput: a Parquet file's column names are
// input too.
func TestParquetHeaderErrorsHoldNoInput(t *testing.T) {
	for name, group := range map[string]parquet.Group{
		"personal column names": {"acct-zbh251": parquet.String(), "+91 74107 39683": parquet.String(), "country": parquet.String()},
		"near miss":             {"User_ID": parquet.String(), "phone": parquet.String(), "country": parquet.String(), "acct-q7": parquet.Int(64)},
	} {
		t.Run(name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "users.parquet")
			f, err := os.Create(p)
			if err != nil {
				t.Fatal(err)
			}
			w := parquet.NewWriter(f, parquet.NewSchema("users", group))
			if err := w.Close(); err != nil {
				t.Fatal(err)
			}
			f.Close()
			r, err := OpenTable(p, UserColumns)
			if err == nil {
				r.Close()
				t.Fatal("opened")
			}
			if !errors.Is(err, errkind.ErrConfig) || !strings.Contains(err.Error(), "missing column(s) user_id") {
				t.Errorf("err = %v, want errkind.ErrConfig naming user_id", err)
			}
			checkNoPersonalData(t, "the error", strings.ReplaceAll(err.Error(), p, "PATH"))
		})
	}
}
