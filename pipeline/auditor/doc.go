// Package auditor is the auditors' side of the job: what `audit verify`
// and `audit subject` check, from the state directory and the published
// files alone, trusting nothing the job says about itself but what its
// signed log commits to. The job's write path never imports it.
//
// VerifyAudit checks, in order: the log's checkpoint signature, its records'
// Merkle tree against the checkpoint, consistency with a checkpoint an
// auditor saved earlier (rollback and forks), then for every committed run
// its manifest (digest, counts that reconcile, the record's fields), its
// published files (exactly those listed, each digest and row count, the
// identifiers sorted, distinct and of the scheme's shape), its identifier
// and evidence trees against the record, and its place in the destination's
// delivery chain (delivery.VerifyDelivery: previous_run_id, and the deltas
// recomputed from the two snapshots); last, that no published run
// directory under the delivery roots is missing from the log. The error
// names the first broken thing and wraps errkind.ErrData.
//
// Published runs are found through delivery.Roots: the registry's delivery
// root of each destination, or a copy of the delivered files (--delivery).
// A run whose published directory is gone past its retention (or named by
// a later prune record) is verified from its record, evidence and the delta
// chain and reported as pruned, with what can no longer be checked. With
// required witnesses, the checkpoint must carry enough of their valid
// cosignatures.
//
// Subject answers "what was sent about this person, and when": for every
// committed run, exported or not, with the evidence rows and inclusion
// proofs (identifier in the run's tree, record in the log, up to the signed
// checkpoint) or a proof of absence from the run's sorted identifier tree;
// every proof is checked before it is returned. As JSON it is a proof
// (ProofVersion) that CheckProof checks with nothing but the log's verifier
// key: it carries every record line, so that no committed run can be left
// out of the answer (docs/AUDITORS.md, "The proof").
package auditor
