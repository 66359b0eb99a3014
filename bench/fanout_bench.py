"""wsfanout at scale: memory per connection and broadcast cost per event (issue 5, W2).

Runs ``python -m services.wsfanout`` alone, feeds it over ZeroMQ (an XPUB like a decode
worker's PUB) and connects lean WebSocket clients from separate processes:

1. no clients: the cost of receiving, numbering and buffering an event;
2. + ``--idle`` clients whose filter matches nothing (``?tenant=<nobody>``): memory per idle
   connection, and the per-event cost with them (the client index should keep it flat);
3. + ``--active`` clients with no filter, receiving ``--rate`` events/s: memory per active
   connection, CPU per event and per delivered message, delivery ratio and latency. They
   connect with a resume position at the current seq, so no replay muddies the figures.

CPU is the fan-out's utime+stime from /proc (its own work, whatever else the machine runs);
memory is its VmRSS. Clients answer pings, so keepalive stays on as in production.

    .venv/bin/python -m bench.fanout_bench                       # 5,000 idle + 1,000 active, 100/s
    .venv/bin/python -m bench.fanout_bench --idle 500 --active 100 --seconds 5   # quick

Writes a JSON summary to bench/out/fanout-<time>.json and prints a table.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from array import array
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
HOST = "127.0.0.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")
T_NS = b'"t_ns":'
PING_INTERVAL = 20.0  # WEBSOCKET_PING_INTERVAL's default, kept in the bench


# Lean clients (a separate process each; one epoll loop) --------------------------------


class _Conn:
    __slots__ = ("sock", "buf", "open", "handshake")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""
        self.open = False
        self.handshake = b""


def _masked(opcode: int, payload: bytes) -> bytes:
    key = os.urandom(4)
    body = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + key + body


def client_process(port: int, path: str, count: int) -> int:
    """Hold ``count`` connections; count events, answer pings. Driven by stdin lines:
    ``RESET`` (zero the counters), ``STAT`` (→ ``STAT <open> <events> <p50_us> <p99_us>``),
    ``QUIT``."""
    ep = select.epoll()
    conns: dict[int, _Conn] = {}
    messages = 0
    latencies = array("q")
    failed = 0

    def request() -> bytes:
        key = base64.b64encode(os.urandom(16)).decode()
        return (
            f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()

    # Connect in paced batches (the server's backlog is large, but be polite).
    pending = count
    while pending:
        batch = min(pending, 200)
        pending -= batch
        opening: dict[int, _Conn] = {}
        for _ in range(batch):
            s = socket.create_connection((HOST, port), timeout=30)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.sendall(request())
            s.setblocking(False)
            c = _Conn(s)
            opening[s.fileno()] = c
            ep.register(s.fileno(), select.EPOLLIN)
        deadline = time.monotonic() + 60
        while opening and time.monotonic() < deadline:
            for fd, _ in ep.poll(0.5):
                c = opening.get(fd)
                if c is None:
                    continue
                data = c.sock.recv(65536)
                c.handshake += data
                if b"\r\n\r\n" in c.handshake:
                    head, _, rest = c.handshake.partition(b"\r\n\r\n")
                    del opening[fd]
                    if head.startswith(b"HTTP/1.1 101"):
                        c.open = True
                        c.buf = rest
                        conns[fd] = c
                    else:
                        failed += 1
                        ep.unregister(fd)
                        c.sock.close()
        failed += len(opening)
    print(f"READY {len(conns)} {failed}", flush=True)

    stdin = sys.stdin.fileno()
    ep.register(stdin, select.EPOLLIN)
    while True:
        for fd, _ in ep.poll(1.0):
            if fd == stdin:
                line = sys.stdin.readline().strip()
                if line == "RESET":
                    messages = 0
                    latencies = array("q")
                    print("OK", flush=True)
                elif line == "STAT":
                    lat = sorted(latencies)
                    p50 = lat[len(lat) // 2] if lat else 0
                    p99 = lat[min(len(lat) - 1, len(lat) * 99 // 100)] if lat else 0
                    alive = sum(1 for c in conns.values() if c.open)
                    print(f"STAT {alive} {messages} {p50} {p99}", flush=True)
                elif line in ("QUIT", ""):
                    return 0
                continue
            c = conns.get(fd)
            if c is None:
                continue
            try:
                data = c.sock.recv(1 << 18)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                c.open = False
                ep.unregister(fd)
                continue
            now = time.monotonic_ns()
            buf = c.buf + data if c.buf else data
            i, n = 0, len(buf)
            sampled = False  # one latency sample per read keeps the client cheap
            while n - i >= 2:
                b0, length = buf[i], buf[i + 1] & 0x7F
                head = 2
                if length == 126:
                    if n - i < 4:
                        break
                    length = struct.unpack_from("!H", buf, i + 2)[0]
                    head = 4
                elif length == 127:
                    if n - i < 10:
                        break
                    length = struct.unpack_from("!Q", buf, i + 2)[0]
                    head = 10
                if n - i < head + length:
                    break
                opcode = b0 & 0x0F
                start, end = i + head, i + head + length
                if opcode == 1:
                    j = buf.find(T_NS, start, end)
                    if j >= 0:  # an event (replies and notices do not count)
                        messages += 1
                        if not sampled:
                            sampled = True
                            k = j + len(T_NS)
                            e = buf.find(b",", k, end)
                            latencies.append((now - int(buf[k:e])) // 1000)
                elif opcode == 9:
                    c.sock.sendall(_masked(0xA, bytes(buf[start:end])))
                elif opcode == 8:
                    c.open = False
                i = end
            c.buf = buf[i:]


# The orchestrator ----------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _cpu_split(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def _cpu_seconds(pid: int) -> float:
    return sum(_cpu_split(pid))


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _get_json(port: int, path: str) -> Any:
    with urllib.request.urlopen(f"http://{HOST}:{port}{path}", timeout=30) as r:
        return json.loads(r.read())


def _metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://{HOST}:{port}/metrics", timeout=30) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return 0.0


class Clients:
    def __init__(self, port: int, path: str, total: int, procs: int) -> None:
        self.procs: list[subprocess.Popen[str]] = []
        per = [total // procs + (1 if i < total % procs else 0) for i in range(procs)]
        for n in per:
            if n:
                self.procs.append(
                    subprocess.Popen(
                        [
                            sys.executable,
                            "-m",
                            "bench.fanout_bench",
                            "client",
                            str(port),
                            path,
                            str(n),
                        ],
                        cwd=ROOT,
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                        text=True,
                    )
                )
        self.ok = self.failed = 0
        for p in self.procs:
            assert p.stdout is not None
            _, ok, failed = p.stdout.readline().split()
            self.ok += int(ok)
            self.failed += int(failed)

    def _ask(self, line: str) -> list[str]:
        replies = []
        for p in self.procs:
            assert p.stdin is not None and p.stdout is not None
            p.stdin.write(line + "\n")
            p.stdin.flush()
        for p in self.procs:
            assert p.stdout is not None
            replies.append(p.stdout.readline().strip())
        return replies

    def reset(self) -> None:
        self._ask("RESET")

    def cpu_seconds(self) -> float:
        return sum(_cpu_seconds(p.pid) for p in self.procs if p.poll() is None)

    def stat(self) -> dict[str, int]:
        alive = messages = 0
        p50s, p99s = [], []
        for reply in self._ask("STAT"):
            _, a, m, p50, p99 = reply.split()
            alive += int(a)
            messages += int(m)
            p50s.append(int(p50))
            p99s.append(int(p99))
        return {
            "open": alive,
            "messages": messages,
            "p50_us": max(p50s, default=0),
            "p99_us": max(p99s, default=0),
        }

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                assert p.stdin is not None
                try:
                    p.stdin.write("QUIT\n")
                    p.stdin.flush()
                except BrokenPipeError:
                    pass
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()


def _publish(feed: Any, rate: float, seconds: float, first: int, payload: int) -> int:
    from shared import routing
    from shared.frames import Event, event_parts

    pad = "x" * max(0, payload - 420)
    n = int(rate * seconds)
    start = time.monotonic()
    for i in range(n):
        now = time.time_ns()
        device = f"bench-{(first + i) % 100}"
        body = {
            "event": "up",
            "src": "bench",
            "seq": first + i + 1,
            "ts": now,
            "ts_decode": now,
            "device": {
                "tenant": "bench",
                "application": "app",
                "name": device,
                "devEui": f"{(first + i) % 100:016x}",
                "tags": {},
            },
            "object": {
                "type": "voltage",
                "values": [{"time": now // 1_000_000, "value": 3.7}],
                "t_ns": time.monotonic_ns(),
                "pad": pad,
            },
            "rx": {
                "gateway": "0016c001f153a14c",
                "rssi": -57,
                "snr": 9.5,
                "fCnt": first + i,
                "fPort": 2,
            },
        }
        feed.send_multipart(
            event_parts(Event(key=routing.device_key("bench", "app", device, "up"), body=body))
        )
        delay = start + (i + 1) / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    return n


def bench(args: argparse.Namespace) -> dict[str, Any]:
    import zmq

    port, zport = _free_port(), _free_port()
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "WEBSOCKET_HOST": HOST,
        "WEBSOCKET_PORT": str(port),
        "ZMQ_EVENTS_BIND": f"tcp://{HOST}:{zport}",
        "WEBSOCKET_STATE_FILE": "",
        "WEBSOCKET_MAX_CLIENTS": "50000",
        "LOG_LEVEL": "warning",  # one INFO line per connection would be 12,000 lines here
    }
    OUT.mkdir(parents=True, exist_ok=True)
    with open(OUT / "fanout-bench-server.log", "wb") as log:  # the child keeps its own fd
        server = subprocess.Popen(
            [sys.executable, "-m", "services.wsfanout"], cwd=ROOT, env=env, stdout=log, stderr=log
        )
    results: dict[str, Any] = {"config": vars(args)}
    clients: list[Clients] = []
    ctx = zmq.Context()
    feed = ctx.socket(zmq.XPUB)
    feed.setsockopt(zmq.LINGER, 0)
    feed.setsockopt(zmq.SNDHWM, 1_000_000)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                _get_json(port, "/healthz")
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("wsfanout did not start") from None
                time.sleep(0.1)
        feed.connect(f"tcp://{HOST}:{zport}")
        if not feed.poll(30_000):
            raise RuntimeError("the fan-out never subscribed")
        feed.recv()
        sent = _publish(feed, 1000, 0.2, 0, args.payload)  # warm-up: fill the replay buffer
        time.sleep(1)

        def phase(name: str) -> dict[str, Any]:
            nonlocal sent
            (user0, sys0), d_sum0, d_n0 = (
                _cpu_split(server.pid),
                _metric(port, "gateway_wsfanout_dispatch_seconds_sum"),
                _metric(port, "gateway_wsfanout_dispatch_seconds_count"),
            )
            n = _publish(feed, args.rate, args.seconds, sent, args.payload)
            sent += n
            time.sleep(1.0)  # let the last events drain
            user1, sys1 = _cpu_split(server.pid)
            cpu0, cpu1 = user0 + sys0, user1 + sys1
            d_sum1, d_n1 = (
                _metric(port, "gateway_wsfanout_dispatch_seconds_sum"),
                _metric(port, "gateway_wsfanout_dispatch_seconds_count"),
            )
            out = {
                "events": n,
                "cpu_s": round(cpu1 - cpu0, 3),
                "cpu_us_per_event": round((cpu1 - cpu0) / n * 1e6, 1),
                "user_us_per_event": round((user1 - user0) / n * 1e6, 1),
                "system_us_per_event": round((sys1 - sys0) / n * 1e6, 1),
                "dispatch_us_per_event": round((d_sum1 - d_sum0) / max(1, d_n1 - d_n0) * 1e6, 1),
                "rss_kib": _rss_kib(server.pid),
            }
            print(f"  {name}: {out}", flush=True)
            return out

        rss0 = _rss_kib(server.pid)
        print(f"wsfanout pid {server.pid}, RSS {rss0} KiB before clients", flush=True)
        results["no_clients"] = phase("no clients")

        t = time.monotonic()
        idle = Clients(port, "/?tenant=bench-nobody", args.idle, args.procs)
        clients.append(idle)
        results["idle_connect_s"] = round(time.monotonic() - t, 2)
        time.sleep(2)
        rss1 = _rss_kib(server.pid)
        results["idle_connected"] = idle.ok
        results["idle_failed"] = idle.failed
        results["kib_per_idle_connection"] = round(
            (rss1 - results["no_clients"]["rss_kib"]) / max(1, idle.ok), 2
        )
        print(
            f"{idle.ok} idle connected ({idle.failed} failed) in {results['idle_connect_s']}s;"
            f" RSS {rss1} KiB",
            flush=True,
        )
        # No events for one keepalive interval (every connection pinged once): what holding
        # the idle connections costs.
        cpu_a, quiet = _cpu_seconds(server.pid), PING_INTERVAL + 1.0
        time.sleep(quiet)
        results["idle_cpu_ms_per_s"] = round((_cpu_seconds(server.pid) - cpu_a) / quiet * 1000, 1)
        results["with_idle"] = phase(f"{idle.ok} idle")

        # Resume at the current position: no replay, so the phase measures the live stream.
        health = _get_json(port, "/healthz")
        t = time.monotonic()
        active = Clients(
            port, f"/?epoch={health['epoch']}&seq={health['seq']}", args.active, args.procs
        )
        clients.append(active)
        results["active_connect_s"] = round(time.monotonic() - t, 2)
        time.sleep(2)
        rss2 = _rss_kib(server.pid)
        results["active_connected"] = active.ok
        results["kib_per_active_connection"] = round(
            (rss2 - results["with_idle"]["rss_kib"]) / max(1, active.ok), 2
        )
        print(f"{active.ok} active connected ({active.failed} failed); RSS {rss2} KiB", flush=True)
        active.reset()
        client_cpu0 = active.cpu_seconds()
        results["with_active"] = phase(f"{idle.ok} idle + {active.ok} active")
        expected = results["with_active"]["events"] * active.ok
        stat = active.stat()
        results["delivered_at_phase_end"] = round(stat["messages"] / max(1, expected), 5)
        t = time.monotonic()
        while stat["messages"] < expected and time.monotonic() - t < 120:
            time.sleep(1)  # late is not lost: wait for the backlog to drain
            stat = active.stat()
        results["drain_s_after_phase"] = round(time.monotonic() - t, 1)
        results["client_cpu_s"] = round(active.cpu_seconds() - client_cpu0, 2)
        results["delivered"] = stat["messages"]
        results["delivered_ratio"] = round(stat["messages"] / max(1, expected), 5)
        results["latency_p50_ms"] = round(stat["p50_us"] / 1000, 2)
        results["latency_p99_ms"] = round(stat["p99_us"] / 1000, 2)
        results["clients_open_after"] = stat["open"] + idle.stat()["open"]
        base = results["with_idle"]["cpu_us_per_event"]
        per_event = results["with_active"]["cpu_us_per_event"]
        results["broadcast_us_per_event_per_1k_clients"] = round(
            (per_event - base) / (active.ok / 1000), 1
        )
        results["us_per_delivered_message"] = round((per_event - base) / max(1, active.ok), 2)
        results["server_rss_mib"] = round(_rss_kib(server.pid) / 1024, 1)
        results["dropped_slow"] = _metric(
            port, 'gateway_wsfanout_dropped_total{reason="slow_client"}'
        )
        return results
    finally:
        for c in clients:
            c.close()
        feed.close(0)
        ctx.term()
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "client":
        return client_process(int(argv[1]), argv[2], int(argv[3]))
    parser = argparse.ArgumentParser(
        prog="python -m bench.fanout_bench", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--idle", type=int, default=5000, help="connections whose filter matches nothing"
    )
    parser.add_argument(
        "--active", type=int, default=1000, help="connections receiving every event"
    )
    parser.add_argument("--rate", type=float, default=100.0, help="events per second")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each measured phase")
    parser.add_argument(
        "--payload", type=int, default=500, help="approximate bytes per event message"
    )
    parser.add_argument("--procs", type=int, default=4, help="client processes per group")
    args = parser.parse_args(argv)
    results = bench(args)
    path = OUT / f"fanout-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    print(f"written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
