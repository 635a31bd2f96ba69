package pg_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"audiencematch/consent"
	"audiencematch/fixtures"
	"audiencematch/hashing"
	"audiencematch/pipeline"
	"audiencematch/pipeline/errkind"
	"audiencematch/pipeline/source"
	"audiencematch/pipeline/source/pg"
	"audiencematch/pipeline/source/sourcetest"
)

// serverURL is the server scripts/pg.sh started. Without one the tests
// skip on a developer's machine, and fail in CI, where they must run.
func serverURL(t *testing.T) string {
	t.Helper()
	u := os.Getenv("AUDIENCEMATCH_TEST_PG_URL")
	if u == "" {
		if os.Getenv("CI") != "" {
			t.Fatal("AUDIENCEMATCH_TEST_PG_URL is not set: CI must run the PostgreSQL tests (scripts/test.sh starts a server)")
		}
		t.Skip("no PostgreSQL: run eval \"$(scripts/pg.sh start)\" first, or scripts/test.sh")
	}
	return u
}

// newDB creates a database of its own for one test and returns its URL.
func newDB(t *testing.T) (string, *pgx.Conn) {
	t.Helper()
	base := serverURL(t)
	ctx := context.Background()
	admin, err := pgx.Connect(ctx, base)
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 6)
	rand.Read(b)
	name := "am_" + hex.EncodeToString(b)
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatal(err)
	}
	cfg, _ := pgx.ParseConfig(base)
	cfg.Database = name
	url := strings.Replace(base, "/postgres?", "/"+name+"?", 1)
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close(ctx)
		admin.Exec(ctx, "DROP DATABASE "+name+" WITH (FORCE)")
		admin.Close(ctx)
	})
	return url, conn
}

func load(t *testing.T, conn *pgx.Conn, users []fixtures.User, events []fixtures.Event) {
	t.Helper()
	ctx := context.Background()
	for _, ddl := range []string{
		"CREATE TABLE users (user_id text, phone text, country text, created_at timestamptz DEFAULT now())",
		"CREATE TABLE consent_events (event_id text, user_id text, purpose text, action text, occurred_at text, policy_version text, source text)",
	} {
		if _, err := conn.Exec(ctx, ddl); err != nil {
			t.Fatal(err)
		}
	}
	var ur, er [][]any
	for _, u := range users {
		ur = append(ur, []any{u.UserID, u.Phone, u.Country})
	}
	for _, e := range events {
		er = append(er, []any{e.EventID, e.UserID, e.Purpose, e.Action, e.OccurredAt, e.PolicyVersion, e.Source})
	}
	if _, err := conn.CopyFrom(ctx, pgx.Identifier{"users"}, []string{"user_id", "phone", "country"}, pgx.CopyFromRows(ur)); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.CopyFrom(ctx, pgx.Identifier{"consent_events"}, source.EventColumns, pgx.CopyFromRows(er)); err != nil {
		t.Fatal(err)
	}
}

// TestSuite runs the sources' conformance suite on PostgreSQL tables.
func TestSuite(t *testing.T) { newTestSuite(t).RunTests(t) }

// newTestSuite stores each test's tables in a database of its own, as text
// columns in the tables' order. A table without a column of the contract
// is a temporary failure here, as every missing table or column is (see
// classify: a migration may be running), not a configuration error.
func newTestSuite(t *testing.T) *sourcetest.Suite {
	serverURL(t)
	return &sourcetest.Suite{FirstLine: 2, LineBreaks: true, MissingColumn: errkind.ErrTempFail,
		Store: func(t *testing.T, ts sourcetest.Tables) source.Source {
			url, conn := newDB(t)
			storeTable(t, conn, source.TableUsers, ts.Users)
			storeTable(t, conn, source.TableConsent, ts.Consent)
			src, err := pg.New(pg.Options{URL: url})
			if err != nil {
				t.Fatal(err)
			}
			return src
		}}
}

// storeTable creates table with tbl's columns, as text, and its rows.
func storeTable(t *testing.T, conn *pgx.Conn, table string, tbl sourcetest.Table) {
	t.Helper()
	ctx := context.Background()
	cols := make([]string, len(tbl.Columns))
	for i, c := range tbl.Columns {
		cols[i] = pgx.Identifier{c}.Sanitize() + " text"
	}
	if _, err := conn.Exec(ctx, "CREATE TABLE "+pgx.Identifier{table}.Sanitize()+" ("+strings.Join(cols, ", ")+")"); err != nil {
		t.Fatal(err)
	}
	rows := make([][]any, len(tbl.Rows))
	for i, r := range tbl.Rows {
		for _, v := range r {
			rows[i] = append(rows[i], v)
		}
	}
	if _, err := conn.CopyFrom(ctx, pgx.Identifier{table}, tbl.Columns, pgx.CopyFromRows(rows)); err != nil {
		t.Fatal(err)
	}
}

func runWith(t *testing.T, dir string, src source.Source, users, events string) (*pipeline.Result, error) {
	t.Helper()
	mk, _ := hashing.NewMasterKey(bytes.Repeat([]byte{9}, 32))
	k, _ := hashing.DeriveDestKey(mk, "meta-ads")
	out := filepath.Join(dir, "out")
	return pipeline.Run(context.Background(), pipeline.Config{
		Source: src, Users: users, Consent: events, Destination: "meta-ads", Scheme: hashing.HMACSHA256, Key: k,
		Out: out, State: filepath.Join(dir, "state"), Rules: pipeline.FixtureRules(fixtures.DefaultAsOf),
		MaxRejectRate: 0.05, ToolVersion: "test", Registry: pipeline.TestRegistry(out, "meta-ads", hashing.HMACSHA256),
	})
}

// TestSameOutputAsFiles: the same rows in PostgreSQL and in files give
// byte-identical Parquet and the same counts.
func TestSameOutputAsFiles(t *testing.T) {
	url, conn := newDB(t)
	users, events := generate(8000)
	load(t, conn, users, events)
	dir := t.TempDir()
	st, err := fixtures.WriteTables(filepath.Join(dir, "in"), users, events)
	if err != nil {
		t.Fatal(err)
	}
	files, err := runWith(t, filepath.Join(dir, "files"), nil, st.UsersPath, st.EventsPath)
	if err != nil {
		t.Fatal(err)
	}
	src, err := pg.New(pg.Options{URL: url})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	db, err := runWith(t, filepath.Join(dir, "pg"), src, "", "")
	if err != nil {
		t.Fatal(err)
	}
	fm, pm := files.Manifest, db.Manifest
	if fm.TotalRows == 0 || fm.TotalRows != pm.TotalRows || len(fm.Files) != len(pm.Files) {
		t.Fatalf("files: %d rows in %d files; PostgreSQL: %d in %d", fm.TotalRows, len(fm.Files), pm.TotalRows, len(pm.Files))
	}
	for i, f := range fm.Files {
		a, _ := os.ReadFile(filepath.Join(files.PublishedDir, f.Path))
		b, _ := os.ReadFile(filepath.Join(db.PublishedDir, pm.Files[i].Path))
		if !bytes.Equal(a, b) {
			t.Errorf("%s differs between PostgreSQL and files", f.Path)
		}
	}
	for _, r := range consent.ExclusionReasons {
		if fm.Users.Excluded[r] != pm.Users.Excluded[r] {
			t.Errorf("%s: files %d, PostgreSQL %d", r, fm.Users.Excluded[r], pm.Users.Excluded[r])
		}
	}
	if fm.ConsentEvents.Rows != pm.ConsentEvents.Rows || fm.Users.Rows != pm.Users.Rows {
		t.Errorf("rows: files %d/%d, PostgreSQL %d/%d", fm.Users.Rows, fm.ConsentEvents.Rows, pm.Users.Rows, pm.ConsentEvents.Rows)
	}
	if n := pm.Inputs[0].Name; !strings.HasPrefix(n, "postgres:") || strings.Contains(n, "@") {
		t.Errorf("input name %q", n)
	}
}

func generate(n int) ([]fixtures.User, []fixtures.Event) {
	var us []fixtures.User
	var es []fixtures.Event
	fixtures.Generate(fixtures.Options{Users: n, Seed: 11}, func(u fixtures.User) {
		if !u.Broken { // broken CSV quoting has no database equivalent
			us = append(us, u)
		}
	}, func(e fixtures.Event) {
		if !e.Broken {
			es = append(es, e)
		}
	})
	return us, es
}

// TestTypedColumns: timestamptz and integer columns arrive in the forms the
// contract parses; a query from the config file works too.
func TestTypedColumns(t *testing.T) {
	url, conn := newDB(t)
	ctx := context.Background()
	for _, sql := range []string{
		"CREATE TABLE people (id bigint, msisdn text, cc text)",
		"INSERT INTO people VALUES (1, '+16505551212', ''), (2, '07400 123456', 'GB'), (3, '+16505551213', NULL)",
		"CREATE TABLE consents (event_id bigint, user_id bigint, purpose text, action text, occurred_at timestamptz, policy_version int, source text)",
		`INSERT INTO consents VALUES (10, 1, 'ads_matching', 'grant', '2026-10-01 12:00:00.123456+02', 3, 'app'),
		 (11, 2, 'ads_matching', 'grant', '2026-10-02 00:00:00+00', 4, 'app'),
		 (12, 3, 'ads_matching', 'grant', '2026-10-02 00:00:00+00', 2, 'app')`,
	} {
		if _, err := conn.Exec(ctx, sql); err != nil {
			t.Fatal(err)
		}
	}
	src, err := pg.New(pg.Options{URL: url,
		UsersQuery:   "SELECT id AS user_id, msisdn AS phone, cc AS country FROM people ORDER BY id",
		ConsentTable: "public.consents"})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	res, err := runWith(t, t.TempDir(), src, "", "")
	if err != nil {
		t.Fatal(err)
	}
	m := res.Manifest
	if m.ConsentEvents.ByClass["malformed"] != 0 || m.Users.Excluded["malformed_row"] != 0 {
		t.Fatalf("typed columns were rejected: %+v %+v", m.ConsentEvents.ByClass, m.Rejects)
	}
	if m.TotalRows != 2 || m.Users.Excluded["stale_policy"] != 1 {
		t.Errorf("exported %d, stale %d; want 2 and 1", m.TotalRows, m.Users.Excluded["stale_policy"])
	}
}

// TestSnapshot: users inserted after the consent table was read are not
// seen: both tables come from one instant.
func TestSnapshot(t *testing.T) {
	url, conn := newDB(t)
	users, events := generate(50)
	load(t, conn, users, events)
	src, err := pg.New(pg.Options{URL: url})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	ctx := context.Background()
	count := func(table string, cols []string) int {
		r, err := src.Open(ctx, table, cols)
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		n := 0
		for {
			if _, err := r.Next(); err == io.EOF {
				return n
			} else if err != nil {
				t.Fatal(err)
			}
			n++
		}
	}
	if n := count(source.TableConsent, source.EventColumns); n != len(events) {
		t.Fatalf("%d events, want %d", n, len(events))
	}
	if _, err := conn.Exec(ctx, "INSERT INTO users (user_id, phone, country) VALUES ('late', '+16505551212', '')"); err != nil {
		t.Fatal(err)
	}
	if n := count(source.TableUsers, source.UserColumns); n != len(users) {
		t.Fatalf("%d users: the insert after the snapshot was seen (want %d)", n, len(users))
	}
}

func TestConnectionErrors(t *testing.T) {
	base := serverURL(t)
	cfg, _ := pgx.ParseConfig(base)
	url, _ := newDB(t)
	ln := strings.Replace(base, cfg.Password, "wrong-password", 1)
	cases := []struct {
		name string
		opts pg.Options
		want string
	}{
		{"server down", pg.Options{URL: "postgres://postgres:secret-pw@127.0.0.1:1/postgres?sslmode=disable&connect_timeout=3"}, "is the server up"},
		{"wrong password", pg.Options{URL: ln}, "authentication failed"},
		{"missing table", pg.Options{URL: url, UsersTable: "nope", ConsentTable: "nope_either"}, "does not exist"},
		{"missing column", pg.Options{URL: url, ConsentQuery: "SELECT 1 AS event_id"}, "column"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			src, err := pg.New(c.opts)
			if err != nil {
				t.Fatal(err)
			}
			defer src.Close()
			_, err = runWith(t, t.TempDir(), src, "", "")
			if !errors.Is(err, errkind.ErrTempFail) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v; want errkind.ErrTempFail mentioning %q", err, c.want)
			}
			for _, secret := range []string{cfg.Password, "secret-pw", "wrong-password"} {
				if strings.Contains(err.Error(), secret) {
					t.Errorf("the error shows a password: %v", err)
				}
			}
		})
	}
}

// TestLineBreaksInValues: a value with a line break (LF, CRLF, with quotes)
// is data, not the end of a row: a withdrawal whose source holds one is
// not lost, and nothing is rejected.
func TestLineBreaksInValues(t *testing.T) {
	url, conn := newDB(t)
	users := []fixtures.User{
		{UserID: "u-lf", Phone: "+16502530001"},
		{UserID: "u-crlf", Phone: "+16502530002"},
		{UserID: "u-ok", Phone: "+16502530003"},
	}
	grant := func(id, user, source string) fixtures.Event {
		return fixtures.Event{EventID: id, UserID: user, Purpose: fixtures.DefaultPurpose, Action: "grant",
			OccurredAt: "2026-10-01T00:00:00Z", PolicyVersion: "4", Source: source}
	}
	withdraw := func(id, user, source string) fixtures.Event {
		e := grant(id, user, source)
		e.Action, e.OccurredAt = "withdraw", "2026-10-20T00:00:00Z"
		return e
	}
	events := []fixtures.Event{
		grant("e1", "u-lf", "onboarding"),
		withdraw("e2", "u-lf", "support ticket\n#123"),
		grant("e3", "u-crlf", "onboarding"),
		withdraw("e4", "u-crlf", "support ticket\r\n\"#124\", by phone\n"),
		grant("e5", "u-ok", "app\nsettings, \"v2\"\r\n"),
	}
	load(t, conn, users, events)
	src, err := pg.New(pg.Options{URL: url})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	res, err := runWith(t, t.TempDir(), src, "", "")
	if err != nil {
		t.Fatal(err)
	}
	m := res.Manifest
	if n := m.ConsentEvents.ByClass["malformed"]; n != 0 || len(m.Rejects.ConsentEvents) != 0 {
		t.Errorf("%d malformed events, rejects %v; want none", n, m.Rejects.ConsentEvents)
	}
	if m.ConsentEvents.Rows != int64(len(events)) || m.ConsentEvents.ByClass["used"] != int64(len(events)) {
		t.Errorf("events %d, by class %v; want %d used", m.ConsentEvents.Rows, m.ConsentEvents.ByClass, len(events))
	}
	if m.TotalRows != 1 || m.Users.Excluded["withdrawn"] != 2 {
		t.Errorf("exported %d, withdrawn %d; want 1 (u-ok) and 2", m.TotalRows, m.Users.Excluded["withdrawn"])
	}
}

// TestCastErrorHidesValue: a value a query cannot convert fails the run as
// bad data, and the error names the query and the SQLSTATE but never the
// value: PostgreSQL's message quotes it, and it may be personal data.
func TestCastErrorHidesValue(t *testing.T) {
	url, conn := newDB(t)
	const secret = "SECRET-4915"
	users, events := generate(20)
	events[3].PolicyVersion = secret
	events[5].OccurredAt = secret + "T"
	users[2].Phone = secret + "0"
	load(t, conn, users, events)
	cols := "event_id, user_id, purpose, action, occurred_at, policy_version, source"
	cases := []struct {
		name string
		opts pg.Options
		want []string
	}{
		{"integer", pg.Options{URL: url, ConsentQuery: "SELECT " + strings.Replace(cols, "policy_version,", "policy_version::int AS policy_version,", 1) + " FROM consent_events ORDER BY event_id"},
			[]string{"SQLSTATE 22P02", "postgres:query(consent_events)", "could not be converted"}},
		{"timestamp", pg.Options{URL: url, ConsentQuery: "SELECT " + strings.Replace(cols, "occurred_at,", "occurred_at::timestamptz AS occurred_at,", 1) + " FROM consent_events ORDER BY event_id"},
			[]string{"SQLSTATE 22007", "postgres:query(consent_events)"}},
		{"users", pg.Options{URL: url, UsersQuery: "SELECT user_id, phone::bigint AS phone, country FROM users ORDER BY user_id"},
			[]string{"SQLSTATE 22P02", "postgres:query(users)"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			src, err := pg.New(c.opts)
			if err != nil {
				t.Fatal(err)
			}
			defer src.Close()
			_, err = runWith(t, t.TempDir(), src, "", "")
			if !errors.Is(err, errkind.ErrData) {
				t.Fatalf("err = %v; want errkind.ErrData", err)
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("the error does not say %q: %v", w, err)
				}
			}
			if strings.Contains(err.Error(), "SECRET") {
				t.Errorf("the error shows the value: %v", err)
			}
			for _, u := range users { // phone::bigint fails on other rows' numbers too
				if len(u.Phone) > 4 && strings.Contains(err.Error(), u.Phone) {
					t.Errorf("the error shows a phone number: %v", err)
				}
			}
			t.Log(err)
		})
	}
}
