#!/usr/bin/env bash
# The registry's cost on SQLite and on PostgreSQL, same commands, same machine: one
# `node add` (with its overlay), `node list --json` over N+1 nodes (what serve's fleet view
# reads on every registry change), and `image list` (a command's fixed cost: start,
# connect, check the schema, one query). PostgreSQL runs from a temporary directory as the
# postgres user on 127.0.0.1 only, and is removed at the end.
# Usage: sudo scripts/bench-registry.sh [N]      (N: nodes inserted, default 2000)
# Env: BOOTD (a bootd binary; default: the release build), PG_PORT (55432).
set -euo pipefail

N=${1:-2000}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BOOTD=${BOOTD:-$ROOT/build/release/bootd}
PORT=${PG_PORT:-55432}
PG=/usr/lib/postgresql/15/bin

log() { echo "bench-registry: $*" >&2; }
die() { log "$*"; exit 1; }
[[ $(id -u) -eq 0 ]] || die "run as root (PostgreSQL runs as the postgres user)"
[[ -x $BOOTD ]] || die "no bootd at $BOOTD (cargo build --release -p bootd)"
[[ -x $PG/initdb ]] || die "PostgreSQL 15 missing (scripts/install-test-deps.sh)"
command -v sqlite3 >/dev/null || die "sqlite3 missing (apt-get install sqlite3)"
command -v psql >/dev/null || die "psql missing (postgresql-client-15)"

W=$(mktemp -d /tmp/bench-registry.XXXXXX)
chown postgres: "$W"
cleanup() {
    runuser -u postgres -- "$PG/pg_ctl" -D "$W/pg" -m fast stop >/dev/null 2>&1 || true
    rm -rf "$W"
}
trap cleanup EXIT
now() { date +%s.%N; }
t0=$(now)
runuser -u postgres -- "$PG/initdb" -D "$W/pg" -U bootd -A trust -E UTF8 --locale=C.UTF-8 \
    --no-sync >/dev/null
t1=$(now)
runuser -u postgres -- "$PG/pg_ctl" -D "$W/pg" -w -l "$W/log" \
    -o "-p $PORT -k $W -c listen_addresses=127.0.0.1" start >/dev/null
t2=$(now)
printf 'postgres: initdb %.2f s, start %.2f s\n' "$(bc <<<"$t1 - $t0")" "$(bc <<<"$t2 - $t1")"
psql -q -h 127.0.0.1 -p "$PORT" -U bootd postgres -c "CREATE DATABASE bench"

head -c 1048576 /dev/zero >"$W/g.raw"
truncate -s 64M "$W/g.raw"
SQL="INSERT INTO nodes (name, mac, image_id, ip, target_iqn, initiator_iqn, chap_user,
     chap_secret, overlay_path, state, revision, created, overlay_generation) VALUES "
rows=$(for i in $(seq 1 "$N"); do
    h=$(printf '%04x' "$i")
    printf "('n%s','02:00:00:00:%s:%s',1,NULL,'iqn.t:n%s','iqn.i:n%s','n%s','0123456789abcdef','overlays/n%s.qcow2','ready',1,1,1)," \
        "$i" "${h:0:2}" "${h:2:2}" "$i" "$i" "$i" "$i"
done)
rows="${rows%,};"

for reg in sqlite postgres; do
    export BOOTD_DATA_DIR=$W/data-$reg
    if [[ $reg == postgres ]]; then
        export BOOTD_REGISTRY=postgres://bootd@127.0.0.1:$PORT/bench
    else
        unset BOOTD_REGISTRY
    fi
    "$BOOTD" image import deb "$W/g.raw" >/dev/null
    s=$(now)
    "$BOOTD" node add 02:00:00:00:ff:01 --image deb --name first >/dev/null
    add=$(bc <<<"$(now) - $s")
    if [[ $reg == postgres ]]; then
        psql -q -h 127.0.0.1 -p "$PORT" -U bootd bench <<<"$SQL $rows"
    else
        sqlite3 "$BOOTD_DATA_DIR/bootd.db" <<<"$SQL $rows"
    fi
    best=99
    for _ in 1 2 3 4 5; do
        s=$(now)
        "$BOOTD" node list --json >/dev/null
        t=$(bc <<<"$(now) - $s")
        (($(bc <<<"$t < $best"))) && best=$t
    done
    s=$(now)
    for _ in $(seq 1 20); do "$BOOTD" image list >/dev/null; done
    small=$(bc -l <<<"($(now) - $s) / 20")
    printf '%-8s node add %.3f s; node list --json (%d nodes, best of 5) %.3f s; image list %.3f s\n' \
        "$reg" "$add" "$((N + 1))" "$best" "$small"
done
