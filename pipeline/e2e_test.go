package pipeline_test

import (
	"bytes"
	"cmp"
	"context"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/csv"
	"encoding/hex"
	"encoding/json"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"github.com/apache/arrow-go/v18/parquet"
	"github.com/apache/arrow-go/v18/parquet/compress"
	"github.com/apache/arrow-go/v18/parquet/file"
	"github.com/apache/arrow-go/v18/parquet/pqarrow"
	"github.com/cloudflare/circl/oprf"
	"github.com/nyaruka/phonenumbers"

	"audiencematch/consent"
	"audiencematch/fixtures"
	"audiencematch/hashing"
	"audiencematch/pipeline"
	"audiencematch/pipeline/source"
)

// oracle recomputes a run from the generator's rows, straight from the text
// of MATCHING.md, sharing no code with packages consent, hashing or pipeline.
type oracle struct {
	ids      map[string][]string // expected identifier -> user ids of its valid holders
	excluded map[string]int64
	events   map[string]int64
	users    int64
	snapshot string // the consent snapshot digest (see pipeline/audit.go)
}

type oracleParams struct {
	asOf      time.Time
	purpose   string
	minPolicy int64
	maxAge    time.Duration
	master    []byte
	dest      string
	scheme    string
}

func (p oracleParams) id(e164 string) string {
	switch p.scheme {
	case "sha256-digits":
		s := sha256.Sum256([]byte(e164[1:]))
		return hex.EncodeToString(s[:])
	case "sha256-e164":
		s := sha256.Sum256([]byte(e164))
		return hex.EncodeToString(s[:])
	case "uid2":
		s := sha256.Sum256([]byte(e164))
		return base64.StdEncoding.EncodeToString(s[:])
	case "oprf-ristretto255":
		return oracleOPRF(p.master, p.dest, e164)
	case "e164": // the exported numbers themselves, for tests of who matches
		return e164
	}
	k, err := hkdf.Key(sha256.New, p.master, nil, "audiencematch/v1/"+p.dest, 32)
	if err != nil {
		panic(err)
	}
	m := hmac.New(sha256.New, k)
	m.Write([]byte(e164))
	return string(m.Sum(nil))
}

// oracleOPRF is MATCHING.md section 4's oprf-ristretto255 identifier from
// its text, with circl's RFC 9497 code directly rather than package
// hashing's.
func oracleOPRF(master []byte, dest, e164 string) string {
	info := "audiencematch/v1/oprf/" + dest
	seed, err := hkdf.Key(sha256.New, master, nil, info, 32)
	if err != nil {
		panic(err)
	}
	sk, err := oprf.DeriveKey(oprf.SuiteRistretto255, oprf.BaseMode, seed, []byte(info))
	if err != nil {
		panic(err)
	}
	out, err := oprf.NewServer(oprf.SuiteRistretto255, sk).FullEvaluate([]byte(e164))
	if err != nil {
		panic(err)
	}
	return string(out)
}

type oEvent struct {
	id, action string
	at         time.Time
	policy     int64
}

func computeOracle(users []fixtures.User, events []fixtures.Event, p oracleParams) *oracle {
	o := &oracle{ids: map[string][]string{}, excluded: map[string]int64{}, events: map[string]int64{}}
	known := map[string]bool{}
	for _, u := range users {
		if !u.Broken && u.UserID != "" {
			known[u.UserID] = true
		}
	}
	byUser := map[string][]oEvent{}
	unreadable := map[string]bool{} // users a malformed row may have withdrawn (amendment 1)
	for _, e := range events {
		at, terr := time.Parse(time.RFC3339Nano, e.OccurredAt)
		pol, perr := strconv.ParseInt(e.PolicyVersion, 10, 64)
		switch {
		case e.Broken || e.EventID == "" || e.UserID == "" || (e.Action != "grant" && e.Action != "withdraw") || terr != nil || perr != nil:
			o.events["malformed"]++
			// The generator's broken rows break their quoting after the
			// purpose, and its ids and purposes have no quote or comma,
			// so both stay readable; an empty one is not.
			if e.UserID != "" && (e.Purpose == "" || e.Purpose == p.purpose) {
				unreadable[e.UserID] = true
			}
		case e.Purpose != p.purpose:
			o.events["other_purpose"]++
		case at.After(p.asOf):
			o.events["after_cutoff"]++
		case !known[e.UserID]:
			o.events["unknown_user"]++
		default:
			o.events["used"]++
			byUser[e.UserID] = append(byUser[e.UserID], oEvent{e.EventID, e.Action, at, pol})
		}
	}
	status := func(id string) (string, string) {
		if unreadable[id] {
			return "consent_unreadable", ""
		}
		evs := byUser[id]
		if len(evs) == 0 {
			return "no_consent", ""
		}
		// Latest first; at a tie withdraw first, then lower policy, then smaller id.
		slices.SortFunc(evs, func(a, b oEvent) int {
			if c := b.at.Compare(a.at); c != 0 {
				return c
			}
			if a.action != b.action {
				if a.action == "withdraw" {
					return -1
				}
				return 1
			}
			return cmp.Or(cmp.Compare(a.policy, b.policy), strings.Compare(a.id, b.id))
		})
		e := evs[0]
		switch {
		case e.action == "withdraw":
			return "withdrawn", e.id
		case e.policy < p.minPolicy:
			return "stale_policy", e.id
		case p.maxAge > 0 && p.asOf.Sub(e.at) > p.maxAge:
			return "expired", e.id
		}
		return "valid", e.id
	}
	var lines []string // the snapshot's line digests, hex
	defer func() {
		slices.Sort(lines)
		h := sha256.New()
		for _, l := range lines {
			b, _ := hex.DecodeString(l)
			h.Write(b)
		}
		o.snapshot = hex.EncodeToString(h.Sum(nil))
	}()
	blocked := map[string]bool{}
	holders := map[string][]string{}
	for _, u := range users {
		o.users++
		if u.Broken || u.UserID == "" {
			o.excluded["malformed_row"]++
			continue
		}
		s, eventID := status(u.UserID)
		line := sha256.Sum256([]byte(u.UserID + "\t" + s + "\t" + eventID + "\n"))
		lines = append(lines, hex.EncodeToString(line[:]))
		if s != "valid" && s != "withdrawn" && s != "consent_unreadable" {
			o.excluded[s]++
			continue
		}
		e164 := ""
		if len(u.Phone) <= 250 {
			if n, err := phonenumbers.Parse(u.Phone, strings.ToUpper(u.Country)); err == nil && phonenumbers.IsValidNumber(n) {
				e164 = phonenumbers.Format(n, phonenumbers.E164)
			}
		}
		switch {
		case s == "withdrawn" || s == "consent_unreadable":
			o.excluded[s]++
			if e164 != "" {
				blocked[e164] = true
			}
		case e164 == "":
			o.excluded["invalid_phone"]++
		default:
			holders[e164] = append(holders[e164], u.UserID)
		}
	}
	for e164, hs := range holders {
		if blocked[e164] {
			o.excluded["shared_number_withdrawn"] += int64(len(hs))
			continue
		}
		o.excluded["duplicate_number"] += int64(len(hs) - 1)
		slices.Sort(hs)
		o.ids[p.id(e164)] = hs
	}
	return o
}

func generateSeed(n int, seed uint64) ([]fixtures.User, []fixtures.Event) {
	var us []fixtures.User
	var es []fixtures.Event
	fixtures.Generate(fixtures.Options{Users: n, Seed: seed}, func(u fixtures.User) { us = append(us, u) }, func(e fixtures.Event) { es = append(es, e) })
	return us, es
}

func fixtureConfig(t *testing.T, dir string, scheme hashing.Scheme, master hashing.MasterKey, format string) pipeline.Config {
	t.Helper()
	st, err := fixtures.WriteFiles(filepath.Join(dir, "in"), fixtures.Options{Users: 20000, Seed: 42, Format: format})
	if err != nil {
		t.Fatal(err)
	}
	k, err := hashing.MasterKeyOf(master).ForScheme(scheme, "meta-ads")
	if err != nil {
		t.Fatal(err)
	}
	return pipeline.Config{
		Users: st.UsersPath, Consent: st.EventsPath, Destination: "meta-ads", Scheme: scheme, Key: k,
		Out: filepath.Join(dir, "out"), State: filepath.Join(dir, "state"),
		Registry:      testRegistry(filepath.Join(dir, "out"), "meta-ads", scheme),
		Rules:         fixtureRules(fixtures.DefaultAsOf),
		MaxRejectRate: 0.01, RowsPerFile: 4000, RowsPerGroup: 1000, ToolVersion: "test",
	}
}

var (
	testRegistry = pipeline.TestRegistry
	fixtureRules = pipeline.FixtureRules
)

// readIDs reads a published part with arrow-go's Parquet reader, an
// independent implementation, checking the column's physical type.
func readIDs(t *testing.T, path string, scheme hashing.Scheme) []string {
	t.Helper()
	pf, err := file.OpenParquetFile(path, false)
	if err != nil {
		t.Fatalf("arrow cannot open %s: %v", path, err)
	}
	defer pf.Close()
	sc := pf.MetaData().Schema
	if sc.NumColumns() != 1 || sc.Column(0).Name() != "id" {
		t.Fatalf("%s: columns = %v, want only id", path, sc)
	}
	col := sc.Column(0)
	if scheme.Binary() {
		if col.PhysicalType() != parquet.Types.FixedLenByteArray || col.TypeLength() != scheme.IDLen() {
			t.Fatalf("id is %v(%d), want FIXED_LEN_BYTE_ARRAY(%d)", col.PhysicalType(), col.TypeLength(), scheme.IDLen())
		}
	} else if col.PhysicalType() != parquet.Types.ByteArray || col.LogicalType().String() != "String" {
		t.Fatalf("id is %v %v, want BYTE_ARRAY String", col.PhysicalType(), col.LogicalType())
	}
	for rg := 0; rg < pf.NumRowGroups(); rg++ {
		cc, err := pf.MetaData().RowGroup(rg).ColumnChunk(0)
		if err != nil {
			t.Fatal(err)
		}
		if cc.Compression() != compress.Codecs.Zstd {
			t.Errorf("row group %d compression = %v, want ZSTD", rg, cc.Compression())
		}
	}
	fr, err := pqarrow.NewFileReader(pf, pqarrow.ArrowReadProperties{}, memory.DefaultAllocator)
	if err != nil {
		t.Fatal(err)
	}
	tbl, err := fr.ReadTable(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer tbl.Release()
	var ids []string
	for _, chunk := range tbl.Column(0).Data().Chunks() {
		switch a := chunk.(type) {
		case *array.FixedSizeBinary:
			if a.DataType().(*arrow.FixedSizeBinaryType).ByteWidth != scheme.IDLen() {
				t.Fatalf("arrow type %v", a.DataType())
			}
			for i := 0; i < a.Len(); i++ {
				ids = append(ids, string(a.Value(i)))
			}
		case *array.String:
			for i := 0; i < a.Len(); i++ {
				ids = append(ids, a.Value(i))
			}
		default:
			t.Fatalf("unexpected arrow type %T", chunk)
		}
	}
	return ids
}

func readEvidence(t *testing.T, path string) map[string][]string {
	t.Helper()
	pf, err := file.OpenParquetFile(path, false)
	if err != nil {
		t.Fatal(err)
	}
	defer pf.Close()
	fr, _ := pqarrow.NewFileReader(pf, pqarrow.ArrowReadProperties{}, memory.DefaultAllocator)
	tbl, err := fr.ReadTable(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer tbl.Release()
	out := map[string][]string{}
	ids, users := tbl.Column(0).Data().Chunks(), tbl.Column(1).Data().Chunks()
	for c := range ids {
		a, b := ids[c].(*array.String), users[c].(*array.String)
		for i := 0; i < a.Len(); i++ {
			out[a.Value(i)] = append(out[a.Value(i)], b.Value(i))
		}
	}
	return out
}

func checkAgainstOracle(t *testing.T, cfg pipeline.Config, master []byte) *pipeline.Result {
	t.Helper()
	res, err := pipeline.Run(context.Background(), cfg)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	us, es := generateSeed(20000, 42)
	if strings.HasSuffix(cfg.Users, ".parquet") {
		us = slices.DeleteFunc(us, func(u fixtures.User) bool { return u.Broken })
		es = slices.DeleteFunc(es, func(e fixtures.Event) bool { return e.Broken })
	}
	o := computeOracle(us, es, oracleParams{asOf: cfg.Rules.AsOf, purpose: cfg.Rules.Purpose, minPolicy: cfg.Rules.MinPolicyVersion,
		maxAge: cfg.Rules.MaxAge, master: master, dest: cfg.Destination, scheme: string(cfg.Scheme)})

	m := res.Manifest
	var got []string
	for _, f := range m.Files {
		ids := readIDs(t, filepath.Join(res.PublishedDir, f.Path), cfg.Scheme)
		if int64(len(ids)) != f.Rows {
			t.Errorf("%s: %d rows, manifest says %d", f.Path, len(ids), f.Rows)
		}
		got = append(got, ids...)
	}
	want := make([]string, 0, len(o.ids))
	for id := range o.ids {
		want = append(want, id)
	}
	slices.Sort(want)
	if !slices.IsSorted(got) {
		t.Error("published identifiers are not sorted")
	}
	if !slices.Equal(got, want) {
		t.Fatalf("published %d identifiers, oracle expects %d (or they differ)", len(got), len(want))
	}
	if len(m.Files) < 2 && cfg.RowsPerFile < int64(len(got)) {
		t.Errorf("%d files for %d rows at %d rows per file", len(m.Files), len(got), cfg.RowsPerFile)
	}
	if m.Users.Rows != o.users || m.TotalRows != int64(len(want)) || m.Users.Exported != int64(len(want)) {
		t.Errorf("users %d exported %d, oracle %d and %d", m.Users.Rows, m.Users.Exported, o.users, len(want))
	}
	for _, r := range consent.ExclusionReasons {
		if m.Users.Excluded[r] != o.excluded[r] {
			t.Errorf("excluded %s = %d, oracle %d", r, m.Users.Excluded[r], o.excluded[r])
		}
	}
	for _, c := range consent.EventClassNames {
		if m.ConsentEvents.ByClass[c] != o.events[c] {
			t.Errorf("events %s = %d, oracle %d", c, m.ConsentEvents.ByClass[c], o.events[c])
		}
	}
	// The consent snapshot, recomputed from the rows as pipeline/audit.go
	// defines it.
	var rec struct {
		Snapshot string `json:"consent_snapshot_sha256"`
	}
	if b, err := os.ReadFile(filepath.Join(filepath.Dir(res.EvidencePath), "record.json")); err != nil {
		t.Fatal(err)
	} else if err := json.Unmarshal(b, &rec); err != nil {
		t.Fatal(err)
	}
	if rec.Snapshot != o.snapshot {
		t.Errorf("consent snapshot %s, oracle %s", rec.Snapshot, o.snapshot)
	}
	// Every case is exercised, or the comparison proves little.
	for _, r := range consent.ExclusionReasons {
		if strings.HasSuffix(cfg.Users, ".csv") && m.Users.Excluded[r] == 0 {
			t.Errorf("fixtures produced no %s rows", r)
		}
	}
	// The evidence names exactly the oracle's valid holders of each identifier.
	ev := readEvidence(t, res.EvidencePath)
	if len(ev) != len(o.ids) {
		t.Fatalf("evidence has %d identifiers, want %d", len(ev), len(o.ids))
	}
	for id, hs := range o.ids {
		key := id
		if cfg.Scheme.Binary() {
			key = hex.EncodeToString([]byte(id))
		}
		if !slices.Equal(ev[key], hs) {
			t.Fatalf("evidence for one identifier lists %d holders, oracle %d", len(ev[key]), len(hs))
		}
	}
	return res
}

func TestEndToEndAgainstOracle(t *testing.T) {
	master := make([]byte, 32)
	for i := range master {
		master[i] = byte(100 + i)
	}
	mk, _ := hashing.NewMasterKey(master)
	for _, scheme := range hashing.Schemes() {
		t.Run(string(scheme), func(t *testing.T) {
			cfg := fixtureConfig(t, t.TempDir(), scheme, mk, "csv")
			res := checkAgainstOracle(t, cfg, master)
			if scheme.Keyed() && res.Manifest.KeyID == "" || !scheme.Keyed() && res.Manifest.KeyID != "" {
				t.Errorf("key_id %q for scheme %s", res.Manifest.KeyID, scheme)
			}
		})
	}
}

// TestParquetInputSameOutput: the same rows as Parquet and as CSV give the
// same files. The generator's rows with broken CSV quoting have no Parquet
// form, and in CSV they fail closed (MATCHING.md section 2, amendment 1), so
// the CSV here holds the rows the Parquet file holds.
func TestParquetInputSameOutput(t *testing.T) {
	master := bytes.Repeat([]byte{7}, 32)
	mk, _ := hashing.NewMasterKey(master)
	dir := t.TempDir()
	pq := checkAgainstOracle(t, fixtureConfig(t, filepath.Join(dir, "pq"), hashing.HMACSHA256, mk, "parquet"), master)
	us, es := generateSeed(20000, 42)
	us = slices.DeleteFunc(us, func(u fixtures.User) bool { return u.Broken })
	es = slices.DeleteFunc(es, func(e fixtures.Event) bool { return e.Broken })
	st, err := fixtures.WriteTables(filepath.Join(dir, "csv-in"), us, es)
	if err != nil {
		t.Fatal(err)
	}
	cfg := fixtureConfig(t, filepath.Join(dir, "csv"), hashing.HMACSHA256, mk, "csv")
	cfg.Users, cfg.Consent = st.UsersPath, st.EventsPath
	csv, err := pipeline.Run(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if len(pq.Manifest.Files) != len(csv.Manifest.Files) {
		t.Fatalf("%d files from Parquet, %d from CSV", len(pq.Manifest.Files), len(csv.Manifest.Files))
	}
	for i, f := range pq.Manifest.Files {
		a, _ := os.ReadFile(filepath.Join(pq.PublishedDir, f.Path))
		b, _ := os.ReadFile(filepath.Join(csv.PublishedDir, f.Path))
		if !bytes.Equal(a, b) || f.SHA256 != csv.Manifest.Files[i].SHA256 {
			t.Errorf("%s differs between Parquet and CSV inputs", f.Path)
		}
	}
}

// TestProgressCounts: the progress counters end at the exact row counts.
func TestProgressCounts(t *testing.T) {
	master := bytes.Repeat([]byte{3}, 32)
	mk, _ := hashing.NewMasterKey(master)
	cfg := fixtureConfig(t, t.TempDir(), hashing.HMACSHA256, mk, "csv")
	cfg.Progress = &pipeline.Progress{}
	res, err := pipeline.Run(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	ev, us, n, of := cfg.Progress.Counts()
	m := res.Manifest
	if ev != m.ConsentEvents.Rows || us != m.Users.Rows || n != of || n == 0 || cfg.Progress.Stage() != "write" {
		t.Errorf("progress %d events, %d users, %d of %d normalized, stage %q; manifest %d and %d",
			ev, us, n, of, cfg.Progress.Stage(), m.ConsentEvents.Rows, m.Users.Rows)
	}
}

// TestFailClosedEndToEnd: MATCHING.md section 2, "Fail closed (amendment
// 1)". A malformed consent row whose user_id can be read excludes its user
// as consent_unreadable, whatever is wrong with it, and blocks the user's
// number for every holder; unless its purpose is readable and another. A
// row whose user_id cannot be read is only rejected. Every malformed row is
// still rejected, counted and kept with its line number, and the counts
// reconcile.
func TestFailClosedEndToEnd(t *testing.T) {
	users := []string{
		"user_id,phone,country",
		"u-action,+16502530001,",
		"u-time,+16502530002,",
		"u-policy,+16502530003,",
		"u-quote,+16502530004,",
		"u-after,+16502530005,",
		"u-other,+16502530006,",
		"u-noid,+16502530007,",
		"u-shared-a,+16502530008,",
		`u-shared-b,"(650) 253-0008",US`,
		"u-ok,+16502530009,",
		"u-purpose-quote,+16502530010,",
	}
	events := []string{strings.Join(source.EventColumns, ",")}
	for _, u := range users[1:] {
		id, _, _ := strings.Cut(u, ",")
		events = append(events, "g-"+id+","+id+",ads_matching,grant,2026-10-01T00:00:00Z,4,app")
	}
	malformed := []struct{ line, reason string }{
		{"m-action,u-action,ads_matching,revoke,2026-10-20T00:00:00Z,4,app", consent.RejectUnknownAction},
		{"m-time,u-time,ads_matching,withdraw,2026-10-20 00:00:00,4,app", consent.RejectBadTimestamp},
		{"m-policy,u-policy,ads_matching,withdraw,2026-10-20T00:00:00Z,4.0,app", consent.RejectBadPolicy},
		{`m-quote,u-quote,ads_matching,withdraw,"2026-10-20T00:00:00Z"x,4,app`, source.RejectBrokenQuoting},
		// Readable and after as_of: the contract names no exception.
		{"m-after,u-after,ads_matching,withdraw,2026-11-20T00:00:00Z,4.0,app", consent.RejectBadPolicy},
		// Another readable purpose: no effect on u-other.
		{"m-other,u-other,marketing_email,revoke,2026-10-20T00:00:00Z,4,app", consent.RejectUnknownAction},
		// user_id unreadable: rejected only.
		{`m"noid,u-noid,ads_matching,withdraw,2026-10-20T00:00:00Z,4,app`, source.RejectBrokenQuoting},
		{"m-noid,,ads_matching,withdraw,2026-10-20T00:00:00Z,4,app", consent.RejectEmptyUserID},
		// One holder of a shared number unreadable: nobody exports it.
		{"m-shared,u-shared-b,ads_matching,withdraw,yesterday,4,app", consent.RejectBadTimestamp},
		// The purpose itself unreadable.
		{`m-purpose,u-purpose-quote,"ads_matching,withdraw,2026-10-20T00:00:00Z,4,app`, source.RejectBrokenQuoting},
	}
	wantRejects := map[string]string{} // line number -> reason
	for _, m := range malformed {
		events = append(events, m.line)
		wantRejects[strconv.Itoa(len(events))] = m.reason
	}
	dir := t.TempDir()
	in := filepath.Join(dir, "in")
	if err := os.MkdirAll(in, 0o755); err != nil {
		t.Fatal(err)
	}
	usersPath, eventsPath := filepath.Join(in, "users.csv"), filepath.Join(in, "consent_events.csv")
	if err := os.WriteFile(usersPath, []byte(strings.Join(users, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(eventsPath, []byte(strings.Join(events, "\r\n")+"\r\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	master := bytes.Repeat([]byte{5}, 32)
	mk, _ := hashing.NewMasterKey(master)
	k, _ := hashing.DeriveDestKey(mk, "meta-ads")
	out := filepath.Join(dir, "out")
	cfg := pipeline.Config{
		Users: usersPath, Consent: eventsPath, Destination: "meta-ads", Scheme: hashing.HMACSHA256, Key: k,
		Out: out, State: filepath.Join(dir, "state"), Rules: fixtureRules(fixtures.DefaultAsOf), MaxRejectRate: 1,
		ToolVersion: "test", Registry: testRegistry(out, "meta-ads", hashing.HMACSHA256),
	}
	res, err := pipeline.Run(context.Background(), cfg)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	m := res.Manifest
	if err := m.Reconcile(); err != nil {
		t.Error(err)
	}

	p := oracleParams{master: master, dest: "meta-ads", scheme: string(hashing.HMACSHA256)}
	var want []string
	for _, e164 := range []string{"+16502530006", "+16502530007", "+16502530009"} { // u-other, u-noid, u-ok
		want = append(want, p.id(e164))
	}
	slices.Sort(want)
	var got []string
	for _, f := range m.Files {
		got = append(got, readIDs(t, filepath.Join(res.PublishedDir, f.Path), cfg.Scheme)...)
	}
	if !slices.Equal(got, want) {
		t.Errorf("published %d identifiers, want %d (those of u-other, u-noid and u-ok)", len(got), len(want))
	}
	ev := readEvidence(t, res.EvidencePath)
	var holders []string
	for _, hs := range ev {
		holders = append(holders, hs...)
	}
	slices.Sort(holders)
	if w := []string{"u-noid", "u-ok", "u-other"}; !slices.Equal(holders, w) {
		t.Errorf("evidence holders %q, want %q", holders, w)
	}

	var counts = []struct {
		reason string
		want   int64
	}{
		{consent.ConsentUnreadable.String(), 7},
		{consent.ReasonSharedNumberWithdrawn, 1},
		{"withdrawn", 0},
		{"no_consent", 0},
		{consent.ReasonInvalidPhone, 0},
	}
	for _, c := range counts {
		if got := m.Users.Excluded[c.reason]; got != c.want {
			t.Errorf("excluded %s = %d, want %d", c.reason, got, c.want)
		}
	}
	if m.Users.Rows != 11 || m.Users.Exported != 3 {
		t.Errorf("users %d, exported %d; want 11 and 3", m.Users.Rows, m.Users.Exported)
	}
	if c := m.ConsentEvents; c.Rows != 21 || c.ByClass["malformed"] != 10 || c.ByClass["used"] != 11 {
		t.Errorf("consent events %d, by class %v; want 21: 10 malformed, 11 used", c.Rows, c.ByClass)
	}

	// Every malformed row is in the reject file, with its line number.
	f, err := os.Open(res.RejectsPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	recs, err := csv.NewReader(f).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	gotRejects := map[string]string{}
	for _, r := range recs[1:] {
		if r[0] == source.TableConsent {
			gotRejects[r[1]] = r[2]
		}
	}
	if !maps.Equal(gotRejects, wantRejects) {
		t.Errorf("rejects (line: reason) %v, want %v", gotRejects, wantRejects)
	}
}
