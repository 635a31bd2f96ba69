package consent

// Holding is what the shared-number rule makes of one holder of a number.
// The zero value excludes the holder: a holding nobody decided exports
// nothing.
type Holding uint8

const (
	// OwnStatus: the holder is not valid and is excluded for its own
	// Status (withdrawn, consent_unreadable, no_consent, ...).
	OwnStatus Holding = iota
	// Primary: the number is exported, for this holder.
	Primary
	// DuplicateNumber: a valid holder of a number exported for another
	// holder (duplicate_number). "Each number is exported once."
	DuplicateNumber
	// SharedNumberWithdrawn: a valid holder of a number another holder
	// blocks (shared_number_withdrawn).
	SharedNumberWithdrawn
)

// Reason is the exclusion reason of a holder with this holding and status
// s: "" for the Primary, which is exported.
func (h Holding) Reason(s Status) string {
	switch h {
	case Primary:
		return ""
	case DuplicateNumber:
		return ReasonDuplicateNumber
	case SharedNumberWithdrawn:
		return ReasonSharedNumberWithdrawn
	}
	return s.String()
}

// SharedNumber decides one number from its holders' consent outcomes,
// MATCHING.md section 3: "Two accounts can hold the same number. A number
// is exported when at least one holder has valid consent and no holder's
// effective event is a withdraw. Each number is exported once." A holder
// whose consent is unreadable blocks like a withdraw (section 2, amendment
// 1: "a number any of whose holders is in that state is not exported
// either"; Status.Blocks).
//
// It sets holdings[i] to what the rule makes of holders[i]; holdings must
// be at least as long as holders, and is the caller's to reuse, so the
// rule costs no allocation per number. The number is exported once, for
// its first valid holder in the order given: the contract leaves the
// choice open, and the caller fixes it by the order of holders (the
// pipeline passes them by user id, then line, so the primary is the valid
// holder with the smallest user id). primary is its index, or -1 when the
// number is not exported.
func SharedNumber(holders []Status, holdings []Holding) (primary int, exported bool) {
	holdings = holdings[:len(holders)]
	blocked := false
	for _, s := range holders {
		blocked = blocked || s.Blocks()
	}
	primary = -1
	for i, s := range holders {
		switch {
		case s != Valid:
			holdings[i] = OwnStatus
		case blocked:
			holdings[i] = SharedNumberWithdrawn
		case primary < 0:
			holdings[i], primary = Primary, i
		default:
			holdings[i] = DuplicateNumber
		}
	}
	return primary, primary >= 0
}
