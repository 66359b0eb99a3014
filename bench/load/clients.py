"""A process holding many lean WebSocket clients that correlate every message.

Lean on purpose: one epoll loop over non-blocking sockets speaking just enough RFC 6455
(handshake, unmasked server frames, fragments, ping/pong, close). It costs a few µs per
message where a client library on asyncio costs tens, so the clients take as little as
possible of the cores the systems under test need. Two modes:

- ``json``: every text/binary message is one JSON document (gateway, naive bridge,
  Node-RED);
- ``mqtt``: MQTT 3.1.1 over WebSocket (subprotocol ``mqtt``): CONNECT + SUBSCRIBE, then
  PUBLISH packets parsed from the binary stream (Mosquitto's own listener).

Either way the marker ``"bench":"run:pub:seq:t_ns"`` is found with one byte search.
Latency = arrival (CLOCK_MONOTONIC right after epoll returned) − ``t_ns``.

Driven over stdin/stdout by bench.run, one line each way:
``RUN <id>`` → ``OK`` (start counting that run, reset) ·
``STAT`` → ``STAT unique dups open foreign`` · ``DUMP <path>`` → ``OK`` (JSON summary at
path, latencies in µs at path.lat) · ``QUIT``.
After connecting it prints ``READY <ok> <failed>``.

Usage: python -m bench.load.clients '<json spec>'
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import resource
import select
import socket
import struct
import sys
import time
from array import array
from typing import Any

from bench.payload import MARKER_KEY

MARKER_LEN = len(MARKER_KEY)
RECV_SIZE = 1 << 18


def _mask(payload: bytes, opcode: int) -> bytes:
    """A masked client frame (RFC 6455 §5.3: every client frame is masked)."""
    key = os.urandom(4)
    n = len(payload)
    if n < 126:
        header = bytes([0x80 | opcode, 0x80 | n])
    elif n < 65536:
        header = bytes([0x80 | opcode, 0x80 | 126]) + struct.pack("!H", n)
    else:
        header = bytes([0x80 | opcode, 0x80 | 127]) + struct.pack("!Q", n)
    return header + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def _mqtt_connect_and_subscribe(client_id: str, topic: str) -> bytes:
    def utf8(s: bytes) -> bytes:
        return struct.pack("!H", len(s)) + s

    body = utf8(b"MQTT") + bytes([4, 0x02]) + struct.pack("!H", 0) + utf8(client_id.encode())
    sub_body = struct.pack("!H", 1) + utf8(topic.encode()) + b"\x00"
    return b"\x10" + bytes([len(body)]) + body + b"\x82" + bytes([len(sub_body)]) + sub_body


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class Recorder:
    """Counts for the current run, shared by every connection of this process."""

    def __init__(self) -> None:
        self.run = b"-"
        self.reset()

    def reset(self) -> None:
        self.latencies = array("q")
        self.foreign = 0  # markers of another run (warm-up, a previous step)
        self.other = 0  # messages without a marker (hello, control replies)
        self.first_ns = 0
        self.last_ns = 0
        self.cpu0 = _cpu()


class Conn:
    def __init__(self, rec: Recorder, sock: socket.socket, mode: str, leftover: bytes) -> None:
        self.rec = rec
        self.sock = sock
        self.mode = mode
        self.buf = bytearray(leftover)
        self.mbuf = bytearray()  # MQTT byte stream (mqtt mode)
        self.frag = bytearray()  # fragmented WebSocket message
        self.subscribed = mode != "mqtt"
        self.closed = False
        self.reset()

    def reset(self) -> None:
        self.seen: dict[int, bytearray] = {}
        self.maxseq: dict[int, int] = {}
        self.unique = 0
        self.dups = 0
        self.reordered = 0

    def send(self, data: bytes) -> None:
        with contextlib.suppress(OSError):
            self.sock.send(data)

    def frames(self, now: int) -> None:
        buf = self.buf
        pos = 0
        n = len(buf)
        while n - pos >= 2:
            b0 = buf[pos]
            ln = buf[pos + 1] & 0x7F
            h = 2
            if ln == 126:
                if n - pos < 4:
                    break
                ln = (buf[pos + 2] << 8) | buf[pos + 3]
                h = 4
            elif ln == 127:
                if n - pos < 10:
                    break
                ln = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                h = 10
            start = pos + h
            end = start + ln
            if end > n:
                break
            opcode = b0 & 0x0F
            if opcode == 1 or opcode == 2:
                if b0 & 0x80:
                    self.message(buf, start, end, now)
                else:
                    self.frag[:] = buf[start:end]
            elif opcode == 0:
                self.frag += buf[start:end]
                if b0 & 0x80:
                    frag = self.frag
                    self.frag = bytearray()
                    self.message(frag, 0, len(frag), now)
            elif opcode == 9:
                self.send(_mask(bytes(buf[start:end]), 0xA))
            elif opcode == 8:
                self.send(_mask(bytes(buf[start : start + 2]), 0x8))
                self.closed = True
            pos = end
        if pos:
            del buf[:pos]

    def message(self, buf: bytearray, start: int, end: int, now: int) -> None:
        if self.mode == "json":
            self.record(buf, start, end, now)
            return
        mbuf = self.mbuf
        mbuf += buf[start:end]
        pos = 0
        n = len(mbuf)
        while n - pos >= 2:
            b0 = mbuf[pos]
            rl = 0
            mult = 1
            i = pos + 1
            while True:
                if i >= n:
                    rl = -1
                    break
                byte = mbuf[i]
                rl += (byte & 0x7F) * mult
                mult *= 128
                i += 1
                if not byte & 0x80:
                    break
            if rl < 0 or i + rl > n:
                break
            kind = b0 >> 4
            if kind == 3:  # PUBLISH
                tl = (mbuf[i] << 8) | mbuf[i + 1]
                self.record(mbuf, i + 2 + tl + (2 if b0 & 0x06 else 0), i + rl, now)
            elif kind == 9:  # SUBACK
                self.subscribed = True
            pos = i + rl
        if pos:
            del mbuf[:pos]

    def record(self, buf: bytearray, start: int, end: int, now: int) -> None:
        rec = self.rec
        i = buf.find(MARKER_KEY, start, end)
        if i < 0:
            rec.other += 1
            return
        i += MARKER_LEN
        parts = bytes(buf[i : buf.find(b'"', i, end)]).split(b":")
        if parts[0] != rec.run:
            rec.foreign += 1
            return
        pub = int(parts[1])
        seq = int(parts[2])
        seen = self.seen.get(pub)
        if seen is None:
            seen = self.seen[pub] = bytearray(max(4096, 2 * seq + 1))
            self.maxseq[pub] = -1
        elif seq >= len(seen):
            seen.extend(bytes(max(len(seen), seq + 1 - len(seen))))
        if seen[seq]:
            self.dups += 1
            return
        seen[seq] = 1
        self.unique += 1
        if seq < self.maxseq[pub]:
            self.reordered += 1
        else:
            self.maxseq[pub] = seq
        rec.latencies.append((now - int(parts[3])) // 1000)
        if not rec.first_ns:
            rec.first_ns = now
        rec.last_ns = now


def open_conn(rec: Recorder, spec: dict[str, Any], index: int) -> Conn:
    """TCP connect + WebSocket handshake (blocking, bounded), then a non-blocking Conn."""
    host, port, path, mode = spec["host"], int(spec["port"]), spec.get("path", "/"), spec["mode"]
    sock = socket.create_connection((host, port), timeout=15)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\n"
        "Sec-WebSocket-Version: 13\r\n"
        + ("Sec-WebSocket-Protocol: mqtt\r\n" if mode == "mqtt" else "")
        + "\r\n"
    )
    sock.sendall(request.encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed during the WebSocket handshake")
        data += chunk
        if len(data) > 65536:
            raise ConnectionError("handshake response too long")
    head, _, leftover = data.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0]
    if b" 101 " not in status + b" ":
        raise ConnectionError(status.decode(errors="replace"))
    sock.setblocking(False)
    conn = Conn(rec, sock, mode, leftover)
    if mode == "mqtt":
        conn.send(
            _mask(
                _mqtt_connect_and_subscribe(
                    f"bench-ws-{spec['id']}-{index}", spec.get("topic", "#")
                ),
                0x2,
            )
        )
    return conn


class ClientProcess:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.rec = Recorder()
        self.conns: dict[int, Conn] = {}
        self.ep = select.epoll()
        self.line = bytearray()
        self.done = False

    def reply(self, text: str) -> None:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()

    def connect_all(self) -> None:
        failed = 0
        for index in range(int(self.spec["conns"])):
            for attempt in range(3):
                try:
                    conn = open_conn(self.rec, self.spec, index)
                except (OSError, ConnectionError) as exc:
                    if attempt == 2:
                        failed += 1
                        print(f"client {index}: {exc}", file=sys.stderr)
                    time.sleep(0.2)
                    continue
                self.conns[conn.sock.fileno()] = conn
                self.ep.register(conn.sock.fileno(), select.EPOLLIN)
                break
        deadline = time.monotonic() + 15
        while not all(c.subscribed for c in self.conns.values()) and time.monotonic() < deadline:
            self.poll(0.1)
        not_subscribed = sum(1 for c in self.conns.values() if not c.subscribed)
        self.reply(f"READY {len(self.conns) - not_subscribed} {failed + not_subscribed}")

    def poll(self, timeout: float) -> None:
        events = self.ep.poll(timeout)
        now = time.monotonic_ns()
        conns = self.conns
        for fd, _ in events:
            conn = conns.get(fd)
            if conn is None:
                self.on_stdin()
                continue
            try:
                data = conn.sock.recv(RECV_SIZE)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                conn.closed = True
                self.ep.unregister(fd)
                continue
            conn.buf += data
            conn.frames(now)

    def main(self) -> None:
        self.connect_all()
        stdin = sys.stdin.fileno()
        os.set_blocking(stdin, False)
        self.ep.register(stdin, select.EPOLLIN)
        while not self.done:
            self.poll(1.0)
        for conn in self.conns.values():
            conn.send(_mask(b"\x03\xe8", 0x8))
            conn.sock.close()

    def on_stdin(self) -> None:
        try:
            data = os.read(sys.stdin.fileno(), 65536)
        except BlockingIOError:
            return
        if not data:
            self.done = True
            return
        self.line += data
        while b"\n" in self.line:
            raw, _, rest = self.line.partition(b"\n")
            self.line = bytearray(rest)
            self.command(raw.decode().strip())

    def command(self, line: str) -> None:
        cmd, _, arg = line.partition(" ")
        conns = list(self.conns.values())
        if cmd == "RUN":
            self.rec.run = arg.encode()
            self.rec.reset()
            for conn in conns:
                conn.reset()
            self.reply("OK")
        elif cmd == "STAT":
            unique = sum(c.unique for c in conns)
            dups = sum(c.dups for c in conns)
            alive = sum(1 for c in conns if not c.closed)
            self.reply(f"STAT {unique} {dups} {alive} {self.rec.foreign}")
        elif cmd == "DUMP":
            rec = self.rec
            summary = {
                "conns": [[c.unique, c.dups, c.reordered, int(c.closed)] for c in conns],
                "foreign": rec.foreign,
                "other": rec.other,
                "first_ns": rec.first_ns,
                "last_ns": rec.last_ns,
                "cpu_s": _cpu() - rec.cpu0,
                "n_latencies": len(rec.latencies),
            }
            with open(arg + ".lat", "wb") as f:
                rec.latencies.tofile(f)
            with open(arg, "w") as f:
                json.dump(summary, f)
            self.reply("OK")
        elif cmd == "QUIT":
            self.done = True
        else:
            self.reply(f"ERR unknown command {cmd!r}")


def main() -> int:
    ClientProcess(json.loads(sys.argv[1])).main()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
