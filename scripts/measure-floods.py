#!/usr/bin/env python3
"""What one hostile address on loopback does to `bootd serve` (issue 11):
TFTP amplification of an option-less request nobody acknowledges, an HTTP
answer's delay while 300 idle sockets are open from another address, and
whether TFTP still answers after 600 unacknowledged timeout=255 requests.
Loopback only (127.0.0.1 serves, 127.0.0.2 plays the attacker); ~35 s.

    scripts/measure-floods.py build/release/bootd
"""
import socket, subprocess, sys, time, os, tempfile, shutil
binary = sys.argv[1]
work = tempfile.mkdtemp()
tftp = os.path.join(work, "tftp"); os.mkdir(tftp)
open(os.path.join(tftp, "undionly.kpxe"), "wb").write(os.urandom(100_000))
p = subprocess.Popen([binary, "--data-dir", os.path.join(work, "d"), "serve", "--dhcp", "off",
    "--listen-ip", "127.0.0.1", "--iscsi-port", "0", "--http-port", "0", "--tftp-port", "0",
    "--tftp-dir", tftp], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
ports = {}
for _ in range(3):
    k, a = p.stdout.readline().split()
    ports[k] = int(a.rsplit(":", 1)[1])
try:
    # 1. TFTP amplification: an option-less RRQ (22 bytes) from a socket that never ACKs.
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.2", 0)); s.settimeout(0.5)
    rrq = b"\x00\x01undionly.kpxe\x00octet\x00"
    s.sendto(rrq, ("127.0.0.1", ports["tftp"]))
    got = n = 0; end = time.time() + 30
    while time.time() < end:
        try:
            d = s.recv(4096); got += len(d); n += 1
        except socket.timeout:
            pass
    print(f"tftp: {len(rrq)}-byte RRQ, never acknowledged: {n} datagrams, {got} bytes in 30 s ({got/len(rrq):.0f}x)")
    # 2. HTTP: 300 idle sockets from 127.0.0.2, then GET /boot.ipxe from 127.0.0.1.
    idle = []
    for _ in range(300):
        c = socket.socket(); c.bind(("127.0.0.2", 0)); c.connect(("127.0.0.1", ports["http"])); idle.append(c)
    time.sleep(0.3)
    t0 = time.time()
    c = socket.create_connection(("127.0.0.1", ports["http"])); c.settimeout(15)
    c.sendall(b"GET /boot.ipxe HTTP/1.1\r\n\r\n")
    try:
        r = c.recv(100)
        print(f"http: with 300 idle sockets from another address, GET /boot.ipxe answered {r[:12]!r} in {time.time()-t0:.2f} s")
    except socket.timeout:
        print("http: no answer within 15 s")
    for c in idle: c.close()
    # 3. TFTP slots: 600 RRQs with timeout=255 from 127.0.0.2, then a fetch from 127.0.0.1.
    f = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); f.bind(("127.0.0.2", 0))
    for i in range(600):
        f.sendto(b"\x00\x01undionly.kpxe\x00octet\x00timeout\x00255\x00", ("127.0.0.1", ports["tftp"]))
        if i % 50 == 49: time.sleep(0.05)  # paced: the server's receive buffer holds ~250
    time.sleep(1)
    q = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); q.bind(("127.0.0.1", 0)); q.settimeout(5)
    q.sendto(rrq, ("127.0.0.1", ports["tftp"]))
    try:
        d = q.recv(4096)
        kind = {3: "DATA", 5: "ERROR " + d[4:-1].decode(errors="replace")}.get(d[1], str(d[1]))
        print(f"tftp: after 600 timeout=255 RRQs from another address, a fresh RRQ got {kind}")
    except socket.timeout:
        print("tftp: no answer")
finally:
    p.terminate(); p.wait(); shutil.rmtree(work)
