package consent

import (
	"fmt"
	"strconv"
	"time"
)

// Action is what a consent event records.
type Action uint8

// The two actions of contract v1.
const (
	Grant Action = iota + 1
	Withdraw
)

func (a Action) String() string {
	switch a {
	case Grant:
		return "grant"
	case Withdraw:
		return "withdraw"
	}
	return "invalid"
}

// Event is one row of consent_events.
type Event struct {
	EventID       string
	UserID        string
	Purpose       string
	Action        Action
	OccurredAt    time.Time
	PolicyVersion int64
	Source        string
}

// Malformed-row reasons for consent events; they name a reject's cause in the
// reject file and the manifest.
const (
	RejectEmptyEventID   = "empty_event_id"
	RejectEmptyUserID    = "empty_user_id"
	RejectUnknownAction  = "unknown_action"
	RejectBadTimestamp   = "bad_timestamp"
	RejectBadPolicy      = "non_integer_policy_version"
	RejectEmptyTimestamp = "empty_timestamp"
)

// RejectError says why a row was rejected.
type RejectError struct {
	Reason string
	Detail string
}

func (e *RejectError) Error() string {
	if e.Detail == "" {
		return e.Reason
	}
	return e.Reason + ": " + e.Detail
}

// ParseEvent builds an Event from the text of a row's columns. It returns a
// *RejectError for a malformed row.
func ParseEvent(eventID, userID, purpose, action, occurredAt, policyVersion, source string) (Event, error) {
	e := Event{EventID: eventID, UserID: userID, Purpose: purpose, Source: source}
	if eventID == "" {
		return e, &RejectError{Reason: RejectEmptyEventID}
	}
	if userID == "" {
		return e, &RejectError{Reason: RejectEmptyUserID}
	}
	switch action {
	case "grant":
		e.Action = Grant
	case "withdraw":
		e.Action = Withdraw
	default:
		return e, &RejectError{Reason: RejectUnknownAction, Detail: truncate(action)}
	}
	t, err := parseEventTime(occurredAt)
	if err != nil {
		if occurredAt == "" {
			return e, &RejectError{Reason: RejectEmptyTimestamp}
		}
		return e, &RejectError{Reason: RejectBadTimestamp, Detail: truncate(occurredAt)}
	}
	e.OccurredAt = t
	v, err := strconv.ParseInt(policyVersion, 10, 64)
	if err != nil {
		return e, &RejectError{Reason: RejectBadPolicy, Detail: truncate(policyVersion)}
	}
	e.PolicyVersion = v
	return e, nil
}

// ParseTime parses an RFC 3339 timestamp, fractional seconds allowed.
func ParseTime(s string) (time.Time, error) {
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("not an RFC 3339 timestamp: %q", truncate(s))
	}
	return t, nil
}

// parseEventTime is ParseTime for the consent events' timestamps, whose
// offset nothing keeps (only the instant is compared): the usual shape,
// YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM), is read by hand, without the
// zone time.Parse allocates for every offset other than Z, and the instant
// is returned in UTC. Anything else, valid or not, goes to ParseTime, so
// what is accepted and rejected is exactly what time.Parse decides.
// (TestParseEventTime compares the two.)
func parseEventTime(s string) (time.Time, error) {
	if sec, nsec, ok := parseRFC3339(s); ok {
		return time.Unix(sec, nsec).UTC(), nil
	}
	return ParseTime(s)
}

// parseRFC3339 reads the common shape of an RFC 3339 timestamp as Unix
// seconds and nanoseconds. It returns ok only for a timestamp time.Parse
// accepts, with the same instant; it may refuse valid ones (leap seconds,
// more than nine fractional digits), which go to time.Parse.
func parseRFC3339(s string) (sec, nsec int64, ok bool) {
	if len(s) < len("2006-01-02T15:04:05Z") || s[4] != '-' || s[7] != '-' || s[10] != 'T' || s[13] != ':' || s[16] != ':' {
		return 0, 0, false
	}
	// Two digits at a time, as a pair of small functions the compiler
	// inlines: every consent event has a timestamp, and a closure looping
	// over each field's digits cost far more (docs/PERFORMANCE.md).
	y1, ok1 := digits2(s[0], s[1])
	y2, ok2 := digits2(s[2], s[3])
	month, ok3 := digits2(s[5], s[6])
	day, ok4 := digits2(s[8], s[9])
	hour, ok5 := digits2(s[11], s[12])
	minute, ok6 := digits2(s[14], s[15])
	second, ok7 := digits2(s[17], s[18])
	year := y1*100 + y2
	if !(ok1 && ok2 && ok3 && ok4 && ok5 && ok6 && ok7) || month < 1 || month > 12 || day < 1 || day > daysIn(month, year) || hour > 23 || minute > 59 || second > 59 {
		return 0, 0, false
	}
	rest := s[19:]
	if len(rest) >= 2 && rest[0] == '.' {
		n := 1
		for n < len(rest) && rest[n] >= '0' && rest[n] <= '9' {
			nsec = nsec*10 + int64(rest[n]-'0')
			n++
		}
		if n == 1 || n > 10 {
			return 0, 0, false
		}
		for range 10 - n {
			nsec *= 10
		}
		rest = rest[n:]
	}
	offset := int64(0)
	switch {
	case rest == "Z":
	case len(rest) == 6 && (rest[0] == '+' || rest[0] == '-') && rest[3] == ':':
		oh, okh := digits2(rest[1], rest[2])
		om, okm := digits2(rest[4], rest[5])
		if !okh || !okm || oh > 23 || om > 59 {
			return 0, 0, false
		}
		offset = (oh*60 + om) * 60
		if rest[0] == '-' {
			offset = -offset
		}
	default:
		return 0, 0, false
	}
	return daysFromCivil(year, month, day)*86400 + hour*3600 + minute*60 + second - offset, nsec, true
}

// digits2 is the value of two decimal digits, and whether they are.
func digits2(a, b byte) (int64, bool) {
	a, b = a-'0', b-'0' // a byte below '0' wraps past 9
	return int64(a)*10 + int64(b), a <= 9 && b <= 9
}

// daysIn is the number of days of a month of the proleptic Gregorian calendar.
func daysIn(month, year int64) int64 {
	switch month {
	case 2:
		if year%4 == 0 && (year%100 != 0 || year%400 == 0) {
			return 29
		}
		return 28
	case 4, 6, 9, 11:
		return 30
	}
	return 31
}

// daysFromCivil is the number of days from 1970-01-01 to a date of the
// proleptic Gregorian calendar (Howard Hinnant's days_from_civil).
func daysFromCivil(y, m, d int64) int64 {
	if m <= 2 {
		y--
	}
	era := y / 400
	if y < 0 { // year 0's January and February: round down, not to zero
		era = (y - 399) / 400
	}
	yoe := y - era*400
	mp := (m + 9) % 12
	doy := (153*mp+2)/5 + d - 1
	doe := yoe*365 + yoe/4 - yoe/100 + doy
	return era*146097 + doe - 719468
}

// ParseMaxAge parses a max_consent_age: a Go duration ("9480h") or a whole
// number of days ("395d"). Zero or empty means no limit.
func ParseMaxAge(s string) (time.Duration, error) {
	if s == "" {
		return 0, nil
	}
	var d time.Duration
	if n := len(s); n > 1 && s[n-1] == 'd' {
		days, err := strconv.ParseInt(s[:n-1], 10, 64)
		if err != nil || days < 0 || days > 100*366 {
			return 0, fmt.Errorf("max consent age %q: want whole days like 395d, or a duration like 720h", s)
		}
		d = time.Duration(days) * 24 * time.Hour
	} else {
		var err error
		if d, err = time.ParseDuration(s); err != nil {
			return 0, fmt.Errorf("max consent age %q: want whole days like 395d, or a duration like 720h", s)
		}
	}
	if d < 0 {
		return 0, fmt.Errorf("max consent age %q is negative", s)
	}
	return d, nil
}

func truncate(s string) string {
	const max = 40
	if len(s) <= max {
		return s
	}
	return s[:max] + "…"
}
