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
# The allowlist: only the parent platform, for ads_matching, keyed.
cat >"$demo/state/destinations.yaml" <<YAML
version: audiencematch.destinations/v1
destinations:
  - id: meta-ads
    name: Parent Ads Custom Audiences
    organization: Parent Platforms, Inc.
    relationship: parent
    purposes: [ads_matching]
    lawful_basis: consent, GDPR Art. 6(1)(a)
    scheme: hmac-sha256
    allow_unkeyed: false
    delivery: $PWD/$demo/out
    retention_days: 90
YAML
[ -f "$demo/in/users.csv" ] && [ "$(($(wc -l <"$demo/in/users.csv") - 1))" = "$users" ] ||
  { rm -rf "$demo/in"; bin/audiencematch fixtures --users "$users" --out "$demo/in"; }
bin/audiencematch run \
  --users "$demo/in/users.csv" --consent "$demo/in/consent_events.csv" \
  --destination meta-ads \
  --state "$demo/state" \
  --as-of 2026-11-01T00:00:00Z --purpose ads_matching \
  --min-policy-version 3 --max-consent-age 395d --log-format text --summary
echo
echo "Published (what the parent platform receives):"
find "$demo/out" -type f | sort
echo "Private, under --state (evidence and rejects, never sent):"
find "$demo/state/runs" -type f | sort
echo "Audit log:"
bin/audiencematch audit verify --state "$demo/state" 2>/dev/null
