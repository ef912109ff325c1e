#!/usr/bin/env bash
# A throw-away PostgreSQL server for the tests: Debian's postgresql, a new cluster in a
# temporary folder, listening only on a Unix socket in that folder (no TCP port at all),
# trust authentication for the `postgres` role. Run as root (CI), the server runs as the
# `postgres` user, since PostgreSQL refuses to run as root.
#
#   eval "$(bash scripts/pg_test_server.sh start)"   # exports FLUXPIPE_TEST_PG_HOST/_PORT/_DIR
#   bash scripts/pg_test_server.sh stop "$FLUXPIPE_TEST_PG_DIR"
#   bash scripts/pg_test_server.sh halt DIR | resume DIR  # an outage: stop and start, data kept
set -euo pipefail

bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
[ -x "$bindir/initdb" ] || { echo "pg_test_server: Debian's postgresql is not installed (scripts/deps.sh)" >&2; exit 1; }

as_owner() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

case "${1:-}" in
  start)
    dir=$(mktemp -d /tmp/fluxpipe-pg-XXXXXX)
    [ "$(id -u)" -eq 0 ] && chown postgres:postgres "$dir"
    chmod 700 "$dir"
    port=54329
    as_owner "$bindir/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --no-sync >"$dir/initdb.log" 2>&1 ||
      { cat "$dir/initdb.log" >&2; exit 1; }
    # Tests need no durability (fsync off); benchmarks ask for it (FLUXPIPE_PG_FSYNC=on).
    echo "-c listen_addresses='' -k $dir -p $port -c fsync=${FLUXPIPE_PG_FSYNC:-off} -c max_connections=300" >"$dir/options"
    as_owner "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 -o "$(cat "$dir/options")" start >/dev/null ||
      { cat "$dir/server.log" >&2; exit 1; }
    echo "export FLUXPIPE_TEST_PG_HOST=$dir FLUXPIPE_TEST_PG_PORT=$port FLUXPIPE_TEST_PG_DIR=$dir"
    ;;
  halt)
    dir=${2:?usage: pg_test_server.sh halt DIR}
    as_owner "$bindir/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null
    ;;
  resume)
    dir=${2:?usage: pg_test_server.sh resume DIR}
    as_owner "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 -o "$(cat "$dir/options")" start >/dev/null ||
      { cat "$dir/server.log" >&2; exit 1; }
    ;;
  stop)
    dir=${2:?usage: pg_test_server.sh stop DIR}
    as_owner "$bindir/pg_ctl" -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$dir"
    ;;
  *)
    echo "usage: pg_test_server.sh start | stop DIR | halt DIR | resume DIR" >&2
    exit 2
    ;;
esac
