// Package pipeline runs one nightly export: it orchestrates the packages
// below it, each of which owns one concern, and owns only the order of the
// stages and what passes between them.
//
// A run (Run), a shard (RunShard) and the commit of shards (Commit) share
// one preparation, under the state directory's lock: the audit log's
// interrupted append is completed (consent/audit), the destination is
// authorized by the registry (destinations), an earlier run's staging is
// removed, a published run the log does not record is recorded (delivery.Heal),
// a date already committed is skipped unless forced, and the backfill rule
// is applied (delivery.CheckCutoff). Then the stages:
//
//  1. consent: stream consent_events (source), fold each user's in-scope
//     events into their effective event (consent), count every event by
//     class; a malformed event that names a user fails closed for that user
//     (MATCHING.md section 2, amendment 1);
//  2. users: stream users, decide each row's consent, normalize the numbers
//     of users who granted, withdrew or whose consent is unreadable
//     (hashing), in parallel; both stages spill by user (spill);
//  3. join: per partition, pair users with their consent and hash their
//     numbers into identifiers, spilled in buckets by identifier; under
//     oprf-ristretto255 an identifier comes from the run's private cache
//     (idcache) or is evaluated, and the next cache is written beside the
//     write stage;
//  4. write: resolve each bucket in identifier order with the shared-number
//     rule (consent.SharedNumber), and write the parts, the deltas against
//     the delivery chain's head and the private evidence (idfile), with the
//     record's tree heads and the consent snapshot digest;
//  5. check: the manifest's counts reconcile (manifest), the reject rates
//     and the drop guard hold (delivery.CheckDrop), and nothing personal is
//     in what will be published (leakguard);
//  6. publish: the private files are kept under the state directory with
//     the record prepared, the run directory appears with one rename, and
//     the record is appended to the audit log.
//
// Every user row ends in exactly one place: behind an exported identifier
// or excluded for one reason (consent.ExclusionReasons). A crash at any
// instant leaves a state the next run completes or undoes.
package pipeline
