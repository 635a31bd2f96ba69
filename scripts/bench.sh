#!/usr/bin/env bash
# Speed and memory of the nightly job on this machine: the per-stage Go
# benchmarks, then full runs on 1M and 10M fixture users, with rows per
# second, wall time and peak RSS (/usr/bin/time -v).
# Also the long form of the normalization differential test: DIFF_N (default
# 10M) generated inputs, the fast path against nyaruka/phonenumbers.
# Usage: scripts/bench.sh [SIZES]   (default "1000000 10000000"; fixtures cached in ./bench)
#        DIFF_N=0 scripts/bench.sh   skips the differential test
#        SHARDS=4 (default) also runs each size as 4 shards, one after the other,
#        and the commit, printing each one's wall time and peak RSS; SHARDS=0 skips it
set -euo pipefail
cd "$(dirname "$0")/.."
sizes="${1:-1000000 10000000}"
command -v /usr/bin/time >/dev/null || { echo "bench.sh: /usr/bin/time is missing (apt-get install time)" >&2; exit 1; }
go build -o bin/audiencematch ./cmd/audiencematch

echo "== stage benchmarks (go test -bench)"
go test -run '^$' -bench . -benchtime 3x ./pipeline | grep -E '^Benchmark'
go test -run '^$' -bench . ./hashing ./hashing/e164 | grep -E '^Benchmark'

if [ "${DIFF_N:-10000000}" != 0 ]; then
  echo "== normalization differential test: ${DIFF_N:-10000000} inputs"
  AUDIENCEMATCH_DIFF_N="${DIFF_N:-10000000}" go test -count=1 -timeout 60m -run '^TestDifferential$' -v ./hashing/e164 |
    grep -E 'inputs|^(ok|FAIL|---)'
fi

# report TIMEFILE N: wall time, peak RSS, CPU and users per second.
report() {
  local wall rss cpu secs
  wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {print $2}' "$1")
  rss=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$1")
  cpu=$(awk -F': ' '/Percent of CPU/ {print $2}' "$1")
  secs=$(echo "$wall" | awk -F: '{ if (NF==3) print $1*3600+$2*60+$3; else print $1*60+$2 }')
  echo "   wall $wall ($secs s), peak RSS $((rss / 1024)) MiB, CPU $cpu, $(awk -v n="$2" -v s="$secs" 'BEGIN { printf "%.0f", n/s }') users/s"
}

for n in $sizes; do
  dir="bench/$n"
  if [ ! -f "$dir/in/users.csv" ]; then
    echo "== fixtures: $n users"
    /usr/bin/time -f "   generated in %e s, peak %M KB" bin/audiencematch fixtures --users "$n" --out "$dir/in"
  fi
  rm -rf "$dir/state" "$dir/out"
  bin/audiencematch keys init --state "$dir/state" >/dev/null 2>&1
  cat >"$dir/state/destinations.yaml" <<YAML
version: audiencematch.destinations/v1
destinations:
  - {id: meta-ads, name: Parent Ads, organization: Parent Co, relationship: parent, purposes: [ads_matching],
     lawful_basis: consent, scheme: hmac-sha256, delivery: $PWD/$dir/out, retention_days: 90}
YAML
  common=(--users "$dir/in/users.csv" --consent "$dir/in/consent_events.csv" --destination meta-ads --state "$dir/state"
    --as-of 2026-11-01T00:00:00Z --min-policy-version 3 --max-consent-age 395d --log-format json)
  echo "== full run: $n users"
  /usr/bin/time -v -o "$dir/time.txt" bin/audiencematch run "${common[@]}" --log-level debug 2>"$dir/log.json"
  grep -o '"stage":"[a-z]*","seconds":[0-9.]*' "$dir/log.json" | sed 's/"stage":"\([a-z]*\)","seconds":\([0-9.]*\)/   stage \1: \2 s/'
  report "$dir/time.txt" "$n"
  shards="${SHARDS:-4}"
  if [ "$shards" != 0 ]; then
    echo "== the same run as $shards shards, one after the other, then commit"
    # --force: the date is already committed by the run above; without OUT the
    # commit does all the work again (its audit record is already there).
    rm -rf "$dir/state/shards" "$dir/out"
    for ((i = 0; i < shards; i++)); do
      /usr/bin/time -v -o "$dir/time.txt" bin/audiencematch run "${common[@]}" --force --shard "$i/$shards" 2>/dev/null
      printf '   shard %d/%d: ' "$i" "$shards"; report "$dir/time.txt" "$n"
    done
    /usr/bin/time -v -o "$dir/time.txt" bin/audiencematch commit "${common[@]}" --force --shards "$shards" 2>/dev/null
    printf '   commit: '; report "$dir/time.txt" "$n"
  fi
done
