package hashing

import (
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"unicode/utf8"
)

// vectors are MATCHING.md's test vectors, verbatim.
var vectors = []struct {
	phone, country, e164 string
	scheme               Scheme
	id                   string
}{
	{"(650)555-1212", "US", "+16505551212", SHA256Digits, "e323ec626319ca94ee8bff2e4c87cf613be6ea19919ed1364124e16807ab3176"},
	{"1 (234) 567-8901", "US", "+12345678901", UID2, "EObwtHBUqDNZR33LNSMdtt5cafsYFuGmuY4ZLenlue4="},
	{"06 1234 5678", "IT", "+390612345678", SHA256E164, "37b702607839d6dc5fc81d95b52e550e336413bf7ae2e04cafeca79f066ea44b"},
	{"+16502531234", "", "+16502531234", SHA256E164, "e101d1333c2310c83a1f96c4e0c12aa18b151ee0baaa2db3998ee3797d74b685"},
}

func TestMatchingVectors(t *testing.T) {
	for _, v := range vectors {
		got, err := Normalize(v.phone, v.country)
		if err != nil || got != v.e164 {
			t.Errorf("Normalize(%q, %q) = %q, %v; want %q", v.phone, v.country, got, err, v.e164)
			continue
		}
		h, err := NewHasher(v.scheme, DestKey{})
		if err != nil {
			t.Fatal(err)
		}
		if id := h.ID(got); id != v.id {
			t.Errorf("%s(%q) = %q, want %q", v.scheme, got, id, v.id)
		}
		if !v.scheme.ValidID([]byte(v.id)) {
			t.Errorf("ValidID(%s, %q) = false", v.scheme, v.id)
		}
	}
}

func TestHMACKnownAnswer(t *testing.T) {
	k, err := DeriveDestKey(TestKey(t), "meta-ads")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := hex.EncodeToString(k[:]), "4a79cefb1a3e294e0e5eb2c18e315accebbca099574696e0f0eb99336b91902f"; got != want {
		t.Errorf("K_dest = %q, want %q", got, want)
	}
	if got, want := k.KeyID(), "d47528a220267f43"; got != want {
		t.Errorf("key_id = %q, want %q", got, want)
	}
	h, err := NewHasher(HMACSHA256, k)
	if err != nil {
		t.Fatal(err)
	}
	want := "db79e068b5e2c928a322ce878e419ac120baabb152a69a17ab3a29f04d340ec5"
	// Twice, to prove the reused keyed state is reset between rows.
	for i := 0; i < 2; i++ {
		if got := hex.EncodeToString(h.AppendID(nil, "+16505551212")); got != want {
			t.Errorf("id #%d = %q, want %q", i, got, want)
		}
	}
	other, _ := DeriveDestKey(TestKey(t), "other-dest")
	if other == k {
		t.Error("two destinations derived the same key")
	}
}

func TestKeyStringRedacts(t *testing.T) {
	k := TestKey(t)
	dk, _ := DeriveDestKey(k, "meta-ads")
	for _, s := range []string{k.String(), dk.String()} {
		if strings.Contains(s, "0001") || strings.Contains(s, "4a79") || !strings.Contains(s, "redacted") {
			t.Errorf("String() = %q leaks or does not redact", s)
		}
	}
}

func writeKey(t *testing.T, text string, mode os.FileMode) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "master.key")
	if err := os.WriteFile(p, []byte(text), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLoadMasterKey(t *testing.T) {
	good := "  " + strings.Repeat("ab", 32) + "\n\n"
	cases := []struct {
		name string
		text string
		mode os.FileMode
		want error
	}{
		{"owner only", good, 0o600, nil},
		{"read only owner", good, 0o400, nil},
		{"longer key", strings.Repeat("cd", 64), 0o600, nil},
		{"group readable", good, 0o640, ErrKeyPermissions},
		{"world readable", good, 0o604, ErrKeyPermissions},
		{"short", strings.Repeat("ab", 31), 0o600, ErrKeyShort},
		{"not hex", strings.Repeat("zz", 32), 0o600, ErrKeyFormat},
		{"empty", "", 0o600, ErrKeyShort},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := LoadMasterKey(writeKey(t, c.text, c.mode))
			if c.want == nil && err != nil {
				t.Fatalf("err = %v, want nil", err)
			}
			if c.want != nil && !errors.Is(err, c.want) {
				t.Fatalf("err = %v, want %v", err, c.want)
			}
		})
	}
	if _, err := LoadMasterKey(filepath.Join(t.TempDir(), "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: err = %v", err)
	}
}

func TestLoadMasterKeyEnv(t *testing.T) {
	t.Setenv(KeyEnv, strings.Repeat("00", 32))
	k, err := LoadMasterKey("")
	if err != nil || k.Len() != 32 {
		t.Fatalf("LoadMasterKey(env) = %d bytes, %v", k.Len(), err)
	}
	os.Unsetenv(KeyEnv)
	if _, err := LoadMasterKey(""); !errors.Is(err, ErrNoKey) {
		t.Fatalf("no env: err = %v, want ErrNoKey", err)
	}
}

func TestWriteMasterKeyRoundTrip(t *testing.T) {
	p := filepath.Join(t.TempDir(), "k")
	if err := WriteMasterKey(p, TestKey(t)); err != nil {
		t.Fatal(err)
	}
	st, _ := os.Stat(p)
	if st.Mode().Perm() != 0o600 {
		t.Errorf("mode = %v, want 0600", st.Mode().Perm())
	}
	k, err := LoadMasterKey(p)
	if err != nil {
		t.Fatal(err)
	}
	a, _ := DeriveDestKey(k, "x")
	b, _ := DeriveDestKey(TestKey(t), "x")
	if a != b {
		t.Error("round trip changed the key")
	}
	if err := WriteMasterKey(p, TestKey(t)); err == nil {
		t.Error("WriteMasterKey overwrote an existing key")
	}
}

// styles covers each way MATCHING.md says people type numbers.
var styles = []struct {
	name, phone, country, want string
}{
	{"E.164", "+447400123456", "", "+447400123456"},
	{"international spaced", "+44 7400 123456", "", "+447400123456"},
	{"national with hint", "07400 123456", "GB", "+447400123456"},
	{"lowercase hint", "07400 123456", "gb", "+447400123456"},
	{"00 prefix", "0044 7400 123456", "DE", "+447400123456"},
	{"US 011 IDD", "011 44 7400 123456", "US", "+447400123456"},
	{"tel URI", "tel:+44-7400-123456", "", "+447400123456"},
	{"tel URI with ext", "tel:+1-650-555-1212;ext=12", "", "+16505551212"},
	{"extension dropped", "+1 650 555 1212 ext. 44", "", "+16505551212"},
	{"x extension", "(650) 555-1212 x99", "US", "+16505551212"},
	{"punctuation", "650.555.1212", "US", "+16505551212"},
	{"arabic-indic digits", "٠٦ ١٢٣٤ ٥٦٧٨", "IT", "+390612345678"},
	{"fullwidth digits", "＋４４ ７４００ １２３４５６", "", "+447400123456"},
	{"plus ignores hint", "+16505551212", "GB", "+16505551212"},
	{"Italian leading zero", "06 1234 5678", "IT", "+390612345678"},
	{"India mobile", "081234 56789", "IN", "+918123456789"},
	{"Brazil mobile", "(11) 96123-4567", "BR", "+5511961234567"},
}

func TestNormalizeStyles(t *testing.T) {
	for _, s := range styles {
		got, err := Normalize(s.phone, s.country)
		if err != nil || got != s.want {
			t.Errorf("%s: Normalize(%q, %q) = %q, %v; want %q", s.name, s.phone, s.country, got, err, s.want)
		}
	}
}

func TestNormalizeInvalid(t *testing.T) {
	cases := []struct {
		name, phone, country string
		want                 error
	}{
		{"empty", "", "US", ErrPhoneEmpty},
		{"junk", "not a number", "US", ErrPhoneUnparsed},
		{"no region no plus", "6505551212", "", ErrPhoneUnparsed},
		{"unknown region", "6505551212", "XX", ErrPhoneUnparsed},
		{"too short", "555", "US", ErrPhoneInvalid},
		{"unassigned country code", "+999 1234 5678", "", ErrPhoneUnparsed},
		{"invalid US area code", "(099) 555-1212", "US", ErrPhoneInvalid},
		{"251 bytes", "+1650555121" + strings.Repeat("2", 240), "", ErrPhoneTooLong},
	}
	for _, c := range cases {
		got, err := Normalize(c.phone, c.country)
		if !errors.Is(err, c.want) {
			t.Errorf("%s: Normalize(%q) = %q, %v; want %v", c.name, c.phone, got, err, c.want)
		}
	}
	// Exactly 250 bytes is not rejected for its length.
	s := "+16505551212" + strings.Repeat(" ", 238)
	if got, err := Normalize(s, ""); err != nil || got != "+16505551212" {
		t.Errorf("250 bytes: %q, %v", got, err)
	}
}

func TestParseScheme(t *testing.T) {
	for _, s := range Schemes() {
		if got, err := ParseScheme(string(s)); err != nil || got != s {
			t.Errorf("ParseScheme(%q) = %q, %v", s, got, err)
		}
	}
	if _, err := ParseScheme("md5"); err == nil || !strings.Contains(err.Error(), "hmac-sha256") {
		t.Errorf("ParseScheme(md5) err = %v, want a list of schemes", err)
	}
}

func TestValidIDShapes(t *testing.T) {
	bad := map[Scheme][]string{
		HMACSHA256:   {strings.Repeat("a", 31), strings.Repeat("a", 33)},
		SHA256E164:   {strings.Repeat("A", 64), strings.Repeat("a", 63), "+16505551212"},
		SHA256Digits: {strings.Repeat("g", 64)},
		UID2:         {strings.Repeat("*", 44), "EObwtHBUqDNZR33LNSMdtt5cafsYFuGmuY4ZLenlue4"},
	}
	for s, ids := range bad {
		for _, id := range ids {
			if s.ValidID([]byte(id)) {
				t.Errorf("%s.ValidID(%q) = true", s, id)
			}
		}
	}
}

// FuzzNormalize: no panic, the fast path's answer is the library's, results
// are E.164, and normalizing twice changes nothing.
func FuzzNormalize(f *testing.F) {
	for _, s := range styles {
		f.Add(s.phone, s.country)
	}
	for _, v := range vectors {
		f.Add(v.phone, v.country)
	}
	f.Fuzz(func(t *testing.T, phone, country string) {
		e, err := Normalize(phone, country)
		if len(phone) <= MaxPhoneBytes && phone != "" {
			le, lerr := normalizeLibrary(phone, strings.ToUpper(country))
			if e != le || err != lerr {
				t.Fatalf("Normalize(%q, %q) = %q, %v; the library alone says %q, %v", phone, country, e, err, le, lerr)
			}
		}
		if err != nil {
			return
		}
		if !utf8.ValidString(e) || len(e) < 2 || e[0] != '+' || strings.Trim(e[1:], "0123456789") != "" {
			t.Fatalf("Normalize(%q, %q) = %q: not E.164", phone, country, e)
		}
		again, err := Normalize(e, "")
		if err != nil || again != e {
			t.Fatalf("Normalize(Normalize(%q)) = %q, %v; want %q", phone, again, err, e)
		}
	})
}

func BenchmarkNormalize(b *testing.B) {
	b.Run("fast", func(b *testing.B) { benchNormalize(b, Normalize) })
	b.Run("library", func(b *testing.B) {
		benchNormalize(b, func(p, c string) (string, error) { return normalizeLibrary(p, strings.ToUpper(c)) })
	})
}

func benchNormalize(b *testing.B, normalize func(phone, country string) (string, error)) {
	for b.Loop() {
		if _, err := normalize("07400 123456", "GB"); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "numbers/s")
}

func BenchmarkHMAC(b *testing.B) {
	k, _ := DeriveDestKey(TestKey(b), "meta-ads")
	h, _ := NewHasher(HMACSHA256, k)
	buf := make([]byte, 0, 32)
	b.ReportAllocs()
	for b.Loop() {
		buf = h.AppendID(buf[:0], "+16505551212")
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "ids/s")
}

// writeDestKey writes meta-ads's key, derived from TestKey, to a new file.
func writeDestKey(t *testing.T) (string, DestKey) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "meta-ads.key")
	k, err := WriteDestKey(p, TestKey(t), "meta-ads")
	if err != nil {
		t.Fatal(err)
	}
	return p, k
}

func TestDestinationKeyFile(t *testing.T) {
	master := TestKey(t)
	p, written := writeDestKey(t)
	if st, _ := os.Stat(p); st.Mode().Perm() != 0o600 {
		t.Errorf("mode = %v, want 0600", st.Mode().Perm())
	}
	k, err := LoadKey(p)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := DeriveDestKey(master, "meta-ads")
	if got, err := k.For("meta-ads"); err != nil || got != want || written != want {
		t.Fatalf("For(meta-ads) = %v, want the derived key", err)
	}
	if _, err := k.For("other"); !errors.Is(err, ErrKeyDestination) {
		t.Errorf("For(other) err = %v, want ErrKeyDestination", err)
	}
	if _, ok := k.Master(); ok || k.Destination() != "meta-ads" {
		t.Error("a destination key says it is a master key")
	}
	if s := fmt.Sprintf("%v %#v %s", k, k, k); strings.Contains(s, hex.EncodeToString(want[:])[:8]) {
		t.Errorf("formatting printed the key: %s", s)
	}
	if _, err := WriteDestKey(p, master, "meta-ads"); err == nil {
		t.Error("WriteDestKey overwrote a file")
	}
	if _, err := LoadMasterKey(p); !errors.Is(err, ErrKeyFormat) {
		t.Errorf("LoadMasterKey of a destination key: err = %v, want ErrKeyFormat", err)
	}
	// A master key file loads as one, and derives every destination's key.
	mk, err := LoadKey(writeKey(t, strings.Repeat("ab", 32), 0o600))
	if _, ok := mk.Master(); err != nil || !ok {
		t.Fatalf("master key file: %v", err)
	}
	m, _ := ParseMasterKey([]byte(strings.Repeat("ab", 32)))
	a, _ := mk.For("x")
	if b, _ := DeriveDestKey(m, "x"); a != b {
		t.Error("a master key's For differs from DeriveDestKey")
	}
	good := hex.EncodeToString(want[:])
	for name, c := range map[string]struct {
		text string
		mode os.FileMode
		want error
	}{
		"group readable": {destKeyTag + " meta-ads " + good, 0o640, ErrKeyPermissions},
		"short key":      {destKeyTag + " meta-ads " + good[:62], 0o600, ErrKeyFormat},
		"long key":       {destKeyTag + " meta-ads " + good + "00", 0o600, ErrKeyFormat},
		"not hex":        {destKeyTag + " meta-ads " + strings.Repeat("zz", 32), 0o600, ErrKeyFormat},
		"hex then not":   {destKeyTag + " meta-ads " + good + "zz", 0o600, ErrKeyFormat},
		"no destination": {destKeyTag + " " + good, 0o600, ErrKeyFormat},
		"extra field":    {destKeyTag + " meta-ads " + good + " x", 0o600, ErrKeyFormat},
	} {
		if _, err := LoadKey(writeKey(t, c.text, c.mode)); !errors.Is(err, c.want) {
			t.Errorf("%s: err = %v, want %v", name, err, c.want)
		}
	}
	if _, err := WriteDestKey(filepath.Join(t.TempDir(), "k"), master, "a b"); err == nil {
		t.Error("a destination with white space was written")
	}
}

func TestLoadKeyEnv(t *testing.T) {
	p, want := writeDestKey(t)
	text, _ := os.ReadFile(p)
	t.Setenv(DestKeyEnv, string(text))
	t.Setenv(KeyEnv, strings.Repeat("00", 32))
	if _, err := LoadKey(""); err == nil {
		t.Error("both variables set: no error")
	}
	os.Unsetenv(KeyEnv)
	k, err := LoadKey("")
	if got, ferr := k.For("meta-ads"); err != nil || ferr != nil || got != want {
		t.Fatalf("$%s: %v, %v", DestKeyEnv, err, ferr)
	}
	t.Setenv(DestKeyEnv, strings.Repeat("00", 32))
	if _, err := LoadKey(""); !errors.Is(err, ErrKeyFormat) {
		t.Errorf("a master key in $%s: err = %v, want ErrKeyFormat", DestKeyEnv, err)
	}
	os.Unsetenv(DestKeyEnv)
	t.Setenv(KeyEnv, strings.Repeat("00", 32))
	if k, err := LoadKey(""); err != nil {
		t.Fatal(err)
	} else if _, ok := k.Master(); !ok {
		t.Errorf("$%s did not load as a master key", KeyEnv)
	}
}
