"""The whole gateway for fault injection: :class:`tests.support.stack.Stack` plus a metrics
port for ingest and for every decode replica, so the harness can read each service's own
counters, and "slots" so a killed service is restarted with exactly the same settings."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

from tests.faults.harness import Samples, new_stream, scrape, uplink
from tests.support.broker import Broker
from tests.support.mqtt import Publisher
from tests.support.ports import free_port
from tests.support.procs import ServiceProcess
from tests.support.stack import READY, Stack
from tests.support.timing import wait_for


class FaultStack(Stack):
    def __init__(
        self,
        broker: Broker,
        workdir: Path,
        decoders: int = 2,
        env: dict[str, str] | None = None,
        service_env: dict[str, dict[str, str]] | None = None,
    ) -> None:
        super().__init__(broker, workdir, decoders=decoders, env=env)
        # Per-service settings: some names mean different sockets in different services
        # (each service has its own), so they are kept per service.
        self.service_env = service_env or {}
        self.metrics_ports: dict[tuple[str, int], int] = {}
        self.baseline: Any = None  # fan-out counters after warm_up(); None after its restart
        self.current: dict[tuple[str, int], ServiceProcess] = {}

    # ----------------------------------------------------------------- processes

    def start_slot(self, name: str, index: int = 0, wait: bool = True) -> ServiceProcess:
        """(Re)start service ``name`` #``index`` with the same env and metrics port."""
        env = dict(self.service_env.get(name, {}))
        if name in ("ingest", "decode"):
            port = self.metrics_ports.setdefault((name, index), free_port())
            env["METRICS_PORT"] = str(port)
        if name == "wsfanout":
            self.baseline = None  # a new process counts from 0
        proc = self.start_service(name, env=env, wait=False)
        self.current[(name, index)] = proc
        if wait:
            proc.wait_for_log(READY[name], timeout=30)
        return proc

    def start(self) -> FaultStack:
        # Fan-out first, then decoders, then ingest, so nothing is published into the void.
        self.start_slot("wsfanout")
        for i in range(self.decoders):
            self.start_slot("decode", i)
        self.start_slot("ingest")
        self.warm_up()
        return self

    def warm_up(self) -> None:
        """Send one uplink through and wait for the fan-out to number it, so ingest's source
        is established before a case starts: the cases measure their fault, not the known
        start-up race of a new source (see tests/faults/README.md, seqtrack). The fan-out's
        counters at this point are the baseline the checks subtract."""
        from tests.faults.checks import fanout_counters  # import here: checks imports us

        before = fanout_counters(self).accepted
        pub = Publisher(self.broker.host, self.broker.port)
        try:
            pub.publish_all([uplink(new_stream(1), 0)])
        finally:
            pub.close()
        wait_for(lambda: fanout_counters(self).accepted > before, 20, "the warm-up uplink")
        self.baseline = fanout_counters(self)

    def proc(self, name: str, index: int = 0) -> ServiceProcess:
        return self.current[(name, index)]

    @property
    def ingest(self) -> ServiceProcess:
        return self.proc("ingest")

    @property
    def fanout(self) -> ServiceProcess:
        return self.proc("wsfanout")

    def decoder(self, index: int) -> ServiceProcess:
        return self.proc("decode", index)

    def stop_slot(
        self, name: str, index: int = 0, sig: int = signal.SIGTERM, timeout: float = 15.0
    ) -> int:
        return self.proc(name, index).stop(sig, timeout=timeout)

    def kill_slot(self, name: str, index: int = 0) -> None:
        self.proc(name, index).kill()

    # ----------------------------------------------------------------- figures

    def metrics_url(self, name: str, index: int = 0) -> str:
        if name == "wsfanout":
            return f"{self.http_url}/metrics"
        return f"http://127.0.0.1:{self.metrics_ports[(name, index)]}/metrics"

    def healthz_url(self, name: str, index: int = 0) -> str:
        if name == "wsfanout":
            return f"{self.http_url}/healthz"
        return f"http://127.0.0.1:{self.metrics_ports[(name, index)]}/healthz"

    def metrics(self, name: str, index: int = 0) -> Samples:
        return scrape(self.metrics_url(name, index))
