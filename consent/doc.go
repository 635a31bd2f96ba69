// Package consent decides, for one run, which users have valid consent,
// exactly as section 2 of MATCHING.md (contract v1) defines it:
//
// For each user, take the events with the run's purpose and occurred_at <=
// as_of. The effective event is the one with the latest occurred_at; on a tie,
// withdraw wins. The user has valid consent when the effective event is a
// grant, its policy_version >= min_policy_version, and, when max_consent_age
// is set, as_of - occurred_at <= max_consent_age. No events means no consent.
//
// Fail closed (amendment 1): a malformed row whose user_id can still be read
// might be a withdrawal. Unless its purpose can be read and is another
// purpose, its user is treated as if the effective event were a withdraw
// and excluded as consent_unreadable (Rules.FailsClosed,
// Effective.AddUnreadable), and a number any of whose holders is in that
// state is not exported either (Status.Blocks). The row still counts as
// malformed.
//
// A number's fate follows from its holders' outcomes, section 3's
// shared-number rule (SharedNumber): "A number is exported when at least
// one holder has valid consent and no holder's effective event is a
// withdraw. Each number is exported once." A holder with unreadable consent
// blocks like a withdraw.
//
// What the contract leaves open is fixed here so that a decision never
// depends on the order of the input rows:
//
//   - Ties between two events of the same action at the same instant go to the
//     grant with the lower policy_version (the more conservative one), then to
//     the smaller event_id.
//   - A grant that is both under an old policy and too old is reported as
//     stale_policy: it was never valid for the current notice.
//   - An empty purpose in a malformed row counts as unreadable, and a
//     malformed row fails closed even when its occurred_at is readable and
//     after as_of: the contract names no exception for either.
//
// Every event is counted in exactly one class, tested in this order:
// malformed (it could not be parsed), other_purpose, after_cutoff,
// unknown_user (no such user in the users table) and used.
package consent
