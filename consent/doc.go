// Package consent decides, for one run, which users have valid consent,
// exactly as section 2 of MATCHING.md (contract v1) defines it:
//
// For each user, take the events with the run's purpose and occurred_at <=
// as_of. The effective event is the one with the latest occurred_at; on a tie,
// withdraw wins. The user has valid consent when the effective event is a
// grant, its policy_version >= min_policy_version, and, when max_consent_age
// is set, as_of - occurred_at <= max_consent_age. No events means no consent.
//
// What the contract leaves open is fixed here so that a decision never
// depends on the order of the input rows:
//
//   - Ties between two events of the same action at the same instant go to the
//     grant with the lower policy_version (the more conservative one), then to
//     the smaller event_id.
//   - A grant that is both under an old policy and too old is reported as
//     stale_policy: it was never valid for the current notice.
//
// Every event is counted in exactly one class, tested in this order:
// malformed (it could not be parsed), other_purpose, after_cutoff,
// unknown_user (no such user in the users table) and used.
package consent
