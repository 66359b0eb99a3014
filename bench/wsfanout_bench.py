"""wsfanout alone: CPU per event, before/after, with 1 and 50 WebSocket clients.

    .venv/bin/python -m bench.wsfanout_bench --tree base=/work/main --tree new=.
    .venv/bin/python -m bench.wsfanout_bench --rounds 2 --paced 2000 --burst 5000   # quick
    .venv/bin/python -m bench.wsfanout_bench --tree asyncio=. --tree uvloop=. \
        --env asyncio:WEBSOCKET_EVENT_LOOP=asyncio --env uvloop:WEBSOCKET_EVENT_LOOP=uvloop

One ``python -m services.wsfanout`` per ``--tree NAME=PATH`` (started with cwd=PATH, so each
runs its own tree's code), all alive at once. A ZeroMQ XPUB per process plays decode: the
events are what ``services.decode`` makes of the ChirpStack v4 ``up`` fixture (with a
codec ``object`` added, 100 devices, a fresh deduplicationId and seq each). Lean WebSocket
clients (``bench.fanout_bench``'s, one epoll loop per process, no filter) count them.

Per round, for each client count, every tree gets (in an order that alternates per round):

- ``paced``: ``--paced`` events at ``--rate``/s: one wake-up per event, as at a steady rate;
- ``burst``: ``--burst`` events sent as fast as the feeder can: batches, as when catching up.

A phase ends when every client has counted every event. CPU is the fan-out's utime+stime
from /proc (all its threads: the loop and ZeroMQ's I/O thread) over the phase, divided by
the events. The machine is shared: the best of ``--rounds`` counts (the others measure the
neighbours); the median is shown too. Writes bench/out/wsfanout-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import zmq

from bench.common import HOST, OUT, ROOT, free_port, raise_fd_limit, wait_port
from bench.fanout_bench import Clients, _get_json
from shared.frames import Event, RawFrame, event_parts

FIXTURE = Path("/work/shared/fixtures/chirpstack_v4_up.json")
APPLICATION_ID = "17c82e96-be03-4f38-aef3-f83d48582d97"
DEVICES = 100


def _fixture_uplink() -> dict[str, Any]:
    if FIXTURE.exists():
        doc: dict[str, Any] = json.loads(FIXTURE.read_text())
    else:  # the same shape, for a checkout without shared/
        from bench.decode_bench import uplink

        doc = json.loads(uplink())
    # A codec's output, as most deployments have (the fixture has none); "t_ns" first so the
    # lean clients find it (they read up to the next comma).
    doc["object"] = {
        "t_ns": 0,
        "type": "voltage",
        "values": [{"time": 1690804800000, "time_iso": "2023-07-31T12:00:00.000Z", "value": 230.1}],
    }
    return doc


class Events:
    """Decoded bodies, one per device, made once by the real decoder; each event is a
    shallow copy with its own seq, timestamps, deduplication id and ``t_ns``."""

    def __init__(self) -> None:
        from services.decode.dispatch import Decoder

        decoder = Decoder()
        now = time.time_ns()
        self.templates: list[Event] = []
        for i in range(DEVICES):
            doc = _fixture_uplink()
            eui = f"70b3d57ed0{i:06x}"
            doc["deviceInfo"]["devEui"] = eui
            doc["deviceInfo"]["deviceName"] = f"meter-{i}"
            frame = RawFrame(
                src="bench-ingest",
                seq=1,
                ts=now,
                topic=f"application/{APPLICATION_ID}/device/{eui}/event/up",
                payload=json.dumps(doc).encode(),
                qos=1,
            )
            event = decoder.decode(frame, now)
            assert event.body["event"] == "up", event.body
            self.templates.append(event)
        self.seq = 0

    def next(self) -> list[bytes]:
        self.seq += 1
        seq = self.seq
        t = self.templates[seq % DEVICES]
        body = dict(t.body)
        now = time.time_ns()
        body["seq"] = seq
        body["ts"] = now
        body["ts_decode"] = now + 50_000
        body["dedup"] = f"up/3ac7e3c4-4401-4b8d-9386-{seq:012x}"
        obj = dict(body["object"])
        obj["t_ns"] = time.monotonic_ns()
        body["object"] = obj
        return event_parts(Event(key=t.key, body=body))


def _cpu(pid: int) -> tuple[float, float, int]:
    """(user s, system s, context switches) of a process, all threads."""
    clk = os.sysconf("SC_CLK_TCK")
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    switches = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
            switches += int(line.split()[1])
    return int(fields[11]) / clk, int(fields[12]) / clk, switches


class Server:
    def __init__(
        self,
        name: str,
        tree: Path,
        ctx: zmq.Context[zmq.Socket[bytes]],
        extra_env: dict[str, str],
    ) -> None:
        self.name, self.tree = name, tree
        self.port, zport = free_port(), free_port()
        env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "WEBSOCKET_HOST": HOST,
            "WEBSOCKET_PORT": str(self.port),
            "ZMQ_EVENTS_BIND": f"tcp://{HOST}:{zport}",
            "WEBSOCKET_STATE_FILE": "",
            "LOG_LEVEL": "warning",
            **extra_env,
        }
        OUT.mkdir(parents=True, exist_ok=True)
        with open(OUT / f"wsfanout-bench-{name}.log", "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "services.wsfanout"],
                cwd=tree,
                env=env,
                stdout=log,
                stderr=log,
            )
        wait_port(self.port, 30, self.proc)  # type: ignore[arg-type]
        self.feed = ctx.socket(zmq.XPUB)
        self.feed.setsockopt(zmq.LINGER, 0)
        self.feed.setsockopt(zmq.SNDHWM, 1_000_000)  # a burst must not be dropped here
        self.feed.connect(f"tcp://{HOST}:{zport}")
        if not self.feed.poll(30_000):
            raise RuntimeError(f"{name}: the fan-out never subscribed")
        self.feed.recv()
        self.events = Events()
        self.clients: list[Clients] = []
        self.connected = 0

    def connect(self, total: int) -> None:
        """Bring the number of clients receiving everything up to ``total``."""
        more = total - self.connected
        if more <= 0:
            return
        health = _get_json(self.port, "/healthz")
        path = f"/?epoch={health['epoch']}&seq={health['seq']}"  # resume: no replay
        group = Clients(self.port, path, more, procs=1 if more < 10 else 2)
        if group.ok != more:
            raise RuntimeError(f"{self.name}: {group.failed} clients failed to connect")
        self.clients.append(group)
        self.connected = total

    def received(self) -> int:
        return sum(g.stat()["messages"] for g in self.clients)

    def latency_ms(self) -> tuple[float, float]:
        stats = [g.stat() for g in self.clients]
        return (
            max(s["p50_us"] for s in stats) / 1000,
            max(s["p99_us"] for s in stats) / 1000,
        )

    def reset(self) -> None:
        for g in self.clients:
            g.reset()

    def phase(self, n: int, rate: float | None, timeout: float) -> dict[str, Any]:
        self.reset()
        u0, s0, cs0 = _cpu(self.proc.pid)
        start = time.monotonic()
        if rate is None:
            # Build first, then send back to back: the feeder must outrun the fan-out.
            frames = [self.events.next() for _ in range(n)]
            start = time.monotonic()
            for parts in frames:
                self.feed.send_multipart(parts)
        else:
            for i in range(n):
                self.feed.send_multipart(self.events.next())
                delay = start + (i + 1) / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
        expected = n * self.connected
        deadline = time.monotonic() + timeout
        got = self.received()
        while got < expected and time.monotonic() < deadline:
            time.sleep(0.02)
            got = self.received()
        wall = time.monotonic() - start
        u1, s1, cs1 = _cpu(self.proc.pid)
        p50, p99 = self.latency_ms()
        return {
            "events": n,
            "delivered_ratio": round(got / max(1, expected), 5),
            "cpu_us_per_event": round((u1 + s1 - u0 - s0) / n * 1e6, 1),
            "user_us_per_event": round((u1 - u0) / n * 1e6, 1),
            "system_us_per_event": round((s1 - s0) / n * 1e6, 1),
            "switches_per_event": round((cs1 - cs0) / n, 2),
            "events_per_s": round(n / wall),
            "p50_ms": p50,
            "p99_ms": p99,
        }

    def close(self) -> None:
        for g in self.clients:
            g.close()
        self.feed.close(0)
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    cpu = [r["cpu_us_per_event"] for r in runs]
    best = min(runs, key=lambda r: r["cpu_us_per_event"])
    return {
        "best_cpu_us": min(cpu),
        "median_cpu_us": round(statistics.median(cpu), 1),
        "best_user_us": best["user_us_per_event"],
        "best_system_us": best["system_us_per_event"],
        "switches_per_event": best["switches_per_event"],
        "worst_delivered_ratio": min(r["delivered_ratio"] for r in runs),
        "runs": runs,
    }


def bench(args: argparse.Namespace) -> dict[str, Any]:
    raise_fd_limit()
    trees: list[tuple[str, Path]] = []
    for spec in args.tree or [f"this={ROOT}"]:
        name, _, path = spec.partition("=")
        trees.append((name, Path(path).resolve()))
    envs: dict[str, dict[str, str]] = {}
    for spec in args.env or []:
        name, _, assignment = spec.partition(":")
        var, _, value = assignment.partition("=")
        envs.setdefault(name, {})[var] = value
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    servers: list[Server] = []
    results: dict[str, Any] = {"config": vars(args), "trees": {n: str(p) for n, p in trees}}
    results["env"] = envs
    try:
        for name, path in trees:
            servers.append(Server(name, path, ctx, envs.get(name, {})))
        for s in servers:  # warm up: imports, caches, a full replay buffer
            s.connect(1)
            s.phase(2000, None, 60)
        for clients in args.clients:
            for s in servers:
                s.connect(clients)
            runs: dict[str, dict[str, list[dict[str, Any]]]] = {
                mode: {s.name: [] for s in servers} for mode in ("paced", "burst")
            }
            for r in range(args.rounds):
                order = servers if r % 2 == 0 else servers[::-1]
                for s in order:
                    paced = s.phase(args.paced, args.rate, 60)
                    burst = s.phase(args.burst, None, 120)
                    runs["paced"][s.name].append(paced)
                    runs["burst"][s.name].append(burst)
                    print(
                        f"{clients:3d} clients round {r + 1} {s.name:>8}: "
                        f"paced {paced['cpu_us_per_event']:6.1f} µs/event "
                        f"(p99 {paced['p99_ms']:.1f} ms), "
                        f"burst {burst['cpu_us_per_event']:6.1f} µs/event "
                        f"({burst['events_per_s']}/s)",
                        flush=True,
                    )
            for mode, by_tree in runs.items():
                results[f"{mode}_{clients}"] = {name: _summary(rs) for name, rs in by_tree.items()}
        return results
    finally:
        for s in servers:
            s.close()
        ctx.term()


def print_table(results: dict[str, Any]) -> None:
    trees = list(results["trees"])
    print(
        "\nwsfanout CPU µs per event (utime+stime, all threads): best of "
        f"{results['config']['rounds']} (median)"
    )
    print(f"{'scenario':<22}" + "".join(f"{name:>24}" for name in trees))
    for key, by_tree in results.items():
        if key in ("config", "trees", "env"):
            continue
        mode, clients = key.split("_")
        label = f"{mode} {results['config']['rate']:g}/s" if mode == "paced" else "burst"
        row = f"{label + ', ' + clients + ' client(s)':<22}"
        for name in trees:
            s = by_tree[name]
            row += f"{s['best_cpu_us']:>12.1f} ({s['median_cpu_us']:>7.1f})    "
        print(row)
    if len(trees) == 2:
        a, b = trees
        print(f"\nchange {a} → {b} (best):")
        for key, by_tree in results.items():
            if key in ("config", "trees", "env"):
                continue
            x, y = by_tree[a]["best_cpu_us"], by_tree[b]["best_cpu_us"]
            print(f"  {key:<10} {x:7.1f} → {y:7.1f} µs/event  ({(y - x) / x * 100:+.0f} %)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.wsfanout_bench", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--tree",
        action="append",
        metavar="NAME=PATH",
        help="a checkout whose services/ and shared/ to run (repeat; default: this one)",
    )
    parser.add_argument(
        "--env",
        action="append",
        metavar="NAME:VAR=VALUE",
        help="an environment variable for one tree's fan-out (repeat), e.g. "
        "new:WEBSOCKET_EVENT_LOOP=asyncio",
    )
    parser.add_argument("--rounds", type=int, default=5, help="rounds (best counts)")
    parser.add_argument("--rate", type=float, default=1000.0, help="paced events per second")
    parser.add_argument("--paced", type=int, default=5000, help="events per paced phase")
    parser.add_argument("--burst", type=int, default=20000, help="events per burst phase")
    parser.add_argument(
        "--clients",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[1, 50],
        help="client counts, comma-separated (default 1,50)",
    )
    args = parser.parse_args(argv)
    results = bench(args)
    path = OUT / f"wsfanout-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    print_table(results)
    print(f"written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
