"""Drives one system under test: client processes, publisher processes, measurements.

A :class:`Session` is one started system (with its broker) plus its WebSocket client
processes. :meth:`Session.measure` runs one numbered stream through it and returns what
every client saw, with the CPU and memory of the system, its broker and the load
generator over exactly that window.
"""

from __future__ import annotations

import json
import math
import os
import select
import subprocess
import threading
import time
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import (
    HOST,
    PYTHON,
    ROOT,
    cpu_seconds,
    machine_cpu_seconds,
    memory_kib,
    percentile,
    pss_kib,
)
from bench.payload import TOPIC_FILTER
from bench.systems import System

# A find-max step or run fails when more than this share is lost or p99 is above the bound.
MAX_LOSS = 0.001
MAX_P99_MS = 100.0
# A process using more than this share of one core is treated as saturated.
SATURATED = 0.90


class ChildProc:
    """A helper process spoken to one line at a time over stdin/stdout."""

    def __init__(self, cmd: list[str], log: Path) -> None:
        self.log = log
        with open(log, "ab") as err:
            self.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                cwd=ROOT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        self.buf = b""

    @property
    def pid(self) -> int:
        return self.proc.pid

    def readline(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no answer from pid {self.pid} within {timeout:.0f}s")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    tail = self.log.read_text(errors="replace")[-1500:] if self.log.exists() else ""
                    raise RuntimeError(f"pid {self.pid} exited ({self.proc.poll()}):\n{tail}")
                self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line.decode().strip()

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def ask(self, line: str, timeout: float = 30.0) -> str:
        self.send(line)
        return self.readline(timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send("QUIT")
                self.proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired, ValueError):
                self.proc.kill()
                self.proc.wait()


@dataclass
class Options:
    qos: int = 0
    devices: int = 100
    publishers: int = 2
    client_procs: int = 0  # 0 = automatic
    drain_idle: float = 2.0


@dataclass
class Measurement:
    run: str
    target_rate: float
    clients: int
    published: int = 0
    acked: int = 0
    expected: int = 0
    delivered: int = 0
    lost: int = 0
    dups: int = 0
    reordered: int = 0
    closed_clients: int = 0
    p50_ms: float = math.nan
    p99_ms: float = math.nan
    p999_ms: float = math.nan
    max_ms: float = math.nan
    pub_rate: float = 0.0
    delivery_rate: float = 0.0  # messages/s per client, first publish to last arrival
    wall_s: float = 0.0
    sut_cpu_s: float = 0.0
    sut_cpu_by_proc: dict[str, float] = field(default_factory=dict)
    broker_cpu_s: float = 0.0
    sut_rss_mb: float = 0.0  # sum of each process's peak (VmHWM)
    sut_pss_mb: float = 0.0  # highest sampled sum of PSS (shared pages split) during the window
    broker_rss_mb: float = 0.0
    pub_cpu_util_max: float = 0.0
    pub_max_lag_ms: float = 0.0
    client_cpu_util_max: float = 0.0
    load_cores: float = 0.0  # publishers + clients, in cores over the window
    other_cores: float = 0.0  # everything else on the machine (other people's work), in cores
    steal_cores: float = 0.0  # cores the hypervisor gave to other virtual machines
    limits: list[str] = field(default_factory=list)

    @property
    def loss(self) -> float:
        return self.lost / self.expected if self.expected else 1.0

    @property
    def cpu_per_1k(self) -> float:
        return self.sut_cpu_s / (self.published / 1000) if self.published else math.nan

    @property
    def broker_cpu_per_1k(self) -> float:
        return self.broker_cpu_s / (self.published / 1000) if self.published else math.nan

    @property
    def clean(self) -> bool:
        return self.loss <= MAX_LOSS and self.p99_ms <= MAX_P99_MS

    def as_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d.update(
            loss=self.loss,
            cpu_per_1k=self.cpu_per_1k,
            broker_cpu_per_1k=self.broker_cpu_per_1k,
            clean=self.clean,
        )
        return d


class Session:
    """One started system plus ``clients`` WebSocket clients in a few processes."""

    def __init__(self, system: System, clients: int, options: Options, workdir: Path) -> None:
        self.system = system
        self.clients = clients
        self.options = options
        self.workdir = workdir
        self.procs: list[ChildProc] = []
        self.runs = 0

    def client_proc_count(self) -> int:
        if self.options.client_procs:
            return min(self.clients, self.options.client_procs)
        # One process keeps up with ~50k messages/s; more processes than cores only add
        # context switches, but 1,000 clients x 100 msg/s is 100k deliveries/s.
        return max(1, min(4, math.ceil(self.clients / 25)))

    def start(self) -> Session:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.system.start()
        try:
            nproc = self.client_proc_count()
            per = [
                self.clients // nproc + (1 if i < self.clients % nproc else 0) for i in range(nproc)
            ]
            for i, conns in enumerate(per):
                spec = {
                    "id": i,
                    "mode": self.system.client_mode,
                    "host": HOST,
                    "port": self.system.ws_port,
                    "path": self.system.ws_path,
                    "conns": conns,
                    "topic": TOPIC_FILTER,
                }
                self.procs.append(
                    ChildProc(
                        [PYTHON, "-m", "bench.load.clients", json.dumps(spec)],
                        self.workdir / f"clients-{i}.log",
                    )
                )
            failed = 0
            for proc in self.procs:
                words = proc.readline(120).split()
                if not words or words[0] != "READY":
                    raise RuntimeError(f"client process said {words!r}")
                failed += int(words[2])
            if failed:
                raise RuntimeError(
                    f"{failed} of {self.clients} WebSocket clients could not connect"
                )
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for proc in self.procs:
            proc.close()
        self.procs = []
        self.system.stop()

    # -- publishing
    def _publish(
        self, run: str, rate: float, count: int, start_delay: float = 1.0
    ) -> tuple[list[subprocess.Popen[bytes]], int]:
        npub = max(1, min(self.options.publishers, count))
        start_at = time.monotonic_ns() + int(start_delay * 1e9)
        devices = list(range(self.options.devices))
        pubs = []
        for i in range(npub):
            spec = {
                "host": HOST,
                "port": self.system.broker.port,
                "pub": i,
                "run": run,
                "rate": rate / npub,
                "count": count // npub + (1 if i < count % npub else 0),
                "qos": self.options.qos,
                "devices": devices[i::npub] or devices,
                "start_at_ns": start_at,
                "max_seconds": 600,
            }
            with open(self.workdir / "publishers.log", "ab") as err:
                pubs.append(
                    subprocess.Popen(
                        [PYTHON, "-m", "bench.load.publisher", json.dumps(spec)],
                        stdout=subprocess.PIPE,
                        stderr=err,
                        cwd=ROOT,
                    )
                )
        return pubs, start_at

    @staticmethod
    def _collect(pubs: list[subprocess.Popen[bytes]], timeout: float) -> list[dict[str, Any]]:
        results = []
        deadline = time.monotonic() + timeout
        for p in pubs:
            try:
                out, _ = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                out, _ = p.communicate()
            try:
                results.append(json.loads(out.decode().strip().splitlines()[-1]))
            except (ValueError, IndexError):
                results.append(
                    {
                        "sent": 0,
                        "acked": 0,
                        "first_ns": 0,
                        "last_ns": 0,
                        "cpu_util": 0.0,
                        "max_lag_ms": 0.0,
                        "error": f"publisher exited {p.returncode}",
                    }
                )
        return results

    def _stat(self) -> tuple[int, int, int]:
        unique = dups = alive = 0
        for proc in self.procs:
            words = proc.ask("STAT").split()
            unique += int(words[1])
            dups += int(words[2])
            alive += int(words[3])
        return unique, dups, alive

    def _set_run(self, run: str) -> None:
        for proc in self.procs:
            if proc.ask(f"RUN {run}") != "OK":
                raise RuntimeError("client process did not accept RUN")

    def warmup(self, rate: float, seconds: float) -> None:
        """Traffic nobody measures: connections, caches and JITs settle first."""
        if seconds <= 0:
            return
        self.runs += 1
        self._set_run(f"w{self.runs}")
        count = max(1, int(rate * seconds))
        pubs, _ = self._publish(f"w{self.runs}", rate, count, start_delay=0.5)
        results = self._collect(pubs, seconds + 60)
        expected = sum(r["acked"] for r in results) * self.clients
        self._drain(expected, idle=0.5, cap=10)

    def _drain(self, expected: int, idle: float, cap: float) -> None:
        deadline = time.monotonic() + cap
        last = -1
        last_change = time.monotonic()
        while time.monotonic() < deadline:
            unique, _, _ = self._stat()
            if unique >= expected:
                return
            if unique != last:
                last, last_change = unique, time.monotonic()
            elif time.monotonic() - last_change >= idle:
                return
            time.sleep(0.1)

    def measure(self, rate: float, count: int, drain_cap: float = 60.0) -> Measurement:
        """Publish ``count`` numbered uplinks at ``rate`` (0 = as fast as possible)."""
        self.runs += 1
        run = f"m{self.runs}"
        self._set_run(run)
        m = Measurement(run=run, target_rate=rate, clients=self.clients)
        sut = self.system.sut_pids()
        broker_pid = self.system.broker_pid()
        pubs, start_at = self._publish(run, rate, count)

        # Sample memory while the run goes (VmHWM also gives each process's exact peak).
        stop_sampling = threading.Event()
        peak = [0]

        def sample() -> None:
            while not stop_sampling.wait(0.25):
                peak[0] = max(peak[0], sum(pss_kib(pid) for pid in sut.values()))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        time.sleep(max(0.0, (start_at - time.monotonic_ns()) / 1e9))
        cpu0 = {name: cpu_seconds(pid) for name, pid in sut.items()}
        broker0 = cpu_seconds(broker_pid)
        busy0, steal0 = machine_cpu_seconds()
        t0 = time.monotonic()

        expected_secs = count / rate if rate else count / 5000
        results = self._collect(pubs, expected_secs + 120)
        m.published = sum(r["sent"] for r in results)
        m.acked = sum(r["acked"] for r in results)
        m.expected = m.acked * self.clients
        self._drain(m.expected, idle=self.options.drain_idle, cap=drain_cap)

        m.wall_s = time.monotonic() - t0
        busy1, steal1 = machine_cpu_seconds()
        busy, steal = busy1 - busy0, steal1 - steal0
        cpu1 = {name: cpu_seconds(pid) for name, pid in sut.items()}
        m.broker_cpu_s = cpu_seconds(broker_pid) - broker0
        stop_sampling.set()
        sampler.join()
        m.sut_cpu_by_proc = {name: cpu1[name] - cpu0[name] for name in sut}
        m.sut_cpu_s = sum(m.sut_cpu_by_proc.values())
        m.sut_rss_mb = sum(memory_kib(pid)[1] for pid in sut.values()) / 1024
        peak[0] = max(peak[0], sum(pss_kib(pid) for pid in sut.values()))
        m.sut_pss_mb = peak[0] / 1024
        m.broker_rss_mb = (
            memory_kib(broker_pid)[1] / 1024 if self.system.name != "mosquitto" else m.sut_rss_mb
        )

        latencies = array("q")
        first_pub = min((r["first_ns"] for r in results if r["first_ns"]), default=0)
        last_pub = max((r["last_ns"] for r in results), default=0)
        last_recv = 0
        client_utils = []
        client_cpu = 0.0
        for i, proc in enumerate(self.procs):
            path = self.workdir / f"{run}-clients-{i}.json"
            if proc.ask(f"DUMP {path}") != "OK":
                raise RuntimeError("client process did not dump")
            summary = json.loads(path.read_text())
            lat_path = Path(str(path) + ".lat")
            with open(lat_path, "rb") as f:
                latencies.frombytes(f.read())
            lat_path.unlink()
            for unique, dups, reordered, closed in summary["conns"]:
                m.delivered += unique
                m.lost += max(0, m.acked - unique)
                m.dups += dups
                m.reordered += reordered
                m.closed_clients += closed
            last_recv = max(last_recv, summary["last_ns"])
            client_utils.append(summary["cpu_s"] / max(m.wall_s, 1e-9))
            client_cpu += summary["cpu_s"]
        lat = sorted(latencies)
        m.p50_ms, m.p99_ms = percentile(lat, 50) / 1000, percentile(lat, 99) / 1000
        m.p999_ms, m.max_ms = percentile(lat, 99.9) / 1000, (lat[-1] / 1000 if lat else math.nan)
        if last_pub > first_pub:
            m.pub_rate = m.published / ((last_pub - first_pub) / 1e9)
        if last_recv > first_pub:
            m.delivery_rate = (m.delivered / self.clients) / ((last_recv - first_pub) / 1e9)
        m.pub_cpu_util_max = max((r.get("cpu_util", 0.0) for r in results), default=0.0)
        m.pub_max_lag_ms = max((r.get("max_lag_ms", 0.0) for r in results), default=0.0)
        m.client_cpu_util_max = max(client_utils, default=0.0)
        pub_cpu = sum(r.get("cpu_s", 0.0) for r in results)
        m.load_cores = (pub_cpu + client_cpu) / max(m.wall_s, 1e-9)
        own = (
            m.sut_cpu_s
            + (m.broker_cpu_s if self.system.name != "mosquitto" else 0.0)
            + pub_cpu
            + client_cpu
        )
        m.other_cores = max(0.0, (busy - own) / max(m.wall_s, 1e-9))
        m.steal_cores = max(0.0, steal / max(m.wall_s, 1e-9))
        m.limits = self._limits(m, results)
        return m

    def _limits(self, m: Measurement, results: list[dict[str, Any]]) -> list[str]:
        """What limited this run, as far as the load generator's own numbers tell."""
        notes = []
        if any("error" in r for r in results):
            notes.append("a publisher failed")
        if m.pub_cpu_util_max > SATURATED:
            notes.append(f"publisher saturated ({m.pub_cpu_util_max:.0%} of a core)")
        if m.target_rate and m.pub_rate < 0.95 * m.target_rate:
            notes.append(f"publishers reached {m.pub_rate:,.0f} of {m.target_rate:,.0f} msg/s")
        if m.client_cpu_util_max > SATURATED:
            notes.append(f"a client process saturated ({m.client_cpu_util_max:.0%} of a core)")
        busiest = max(m.sut_cpu_by_proc.items(), key=lambda kv: kv[1], default=("", 0.0))
        if busiest[0] and m.wall_s and busiest[1] / m.wall_s > SATURATED:
            notes.append(
                f"SUT process {busiest[0]} saturated ({busiest[1] / m.wall_s:.0%} of a core)"
            )
        if m.load_cores > 0.5:
            notes.append(f"the load generator took {m.load_cores:.1f} of the machine's cores")
        if m.other_cores > 0.25:
            notes.append(f"other processes on the machine used {m.other_cores:.1f} cores")
        if m.steal_cores > 0.25:
            notes.append(f"the hypervisor took {m.steal_cores:.1f} cores (steal)")
        if m.closed_clients:
            notes.append(f"{m.closed_clients} clients were disconnected")
        return notes
