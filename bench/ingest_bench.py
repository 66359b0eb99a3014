"""ingest micro-benchmark: CPU per message and messages/s of a real ingest process, with
stock paho against ingest's fast receive path (``MQTT_FAST_RECEIVE``).

    python -m bench.ingest_bench [--messages 40000] [--rounds 5] [--live-rate 2000]

Two ingest processes (``python -m services.ingest``, default settings: MQTT v5, QoS 1,
Receive Maximum 1000), one per variant, each with its own client id and topic filter on
one private Mosquitto (bench/broker.py). A DEALER in this process plays decode: it
grants 1,000 credits when it connects and one back per frame received, as decode does.
So what is measured is the whole ingest path: the MQTT link's thread (paho and the
forwarder), ZeroMQ's I/O thread and the PUBACKs.

Each round runs both variants one after the other (interleaved), in two modes:

- ``backlog``: the ingest process is paused (SIGSTOP), ``--messages`` ChirpStack-like
  uplinks of ~840 bytes are published at QoS 1 and queued by the broker, then the process
  is resumed (SIGCONT) and timed until the DEALER has every frame. CPU is the process's
  utime+stime over that stretch (/proc), so it holds all of the work for those messages
  and nothing else, and msg/s is not limited by the publisher. This is a burst, or a
  reconnect after an outage: many packets per read.
- ``live``: the same messages published at ``--live-rate`` msg/s while ingest runs:
  few packets per read, and each message wakes ingest's thread. The CPU measured runs
  from the first publish to the last frame.

The best round per variant and mode counts (the machine has 2 shared cores: the other
rounds measure the neighbours); the median is shown too.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
import zmq
from paho.mqtt.enums import CallbackAPIVersion

from bench.broker import BenchBroker
from bench.common import HOST, PYTHON, ROOT, cpu_seconds, free_port, stop_process, wait_file_text
from bench.payload import APPLICATION_ID, Uplinks, device_eui
from bench.profiling import thread_stats
from shared import rawlink

VARIANTS = {"stock": "false", "fast": "true"}
CREDIT = 1000  # what decode grants by default (ZMQ_RAW_CREDIT)
DEVICES = 50


@dataclass
class Ingest:
    """One ingest process and the DEALER playing its decoder."""

    name: str
    broker: BenchBroker
    workdir: Path
    app: str = field(init=False)
    endpoint: str = field(init=False)
    proc: subprocess.Popen[bytes] | None = None
    dealer: zmq.Socket[bytes] | None = None

    def __post_init__(self) -> None:
        self.app = f"{APPLICATION_ID[:-8]}{uuid.uuid4().hex[:8]}"  # its own topic filter
        self.endpoint = f"tcp://{HOST}:{free_port()}"

    def start(self, ctx: zmq.Context[zmq.Socket[bytes]]) -> None:
        env = {
            **os.environ,
            "MQTT_BROKER": self.broker.host,
            "MQTT_PORT": str(self.broker.port),
            "MQTT_CLIENT_ID": f"ingest-bench-{self.name}-{uuid.uuid4().hex[:6]}",
            "MQTT_TOPICS": f"application/{self.app}/device/+/event/+",
            "MQTT_FAST_RECEIVE": VARIANTS[self.name],
            "ZMQ_RAW_BIND": self.endpoint,
            "METRICS_PORT": "0",
            "LOG_LEVEL": "INFO",
        }
        log = self.workdir / f"ingest-{self.name}.log"
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                [PYTHON, "-m", "services.ingest"], cwd=ROOT, env=env, stdout=out, stderr=out
            )
        wait_file_text(log, r"📥 Subscribed to", 30, self.proc)
        self.dealer = ctx.socket(zmq.DEALER)
        self.dealer.setsockopt(zmq.LINGER, 0)
        self.dealer.setsockopt(zmq.RCVHWM, 0)
        self.dealer.connect(self.endpoint)
        self.dealer.send_multipart(rawlink.credit_message(CREDIT))

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def receive(self, count: int, timeout: float) -> None:
        """Take ``count`` frames, granting one credit back per frame (per batch)."""
        assert self.dealer is not None
        got = 0
        deadline = time.monotonic() + timeout
        while got < count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: only {got} of {count} frames arrived")
            if not self.dealer.poll(100, zmq.POLLIN):
                continue
            batch = 0
            while True:
                try:
                    self.dealer.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                batch += 1
            got += batch
            self.dealer.send_multipart(rawlink.credit_message(batch))

    def stop(self) -> None:
        if self.dealer is not None:
            self.dealer.close(linger=0)
        stop_process(self.proc)


class Publisher:
    """paho v5 at QoS 1 with up to 1,000 in flight, like a network server."""

    def __init__(self, broker: BenchBroker) -> None:
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{uuid.uuid4().hex[:6]}"
        )
        self.client.max_inflight_messages_set(1000)
        self.client.max_queued_messages_set(0)
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        self.uplinks = Uplinks(list(range(DEVICES)))
        self.seq = 0

    def publish(self, app: str, count: int, rate: float = 0.0) -> None:
        """``count`` uplinks to ``app``'s devices, every one acknowledged by the broker;
        paced at ``rate`` msg/s (0 = as fast as paho goes)."""
        infos = []
        start = time.monotonic()
        for i in range(count):
            if rate and i % 20 == 0:
                delay = start + i / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            self.seq += 1
            slot = self.seq % DEVICES
            payload = self.uplinks.build(slot, b"ingest-bench", 0, self.seq, time.monotonic_ns())
            topic = f"application/{app}/device/{device_eui(slot)}/event/up"
            infos.append(self.client.publish(topic, payload, qos=1))
        for info in infos:
            info.wait_for_publish(timeout=60)
            if not info.is_published():
                raise RuntimeError("the broker did not acknowledge a publish")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@dataclass
class Round:
    cpu_us: float  # CPU µs per message, the whole ingest process
    rate: float  # messages per second
    threads: dict[str, float]  # CPU µs per message by thread role


LINK = "MQTT link (paho + forwarder)"


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds so far per thread role of an ingest process. Python 3.11 does not name
    OS threads: the one Python thread besides the main one (which only waits for a
    signal) is the MQTT link's; ZeroMQ names its own."""
    out: dict[str, float] = {}
    for tid, (name, cpu, _) in thread_stats(pid).items():
        if name.startswith("ZMQbg/IO"):
            role = "ZeroMQ I/O"
        elif name == "python" and int(tid) != pid:
            role = LINK
        else:
            role = "other"
        out[role] = out.get(role, 0.0) + cpu
    return out


def measured(
    ingest: Ingest, count: int, cpu0: float, threads0: dict[str, float], t0: float
) -> Round:
    elapsed = time.monotonic() - t0
    threads = thread_cpu(ingest.pid)
    return Round(
        (cpu_seconds(ingest.pid) - cpu0) / count * 1e6,
        count / elapsed,
        {role: (cpu - threads0.get(role, 0.0)) / count * 1e6 for role, cpu in threads.items()},
    )


def backlog_round(ingest: Ingest, pub: Publisher, count: int) -> Round:
    """One backlog burst, queued by the broker while ingest is paused."""
    os.kill(ingest.pid, signal.SIGSTOP)
    try:
        pub.publish(ingest.app, count)
        cpu0, threads0 = cpu_seconds(ingest.pid), thread_cpu(ingest.pid)
        t0 = time.monotonic()
    finally:
        os.kill(ingest.pid, signal.SIGCONT)
    ingest.receive(count, timeout=120)
    return measured(ingest, count, cpu0, threads0, t0)


def live_round(ingest: Ingest, pub: Publisher, count: int, rate: float) -> Round:
    """``count`` messages published at ``rate`` while ingest runs."""
    cpu0, threads0 = cpu_seconds(ingest.pid), thread_cpu(ingest.pid)
    t0 = time.monotonic()
    receiver = threading.Thread(target=ingest.receive, args=(count, 120))
    receiver.start()
    pub.publish(ingest.app, count, rate)
    receiver.join()
    return measured(ingest, count, cpu0, threads0, t0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.ingest_bench", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--messages", type=int, default=40_000, help="messages per round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per variant and mode")
    parser.add_argument(
        "--live-rate", type=float, default=2000, help="msg/s in live mode (0 = skip live mode)"
    )
    args = parser.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="ingest-bench-"))
    broker = BenchBroker(workdir / "broker").start()
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    ingests = {name: Ingest(name, broker, workdir) for name in VARIANTS}
    pub: Publisher | None = None
    modes = ["backlog"] + (["live"] if args.live_rate else [])
    results: dict[tuple[str, str], list[Round]] = {
        (mode, name): [] for mode in modes for name in VARIANTS
    }
    try:
        for ingest in ingests.values():
            ingest.start(ctx)
        pub = Publisher(broker)
        for ingest in ingests.values():  # warm-up: imports done, connections settled
            backlog_round(ingest, pub, 2000)
        live_count = min(args.messages, int(args.live_rate * 5)) if args.live_rate else 0
        print(
            f"{args.messages:,} messages per backlog round, {live_count:,} per live round "
            f"at {args.live_rate:,.0f} msg/s; {args.rounds} rounds; logs in {workdir}",
            flush=True,
        )
        for rnd in range(1, args.rounds + 1):
            for name, ingest in ingests.items():
                results["backlog", name].append(backlog_round(ingest, pub, args.messages))
                if live_count:
                    results["live", name].append(
                        live_round(ingest, pub, live_count, args.live_rate)
                    )
            line = "  ".join(
                f"{mode} {name} {runs[-1].cpu_us:5.0f} µs {runs[-1].rate:6,.0f}/s"
                for (mode, name), runs in results.items()
            )
            print(f"round {rnd}: {line}", flush=True)
    finally:
        if pub is not None:
            pub.close()
        for ingest in ingests.values():
            ingest.stop()
        ctx.term()
        broker.stop()

    roles = (LINK, "ZeroMQ I/O", "other")
    print()
    print(
        "| mode | variant | CPU µs/msg best | median | msg/s best | median | best round: "
        + ", ".join(roles)
        + " |"
    )
    print("|---|---|---|---|---|---|---|")
    for (mode, name), runs in results.items():
        cpu = [r.cpu_us for r in runs]
        rate = [r.rate for r in runs]
        best = min(runs, key=lambda r: r.cpu_us)
        split = " / ".join(f"{best.threads.get(role, 0.0):.0f}" for role in roles)
        print(
            f"| {mode} | {name} | {min(cpu):.0f} | {statistics.median(cpu):.0f} "
            f"| {max(rate):,.0f} | {statistics.median(rate):,.0f} | {split} |"
        )
    for mode in modes:
        stock = min(r.cpu_us for r in results[mode, "stock"])
        fast = min(r.cpu_us for r in results[mode, "fast"])
        print(f"{mode}: fast uses {fast / stock:.0%} of stock's CPU per message (best rounds)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
