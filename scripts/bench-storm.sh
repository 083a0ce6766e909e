#!/usr/bin/env bash
# Boot storm figures: NODES simulated nodes (each from its own leased address) boot
# against one bootd server (the default SQLite registry) and then against SERVERS
# servers sharing a PostgreSQL registry and one data directory, in the same run, and
# the two are printed side by side: wall time, errors, and each server's peak memory
# (VmHWM) and CPU time over the storm. Everything runs in namespaces bootd-storm makes
# (198.18.0.0/15); nothing touches the host's interfaces.
#
# Usage: sudo scripts/bench-storm.sh
# Env: NODES (2000), SERVERS (3), CONCURRENCY (64 nodes booting at once),
#      TIME_LIMIT (600 s per storm), READ_SET_MIB (64: distinct MiB each node reads),
#      TRACE (empty: the recorded boot; `synthetic` or a file),
#      OUT (a directory for the two JSON reports and the logs; default: a temp dir),
#      BOOTD, STORM (binaries; default: the release builds, built when missing).
set -euo pipefail

NODES=${NODES:-2000}
SERVERS=${SERVERS:-3}
CONCURRENCY=${CONCURRENCY:-64}
TIME_LIMIT=${TIME_LIMIT:-600}
READ_SET_MIB=${READ_SET_MIB:-64}
TRACE=${TRACE:-}
root=$(cd "$(dirname "$0")/.." && pwd)
BOOTD=${BOOTD:-$root/build/release/bootd}
STORM=${STORM:-$root/build/release/bootd-storm}

if [ "$(id -u)" != 0 ]; then
    echo "bench-storm: needs root (network namespaces)" >&2
    exit 2
fi
if [ ! -x "$BOOTD" ] || [ ! -x "$STORM" ]; then
    (cd "$root" && cargo build --release -p bootd -p bootd-storm)
fi
OUT=${OUT:-$(mktemp -d /tmp/bench-storm.XXXXXX)}
mkdir -p "$OUT"

run() { # NAME SERVERS
    local name=$1 servers=$2 rc=0
    local args=(--nodes "$NODES" --servers "$servers" --concurrency "$CONCURRENCY"
        --time-limit "$TIME_LIMIT" --read-set-mib "$READ_SET_MIB" --json
        --bootd "$BOOTD" --bootd-log "$OUT/$name.log")
    [ -n "$TRACE" ] && args+=(--trace "$TRACE")
    echo "bench-storm: $NODES nodes against $servers server(s)..." >&2
    "$STORM" "${args[@]}" >"$OUT/$name.json" 2>"$OUT/$name.stderr" || rc=$?
    if [ ! -s "$OUT/$name.json" ]; then
        echo "bench-storm: no report from the $name storm (exit $rc):" >&2
        tail -5 "$OUT/$name.stderr" >&2
        exit 1
    fi
}

run one 1
run many "$SERVERS"

python3 - "$OUT/one.json" "$OUT/many.json" <<'EOF'
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
mib = 1 << 20
def col(r):
    s = r["servers"]
    rows = {
        "servers (registry)": f'{len(s)} ({r["registry"]})',
        "nodes completed / failed / unfinished": f'{r["completed"]} / {r["failed"]} / {r["unfinished"]}',
        "errors (retries included)": str(r["errors"]),
        "wall time": f'{r["wall_secs"]:.1f} s',
        "setup (registration, placement)": f'{r["setup_secs"]:.1f} s',
        "data read": f'{r["bytes_read"] / mib / 1024:.1f} GiB ({r["read_mib_per_sec"]:.0f} MiB/s)',
        "login redirects": str(r["redirects"]),
        "nodes per server (placed)": " / ".join(str(x["nodes_placed"]) for x in s),
        "sessions per server": " / ".join(str(x["counts"]["sessions"]) for x in s),
        "peak RSS per server": " / ".join(f'{x["peak_rss_bytes"] / mib:.0f}' for x in s) + " MiB",
        "CPU per server (storm)": " / ".join(f'{x["cpu_secs"]:.1f}' for x in s) + " s",
        "CPU all servers (storm)": f'{sum(x["cpu_secs"] for x in s):.1f} s',
        "storm client CPU": f'{r["storm_cpu_secs"]:.1f} s',
    }
    for p in r["phases"]:
        rows[f'{p["phase"]} p50 / p99'] = f'{p["p50_ms"]:.1f} / {p["p99_ms"]:.1f} ms'
    return rows
ca, cb = col(a), col(b)
w = max(len(k) for k in ca)
wa = max(len(v) for v in ca.values())
print(f'{a["nodes"]} nodes, {a["concurrency"]} at a time, trace: {a["trace"]["source"]}')
print(f'{"":<{w}}  {"one server":<{wa}}  {len(b["servers"])} servers')
for k in ca:
    print(f'{k:<{w}}  {ca[k]:<{wa}}  {cb.get(k, "")}')
for r in (a, b):
    for p in r["phases"] + r["commands"]:
        for msg, n in p["error_samples"].items():
            print(f'{len(r["servers"])} server(s), error in {p["phase"]}: {msg} (x{n})')
EOF
echo "bench-storm: reports and logs in $OUT" >&2
