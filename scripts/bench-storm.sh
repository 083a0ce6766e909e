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
#      BOOTD, STORM (binaries; default: the release builds, built when missing),
#      KILL (K: in the several-server storm, SIGKILL server sK once KILL_AFTER nodes
#            have logged in; each server then has a floating address moved by real
#            keepalived, and the kill's figures are printed; empty: no kill),
#      KILL_AFTER (logins before the kill; default: a third of NODES),
#      ONE (1: also the one-server storm; 0: only the several-server one).
# Example: sudo NODES=1000 SERVERS=3 KILL=2 ONE=0 scripts/bench-storm.sh
set -euo pipefail

NODES=${NODES:-2000}
SERVERS=${SERVERS:-3}
CONCURRENCY=${CONCURRENCY:-64}
TIME_LIMIT=${TIME_LIMIT:-600}
READ_SET_MIB=${READ_SET_MIB:-64}
TRACE=${TRACE:-}
KILL=${KILL:-}
KILL_AFTER=${KILL_AFTER:-}
ONE=${ONE:-1}
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
    if [ -n "$KILL" ] && [ "$servers" -gt 1 ]; then
        args+=(--kill-server "$KILL")
        [ -n "$KILL_AFTER" ] && args+=(--kill-after-logins "$KILL_AFTER")
    fi
    echo "bench-storm: $NODES nodes against $servers server(s)..." >&2
    "$STORM" "${args[@]}" >"$OUT/$name.json" 2>"$OUT/$name.stderr" || rc=$?
    if [ ! -s "$OUT/$name.json" ]; then
        echo "bench-storm: no report from the $name storm (exit $rc):" >&2
        tail -5 "$OUT/$name.stderr" >&2
        exit 1
    fi
}

reports=()
if [ "$ONE" = 1 ]; then
    run one 1
    reports+=("$OUT/one.json")
fi
run many "$SERVERS"
reports+=("$OUT/many.json")

python3 - "${reports[@]}" <<'EOF'
import json, sys
rs = [json.load(open(p)) for p in sys.argv[1:]]
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
    t = r.get("takeover")
    if t:
        killed = next(x for x in s if x["killed"])
        rows["killed (after logins, at)"] = f'{t["killed_server"]} ({t["logins_before_kill"]}, {t["kill_at_secs"]:.1f} s)'
        rows["its address on (after)"] = f'{t["address_moved_to"]} ({(t["address_moved_after_ms"] or 0) / 1000:.1f} s)'
        rows["its placed nodes / sessions dropped"] = f'{killed["nodes_placed"]} / {t["sessions_dropped"]}'
        rows["resumed: kill to I/O p50 / max"] = f'{t["resumed"]}: {t["resume_p50_ms"] / 1000:.1f} / {t["resume_max_ms"] / 1000:.1f} s'
        rows["resumed per server"] = " / ".join(str(x["counts"]["resumed"]) for x in s)
        rows["retries (not errors) / boots over"] = f'{t["retries"]} {t["retries_by_phase"]} / {t["boot_restarts"]}'
        rows["re-logins redirected"] = str(t["redirected_relogins"])
    return rows
cols = [col(r) for r in rs]
keys = list(dict.fromkeys(k for c in cols for k in c))
w = max(len(k) for k in keys)
wa = max(len(v) for c in cols for v in c.values())
a = rs[0]
print(f'{a["nodes"]} nodes, {a["concurrency"]} at a time, trace: {a["trace"]["source"]}')
print(f'{"":<{w}}  ' + "  ".join(f'{(str(len(r["servers"])) + " server(s)"):<{wa}}' for r in rs))
for k in keys:
    print(f'{k:<{w}}  ' + "  ".join(f'{c.get(k, ""):<{wa}}' for c in cols))
for r in rs:
    for p in r["phases"] + r["commands"]:
        for msg, n in p["error_samples"].items():
            print(f'{len(r["servers"])} server(s), error in {p["phase"]}: {msg} (x{n})')
EOF
echo "bench-storm: reports and logs in $OUT" >&2
