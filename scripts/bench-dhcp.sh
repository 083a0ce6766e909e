#!/usr/bin/env bash
# DHCP leases per second, bootd (--dhcp full) against dnsmasq (--no-ping), one after the
# other in the same server namespace, on a bridge with 192.0.2.1/24; the load runs in a
# second namespace (192.0.2.2). Every round starts the server with an empty lease table.
#
# Load: N distinct clients (locally administered MACs, 02:...), full DORA each, at most K
# exchanges in flight (a closed loop: a client starts when another one has its ACK; a lost
# message is resent after 1 s, 3 times at most; a NAKed client starts over). perfdhcp cannot
# hold a number of exchanges in flight (it sends at a fixed rate, -r, or as fast as it can),
# so the closed loop is a small Python client in this script, run as L processes (K/L in
# flight each, each from its own relay address 192.0.2.2, .3, ...) so that one Python
# process does not set the pace. The figure is leases / (first DISCOVER .. last ACK).
# perfdhcp (kea) then runs once per round at a fixed offered rate as a cross-check, with its
# own figures (completed 4-way exchanges per second, drops).
#
# Addresses: 5000 clients do not fit in a /24, and recycling ~240 addresses by RELEASE would
# measure something else (and keep the lease table small). So both loads act as a relay
# agent (giaddr 192.0.2.x, replies come back to 192.0.2.x:67) and the pool is 198.18.0.10-
# 198.18.39.255 (RFC 2544 benchmarking range, 10230 addresses, the same for both servers).
# The pool has room for twice the clients, as a real one would: dnsmasq does not hold what
# it offers, so near a full pool concurrent clients are offered the same few free addresses
# and most of them get a NAK (that happens at any fill level too; the NAKs are reported).
# Those addresses only travel inside DHCP payloads: no packet is ever sent to or from them;
# all traffic stays on 192.0.2.0/24 inside the namespaces made here. Requests carry option
# 118 (RFC 3011 subnet selection) naming 198.18.0.0, which is how dnsmasq picks that range
# for a relayed request; bootd hands out its --pool whatever the giaddr.
#
# Both servers make every lease durable (fsync) in the same directory before the ACK: dnsmasq
# rewrites its whole lease file for each one, bootd per dhcp/lease.rs. Lease time: 1 hour.
#
# Usage: sudo scripts/bench-dhcp.sh
# Env: BENCH_CLIENTS (5000), BENCH_INFLIGHT (64), BENCH_LOADERS (4), BENCH_ROUNDS (3),
#      BENCH_PERFDHCP_RATE (2000 exchanges/s offered; 0 skips perfdhcp),
#      BENCH_DIR (/tmp: where lease files go; /dev/shm takes the disk out of the figures),
#      BENCH_PERF (a file: perf profile of bootd during its first closed-loop round),
#      BENCH_MACS (spread: distinct MACs that look unrelated; sequential: 02:00:00:00:00:00 up),
#      BOOTD (a bootd binary; default: release build, built when missing).
set -euo pipefail

N=${BENCH_CLIENTS:-5000}
INFLIGHT=${BENCH_INFLIGHT:-64}
LOADERS=${BENCH_LOADERS:-4}
ROUNDS=${BENCH_ROUNDS:-3}
PD_RATE=${BENCH_PERFDHCP_RATE:-2000}
PERF_OUT=${BENCH_PERF:-}
MACS=${BENCH_MACS:-spread}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
POOL_FIRST=198.18.0.10
POOL_LAST=198.18.39.255
POOL_NET=198.18.0.0
POOL_MASK=255.254.0.0
SERVER_IP=192.0.2.1
CLIENT_IP=192.0.2.2
# Seconds before a lost message is resent, and resends per message.
RESEND_AFTER=1
RESENDS=3

log() { echo "bench-dhcp: $*" >&2; }
die() { log "$*"; exit 1; }

[[ $(id -u) -eq 0 ]] || die "must run as root (network namespaces, port 67)"
for tool in ip:iproute2 python3:python3 timeout:coreutils /usr/sbin/dnsmasq:dnsmasq-base; do
    command -v "${tool%%:*}" >/dev/null || die "missing ${tool%%:*}: apt-get install ${tool#*:}"
done
if [[ $PD_RATE != 0 ]] && ! command -v perfdhcp >/dev/null; then
    die "missing perfdhcp: apt-get install kea-admin (or BENCH_PERFDHCP_RATE=0)"
fi
((POOL_SIZE = 39 * 256 + 246))
((LOADERS >= 1 && LOADERS <= 64 && INFLIGHT % LOADERS == 0)) ||
    die "BENCH_LOADERS=$LOADERS must be 1..64 and divide BENCH_INFLIGHT=$INFLIGHT"
((N <= POOL_SIZE)) || die "BENCH_CLIENTS=$N does not fit the pool ($POOL_SIZE addresses)"
[[ -z $PERF_OUT ]] || command -v perf >/dev/null || die "BENCH_PERF needs perf: apt-get install linux-perf"

WORK=$(mktemp -d "${BENCH_DIR:-/tmp}/bench-dhcp.XXXXXX")
NS=bench-dhcp-$$-srv
CNS=bench-dhcp-$$-cli
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    ip netns del "$NS" 2>/dev/null || true
    ip netns del "$CNS" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

if [[ -z "${BOOTD:-}" ]]; then
    BOOTD=$ROOT/build/release/bootd
    if [[ ! -x $BOOTD ]]; then
        log "building bootd (release)"
        (cd "$ROOT" && cargo build --release -q -p bootd) >&2 || die "cargo build --release -p bootd failed"
    fi
fi
# Every round runs this copy, even if the build is replaced meanwhile.
cp "$BOOTD" "$WORK/bootd-bin"
BOOTD=$WORK/bootd-bin
# The lease time dnsmasq is given (its default is also 1 hour); older builds had it fixed.
LEASE_ARGS=()
if grep -q -- --lease-secs <<<"$("$BOOTD" serve --help)"; then LEASE_ARGS=(--lease-secs 3600); fi
# Newer builds answer only the relay agents they are told about: every load
# address (192.0.2.2 and up) is one.
RELAY_ARGS=()
if grep -q -- --relay <<<"$("$BOOTD" serve --help)"; then
    for k in $(seq 0 $((LOADERS - 1))); do RELAY_ARGS+=(--relay "192.0.2.$((2 + k))"); done
fi

# Server side: bridge br0 = 192.0.2.1/24 with veth-s on it; the client's veth-c = 192.0.2.2.
ip netns add "$NS"
ip netns add "$CNS"
ip -n "$NS" link set lo up
ip -n "$CNS" link set lo up
ip -n "$NS" link add br0 type bridge
ip -n "$NS" addr add "$SERVER_IP/24" dev br0
ip -n "$NS" link add veth-s type veth peer name veth-c netns "$CNS"
ip -n "$NS" link set veth-s master br0
ip -n "$NS" link set br0 up
ip -n "$NS" link set veth-s up
ip -n "$CNS" addr add "$CLIENT_IP/24" dev veth-c
# One relay address per load process after the first: 192.0.2.3 and up.
for k in $(seq 1 $((LOADERS - 1))); do ip -n "$CNS" addr add "192.0.2.$((2 + k))/24" dev veth-c; done
ip -n "$CNS" link set veth-c up

# The closed-loop client: clients FIRST..FIRST+COUNT-1 from one relay address; writes the
# addresses it was given to ADDRS and prints one line of key=value results.
cat >"$WORK/dhcpload.py" <<'EOF'
import os, select, socket, struct, sys, time

server, giaddr = sys.argv[1], sys.argv[2]
first, n, inflight = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
timeout, retries = float(sys.argv[6]), int(sys.argv[7])
spread = sys.argv[8] == "spread"
subnet = socket.inet_aton(sys.argv[9])
addrs_file, start_at = sys.argv[10], float(sys.argv[11])

# A NAKed client starts over from DISCOVER (RFC 2131). dnsmasq does not hold what it
# offered, so concurrent DISCOVERs may be offered one address and all but one lose.
NAK_RESTARTS = 50
COOKIE = b"\x63\x82\x53\x63"
PRL = bytes([55, 4, 1, 3, 6, 51])
SEL = bytes([118, 4]) + subnet  # RFC 3011 subnet selection: the pool's subnet
GIADDR = socket.inet_aton(giaddr)


def mac_of(client):
    # spread: client * an odd constant mod 2^40 is one-to-one, so the MACs stay distinct
    # but look unrelated (hash-based allocators, such as dnsmasq's, meet no pattern);
    # sequential: 02:00:00:00:00:00 and up, as perfdhcp makes them.
    low = (client * 0x9E3779B97F) & 0xFFFFFFFFFF if spread else client
    return (0x02 << 40) | low


def packet(xid, mac, kind, extra=b""):
    # hops 1 and giaddr set: a relayed request, answered to giaddr:67.
    hdr = struct.pack("!BBBBIHH4s4s4s4s16s", 1, 1, 6, 1, xid, 0, 0, bytes(4), bytes(4),
                      bytes(4), GIADDR, mac.to_bytes(6, "big") + bytes(10))
    return hdr + bytes(192) + COOKIE + bytes([53, 1, kind]) + extra + PRL + SEL + b"\xff"


def options(pkt):
    """(message type, server id) of a reply; None where missing or malformed."""
    if len(pkt) < 240 or pkt[236:240] != COOKIE:
        return None, None
    i, kind, sid = 240, None, None
    while i + 1 < len(pkt) and pkt[i] != 255:
        if pkt[i] == 0:
            i += 1
            continue
        code, ln = pkt[i], pkt[i + 1]
        val = pkt[i + 2:i + 2 + ln]
        if code == 53 and ln == 1 and len(val) == 1:
            kind = val[0]
        elif code == 54 and ln == 4 and len(val) == 4:
            sid = val
        i += 2 + ln
    return kind, sid


sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
sock.bind((giaddr, 67))
sock.setblocking(False)
dest = (server, 67)
poller = select.poll()
poller.register(sock, select.POLLIN)

# xid -> [client, phase (1 DISCOVER, 3 REQUEST), deadline, resends, message, naks]
pending = {}
next_client, end = first, first + n
leases = resent = failed = naks = 0
addrs = []
xid_base = int.from_bytes(os.urandom(4), "big")
# All clients start together (wall clock); times are on the shared monotonic clock.
time.sleep(max(0.0, start_at - time.time()))
t0, cpu0 = time.monotonic(), os.times()
while next_client < end or pending:
    now = time.monotonic()
    while next_client < end and len(pending) < inflight:
        xid = (xid_base + next_client) & 0xFFFFFFFF
        msg = packet(xid, mac_of(next_client), 1)
        sock.sendto(msg, dest)
        pending[xid] = [next_client, 1, now + timeout, 0, msg, 0]
        next_client += 1
    wait = min(p[2] for p in pending.values()) - now if pending else 0
    if poller.poll(max(0, int(wait * 1000) + 1)):
        while True:
            try:
                pkt = sock.recv(2048)
            except BlockingIOError:
                break
            if len(pkt) < 240 or pkt[0] != 2:
                continue
            p = pending.get(struct.unpack_from("!I", pkt, 4)[0])
            kind, sid = options(pkt)
            if p is None or kind is None:
                continue  # a late answer to a resent message, or not ours
            xid, yiaddr = struct.unpack_from("!I", pkt, 4)[0], pkt[16:20]
            if p[1] == 1 and kind == 2 and sid is not None:
                msg = packet(xid, mac_of(p[0]), 3,
                             bytes([50, 4]) + yiaddr + bytes([54, 4]) + sid)
                sock.sendto(msg, dest)
                p[1], p[2], p[3], p[4] = 3, time.monotonic() + timeout, 0, msg
            elif p[1] == 3 and kind == 5:
                leases += 1
                addrs.append(socket.inet_ntoa(yiaddr))
                del pending[xid]
            elif p[1] == 3 and kind == 6:
                naks += 1
                p[5] += 1
                if p[5] > NAK_RESTARTS:
                    failed += 1
                    del pending[xid]
                    continue
                msg = packet(xid, mac_of(p[0]), 1)
                sock.sendto(msg, dest)
                p[1], p[2], p[3], p[4] = 1, time.monotonic() + timeout, 0, msg
    now = time.monotonic()
    for xid in [x for x, p in pending.items() if p[2] <= now]:
        p = pending[xid]
        if p[3] >= retries:
            failed += 1
            del pending[xid]
            continue
        sock.sendto(p[4], dest)
        p[2], p[3] = now + timeout, p[3] + 1
        resent += 1
t1, cpu1 = time.monotonic(), os.times()
cpu = cpu1.user - cpu0.user + cpu1.system - cpu0.system
with open(addrs_file, "w") as f:
    f.write("".join(a + "\n" for a in addrs))
print(f"leases={leases} t0={t0:.6f} t1={t1:.6f} resent={resent} naks={naks} failed={failed} "
      f"cpu={cpu:.3f}")
EOF

# bootd wants a data dir with something in it; unknown MACs get addresses in full mode.
head -c $((1 << 20)) /dev/zero >"$WORK/golden.raw"
"$BOOTD" --data-dir "$WORK/bootd.clean" image import golden "$WORK/golden.raw" >/dev/null 2>"$WORK/import.err" ||
    die "bootd image import failed: $(cat "$WORK/import.err")"
rm -f "$WORK/golden.raw"

# start_server NAME: runs it in $NS with an empty lease table; sets SERVER_PID once it answers.
start_server() {
    local out=$WORK/$1.out ready
    case $1 in
    bootd)
        # A fresh copy of the data dir: no leases, whatever bootd names its files.
        rm -rf "$WORK/bootd"
        cp -a "$WORK/bootd.clean" "$WORK/bootd"
        BOOTD_LOG=warn ip netns exec "$NS" "$BOOTD" --data-dir "$WORK/bootd" serve --dhcp full \
            --interface br0 --listen-ip "$SERVER_IP" --pool "$POOL_FIRST-$POOL_LAST" \
            --http-port 0 --tftp-port 0 --iscsi-port 0 "${LEASE_ARGS[@]}" "${RELAY_ARGS[@]}" \
            >"$out" 2>&1 &
        ready='^tftp '
        ;;
    dnsmasq)
        rm -f "$WORK/dnsmasq.leases"
        # --quiet-dhcp: bootd logs warnings only; --dhcp-lease-max: the default is 1000.
        ip netns exec "$NS" /usr/sbin/dnsmasq --no-daemon --conf-file=/dev/null --pid-file="$WORK/dnsmasq.pid" \
            --port=0 --no-ping --quiet-dhcp --dhcp-authoritative --interface=br0 \
            --bind-interfaces --dhcp-range="$POOL_FIRST,$POOL_LAST,$POOL_MASK,1h" \
            --dhcp-lease-max=$((POOL_SIZE + 1)) --dhcp-leasefile="$WORK/dnsmasq.leases" >"$out" 2>&1 &
        ready='sockets bound exclusively'
        ;;
    esac
    SERVER_PID=$!
    PIDS+=("$SERVER_PID")
    for _ in $(seq 100); do
        grep -q "$ready" "$out" 2>/dev/null && return 0
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.1
    done
    die "$1 did not start: $(cat "$out")"
}
stop_server() {
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
}
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
median() { sort -g | awk '{a[NR]=$1} END {print (NR ? a[int((NR+1)/2)] : 0)}'; }

# closed_round NAME ROUND: appends "rate resent naks failed dups" to $WORK/NAME.closed.
closed_round() {
    local name=$1 r=$2 c0 c1 ppid="" k first count start_at res line
    local cpids=() outs=()
    start_server "$name"
    if [[ -n $PERF_OUT && $name == bootd && $r == 1 ]]; then
        perf record -F 10000 -g -o "$WORK/perf.data" -p "$SERVER_PID" >/dev/null 2>&1 &
        ppid=$!
        sleep 1 # attached before the load starts
    fi
    c0=$(cpu_ticks "$SERVER_PID")
    start_at=$(awk -v t="$(date +%s.%N)" 'BEGIN { printf "%.3f", t + 1 }')
    rm -f "$WORK"/addrs.*
    for k in $(seq 0 $((LOADERS - 1))); do
        first=$((N * k / LOADERS))
        count=$((N * (k + 1) / LOADERS - first))
        # Bounded twice: RESENDS per message inside, and a wall-clock limit outside.
        ip netns exec "$CNS" timeout -s KILL $((N / 20 + 120)) python3 "$WORK/dhcpload.py" \
            "$SERVER_IP" "192.0.2.$((2 + k))" "$first" "$count" $((INFLIGHT / LOADERS)) \
            "$RESEND_AFTER" "$RESENDS" "$MACS" "$POOL_NET" "$WORK/addrs.$k" "$start_at" \
            >"$WORK/load.$k" &
        cpids+=($!)
        PIDS+=($!)
    done
    for k in "${!cpids[@]}"; do
        wait "${cpids[$k]}" || die "$name round $r: load client $k failed or timed out"
        outs+=("$(cat "$WORK/load.$k")")
    done
    c1=$(cpu_ticks "$SERVER_PID")
    if [[ -n $ppid ]]; then
        kill -INT "$ppid"
        wait "$ppid" || true
        perf report -i "$WORK/perf.data" --stdio --no-children --percent-limit 1 >"$PERF_OUT" 2>/dev/null || true
        log "perf profile of bootd written to $PERF_OUT"
    fi
    stop_server
    # One line: leases seconds rate resent naks failed client-cpu% server-cpu%.
    res=$(printf '%s\n' "${outs[@]}" | tr ' ' '\n' | awk -F= -v st=$((c1 - c0)) -v hz="$(getconf CLK_TCK)" '
        $1 == "t0" && (t0 == "" || $2 < t0) { t0 = $2 }
        $1 == "t1" && (t1 == "" || $2 > t1) { t1 = $2 }
        $1 == "leases" { l += $2 } $1 == "resent" { rs += $2 } $1 == "naks" { nk += $2 }
        $1 == "failed" { f += $2 } $1 == "cpu" { c += $2 }
        END { s = t1 - t0; printf "%d %.3f %.1f %d %d %d %.0f %.0f", l, s, l / s, rs, nk, f, 100 * c / s, 100 * st / hz / s }')
    read -r -a line <<<"$res"
    # Every address given once: a duplicate across clients is a server bug.
    local dups
    dups=$(cat "$WORK"/addrs.* | sort | uniq -d | wc -l)
    log "$name round $r: ${line[0]} leases in ${line[1]} s = ${line[2]}/s, resent ${line[3]}," \
        "naks ${line[4]}, failed ${line[5]}, addresses given twice $dups;" \
        "CPU: load clients ${line[6]}%, server ${line[7]}%"
    echo "${line[2]} ${line[3]} ${line[4]} ${line[5]} $dups" >>"$WORK/$name.closed"
}

# perfdhcp_round NAME ROUND: appends "completed/s drops" to $WORK/NAME.perfdhcp.
perfdhcp_round() {
    local name=$1 r=$2 out rate drops
    start_server "$name"
    # -R N: N clients, taken in turn; -n N: N exchanges; -u: flag an address given twice.
    out=$(ip netns exec "$CNS" timeout -s INT $((N / PD_RATE + 60)) perfdhcp -4 -l "$CLIENT_IP" \
        -r "$PD_RATE" -n "$N" -R "$N" -u -s 1 -b mac=02:00:00:00:00:00 \
        -o "118,$(printf '%02x' ${POOL_NET//./ })" "$SERVER_IP" 2>&1) || true
    stop_server
    echo "$out" >>"$WORK/perfdhcp.log"
    rate=$(grep -oE 'Rate: [0-9.]+' <<<"$out" | grep -oE '[0-9.]+$' || echo 0)
    drops=$(grep -E '^drops: ' <<<"$out" | awk '{s += $2} END {print s + 0}')
    log "$name round $r perfdhcp -r $PD_RATE: $rate completed 4-way/s, $drops drops"
    echo "$rate $drops" >>"$WORK/$name.perfdhcp"
}

log "$N distinct clients, $INFLIGHT in flight, $ROUNDS rounds per server; lease files in $WORK"
for r in $(seq "$ROUNDS"); do
    for name in bootd dnsmasq; do
        closed_round "$name" "$r"
        [[ $PD_RATE == 0 ]] || perfdhcp_round "$name" "$r"
    done
done

summary() { # NAME: median rate, then totals of resent naks failed dups over the rounds
    awk '{print $1}' "$WORK/$1.closed" | median
    awk '{r += $2; n += $3; f += $4; d += $5} END {print r, n, f, d}' "$WORK/$1.closed"
}
{ read -r B_RATE; read -r B_RES B_NAK B_FAIL B_DUP; } < <(summary bootd)
{ read -r D_RATE; read -r D_RES D_NAK D_FAIL D_DUP; } < <(summary dnsmasq)
RATIO=$(awk -v b="$B_RATE" -v d="$D_RATE" 'BEGIN { if (d > 0) printf "%.2f", b / d; else print "-" }')

FS=$(df --output=fstype "$WORK" | tail -1)
echo "DHCP, $N distinct clients, $INFLIGHT in flight, full DORA, lease files on $FS;" \
    "median of $ROUNDS rounds (totals over rounds)"
printf '%-8s %12s %8s %6s %7s %10s\n' server "leases/s" resent naks failed dup-addrs
printf '%-8s %12s %8s %6s %7s %10s\n' bootd "$B_RATE" "$B_RES" "$B_NAK" "$B_FAIL" "$B_DUP"
printf '%-8s %12s %8s %6s %7s %10s\n' dnsmasq "$D_RATE" "$D_RES" "$D_NAK" "$D_FAIL" "$D_DUP"
echo "ratio    ${RATIO}x (bootd / dnsmasq leases per second)"
echo "bootd_leases_per_s=$B_RATE"
echo "dnsmasq_leases_per_s=$D_RATE"
echo "ratio=$RATIO"
echo "bootd_failed=$B_FAIL dnsmasq_failed=$D_FAIL bootd_naks=$B_NAK dnsmasq_naks=$D_NAK"
if [[ $PD_RATE != 0 ]]; then
    BP=$(awk '{print $1}' "$WORK/bootd.perfdhcp" | median)
    DP=$(awk '{print $1}' "$WORK/dnsmasq.perfdhcp" | median)
    BPD=$(awk '{print $2}' "$WORK/bootd.perfdhcp" | median)
    DPD=$(awk '{print $2}' "$WORK/dnsmasq.perfdhcp" | median)
    echo "perfdhcp, $PD_RATE exchanges/s offered, $N clients: completed 4-way/s (drops), median of $ROUNDS"
    echo "bootd $BP ($BPD drops), dnsmasq $DP ($DPD drops)"
    echo "bootd_perfdhcp_4way_per_s=$BP bootd_perfdhcp_drops=$BPD"
    echo "dnsmasq_perfdhcp_4way_per_s=$DP dnsmasq_perfdhcp_drops=$DPD"
fi
# bootd must bind every client once: anything else is a bootd failure, not a slow figure.
((B_FAIL == 0 && B_DUP == 0)) || die "bootd left $B_FAIL clients without a lease, gave $B_DUP addresses twice"
