#!/usr/bin/env bash
# A throwaway PostgreSQL server for the test suite, on loopback only.
#
#   eval "$(.ci/postgres.sh)"      # install if needed, start, print `export FACESEARCH_TEST_PG_URL=...`
#   .ci/postgres.sh stop           # stop it and delete its data
#
# Installs Debian's `postgresql` package when no server binaries are found (needs root and
# apt-get). The cluster lives in $FACESEARCH_PG_DIR (default: $TMPDIR or /tmp,
# facesearch-pg-PORT), listens on 127.0.0.1:$FACESEARCH_PG_PORT (default 54329) and a socket in
# that folder, trusts local connections (test use only), and runs without fsync. When run as
# root, the server runs as the `postgres` user. Only the export line goes to stdout.
set -euo pipefail

PORT="${FACESEARCH_PG_PORT:-54329}"
DIR="${FACESEARCH_PG_DIR:-${TMPDIR:-/tmp}/facesearch-pg-$PORT}"
DB="${FACESEARCH_PG_DB:-facesearch_test}"
DATA="$DIR/data"

log() { echo "postgres.sh: $*" >&2; }

find_bindir() {
  local d
  if command -v pg_config >/dev/null 2>&1 && [ -x "$(pg_config --bindir)/initdb" ]; then
    pg_config --bindir
    return
  fi
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    if [ -x "$d/initdb" ]; then echo "$d"; return; fi
  done
}

as_server_user() {
  if [ "$(id -u)" = 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

BIN="$(find_bindir || true)"

if [ "${1:-start}" = stop ]; then
  if [ -n "$BIN" ] && [ -f "$DATA/postmaster.pid" ]; then
    as_server_user "$BIN/pg_ctl" -D "$DATA" -m fast -w stop >&2 || true
  fi
  rm -rf "$DIR"
  log "stopped and removed $DIR"
  exit 0
fi

if [ -z "$BIN" ]; then
  if [ "$(id -u)" != 0 ]; then
    log "PostgreSQL is not installed and this is not root: install the postgresql package"
    exit 1
  fi
  log "installing PostgreSQL (apt-get install -y postgresql)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q postgresql >&2 || { apt-get update -q >&2 && apt-get install -y -q postgresql >&2; }
  BIN="$(find_bindir)"
fi

mkdir -p "$DIR"
if [ "$(id -u)" = 0 ]; then chown postgres: "$DIR"; fi

if [ ! -f "$DATA/PG_VERSION" ]; then
  log "creating a cluster in $DATA"
  as_server_user "$BIN/initdb" -D "$DATA" -U postgres -A trust -E UTF8 --no-sync >&2
fi

if ! as_server_user "$BIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1; then
  log "starting the server on 127.0.0.1:$PORT"
  as_server_user "$BIN/pg_ctl" -D "$DATA" -l "$DIR/server.log" -w -t 60 start \
    -o "-p $PORT -k $DIR -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200" >&2
fi

if ! "$BIN/psql" -h 127.0.0.1 -p "$PORT" -U postgres -d postgres -tAc \
    "SELECT 1 FROM pg_database WHERE datname = '$DB'" | grep -q 1; then
  "$BIN/createdb" -h 127.0.0.1 -p "$PORT" -U postgres "$DB"
fi

URL="postgresql+psycopg://postgres@127.0.0.1:$PORT/$DB"
log "ready: $URL"
echo "export FACESEARCH_TEST_PG_URL=$URL"
