package leakguard

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/parquet-go/parquet-go"
	"github.com/parquet-go/parquet-go/format"

	"audiencematch/consent"
	"audiencematch/fixtures"
	"audiencematch/hashing"
	"audiencematch/internal/parquettest"
	"audiencematch/pipeline/idfile"
	"audiencematch/pipeline/manifest"
	"audiencematch/pipeline/source"
	"audiencematch/pipeline/spill"
)

// guardCfg is the configuration of a run whose output the guard's tests
// check: a scheme and key, and what the run writes by construction.
type guardCfg struct {
	Scheme hashing.Scheme
	Key    hashing.DestKey
	asOf   time.Time
	src    source.FileSource
}

// guardConfig is the configuration the guard's tests publish files of
// scheme s under.
func guardConfig(s hashing.Scheme) *guardCfg {
	return &guardCfg{Scheme: s, Key: hashing.DestKey{1}, asOf: fixtures.DefaultAsOf,
		src: source.FileSource{Users: "/in/users.csv", Consent: "/in/consent_events.csv"}}
}

func (c *guardCfg) KeyID() string {
	if !c.Scheme.Keyed() {
		return ""
	}
	return c.Key.KeyID()
}

func (c *guardCfg) layout() idfile.Layout {
	return idfile.Layout{RowsPerFile: idfile.DefaultRowsPerFile, RowsPerGroup: idfile.DefaultRowsPerGroup, ToolVersion: "test"}
}

// manifest is the manifest as the run fills it from its configuration.
func (c *guardCfg) manifest() *manifest.Manifest {
	m := manifest.New()
	m.ToolVersion, m.Destination, m.Purpose = "test", "meta-ads", fixtures.DefaultPurpose
	m.AsOf = c.asOf.UTC().Format(time.RFC3339Nano)
	m.Policy = manifest.PolicyRules{MinPolicyVersion: 3, MaxConsentAgeSeconds: 365 * 24 * 3600, MaxRejectRate: 0.01}
	m.Scheme, m.KeyID, m.ConfigDigest = string(c.Scheme), c.KeyID(), strings.Repeat("c0f1", 16)
	return m
}

func (c *guardCfg) expect() Expect {
	return Expect{Manifest: c.manifest(), Key: c.Key, Layout: c.layout(), InputNames: c.src.Name}
}

func writePart[T any](t *testing.T, path string, rows []T, opts ...parquet.WriterOption) {
	t.Helper()
	os.MkdirAll(filepath.Dir(path), 0o755)
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	w := parquet.NewGenericWriter[T](f, opts...)
	if _, err := w.Write(rows); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	f.Close()
}

// writeRunPart writes rows as the part writer does under cfg, with opts
// after its options.
func writeRunPart[T any](t *testing.T, path string, cfg *guardCfg, rows []T, opts ...parquet.WriterOption) {
	t.Helper()
	writePart(t, path, rows, append(idfile.WriterOptions(cfg.layout(), cfg.Scheme, cfg.KeyID()), opts...)...)
}

// writeRunIDs writes sorted ids into dir as the run's part writer does
// under cfg.
func writeRunIDs(tb testing.TB, dir string, cfg *guardCfg, ids []string) {
	tb.Helper()
	w, err := idfile.NewPartWriter(dir, nil, cfg.layout(), cfg.Scheme, cfg.KeyID())
	if err != nil {
		tb.Fatal(err)
	}
	for _, id := range ids {
		if err := w.Add(id); err != nil {
			tb.Fatal(err)
		}
	}
	if _, err := w.Close(); err != nil {
		tb.Fatal(err)
	}
}

// testManifest is the manifest of a run of cfg that publishes the Parquet
// files under dir (and deltas, when there are adds/ and removes/).
func testManifest(t *testing.T, dir string, cfg *guardCfg) *manifest.Manifest {
	t.Helper()
	m := cfg.manifest()
	m.RunID = cfg.asOf.UTC().Format("20060102T150405Z") + "-0123456789ab"
	m.AddInput(source.TableConsent, cfg.src.Name(source.TableConsent), strings.Repeat("c0", 32), 3)
	m.AddInput(source.TableUsers, cfg.src.Name(source.TableUsers), strings.Repeat("d1", 32), 2)
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !strings.HasSuffix(p, ".parquet") {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		pf, err := parquet.OpenFile(bytes.NewReader(b), int64(len(b)))
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		sum := sha256.Sum256(b)
		o := manifest.OutputFile{Path: filepath.ToSlash(rel), SHA256: hex.EncodeToString(sum[:]), Rows: pf.NumRows(), Bytes: int64(len(b))}
		delta := func(d **manifest.DeltaSet) {
			if *d == nil {
				*d = &manifest.DeltaSet{Scheme: string(cfg.Scheme), KeyID: cfg.KeyID()}
			}
			(*d).Files, (*d).Rows = append((*d).Files, o), (*d).Rows+o.Rows
		}
		switch {
		case strings.HasPrefix(o.Path, "adds/"):
			delta(&m.Adds)
		case strings.HasPrefix(o.Path, "removes/"):
			delta(&m.Removes)
		default:
			m.Files, m.TotalRows = append(m.Files, o), m.TotalRows+o.Rows
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if m.Adds != nil {
		m.PreviousRunID = "20261031T000000Z-ba9876543210"
	}
	m.Users.Rows, m.Users.Exported = m.TotalRows+1, m.TotalRows
	m.Users.Excluded[consent.ReasonInvalidPhone] = 1
	m.Rejects.Users[source.RejectFieldCount] = 0
	return m
}

// putManifest writes m into dir as the run does.
func putManifest(t *testing.T, dir string, m *manifest.Manifest) {
	t.Helper()
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "manifest.json"), append(b, '\n'), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestLeakGuard(t *testing.T) { withGuardSizes(t, testLeakGuard) }

// withGuardSizes runs fn with the default passes and batches, then with
// the smallest.
func withGuardSizes(t *testing.T, fn func(t *testing.T)) {
	for _, small := range []bool{false, true} {
		t.Run(fmt.Sprintf("small passes and batches %v", small), func(t *testing.T) {
			if small {
				smallGuardPasses(t)
			}
			fn(t)
		})
	}
}

// smallGuardPasses makes the guard take an exact pass per group that has
// hashes, and index as few raw bytes at once as it can, until t ends.
func smallGuardPasses(t *testing.T) { SmallPasses(t) }

func testLeakGuard(t *testing.T) {
	g := New(1, t.TempDir(), Options{})
	hexUser := strings.Repeat("ab", 32) // a user id that looks like a hex identifier
	for _, s := range []string{"acct-zbh251", "+447400123456", hexUser, "u1"} {
		g.Add(s)
	}
	g.AddPhone(" +44 7400 123456 ")
	cfg := guardConfig(hashing.SHA256E164)
	h, _ := hashing.NewHasher(hashing.SHA256E164, hashing.DestKey{})
	good := idfile.TextIDRow{ID: h.ID("+447400123456")}
	cases := []struct {
		name  string
		plant func(dir string)
		want  string
	}{
		{"clean", func(dir string) {
			writeRunPart(t, filepath.Join(dir, "part-00000.parquet"), cfg, []idfile.TextIDRow{good})
			putManifest(t, dir, testManifest(t, dir, cfg))
		}, ""},
		{"a needle's first 8 bytes, then others", func(dir string) {
			writeRunPart(t, filepath.Join(dir, "part-00000.parquet"), cfg, []idfile.TextIDRow{good})
			os.WriteFile(filepath.Join(dir, "notes.json"), []byte(`{"n":"+447400199999","m":"acct-zbh2","u":"u1"}`), 0o644)
		}, ""},
		{"raw phone in metadata", func(dir string) {
			writeRunPart(t, filepath.Join(dir, "part-00000.parquet"), cfg, []idfile.TextIDRow{good}, parquet.KeyValueMetadata(idfile.MetaScheme, "+44 7400 123456"))
		}, "byte"},
		{"user id in a file the run does not write", func(dir string) {
			writeRunPart(t, filepath.Join(dir, "part-00000.parquet"), cfg, []idfile.TextIDRow{good})
			os.WriteFile(filepath.Join(dir, "notes.json"), []byte(`{"note":"acct-zbh251"}`), 0o644)
		}, "notes.json: byte 9"},
		{"E.164 in a removes file", func(dir string) {
			writeRunPart(t, filepath.Join(dir, "removes", "part-00000.parquet"), cfg, []idfile.TextIDRow{good}, parquet.KeyValueMetadata(idfile.MetaKeyID, "+447400123456"))
		}, "removes"},
		{"user id as an identifier", func(dir string) {
			writeRunPart(t, filepath.Join(dir, "part-00000.parquet"), cfg, []idfile.TextIDRow{{ID: hexUser}})
		}, "equals a phone number or user id"},
		{"extra column", func(dir string) {
			type row struct {
				ID    string `parquet:"id"`
				Phone string `parquet:"phone"`
			}
			writeRunPart(t, filepath.Join(dir, "part-00000.parquet"), cfg, []row{{good.ID, "x"}})
		}, "columns other than"},
		{"unknown metadata", func(dir string) {
			writeRunPart(t, filepath.Join(dir, "part-00000.parquet"), cfg, []idfile.TextIDRow{good}, parquet.KeyValueMetadata("note", "hello"))
		}, "unexpected key-value metadata"},
		{"dictionary-encoded ids", func(dir string) {
			type row struct {
				ID string `parquet:"id,dict"`
			}
			writeRunPart(t, filepath.Join(dir, "part-00000.parquet"), cfg, []row{{good.ID}, {good.ID}})
		}, "DICTIONARY_PAGE page"},
		{"leak in the second of many files", func(dir string) {
			for i := range 5 {
				writeRunPart(t, filepath.Join(dir, fmt.Sprintf("part-%05d.parquet", i)), cfg, []idfile.TextIDRow{good, good})
			}
			os.WriteFile(filepath.Join(dir, "a.json"), []byte(`{}`), 0o644)
			os.WriteFile(filepath.Join(dir, "b.json"), []byte(`{"user": "acct-zbh251", "phone": "+447400123456"}`), 0o644)
		}, "b.json: byte 10"},
		{"typed phone in a file the run does not write", func(dir string) {
			os.WriteFile(filepath.Join(dir, "b.json"), []byte(`{"phone": "+44 7400 123456"}`), 0o644)
		}, "b.json: byte 11"},
		{"wrong shape", func(dir string) {
			writeRunPart(t, filepath.Join(dir, "part-00000.parquet"), cfg, []idfile.TextIDRow{{ID: "not-an-id"}})
		}, "exact shape"},
		{"raw phone as an id", func(dir string) {
			writeRunPart(t, filepath.Join(dir, "part-00000.parquet"), cfg, []idfile.TextIDRow{good, {ID: "+447400123456"}})
		}, "row 1: id does not have the exact shape"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			c.plant(dir)
			checkGuard(t, g, dir, cfg, cfg.Scheme, c.want)
		})
	}
}

// checkGuard runs g on dir and wants no error (want empty) or a LeakError
// mentioning want, which never repeats a planted value.
func checkGuard(t *testing.T, g *Guard, dir string, cfg *guardCfg, removesScheme hashing.Scheme, want string) {
	t.Helper()
	err := g.Check(dir, cfg.expect(), removesScheme)
	var le *LeakError
	if want == "" && err != nil {
		t.Fatalf("clean output flagged: %v", err)
	}
	if want != "" && (!errors.As(err, &le) || !strings.Contains(err.Error(), want)) {
		t.Fatalf("err = %v, want a LeakError mentioning %q", err, want)
	}
	if err != nil && (strings.Contains(err.Error(), "7400") || strings.Contains(err.Error(), "acct-")) {
		t.Errorf("the error repeats the leaked value: %v", err)
	}
}

// TestLeakGuardAcrossChunks: a needle straddling the scan's chunk boundary
// is still found.
func TestLeakGuardAcrossChunks(t *testing.T) { withGuardSizes(t, testLeakGuardAcrossChunks) }

func testLeakGuardAcrossChunks(t *testing.T) {
	g := New(1, t.TempDir(), Options{})
	g.Add("acct-straddle")
	dir := t.TempDir()
	b := []byte(strings.Repeat("x", (1<<20)-5) + "acct-straddle" + strings.Repeat("y", 100))
	os.WriteFile(filepath.Join(dir, "notes.txt"), b, 0o644)
	if err := g.Check(dir, guardConfig(hashing.HMACSHA256).expect(), hashing.HMACSHA256); err == nil || !strings.Contains(err.Error(), "byte 1048571") {
		t.Fatalf("err = %v", err)
	}
}

// TestLeakGuardManifest: the manifest is checked field by field, never
// searched for input strings. A user id, a phone or anything else in a
// place the run writes something else is refused, whatever it is.
func TestLeakGuardManifest(t *testing.T) {
	cfg := guardConfig(hashing.HMACSHA256)
	h, _ := hashing.NewHasher(cfg.Scheme, cfg.Key)
	rows := []idfile.BinaryIDRow{{ID: [32]byte([]byte(h.ID("+447400123456")))}}
	cases := []struct {
		name string
		edit func(m *manifest.Manifest)
		text func(b []byte) []byte
		want string
	}{
		{"as the run writes it", nil, nil, ""},
		{"user id as the purpose", func(m *manifest.Manifest) { m.Purpose = "acct-zbh251" }, nil, "purpose is not what the run writes"},
		{"phone as the destination", func(m *manifest.Manifest) { m.Destination = "+447400123456" }, nil, "destination is not"},
		{"phone as the tool version", func(m *manifest.Manifest) { m.ToolVersion = "+447400123456" }, nil, "tool_version is not"},
		{"phone as the run id", func(m *manifest.Manifest) { m.RunID = "+447400123456" }, nil, "run_id is not"},
		{"phone as the previous run id", func(m *manifest.Manifest) { m.PreviousRunID = "20261031T000000Z-447400123456x" }, nil, "previous_run_id is not"},
		{"phone as the removes' key_id", func(m *manifest.Manifest) { m.Removes.KeyID = "+447400123456" }, nil, "removes is not"},
		{"phone as the removes' scheme", func(m *manifest.Manifest) { m.Removes.Scheme = "+447400123456" }, nil, "removes is not"},
		{"phone as an exclusion reason", func(m *manifest.Manifest) { m.Users.Excluded["+447400123456"] = 0 }, nil, "users.excluded: a key"},
		{"user id as a reject reason", func(m *manifest.Manifest) { m.Rejects.ConsentEvents["acct-zbh251"] = 1 }, nil, "rejects.consent_events: a key"},
		{"phone as an input's name", func(m *manifest.Manifest) { m.Inputs[1].Name = "+447400123456" }, nil, "inputs: a name"},
		{"phone as an input's digest", func(m *manifest.Manifest) { m.Inputs[0].SHA256 = "+447400123456" }, nil, "inputs: a sha256"},
		{"user id as a part's path", func(m *manifest.Manifest) { m.Files[0].Path = "acct-zbh251.parquet" }, nil, "files: a path"},
		{"phone as an add's digest", func(m *manifest.Manifest) { m.Adds.Files[0].SHA256 = strings.Repeat("+447400123456", 5) }, nil, "adds: a sha256"},
		{"phone as a part's row count", func(m *manifest.Manifest) { m.Files[0].Rows = 447400123456 }, nil, "part-00000.parquet: rows or bytes"},
		{"a part listed twice", func(m *manifest.Manifest) { m.Files = append(m.Files, m.Files[0]) }, nil, "listed twice"},
		{"a part not listed", func(m *manifest.Manifest) { m.Removes.Files = nil }, nil, "removes/part-00000.parquet: a Parquet file the manifest does not list"},
		{"a field the manifest does not have", nil, func(b []byte) []byte {
			return bytes.Replace(b, []byte("{"), []byte(`{"note": "acct-zbh251",`), 1)
		}, "not the JSON of a manifest"},
		{"a field twice", nil, func(b []byte) []byte {
			return bytes.Replace(b, []byte("{"), []byte(`{"purpose": "acct-zbh251",`), 1)
		}, "not exactly the JSON of its fields"},
		{"a field spelled otherwise", nil, func(b []byte) []byte {
			return bytes.Replace(b, []byte(`"purpose"`), []byte(`"PURPOSE"`), 1)
		}, "not exactly the JSON of its fields"},
		{"a value after it", nil, func(b []byte) []byte { return append(b, `{"acct-zbh251": 1}`...) }, "not exactly the JSON of its fields"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			for _, sub := range []string{"", "adds", "removes"} {
				writeRunPart(t, filepath.Join(dir, sub, "part-00000.parquet"), cfg, rows)
			}
			m := testManifest(t, dir, cfg)
			if c.edit != nil {
				c.edit(m)
			}
			putManifest(t, dir, m)
			if c.text != nil {
				path := filepath.Join(dir, "manifest.json")
				b, _ := os.ReadFile(path)
				os.WriteFile(path, c.text(b), 0o644)
			}
			g := New(1, t.TempDir(), Options{})
			g.Add("acct-zbh251")
			g.Add("+447400123456")
			checkGuard(t, g, dir, cfg, cfg.Scheme, c.want)
		})
	}
}

// TestLeakGuardParquetStructure: whatever a part's bytes hold that the
// part writer does not put there is refused, wherever it is: in the
// footer's fields, in a field the decoder skips, in a statistic or the
// column index, between the structures, or as an id.
func TestLeakGuardParquetStructure(t *testing.T) {
	phone := []byte("+44 7400 123456")
	for _, s := range []hashing.Scheme{hashing.HMACSHA256, hashing.SHA256E164, hashing.UID2} {
		cfg := guardConfig(s)
		h, _ := hashing.NewHasher(s, cfg.Key)
		ids := []string{h.ID("+447400123456"), h.ID("+447400123457"), h.ID("+447400123458")}
		lo, hi := slices.Min(ids), slices.Max(ids)
		// padded is a value as long as an id, holding a phone.
		padded := append(bytes.Clone(phone), make([]byte, s.IDLen()-len(phone))...)
		if !s.Binary() {
			copy(padded[len(phone):], strings.Repeat("0", s.IDLen()))
		}
		// Under a binary scheme any 32 bytes have an id's shape: the key is
		// what must not be one.
		notAnID, notAnIDWant := string(phone), "exact shape"
		if s.Binary() {
			notAnID, notAnIDWant = string(cfg.Key[:]), "id equals the destination's key"
		}
		cases := []struct {
			name   string
			opts   []parquet.WriterOption
			footer func(md *format.FileMetaData)
			bytes  func(t *testing.T, b []byte) []byte
			want   string
		}{
			{"as the part writer writes it", nil, nil, nil, ""},
			{"phone as created_by", []parquet.WriterOption{parquet.CreatedBy(string(phone), "", "")}, nil, nil, "created_by is not"},
			{"phone as the schema's name", nil, func(md *format.FileMetaData) { md.Schema[0].Name = string(phone) }, nil, "the schema is not"},
			{"phone in the column's metadata", nil, func(md *format.FileMetaData) {
				md.RowGroups[0].Columns[0].MetaData.KeyValueMetadata = []format.KeyValue{{Key: "phone", Value: string(phone)}}
			}, nil, "column key-value metadata"},
			{"phone as the column chunk's greatest id", nil, func(md *format.FileMetaData) {
				md.RowGroups[0].Columns[0].MetaData.Statistics.MaxValue = padded
			}, nil, "the column chunk's statistics give a bound"},
			{"phone as a page header's greatest id", nil, nil, func(t *testing.T, b []byte) []byte {
				return parquettest.ReplaceFirst(t, b, []byte(hi), padded, 0) // the header's max comes before the page and footer
			}, "a page's statistics or column index give a bound"},
			{"phone in the column index", nil, nil, func(t *testing.T, b []byte) []byte {
				// Its least id, truncated to 16 bytes, comes first.
				return parquettest.ReplaceFirst(t, b, []byte(lo[:16]), padded[:16], parquettest.FooterOf(t, b).RowGroups[0].Columns[0].ColumnIndexOffset)
			}, "a page's statistics or column index give a bound"},
			{"phone in a footer field the decoder skips", nil, nil, func(t *testing.T, b []byte) []byte {
				// Field 100 of FileMetaData, binary, before the struct's stop.
				field := append([]byte{0x08, 0xc8, 0x01, byte(len(phone))}, phone...)
				return parquettest.WithFooter(b, func(f []byte) []byte { return append(append(f[:len(f)-1:len(f)-1], field...), 0) })
			}, "bytes that are not its fields'"},
			{"phone between the indexes and the footer", nil, nil, func(t *testing.T, b []byte) []byte {
				n := int(binary.LittleEndian.Uint32(b[len(b)-8:]))
				at := len(b) - 8 - n
				return append(append(b[:at:at], phone...), b[at:]...)
			}, "bytes in no page, index or footer"},
			{"not an id", nil, nil, nil, notAnIDWant},
		}
		for _, c := range cases {
			t.Run(string(s)+"/"+c.name, func(t *testing.T) {
				dir := t.TempDir()
				path := filepath.Join(dir, "part-00000.parquet")
				rows := ids
				if c.name == "not an id" {
					rows = []string{ids[0], notAnID}
				}
				if s.Binary() {
					bin := make([]idfile.BinaryIDRow, len(rows))
					for i, id := range rows {
						copy(bin[i].ID[:], id)
					}
					writeRunPart(t, path, cfg, bin, c.opts...)
				} else {
					txt := make([]idfile.TextIDRow, len(rows))
					for i, id := range rows {
						txt[i].ID = id
					}
					writeRunPart(t, path, cfg, txt, c.opts...)
				}
				if c.footer != nil || c.bytes != nil {
					b, err := os.ReadFile(path)
					if err != nil {
						t.Fatal(err)
					}
					if c.footer != nil {
						b = parquettest.PatchFooter(t, b, c.footer)
					}
					if c.bytes != nil {
						b = c.bytes(t, b)
					}
					os.WriteFile(path, b, 0o644)
				}
				g := New(1, t.TempDir(), Options{})
				g.AddPhone(string(phone))
				checkGuard(t, g, dir, cfg, s, c.want)
			})
		}
	}
}

// TestLeakGuardExactEveryScheme: an input string shaped like an identifier
// of any scheme is caught when published as that scheme's id, while strings
// that cannot be an id stay out of the exact index.
func TestLeakGuardExactEveryScheme(t *testing.T) {
	for _, s := range hashing.Schemes() {
		h, err := hashing.NewHasher(s, hashing.DestKey{1})
		if err != nil {
			t.Fatal(err)
		}
		id := h.ID("+447400123456") // an input value that happens to be a valid id
		g := New(7, t.TempDir(), Options{})
		g.Add("acct-zbh251")
		g.Add("+447400123456")
		if err := g.Finish(); err != nil {
			t.Fatal(err)
		}
		if err := g.load(0, guardGroups); err != nil {
			t.Fatal(err)
		}
		if n := prefixNeedles(t, g); n != 2 || len(g.exact) != 0 {
			t.Fatalf("%s: %d needles (want 2) and %d exact hashes (want 0) for strings that cannot be an id", s, n, len(g.exact))
		}
		g.Add(id)
		dir := t.TempDir()
		cfg := guardConfig(s)
		switch {
		case s == hashing.OPRFRistretto255:
			writeRunPart(t, filepath.Join(dir, "part-00000.parquet"), cfg, []idfile.WideIDRow{{ID: [64]byte([]byte(id))}})
		case s.Binary():
			writeRunPart(t, filepath.Join(dir, "part-00000.parquet"), cfg, []idfile.BinaryIDRow{{ID: [32]byte([]byte(id))}})
		default:
			writeRunPart(t, filepath.Join(dir, "part-00000.parquet"), cfg, []idfile.TextIDRow{{ID: id}})
		}
		err = g.Check(dir, cfg.expect(), s)
		var le *LeakError
		if !errors.As(err, &le) || !strings.Contains(err.Error(), "equals a phone number or user id") {
			t.Errorf("%s: err = %v, want the exact check to refuse", s, err)
		}
	}
}

// TestLeakGuardTypedPhoneAsAnID: a typed phone may equal an id of an
// unkeyed scheme (a user can type another user's id), and is still looked
// for in a file the run does not write; under a keyed scheme, which nobody
// can compute, an id equal to one is a leak.
func TestLeakGuardTypedPhoneAsAnID(t *testing.T) {
	for _, s := range []hashing.Scheme{hashing.SHA256E164, hashing.UID2} {
		h, _ := hashing.NewHasher(s, hashing.DestKey{})
		id := h.ID("+447400123456")
		g := New(7, t.TempDir(), Options{})
		g.AddPhone(id)
		cfg := guardConfig(s)
		dir := t.TempDir()
		writeRunPart(t, filepath.Join(dir, "part-00000.parquet"), cfg, []idfile.TextIDRow{{ID: id}})
		putManifest(t, dir, testManifest(t, dir, cfg))
		checkGuard(t, g, dir, cfg, s, "")
		if s == hashing.UID2 { // hex ids are left out of the raw scan
			os.WriteFile(filepath.Join(dir, "notes.txt"), []byte("id: "+id), 0o644)
			checkGuard(t, g, dir, cfg, s, "notes.txt: byte 4")
		}
	}
	cfg := guardConfig(hashing.HMACSHA256)
	typed := "+44 7400 123456 ext. 1234567890 " // 32 bytes, published raw by a bug
	g := New(7, t.TempDir(), Options{})
	g.AddPhone(typed)
	dir := t.TempDir()
	writeRunPart(t, filepath.Join(dir, "part-00000.parquet"), cfg, []idfile.BinaryIDRow{{ID: [32]byte([]byte(typed))}})
	checkGuard(t, g, dir, cfg, cfg.Scheme, "row 0: id equals a phone number or user id")
}

// prefixNeedles counts the raw scan's needles.
func prefixNeedles(t *testing.T, g *Guard) int {
	n := 0
	var buf []byte
	for p := guardGroups; p < guardParts; p++ {
		err := spill.EachChunk(g.srcs, p, &buf, func(b []byte) error {
			rd := spill.NewReader(b)
			for rd.More() {
				readNeedle(&rd)
				n++
			}
			return rd.Err()
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	return n
}

// TestLeakGuardCountsEveryPage: every id in the data pages is checked, even
// past the row count a patched footer gives (the reader decodes the pages'
// values; checkIDs would refuse a file it decoded fewer of), and a file
// whose column chunk counts fewer values than its pages is refused.
func TestLeakGuardCountsEveryPage(t *testing.T) {
	h, _ := hashing.NewHasher(hashing.SHA256E164, hashing.DestKey{})
	cfg := guardConfig(hashing.SHA256E164)
	hexUser := strings.Repeat("ab", 32)
	for _, c := range []struct {
		name  string
		patch func(md *format.FileMetaData)
		want  string
	}{
		{"rows", func(md *format.FileMetaData) { md.NumRows, md.RowGroups[0].NumRows = 1, 1 }, "row 1: id equals a phone number or user id"},
		{"values", func(md *format.FileMetaData) { md.RowGroups[0].Columns[0].MetaData.NumValues = 1 }, "pages hold 2 values, the column chunk says 1"},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "part-00000.parquet")
			writeRunPart(t, path, cfg, []idfile.TextIDRow{{ID: h.ID("+447400123456")}, {ID: hexUser}})
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, parquettest.PatchFooter(t, b, c.patch), 0o644); err != nil {
				t.Fatal(err)
			}
			g := New(1, t.TempDir(), Options{})
			g.Add(hexUser)
			err = g.Check(dir, cfg.expect(), cfg.Scheme)
			var le *LeakError
			if !errors.As(err, &le) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v, want a LeakError mentioning %q", err, c.want)
			}
		})
	}
}

// TestLeakGuardFirstLeakInOrder: the id check runs a row group per task on
// every core, and still reports the first leak in file and row order, with
// its row number in the file.
func TestLeakGuardFirstLeakInOrder(t *testing.T) {
	h, _ := hashing.NewHasher(hashing.SHA256E164, hashing.DestKey{})
	cfg := guardConfig(hashing.SHA256E164)
	hexUser := strings.Repeat("ab", 32)
	rows := func(leaks ...int) []idfile.TextIDRow {
		out := make([]idfile.TextIDRow, 10)
		for i := range out {
			out[i].ID = h.ID(fmt.Sprintf("+4474001234%02d", i))
		}
		for _, i := range leaks {
			out[i].ID = hexUser
		}
		return out
	}
	small := parquet.MaxRowsPerRowGroup(3) // four row groups a file
	for _, c := range []struct {
		name   string
		a, b   []int // leaking rows of part 0 and part 1
		badEnd bool  // part 0's last id has the wrong shape
		want   string
	}{
		{"one leak in the third group", nil, []int{7}, false, "part-00001.parquet: row 7: id equals"},
		{"two leaks, the first reported", []int{8, 4}, []int{1}, false, "part-00000.parquet: row 4: id equals"},
		{"a shape error in the first file wins", nil, []int{1}, true, "part-00000.parquet: row 9: id does not have the exact shape"},
		{"clean", nil, nil, false, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			a := rows(c.a...)
			if c.badEnd {
				a[9].ID = "not-an-id"
			}
			writeRunPart(t, filepath.Join(dir, "part-00000.parquet"), cfg, a, small)
			writeRunPart(t, filepath.Join(dir, "part-00001.parquet"), cfg, rows(c.b...), small)
			g := New(1, t.TempDir(), Options{})
			g.Add(hexUser)
			err := g.Check(dir, cfg.expect(), cfg.Scheme)
			if c.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v, want %q", err, c.want)
			}
		})
	}
}
