#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, vet, race-enabled tests
# (with a throw-away PostgreSQL server, installed from Debian's packages if
# missing, a throw-away S3-compatible server, installed from the Go module
# proxy if missing, and a throw-away litewitness, installed with go install
# into a tools directory), the independent verifier in node
# (scripts/verify-audit.mjs, run by the Go tests) and a short run of every
# fuzz target.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== gofmt"
unformatted=$(gofmt -l . | grep -v '^demo/' || true)
if [ -n "$unformatted" ]; then echo "gofmt would change:"; echo "$unformatted"; exit 1; fi
echo "== go vet"
go vet ./...
echo "== PostgreSQL for the database tests"
eval "$(scripts/pg.sh start)"
trap 'scripts/pg.sh stop "$AUDIENCEMATCH_TEST_PG_DIR"' EXIT
echo "== S3-compatible server (versitygw) for the object-storage tests"
eval "$(scripts/s3.sh start)"
trap 'scripts/pg.sh stop "$AUDIENCEMATCH_TEST_PG_DIR"; scripts/s3.sh stop "$AUDIENCEMATCH_TEST_S3_DIR"' EXIT
echo "== a C2SP witness (litewitness) for the witness tests"
eval "$(scripts/witness.sh start)"
trap 'scripts/pg.sh stop "$AUDIENCEMATCH_TEST_PG_DIR"; scripts/s3.sh stop "$AUDIENCEMATCH_TEST_S3_DIR"; scripts/witness.sh stop "$AUDIENCEMATCH_TEST_WITNESS_DIR"' EXIT
echo "== go test -race"
go test -race -count=1 ./...
echo "== normalization differential test (short form: 1M inputs; scripts/bench.sh runs 10M)"
AUDIENCEMATCH_DIFF_N=1000000 go test -count=1 -run '^TestDifferential$' -v ./hashing/e164 | grep -E 'identical|^(ok|FAIL|---)'
echo "== fuzz (short)"
# Counted, not timed: a timed -fuzztime that ends while a worker is busy can fail
# with "context deadline exceeded" though nothing was found.
fuzz() { go test -run '^$' -fuzz "^$2\$" -fuzztime "${FUZZTIME:-30000x}" "$1"; }
fuzz ./hashing FuzzNormalize
fuzz ./hashing FuzzDecodeElement
fuzz ./hashing/e164 FuzzFastPath
fuzz ./consent FuzzParseEvent
fuzz ./pipeline/source FuzzCSV
fuzz ./consent/audit FuzzParseRecord
fuzz ./consent/audit/witness FuzzCosignatureVerifierKey
fuzz ./pipeline/auditor FuzzCheckProof
echo "== all tests passed"
