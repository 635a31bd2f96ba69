#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, vet, race-enabled tests
# (with a throw-away PostgreSQL server, installed from Debian's packages if
# missing, a throw-away S3-compatible server (versitygw), installed from the
# Go module proxy if missing, and a throw-away litewitness, installed with go
# install into a tools directory), the independent verifier in node
# (scripts/verify-audit.mjs, run by the Go tests), the deploy files checked with their tools, the
# normalization differential test and a short run of every fuzz target.
# Under 10 minutes of wall time on a busy 2-core machine (docs/PERFORMANCE.md).
#
# Usage: scripts/test.sh           the whole suite
#        scripts/test.sh --quick   the inner loop: gofmt, go vet, go test -short
#                                  (no race detector, no PostgreSQL, S3 server
#                                  or witness, no crash or randomized-night
#                                  tests, no fuzzing)
# The long forms (the differential test on 10M inputs, fuzzing for longer)
# are in scripts/bench.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
quick=false
case "${1:-}" in
--quick) quick=true ;;
"") ;;
*) echo "usage: scripts/test.sh [--quick]" >&2; exit 64 ;;
esac
echo "== gofmt"
unformatted=$(gofmt -l . | grep -v '^demo/' || true)
if [ -n "$unformatted" ]; then echo "gofmt would change:"; echo "$unformatted"; exit 1; fi
echo "== go vet"
go vet ./...
if $quick; then
  echo "== go test -short"
  go test -short -count=1 ./...
  echo "== quick tests passed (scripts/test.sh runs them all)"
  exit 0
fi
# One exit trap stops whichever servers were started, in any order of failure.
stop_servers() {
  [ -n "${AUDIENCEMATCH_TEST_WITNESS_DIR:-}" ] && scripts/witness.sh stop "$AUDIENCEMATCH_TEST_WITNESS_DIR"
  [ -n "${AUDIENCEMATCH_TEST_S3_DIR:-}" ] && scripts/s3.sh stop "$AUDIENCEMATCH_TEST_S3_DIR"
  [ -n "${AUDIENCEMATCH_TEST_PG_DIR:-}" ] && scripts/pg.sh stop "$AUDIENCEMATCH_TEST_PG_DIR"
  return 0
}
trap stop_servers EXIT
echo "== PostgreSQL for the database tests"
eval "$(scripts/pg.sh start)"
echo "== S3-compatible server (versitygw) for the object-storage tests"
eval "$(scripts/s3.sh start)"
echo "== a C2SP witness (litewitness) for the witness tests"
eval "$(scripts/witness.sh start)"
echo "== go test -race"
go test -race -count=1 ./...
echo "== deploy files (scripts/deploy/check: systemd-analyze, the crontab, Kubernetes batch/v1, the image's binary)"
(cd scripts/deploy/check && go vet ./... && go test -count=1 ./...)
echo "== normalization differential test (short form: 200k inputs; scripts/bench.sh runs 10M)"
AUDIENCEMATCH_DIFF_N=200000 go test -count=1 -run '^TestDifferential$' -v ./hashing/e164 | grep -E 'identical|^(ok|FAIL|---)'
echo "== fuzz (short; scripts/bench.sh runs the long form)"
# Counted, not timed: a timed -fuzztime that ends while a worker is busy can fail
# with "context deadline exceeded" though nothing was found.
scripts/fuzz.sh "${FUZZTIME:-10000x}"
echo "== all tests passed"
