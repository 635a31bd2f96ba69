#!/usr/bin/env bash
# Runs the nightly job end to end on generated fixtures: no server, no set-up.
# Usage: scripts/demo.sh [USERS]   (default 100000; output under ./demo)
set -euo pipefail
cd "$(dirname "$0")/.."
users="${1:-100000}"
demo=demo
go build -o bin/audiencematch ./cmd/audiencematch
rm -rf "$demo/out" "$demo/state"
bin/audiencematch keys init --state "$demo/state" >/dev/null
# The allowlist: only the parent platform, for ads_matching, keyed, with the
# consent policy the fixtures are built around (policy version 3, 395 days).
bin/audiencematch destinations init --state "$demo/state" --delivery "$demo/out" \
  --min-policy-version 3 --max-consent-age 395d
[ -f "$demo/in/users.csv" ] && [ "$(($(wc -l <"$demo/in/users.csv") - 1))" = "$users" ] ||
  { rm -rf "$demo/in"; bin/audiencematch fixtures --users "$users" --out "$demo/in"; }
bin/audiencematch run \
  --users "$demo/in/users.csv" --consent "$demo/in/consent_events.csv" \
  --destination meta-ads \
  --state "$demo/state" \
  --as-of 2026-11-01T00:00:00Z --purpose ads_matching --log-format text --summary
echo
echo "Published (what the parent platform receives):"
find "$demo/out" -type f | sort
echo "Private, under --state (evidence and rejects, never sent):"
find "$demo/state/runs" -type f | sort
echo "Audit log:"
bin/audiencematch audit verify --state "$demo/state" 2>/dev/null
