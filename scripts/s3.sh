#!/usr/bin/env bash
# A throw-away S3-compatible server for the tests (versitygw, Apache-2.0),
# on 127.0.0.1 and a free port, over a scratch directory.
#   eval "$(scripts/s3.sh start)"   # installs versitygw if needed, starts it, exports
#                                   # AUDIENCEMATCH_TEST_S3_URL (a bucket URL for gocloud.dev/blob),
#                                   # AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AUDIENCEMATCH_TEST_S3_DIR
#   scripts/s3.sh stop "$AUDIENCEMATCH_TEST_S3_DIR"
# versitygw is installed from the Go module proxy into a tools directory
# (AUDIENCEMATCH_TOOLS, default ~/.cache/audiencematch-tools), never into
# the project's go.mod. Everything printed on stdout is for eval.
set -euo pipefail
VERSION=v1.8.0
TOOLS=${AUDIENCEMATCH_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/audiencematch-tools}

install_gw() {
  local bin="$TOOLS/versitygw-$VERSION/versitygw"
  if [ ! -x "$bin" ]; then
    echo "s3.sh: installing versitygw $VERSION from the Go module proxy (about 2 minutes the first time)" >&2
    mkdir -p "$TOOLS/versitygw-$VERSION"
    # Outside the project's module, so that its go.mod is untouched.
    (cd "$TOOLS" && GOFLAGS=-mod=mod GOBIN="$TOOLS/versitygw-$VERSION" go install "github.com/versity/versitygw/cmd/versitygw@$VERSION") >&2
  fi
  echo "$bin"
}

start() {
  local bin dir port key secret i
  bin=$(install_gw)
  dir=$(mktemp -d /tmp/audiencematch-s3.XXXXXX)
  mkdir -p "$dir/data/audiencematch-test"  # a directory under the root is a bucket
  key=test$(head -c 6 /dev/urandom | od -An -tx1 | tr -d ' \n')
  secret=$(head -c 24 /dev/urandom | base64 | tr -d '/+=')
  for i in $(seq 1 50); do
    port=$((20000 + RANDOM % 30000))
    (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && continue # in use
    ROOT_ACCESS_KEY_ID=$key ROOT_SECRET_ACCESS_KEY=$secret \
      setsid "$bin" --port "127.0.0.1:$port" posix "$dir/data" >"$dir/server.log" 2>&1 &
    echo $! >"$dir/pid"
    for _ in $(seq 1 100); do
      if (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        echo "s3.sh: versitygw $VERSION on 127.0.0.1:$port, data in $dir/data" >&2
        echo "export AUDIENCEMATCH_TEST_S3_URL='s3://audiencematch-test?endpoint=http://127.0.0.1:$port&use_path_style=true&region=us-east-1'"
        echo "export AWS_ACCESS_KEY_ID='$key'"
        echo "export AWS_SECRET_ACCESS_KEY='$secret'"
        echo "export AUDIENCEMATCH_TEST_S3_DIR='$dir'"
        return 0
      fi
      kill -0 "$(cat "$dir/pid")" 2>/dev/null || break
      sleep 0.1
    done
    kill "$(cat "$dir/pid")" 2>/dev/null || true
  done
  echo "s3.sh: could not start versitygw; see $dir/server.log" >&2
  exit 1
}

stop() {
  local dir=${1:-${AUDIENCEMATCH_TEST_S3_DIR:-}}
  [ -n "$dir" ] && [ -f "$dir/pid" ] || return 0
  kill "$(cat "$dir/pid")" 2>/dev/null || true
  rm -rf "$dir"
}

case "${1:-}" in
start) start ;;
stop) stop "${2:-}" ;;
*) echo "usage: $0 start | stop [DIR]" >&2; exit 64 ;;
esac
