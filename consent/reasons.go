package consent

// The exclusion reasons of a user row: every user row of a run is either
// exported or excluded for exactly one of these, tested in this order
// (the manifest counts each, and its counts reconcile on them):
//
//	malformed_row            the row itself cannot be read (MATCHING.md section 1)
//	no_consent, withdrawn, expired, stale_policy, consent_unreadable
//	                         the user's consent outcome (Status, section 2)
//	invalid_phone            libphonenumber does not call the number valid (section 3)
//	shared_number_withdrawn  a valid holder of a number another holder blocks (section 3)
//	duplicate_number         a valid holder of a number exported for another holder (section 3)
const (
	ReasonMalformedRow          = "malformed_row"
	ReasonInvalidPhone          = "invalid_phone"
	ReasonSharedNumberWithdrawn = "shared_number_withdrawn"
	ReasonDuplicateNumber       = "duplicate_number"
)

// ExclusionReasons lists every exclusion reason, in the manifest's order.
var ExclusionReasons = []string{
	NoConsent.String(), Withdrawn.String(), Expired.String(), StalePolicy.String(), ConsentUnreadable.String(),
	ReasonInvalidPhone, ReasonSharedNumberWithdrawn, ReasonDuplicateNumber, ReasonMalformedRow,
}
