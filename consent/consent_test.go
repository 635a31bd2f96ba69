package consent

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"
)

var asOf = time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)

func ev(id string, a Action, at time.Time, policy int64) Event {
	return Event{EventID: id, UserID: "u", Purpose: "ads_matching", Action: a, OccurredAt: at, PolicyVersion: policy}
}

func daysBefore(n int) time.Time { return asOf.Add(-time.Duration(n) * 24 * time.Hour) }

func TestEvaluate(t *testing.T) {
	rules := Rules{AsOf: asOf, Purpose: "ads_matching", MinPolicyVersion: 3, MaxAge: 395 * 24 * time.Hour}
	other := ev("o", Grant, daysBefore(1), 5)
	other.Purpose = "marketing_email"
	cases := []struct {
		name   string
		events []Event
		want   Status
		effID  string
	}{
		{"no events", nil, NoConsent, ""},
		{"grant", []Event{ev("g", Grant, daysBefore(10), 3)}, Valid, "g"},
		{"withdraw after grant", []Event{ev("g", Grant, daysBefore(10), 3), ev("w", Withdraw, daysBefore(5), 3)}, Withdrawn, "w"},
		{"re-grant after withdraw", []Event{ev("g1", Grant, daysBefore(20), 3), ev("w", Withdraw, daysBefore(10), 3), ev("g2", Grant, daysBefore(5), 4)}, Valid, "g2"},
		{"withdraw only", []Event{ev("w", Withdraw, daysBefore(5), 3)}, Withdrawn, "w"},
		{"old policy", []Event{ev("g", Grant, daysBefore(10), 2)}, StalePolicy, "g"},
		{"policy exactly min", []Event{ev("g", Grant, daysBefore(10), 3)}, Valid, "g"},
		{"expired", []Event{ev("g", Grant, daysBefore(396), 3)}, Expired, "g"},
		{"age exactly max", []Event{ev("g", Grant, daysBefore(395), 3)}, Valid, "g"},
		{"old policy and expired", []Event{ev("g", Grant, daysBefore(500), 1)}, StalePolicy, "g"},
		{"grant after cutoff only", []Event{ev("g", Grant, asOf.Add(time.Nanosecond), 3)}, NoConsent, ""},
		{"grant at cutoff", []Event{ev("g", Grant, asOf, 3)}, Valid, "g"},
		{"withdraw after cutoff ignored", []Event{ev("g", Grant, daysBefore(3), 3), ev("w", Withdraw, asOf.Add(time.Second), 3)}, Valid, "g"},
		{"other purpose only", []Event{other}, NoConsent, ""},
		{"other purpose does not withdraw", []Event{ev("g", Grant, daysBefore(3), 3), func() Event { e := ev("w", Withdraw, daysBefore(1), 3); e.Purpose = "x"; return e }()}, Valid, "g"},
		{"same instant: withdraw wins", []Event{ev("g", Grant, daysBefore(3), 3), ev("w", Withdraw, daysBefore(3), 3)}, Withdrawn, "w"},
		{"same instant grants: lower policy", []Event{ev("a", Grant, daysBefore(3), 4), ev("b", Grant, daysBefore(3), 2)}, StalePolicy, "b"},
		{"same instant same policy: smaller id", []Event{ev("b", Grant, daysBefore(3), 3), ev("a", Grant, daysBefore(3), 3)}, Valid, "a"},
		{"nanosecond later grant wins", []Event{ev("w", Withdraw, daysBefore(3), 3), ev("g", Grant, daysBefore(3).Add(time.Nanosecond), 3)}, Valid, "g"},
		{"offsets compared as instants", []Event{
			ev("w", Withdraw, time.Date(2026, 10, 1, 12, 0, 0, 0, time.FixedZone("", 2*3600)), 3), // 10:00Z
			ev("g", Grant, time.Date(2026, 10, 1, 11, 0, 0, 0, time.UTC), 3),
		}, Valid, "g"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			// Every rotation of the rows must give the same answer.
			for r := 0; r < max(1, len(c.events)); r++ {
				evs := append(append([]Event(nil), c.events[r:]...), c.events[:r]...)
				got, eff := rules.Evaluate(evs)
				if got != c.want || eff.EventID != c.effID {
					t.Fatalf("rotation %d: got %v (effective %q), want %v (%q)", r, got, eff.EventID, c.want, c.effID)
				}
			}
		})
	}
}

func TestNoMaxAge(t *testing.T) {
	rules := Rules{AsOf: asOf, Purpose: "ads_matching", MinPolicyVersion: 1}
	if got, _ := rules.Evaluate([]Event{ev("g", Grant, daysBefore(5000), 1)}); got != Valid {
		t.Errorf("without max age a 5000-day-old grant is %v, want valid", got)
	}
}

// TestOrderIndependence shuffles random histories: the decision never depends on row order.
func TestOrderIndependence(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	rules := Rules{AsOf: asOf, Purpose: "ads_matching", MinPolicyVersion: 2, MaxAge: 30 * 24 * time.Hour}
	for i := 0; i < 2000; i++ {
		n := 1 + rng.IntN(6)
		evs := make([]Event, n)
		for j := range evs {
			a := Grant
			if rng.IntN(2) == 0 {
				a = Withdraw
			}
			evs[j] = ev(string(rune('a'+j)), a, daysBefore(rng.IntN(4)*20), int64(rng.IntN(4)))
		}
		want, weff := rules.Evaluate(evs)
		rng.Shuffle(n, func(a, b int) { evs[a], evs[b] = evs[b], evs[a] })
		got, geff := rules.Evaluate(evs)
		if got != want || geff.EventID != weff.EventID {
			t.Fatalf("history %d: shuffled gives %v/%s, want %v/%s", i, got, geff.EventID, want, weff.EventID)
		}
	}
}

// TestFailClosed: MATCHING.md section 2, "Fail closed (amendment 1)". A
// malformed row whose user_id can be read makes the user's consent
// unreadable, whatever the readable rows say, unless its purpose is
// readable and another purpose.
func TestFailClosed(t *testing.T) {
	rules := Rules{AsOf: asOf, Purpose: "ads_matching", MinPolicyVersion: 3, MaxAge: 395 * 24 * time.Hour}
	at := func(n int) string { return daysBefore(n).Format(time.RFC3339) }
	// bad is a malformed row as ParseEvent leaves it: what it could read.
	bad := func(id, user, purpose, action, occurredAt, policy string) Event {
		t.Helper()
		e, err := ParseEvent(id, user, purpose, action, occurredAt, policy, "support")
		if err == nil {
			t.Fatalf("row %q parses: the case needs a malformed one", id)
		}
		return e
	}
	grant := ev("g", Grant, daysBefore(10), 3)
	cases := []struct {
		name      string
		events    []Event
		malformed []Event
		want      Status
		effID     string
	}{
		{"unknown action after a grant", []Event{grant}, []Event{bad("m", "u", "ads_matching", "revoke", at(5), "3")}, ConsentUnreadable, ""},
		{"unreadable timestamp", []Event{grant}, []Event{bad("m", "u", "ads_matching", "withdraw", "2026-10-01 12:00:00", "3")}, ConsentUnreadable, ""},
		{"empty timestamp", []Event{grant}, []Event{bad("m", "u", "ads_matching", "withdraw", "", "3")}, ConsentUnreadable, ""},
		{"unreadable policy version", []Event{grant}, []Event{bad("m", "u", "ads_matching", "withdraw", at(5), "3.0")}, ConsentUnreadable, ""},
		{"empty event id", []Event{grant}, []Event{bad("", "u", "ads_matching", "withdraw", at(5), "3")}, ConsentUnreadable, ""},
		{"older than the grant", []Event{grant}, []Event{bad("m", "u", "ads_matching", "revoke", at(300), "3")}, ConsentUnreadable, ""},
		{"a later grant does not override it", []Event{grant, ev("g2", Grant, daysBefore(1), 4)}, []Event{bad("m", "u", "ads_matching", "revoke", at(5), "3")}, ConsentUnreadable, ""},
		{"no readable event", nil, []Event{bad("m", "u", "ads_matching", "revoke", at(5), "3")}, ConsentUnreadable, ""},
		{"timestamp readable and after as_of", []Event{grant}, []Event{bad("m", "u", "ads_matching", "revoke", asOf.Add(time.Hour).Format(time.RFC3339), "3")}, ConsentUnreadable, ""},
		{"purpose unreadable (empty)", []Event{grant}, []Event{bad("m", "u", "", "revoke", at(5), "3")}, ConsentUnreadable, ""},
		{"another readable purpose", []Event{grant}, []Event{bad("m", "u", "marketing_email", "revoke", at(5), "3")}, Valid, "g"},
		{"purpose differs in case", []Event{grant}, []Event{bad("m", "u", "Ads_Matching", "revoke", at(5), "3")}, Valid, "g"},
		{"user_id unreadable", []Event{grant}, []Event{bad("m", "", "ads_matching", "withdraw", at(5), "3")}, Valid, "g"},
		{"already withdrawn", []Event{grant, ev("w", Withdraw, daysBefore(5), 3)}, []Event{bad("m", "u", "ads_matching", "grant", "yesterday", "3")}, ConsentUnreadable, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, eff := rules.Evaluate(c.events, c.malformed...)
			if got != c.want || eff.ID() != c.effID {
				t.Fatalf("got %v (effective %q), want %v (%q)", got, eff.ID(), c.want, c.effID)
			}
			if eff.Unreadable && eff.InScope != int32(len(c.events)) {
				t.Errorf("in scope %d: a malformed row counts as malformed, not in scope", eff.InScope)
			}
		})
	}
}

func TestStatusNames(t *testing.T) {
	var vectors = []struct {
		s      Status
		name   string
		blocks bool
	}{
		{NoConsent, "no_consent", false},
		{Valid, "valid", false},
		{Withdrawn, "withdrawn", true},
		{Expired, "expired", false},
		{StalePolicy, "stale_policy", false},
		{ConsentUnreadable, "consent_unreadable", true},
	}
	if len(vectors) != len(statusNames) {
		t.Fatalf("%d statuses, %d tested", len(statusNames), len(vectors))
	}
	for _, v := range vectors {
		if got := v.s.String(); got != v.name {
			t.Errorf("got %q, want %q", got, v.name)
		}
		if got := v.s.Blocks(); got != v.blocks {
			t.Errorf("%s.Blocks() = %v, want %v", v.name, got, v.blocks)
		}
	}
}

func TestFailsClosed(t *testing.T) {
	rules := Rules{AsOf: asOf, Purpose: "ads_matching"}
	var vectors = []struct {
		user, purpose string
		want          bool
	}{
		{"u", "ads_matching", true},
		{"u", "", true},
		{"u", "analytics", false},
		{"", "ads_matching", false},
		{"", "", false},
	}
	for _, v := range vectors {
		if got := rules.FailsClosed(v.user, v.purpose); got != v.want {
			t.Errorf("FailsClosed(%q, %q) = %v, want %v", v.user, v.purpose, got, v.want)
		}
	}
}

func TestParseEvent(t *testing.T) {
	ok := []string{"e1", "u1", "ads_matching", "grant", "2026-10-01T12:00:00.123456789+02:00", "3", "app_settings"}
	e, err := ParseEvent(ok[0], ok[1], ok[2], ok[3], ok[4], ok[5], ok[6])
	if err != nil {
		t.Fatal(err)
	}
	if e.Action != Grant || e.PolicyVersion != 3 || !e.OccurredAt.Equal(time.Date(2026, 10, 1, 10, 0, 0, 123456789, time.UTC)) {
		t.Errorf("parsed %+v", e)
	}
	bad := []struct {
		field int
		value string
		want  string
	}{
		{0, "", RejectEmptyEventID},
		{1, "", RejectEmptyUserID},
		{3, "Grant", RejectUnknownAction},
		{3, "revoke", RejectUnknownAction},
		{3, "", RejectUnknownAction},
		{4, "2026-10-01 12:00:00", RejectBadTimestamp},
		{4, "2026-13-01T00:00:00Z", RejectBadTimestamp},
		{4, "yesterday", RejectBadTimestamp},
		{4, "", RejectEmptyTimestamp},
		{5, "3.0", RejectBadPolicy},
		{5, "v3", RejectBadPolicy},
		{5, "", RejectBadPolicy},
	}
	for _, b := range bad {
		f := append([]string(nil), ok...)
		f[b.field] = b.value
		_, err := ParseEvent(f[0], f[1], f[2], f[3], f[4], f[5], f[6])
		var re *RejectError
		if !errors.As(err, &re) || re.Reason != b.want {
			t.Errorf("field %d = %q: err = %v, want reason %s", b.field, b.value, err, b.want)
		}
	}
}

func TestParseMaxAge(t *testing.T) {
	good := map[string]time.Duration{"": 0, "395d": 395 * 24 * time.Hour, "0d": 0, "720h": 720 * time.Hour, "90m": 90 * time.Minute}
	for in, want := range good {
		if got, err := ParseMaxAge(in); err != nil || got != want {
			t.Errorf("ParseMaxAge(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"d", "1.5d", "-3d", "-1h", "a year", "395"} {
		if _, err := ParseMaxAge(in); err == nil {
			t.Errorf("ParseMaxAge(%q) accepted", in)
		}
	}
}

// FuzzParseEvent: no panic; an accepted event's fields round-trip.
func FuzzParseEvent(f *testing.F) {
	f.Add("e", "u", "grant", "2026-10-01T12:00:00Z", "3")
	f.Add("e", "u", "withdraw", "2026-10-01T12:00:00.5-07:00", "-1")
	f.Fuzz(func(t *testing.T, id, user, action, at, policy string) {
		got, gerr := parseEventTime(at)
		if want, werr := time.Parse(time.RFC3339Nano, at); (werr == nil) != (gerr == nil) || (werr == nil && !got.Equal(want)) {
			t.Fatalf("%q: parseEventTime = %v, %v; time.Parse = %v, %v", at, got, gerr, want, werr)
		}
		e, err := ParseEvent(id, user, "p", action, at, policy, "s")
		if err != nil {
			var re *RejectError
			if !errors.As(err, &re) {
				t.Fatalf("error %v is not a *RejectError", err)
			}
			return
		}
		if e.Action.String() != action || e.EventID != id || e.UserID != user {
			t.Fatalf("round trip: %+v from %q %q %q", e, id, user, action)
		}
		again, err := ParseTime(e.OccurredAt.Format(time.RFC3339Nano))
		if err != nil || !again.Equal(e.OccurredAt) {
			t.Fatalf("time %q does not round-trip: %v %v", at, again, err)
		}
	})
}

// TestParseEventTime: the hand-written reader of the usual timestamp shape
// accepts exactly what time.Parse accepts, at the same instant, over
// random timestamps near and across every boundary it checks.
func TestParseEventTime(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	digits := func(n, max int) string { return fmt.Sprintf("%0*d", n, rng.IntN(max+1)) }
	pick := func(xs ...string) string { return xs[rng.IntN(len(xs))] }
	cases := []string{"2026-10-01T12:00:00Z", "2024-02-29T23:59:59.999999999+14:00", "2023-02-29T00:00:00Z",
		"0000-01-01T00:00:00Z", "0000-02-29T00:00:00-23:59", "9999-12-31T23:59:59.1Z", "2026-10-01T12:00:60Z",
		"2026-10-01t12:00:00z", "2026-10-01 12:00:00Z", "2026-10-01T12:00:00.Z", "2026-10-01T12:00:00.1234567891Z",
		"2026-10-01T12:00:00+0100", "2026-10-01T12:00:00+24:00", "2026-10-01T24:00:00Z", "", "2026-13-01T00:00:00Z"}
	for range 200_000 {
		s := digits(4, 9999) + "-" + digits(2, 13) + "-" + digits(2, 32) + pick("T", "T", "T", "t", " ") +
			digits(2, 24) + ":" + digits(2, 60) + ":" + digits(2, 60)
		s += pick("", "", ".", "."+digits(1+rng.IntN(12), 999_999_999))
		s += pick("Z", "Z", "z", "+"+digits(2, 24)+":"+digits(2, 60), "-"+digits(2, 24)+":"+digits(2, 60), "+05", "")
		cases = append(cases, s)
	}
	fast := 0
	for _, s := range cases {
		want, werr := time.Parse(time.RFC3339Nano, s)
		got, gerr := parseEventTime(s)
		if (werr == nil) != (gerr == nil) || (werr == nil && !got.Equal(want)) {
			t.Fatalf("%q: parseEventTime = %v, %v; time.Parse = %v, %v", s, got, gerr, want, werr)
		}
		if _, _, ok := parseRFC3339(s); ok {
			fast++
		}
	}
	// Most generated timestamps are valid and take the fast path; if none
	// did, the comparison above would prove nothing about it.
	if fast < len(cases)/10 {
		t.Fatalf("only %d of %d timestamps took the fast path", fast, len(cases))
	}
	t.Logf("%d timestamps, %d on the fast path", len(cases), fast)
}

// BenchmarkParseEventTime is the consent stage's timestamp reading, in the
// fixtures' shape (an offset, no fraction).
func BenchmarkParseEventTime(b *testing.B) {
	for b.Loop() {
		if _, err := parseEventTime("2026-07-23T21:51:22+05:30"); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "timestamps/s")
}
