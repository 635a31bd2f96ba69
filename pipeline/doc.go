// Package pipeline runs one nightly export, in this order:
//
//  1. consent: stream consent_events, fold each user's in-scope events into
//     their effective event (package consent), count every event by class;
//  2. users: stream users, decide each row's consent; normalize the numbers
//     of users who granted, withdrew or whose consent is unreadable
//     (package hashing), in parallel;
//  3. numbers: group rows by E.164; a number is exported when one holder has
//     valid consent and no holder's effective event is a withdraw
//     (MATCHING.md section 3) or treated as one (section 2, amendment 1);
//     each number once;
//  4. identifiers: hash each exported number for the destination, sort;
//  5. output: Parquet parts, private evidence and rejects, manifest, all
//     written under <state>/staging, checked (reconciliation, reject rate),
//     then published with one atomic rename.
//
// Every user row ends in exactly one place: behind an exported identifier
// (one row per identifier, the holder with the smallest user id), or
// excluded for one reason, tested in this order: malformed_row, then the
// consent outcome (no_consent, withdrawn, expired, stale_policy,
// consent_unreadable), then invalid_phone, shared_number_withdrawn (a valid
// holder of a number a withdrawn or unreadable holder blocks),
// duplicate_number (a valid holder of a number already exported for another
// row). Numbers are normalized only for rows whose consent is valid,
// withdrawn or unreadable: the others are never exported and cannot block a
// number.
package pipeline
