#!/usr/bin/env bash
# A throw-away C2SP tlog-witness (litewitness, filippo.io/torchwood v0.6.1)
# for the tests, on 127.0.0.1 and a free port, its Ed25519 key held by a
# dedicated ssh-agent.
#   eval "$(scripts/witness.sh start)"   # installs the tools if needed, starts
#                                        # the agent and the witness, exports
#                                        # AUDIENCEMATCH_TEST_WITNESS_{URL,VKEY,DB,CTL,DIR}
#   scripts/witness.sh stop "$AUDIENCEMATCH_TEST_WITNESS_DIR"
# The tools are installed with go install into a tools directory
# ($AUDIENCEMATCH_TOOLS, default ~/.cache/audiencematch/tools), never into
# go.mod. Everything printed on stdout is for eval; progress goes to stderr.
set -euo pipefail

VERSION=v0.6.1
TOOLS=${AUDIENCEMATCH_TOOLS:-$HOME/.cache/audiencematch/tools}
BIN=$TOOLS/torchwood-$VERSION/bin
NAME=audiencematch.test/witness

install_tools() {
  [ -x "$BIN/litewitness" ] && [ -x "$BIN/witnessctl" ] && return 0
  echo "witness.sh: installing litewitness and witnessctl $VERSION into $BIN (about a minute, once)" >&2
  mkdir -p "$BIN"
  # From outside the module, so that go.mod is not consulted or changed.
  (cd "$(mktemp -d)" && GOBIN="$BIN" GOFLAGS= go install \
    "filippo.io/torchwood/cmd/litewitness@$VERSION" "filippo.io/torchwood/cmd/witnessctl@$VERSION" >&2)
}

start() {
  local dir port fp i vkey
  install_tools
  dir=$(mktemp -d /tmp/audiencematch-witness.XXXXXX)
  ssh-keygen -q -t ed25519 -N '' -C witness -f "$dir/key" >/dev/null
  ssh-agent -D -a "$dir/agent.sock" >/dev/null 2>&1 &
  echo $! >"$dir/agent.pid"
  for i in $(seq 1 50); do [ -S "$dir/agent.sock" ] && break; sleep 0.1; done
  SSH_AUTH_SOCK="$dir/agent.sock" ssh-add -q "$dir/key" 2>/dev/null
  fp=$(ssh-keygen -l -f "$dir/key.pub" | awk '{print $2}')
  for i in $(seq 1 50); do
    port=$((20000 + RANDOM % 30000))
    (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && continue # in use
    "$BIN/litewitness" -db "$dir/witness.db" -name "$NAME" -key "$fp" -ssh-agent "$dir/agent.sock" \
      -listen "127.0.0.1:$port" >"$dir/litewitness.out" 2>"$dir/litewitness.log" &
    echo $! >"$dir/litewitness.pid"
    for _ in $(seq 1 100); do
      if (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        vkey=$(sed -n 's/.*msg="verifier key" vkey=\([^ ]*\).*/\1/p' "$dir/litewitness.log" | head -1)
        echo "witness.sh: litewitness $VERSION on 127.0.0.1:$port, key $vkey, data in $dir" >&2
        echo "export AUDIENCEMATCH_TEST_WITNESS_URL='http://127.0.0.1:$port'"
        echo "export AUDIENCEMATCH_TEST_WITNESS_VKEY='$vkey'"
        echo "export AUDIENCEMATCH_TEST_WITNESS_DB='$dir/witness.db'"
        echo "export AUDIENCEMATCH_TEST_WITNESS_CTL='$BIN/witnessctl'"
        echo "export AUDIENCEMATCH_TEST_WITNESS_DIR='$dir'"
        return 0
      fi
      kill -0 "$(cat "$dir/litewitness.pid")" 2>/dev/null || break
      sleep 0.1
    done
  done
  echo "witness.sh: could not start litewitness; see $dir/litewitness.log" >&2
  stop "$dir"
  exit 1
}

stop() {
  local dir=${1:-${AUDIENCEMATCH_TEST_WITNESS_DIR:-}} f
  [ -n "$dir" ] && [ -d "$dir" ] || return 0
  for f in litewitness.pid agent.pid; do
    [ -f "$dir/$f" ] && kill "$(cat "$dir/$f")" 2>/dev/null || true
  done
  rm -rf "$dir"
}

case "${1:-}" in
start) start ;;
stop) stop "${2:-}" ;;
*) echo "usage: $0 start | stop [DIR]" >&2; exit 64 ;;
esac
