package consent

import (
	"strings"
	"time"
)

// Rules are the consent rules of one run.
type Rules struct {
	AsOf             time.Time
	Purpose          string
	MinPolicyVersion int64
	MaxAge           time.Duration // 0: no limit
}

// Class is how one event counts in a run's reconciliation.
type Class uint8

// Event classes, in the order they are tested (see the package doc).
const (
	ClassMalformed Class = iota
	ClassOtherPurpose
	ClassAfterCutoff
	ClassUnknownUser
	ClassUsed
)

// EventClassNames are the reconciliation names of the classes, by Class.
var EventClassNames = [...]string{"malformed", "other_purpose", "after_cutoff", "unknown_user", "used"}

func (c Class) String() string { return EventClassNames[c] }

// Classify says whether e counts for these rules. An in-scope event returns
// ClassUsed; whether its user exists is for the caller to find out.
func (r Rules) Classify(e *Event) Class {
	if e.Purpose != r.Purpose {
		return ClassOtherPurpose
	}
	if e.OccurredAt.After(r.AsOf) {
		return ClassAfterCutoff
	}
	return ClassUsed
}

// Status is a user's consent as of the cutoff.
type Status uint8

// The consent outcomes; every one but Valid is an exclusion reason.
const (
	NoConsent Status = iota
	Valid
	Withdrawn
	Expired
	StalePolicy
	// ConsentUnreadable: a malformed row of the user's might be a
	// withdrawal, so the user is treated as if the effective event were a
	// withdraw (MATCHING.md section 2, "Fail closed (amendment 1)").
	ConsentUnreadable
)

var statusNames = [...]string{"no_consent", "valid", "withdrawn", "expired", "stale_policy", "consent_unreadable"}

func (s Status) String() string { return statusNames[s] }

// Blocks reports whether a holder in this state keeps its number from
// being exported: its effective event is a withdraw, or is treated as one
// (MATCHING.md section 3, and section 2's amendment 1: "a number any of
// whose holders is in that state is not exported either").
func (s Status) Blocks() bool { return s == Withdrawn || s == ConsentUnreadable }

// FailsClosed reports whether a malformed consent_events row makes its
// user's consent unreadable (MATCHING.md section 2, "Fail closed
// (amendment 1)"). userID and purpose are what could be read of the row's
// columns, "" for what could not: a row whose user_id cannot be read
// concerns nobody, and one whose purpose is readable and another purpose
// cannot be a withdrawal for this run. An empty purpose in a malformed row
// counts as unreadable: doubt never exports a number. Nothing else of the
// row matters, not even a readable occurred_at after as_of: the contract
// treats every event that cannot be read completely as a possible
// withdrawal.
func (r Rules) FailsClosed(userID, purpose string) bool {
	return userID != "" && (purpose == "" || purpose == r.Purpose)
}

// Effective is the effective event of one user: the state kept per user
// while events stream by, small enough to hold for every user.
type Effective struct {
	EventID       string
	OccurredAt    time.Time
	PolicyVersion int64
	Action        Action // 0 when the user has no in-scope event
	// Unreadable is set by a malformed row that FailsClosed: it outranks
	// every readable event, whenever they happened.
	Unreadable bool
	InScope    int32 // in-scope events seen for the user
}

// Add folds an in-scope event into the state, keeping the effective one.
// It reports whether e became the effective event (a caller that reuses
// the memory of e's strings then copies EventID).
func (s *Effective) Add(e *Event) bool {
	s.InScope++
	if s.Action == 0 || s.precedes(e) {
		s.EventID = e.EventID
		s.OccurredAt = e.OccurredAt
		s.PolicyVersion = e.PolicyVersion
		s.Action = e.Action
		return true
	}
	return false
}

// AddUnreadable folds in a malformed row of the user's that FailsClosed.
// The row is counted as malformed, not as in scope.
func (s *Effective) AddUnreadable() { s.Unreadable = true }

// ID is the effective event's id as the consent snapshot records it: none
// when the consent is unreadable, the effective event being a row that
// could not be read.
func (s *Effective) ID() string {
	if s.Unreadable {
		return ""
	}
	return s.EventID
}

// precedes reports whether e takes over from the current effective event:
// later wins; at the same instant withdraw wins; then the lower policy
// version; then the smaller event id. The order is total, so the result does
// not depend on the order of the rows.
func (s *Effective) precedes(e *Event) bool {
	if c := e.OccurredAt.Compare(s.OccurredAt); c != 0 {
		return c > 0
	}
	if e.Action != s.Action {
		return e.Action == Withdraw
	}
	if e.PolicyVersion != s.PolicyVersion {
		return e.PolicyVersion < s.PolicyVersion
	}
	return strings.Compare(e.EventID, s.EventID) < 0
}

// Decide applies the rules to a user's effective event.
func (r Rules) Decide(s *Effective) Status {
	if s.Unreadable {
		return ConsentUnreadable
	}
	switch s.Action {
	case 0:
		return NoConsent
	case Withdraw:
		return Withdrawn
	}
	if s.PolicyVersion < r.MinPolicyVersion {
		return StalePolicy
	}
	if r.MaxAge > 0 && r.AsOf.Sub(s.OccurredAt) > r.MaxAge {
		return Expired
	}
	return Valid
}

// Evaluate is the whole of section 2 for one user's rows, in any order: the
// events that parse, and what could be read of the malformed ones (the
// Event ParseEvent returns with its error, with "" for a column that could
// not be read at all). It filters them by the rules and decides. It is the
// reference the streaming pipeline is tested against.
func (r Rules) Evaluate(events []Event, malformed ...Event) (Status, Effective) {
	var s Effective
	for i := range events {
		if r.Classify(&events[i]) == ClassUsed {
			s.Add(&events[i])
		}
	}
	for i := range malformed {
		if r.FailsClosed(malformed[i].UserID, malformed[i].Purpose) {
			s.AddUnreadable()
		}
	}
	return r.Decide(&s), s
}
