#!/usr/bin/env bash
# A throw-away PostgreSQL server for the tests, on 127.0.0.1 and a free port.
#   eval "$(scripts/pg.sh start)"   # installs PostgreSQL if needed, starts it,
#                                   # exports AUDIENCEMATCH_TEST_PG_URL and AUDIENCEMATCH_TEST_PG_DIR
#   scripts/pg.sh stop "$AUDIENCEMATCH_TEST_PG_DIR"
# Everything it prints on stdout is for eval; progress goes to stderr.
set -euo pipefail

find_bin() {
  local d
  for d in /usr/lib/postgresql/*/bin; do
    [ -x "$d/initdb" ] && { echo "$d"; return 0; }
  done
  return 1
}

install_pg() {
  echo "pg.sh: installing PostgreSQL from Debian's packages" >&2
  if [ "$(id -u)" != 0 ]; then echo "pg.sh: need root to apt-get install postgresql" >&2; exit 1; fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends postgresql >&2
}

# as_pg runs a command as the postgres user when we are root (the server
# refuses to run as root), as ourselves otherwise.
as_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

start() {
  local bin dir port pw i
  bin=$(find_bin) || { install_pg; bin=$(find_bin); }
  if [ "$(id -u)" = 0 ] && ! id postgres >/dev/null 2>&1; then
    useradd --system --home-dir /var/lib/postgresql --shell /bin/false postgres
  fi
  dir=$(mktemp -d /tmp/audiencematch-pg.XXXXXX)
  chmod 755 "$dir"
  [ "$(id -u)" = 0 ] && chown postgres: "$dir"
  pw=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
  echo "$pw" >"$dir/pwfile"
  [ "$(id -u)" = 0 ] && chown postgres: "$dir/pwfile"
  as_pg "$bin/initdb" -D "$dir/data" -U postgres --pwfile="$dir/pwfile" --auth=scram-sha-256 -E UTF8 --locale=C.UTF-8 >/dev/null
  rm -f "$dir/pwfile"
  for i in $(seq 1 50); do
    port=$((20000 + RANDOM % 30000))
    (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && continue # in use
    if as_pg "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
      -o "-c listen_addresses=127.0.0.1 -c port=$port -c unix_socket_directories=$dir -c fsync=off" start >/dev/null; then
      echo "pg.sh: PostgreSQL ($("$bin/postgres" --version)) on 127.0.0.1:$port, data in $dir" >&2
      echo "export AUDIENCEMATCH_TEST_PG_URL='postgres://postgres:$pw@127.0.0.1:$port/postgres?sslmode=disable'"
      echo "export AUDIENCEMATCH_TEST_PG_DIR='$dir'"
      return 0
    fi
  done
  echo "pg.sh: could not start PostgreSQL; see $dir/server.log" >&2
  exit 1
}

stop() {
  local dir=${1:-${AUDIENCEMATCH_TEST_PG_DIR:-}} bin
  [ -n "$dir" ] && [ -d "$dir/data" ] || return 0
  bin=$(find_bin)
  as_pg "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1 || true
  rm -rf "$dir"
}

case "${1:-}" in
start) start ;;
stop) stop "${2:-}" ;;
*) echo "usage: $0 start | stop [DIR]" >&2; exit 64 ;;
esac
