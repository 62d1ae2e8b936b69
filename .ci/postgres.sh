#!/usr/bin/env bash
# A PostgreSQL server for the tests of the PostgreSQL state (issue 13), and
# MODELSYNC_TEST_POSTGRES pointing at it. Sourced by .ci/run (`ensure_postgres`); run it
# alone to try it: `bash .ci/postgres.sh [--fallback] [--port N]` starts what CI would,
# prints the URL, checks it answers, and stops what it started.
#
#   1. MODELSYNC_TEST_POSTGRES already set: use it as it is.
#   2. A server listening on 127.0.0.1:5432 (this machine kind starts one, trust auth for
#      the postgres user): use postgresql://postgres@127.0.0.1:5432/postgres.
#   3. Otherwise: install PostgreSQL from Debian's packages (if no initdb is there) and start
#      a throwaway cluster in a temporary folder as the postgres user, on 127.0.0.1:5432
#      (the next free port if a cluster the install made is there), with trust auth. An
#      existing cluster is never touched; the throwaway one is stopped by
#      `stop_postgres` (a trap in .ci/run).
#
# --fallback skips steps 1 and 2 (to try step 3 beside a running server); --port N asks
# step 3 for another port than 5432.

PG_CI_PGCTL=""
PG_CI_DATA=""

_pg_listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

_pg_as_postgres() {
    if command -v runuser >/dev/null 2>&1; then
        runuser -u postgres -- "$@"
    else
        su postgres -s /bin/sh -c "$(printf '%q ' "$@")"
    fi
}

_pg_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; else sudo -n "$@"; fi
}

_pg_install() {
    if compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
        return 0
    fi
    echo "PostgreSQL: installing it from Debian's packages" >&2
    _pg_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    _pg_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
}

_pg_start_throwaway() {
    local port=$1 bin dir
    _pg_install
    bin="$(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V | tail -n 1)"
    while _pg_listening "$port"; do port=$((port + 1)); done
    dir="$(mktemp -d /tmp/modelsync-ci-postgres.XXXXXX)"
    _pg_root chown postgres: "$dir"
    _pg_as_postgres "$bin/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 --locale=C \
        --no-sync >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; return 1; }
    _pg_as_postgres "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
        -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c fsync=off" start >/dev/null \
        || { cat "$dir/server.log" >&2; return 1; }
    PG_CI_PGCTL="$bin/pg_ctl"
    PG_CI_DATA="$dir/data"
    MODELSYNC_TEST_POSTGRES="postgresql://postgres@127.0.0.1:$port/postgres"
    echo "PostgreSQL: a throwaway cluster in $dir, on 127.0.0.1:$port" >&2
}

# Export MODELSYNC_TEST_POSTGRES for a server that is up. Arguments: [--fallback] [--port N].
ensure_postgres() {
    local fallback=0 port=5432
    while [ $# -gt 0 ]; do
        case "$1" in
            --fallback) fallback=1 ;;
            --port) port=$2; shift ;;
            *) echo "ensure_postgres: unknown argument $1" >&2; return 64 ;;
        esac
        shift
    done
    if [ $fallback = 0 ] && [ -n "${MODELSYNC_TEST_POSTGRES:-}" ]; then
        echo "PostgreSQL: MODELSYNC_TEST_POSTGRES is set; using it" >&2
    elif [ $fallback = 0 ] && _pg_listening 5432; then
        MODELSYNC_TEST_POSTGRES="postgresql://postgres@127.0.0.1:5432/postgres"
        echo "PostgreSQL: a server listens on 127.0.0.1:5432; using it" >&2
    else
        _pg_start_throwaway "$port" || return 1
    fi
    export MODELSYNC_TEST_POSTGRES
}

# Stop the throwaway cluster, if this script started one.
stop_postgres() {
    if [ -n "$PG_CI_PGCTL" ]; then
        _pg_as_postgres "$PG_CI_PGCTL" -D "$PG_CI_DATA" -m fast -w stop >/dev/null 2>&1 || true
        rm -rf "$(dirname "$PG_CI_DATA")"
        PG_CI_PGCTL=""
    fi
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    set -euo pipefail
    trap stop_postgres EXIT
    ensure_postgres "$@"
    echo "MODELSYNC_TEST_POSTGRES=$MODELSYNC_TEST_POSTGRES"
    if command -v psql >/dev/null 2>&1; then
        psql "$MODELSYNC_TEST_POSTGRES" -Atc "SELECT 'answers: ' || version()"
    fi
fi
