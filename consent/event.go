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
	t, err := ParseTime(occurredAt)
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
