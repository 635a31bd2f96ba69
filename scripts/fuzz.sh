#!/usr/bin/env bash
# Every fuzz target, each for COUNT executions (default 10000x): scripts/test.sh
# runs the short form, scripts/bench.sh the long one.
# Usage: scripts/fuzz.sh [COUNT]   e.g. scripts/fuzz.sh 1000000x
set -euo pipefail
cd "$(dirname "$0")/.."
count="${1:-10000x}"
fuzz() { go test -run '^$' -fuzz "^$2\$" -fuzztime "$count" "$1"; }
fuzz ./hashing FuzzNormalize
fuzz ./hashing FuzzDecodeElement
fuzz ./hashing/e164 FuzzFastPath
fuzz ./consent FuzzParseEvent
fuzz ./pipeline/source FuzzCSV
fuzz ./consent/audit FuzzParseRecord
fuzz ./consent/audit FuzzRecordReason
fuzz ./pipeline/spill FuzzOpen
fuzz ./consent/audit/witness FuzzCosignatureVerifierKey
fuzz ./pipeline/auditor FuzzCheckProof
