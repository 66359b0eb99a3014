"""One paced publisher process: raw MQTT 3.1.1 over a TCP socket with Nagle off.

paho costs ~20-40 µs per publish in Python; building the PUBLISH packet by hand costs ~2 µs,
so a few of these processes never limit a run on two cores (each reports its CPU use
so the harness can say when one did). The protocol version of the *publisher* does not
change what subscribers receive.

Pacing: message ``i`` is due at ``t0 + i / rate``; each wake-up sends everything that is
due in one ``sendall``. Wake-ups are at least ``tick_ms`` apart (default 1 ms): at a few
thousand msg/s a wake-up per message cost ~80 µs of CPU each (a quarter of a core per
publisher at 3,000 msg/s), so the load generator, not the system under test, took the
cores; with the tick, messages leave in groups of what fell due in that millisecond, as
from a network server under load, each stamped with the time it actually left. Below
1,000 msg/s per publisher every message still leaves on its own, on time.
rate 0 = as fast as the socket takes them (the burst scenario).
The result is one JSON line on stdout.

Usage (normally started by bench.run): python -m bench.load.publisher '<json spec>'
"""

from __future__ import annotations

import json
import resource
import select
import socket
import struct
import sys
import time

from bench.payload import Uplinks

MAX_BATCH = 256  # messages per sendall when behind or unpaced


def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n % 128
        n //= 128
        out.append(byte | 0x80 if n else byte)
        if not n:
            return bytes(out)


def _utf8(s: bytes) -> bytes:
    return struct.pack("!H", len(s)) + s


def connect(host: str, port: int, client_id: str) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    # CONNECT v3.1.1, clean session, keepalive 0 (runs are short; no PINGREQ to handle).
    var = _utf8(b"MQTT") + bytes([4, 0x02]) + struct.pack("!H", 0)
    body = var + _utf8(client_id.encode())
    sock.sendall(b"\x10" + _remaining_length(len(body)) + body)
    connack = b""
    while len(connack) < 4:
        chunk = sock.recv(4 - len(connack))
        if not chunk:
            raise ConnectionError("broker closed the connection before CONNACK")
        connack += chunk
    if connack[0] != 0x20 or connack[3] != 0:
        raise ConnectionError(f"CONNACK refused: {connack!r}")
    return sock


def run(spec: dict[str, object]) -> dict[str, object]:
    host, port = str(spec["host"]), int(spec["port"])  # type: ignore[arg-type]
    pub = int(spec["pub"])  # type: ignore[arg-type]
    run_id = str(spec["run"]).encode()
    rate = float(spec["rate"])  # type: ignore[arg-type]
    count = int(spec["count"])  # type: ignore[arg-type]
    qos = int(spec.get("qos", 0))  # type: ignore[arg-type]
    devices = [int(d) for d in spec["devices"]]  # type: ignore[union-attr]
    start_at = int(spec.get("start_at_ns", 0))  # type: ignore[arg-type]
    max_inflight = int(spec.get("max_inflight", 1000))  # type: ignore[arg-type]
    tick_ns = int(float(spec.get("tick_ms", 1.0)) * 1e6)  # type: ignore[arg-type]

    uplinks = Uplinks(devices)
    headers = []
    for t in uplinks.topics:
        headers.append(_utf8(t))
    ndev = len(devices)
    sock = connect(host, port, f"bench-pub-{run_id.decode()}-{pub}")
    sock.setblocking(True)

    now = time.monotonic_ns()
    if start_at > now:
        time.sleep((start_at - now) / 1e9)
    # A late start shifts the schedule instead of bursting to catch up.
    t0 = max(start_at, time.monotonic_ns())
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    interval_ns = 1e9 / rate if rate > 0 else 0.0

    sent = acked = 0
    inflight = 0
    mid = 0
    max_lag_ns = 0
    first_ns = last_ns = 0
    ackbuf = b""
    deadline = t0 + int(spec.get("max_seconds", 600) * 1e9)  # type: ignore[operator]

    def read_acks(block: bool) -> None:
        nonlocal ackbuf, acked, inflight
        ready, _, _ = select.select([sock], [], [], 1.0 if block else 0)
        if not ready:
            return
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("broker closed the connection")
        ackbuf += data
        n = len(ackbuf) // 4  # PUBACK is exactly 4 bytes in v3.1.1
        acked += n
        inflight -= n
        ackbuf = ackbuf[n * 4 :]

    while sent < count:
        now = time.monotonic_ns()
        if now > deadline:
            break
        if interval_ns:
            due = min(count, int((now - t0) / interval_ns) + 1)
            if due <= sent or now < last_ns + tick_ns:
                wake = max(t0 + sent * interval_ns, last_ns + tick_ns)
                time.sleep(max(0.0, (wake - now) / 1e9))
                continue
            lag = now - int(t0 + sent * interval_ns)
            max_lag_ns = max(max_lag_ns, lag)
        else:
            due = count
        upto = min(due, sent + MAX_BATCH)
        if qos:
            while inflight >= max_inflight:
                read_acks(block=True)
            upto = min(upto, sent + max_inflight - inflight)
        packets = []
        for seq in range(sent, upto):
            slot = seq % ndev
            payload = uplinks.build(slot, run_id, pub, seq, now)
            if qos:
                mid = mid % 65535 + 1
                body = headers[slot] + struct.pack("!H", mid) + payload
                packets.append(b"\x32" + _remaining_length(len(body)) + body)
            else:
                body = headers[slot] + payload
                packets.append(b"\x30" + _remaining_length(len(body)) + body)
        sock.sendall(b"".join(packets))
        if not first_ns:
            first_ns = now
        last_ns = now
        inflight += (upto - sent) if qos else 0
        sent = upto
        if qos:
            read_acks(block=False)

    if qos:
        ack_deadline = time.monotonic() + 30
        while inflight > 0 and time.monotonic() < ack_deadline:
            read_acks(block=True)
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    end_ns = time.monotonic_ns()
    try:
        sock.sendall(b"\xe0\x00")  # DISCONNECT
    finally:
        sock.close()
    cpu = (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime)
    wall = max(1e-9, (end_ns - t0) / 1e9)
    return {
        "pub": pub,
        "sent": sent,
        "acked": acked if qos else sent,
        "first_ns": first_ns,
        "last_ns": last_ns,
        "t0_ns": t0,
        "end_ns": end_ns,
        "max_lag_ms": max_lag_ns / 1e6,
        "cpu_s": cpu,
        "cpu_util": cpu / wall,
    }


def main() -> int:
    spec = json.loads(sys.argv[1])
    result = run(spec)
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
