"""The whole gateway as real processes: ingest, N decode workers, wsfanout, wired on free
ports to a test broker. Readiness is read from each service's lifecycle log lines."""

from __future__ import annotations

from pathlib import Path

from tests.support.broker import Broker
from tests.support.ports import free_endpoint, free_port
from tests.support.procs import ServiceProcess

# Lifecycle lines every service prints once it is ready (tests wait on these).
READY = {
    "ingest": r"Subscribed to",
    "decode": r"Decoder ready",
    "wsfanout": r"WebSocket server listening on",
}


class Stack:
    def __init__(
        self, broker: Broker, workdir: Path, decoders: int = 1, env: dict[str, str] | None = None
    ) -> None:
        self.broker = broker
        self.workdir = workdir
        self.raw = free_endpoint()
        self.events = free_endpoint()
        self.ws_port = free_port()
        self.decoders = decoders
        self.extra = env or {}
        self.env = {
            "MQTT_BROKER": broker.host,
            "MQTT_PORT": str(broker.port),
            "MQTT_CLIENT_ID": f"gw-test-{self.ws_port}",
            "ZMQ_RAW_BIND": self.raw,
            "ZMQ_RAW_CONNECT": self.raw,
            "ZMQ_EVENTS_BIND": self.events,
            "ZMQ_EVENTS_CONNECT": self.events,
            "WEBSOCKET_HOST": "127.0.0.1",
            "WEBSOCKET_PORT": str(self.ws_port),
            "METRICS_PORT": "0",
            **self.extra,
        }
        self.procs: dict[str, list[ServiceProcess]] = {"ingest": [], "decode": [], "wsfanout": []}

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.ws_port}/"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.ws_port}"

    def start_service(
        self, name: str, env: dict[str, str] | None = None, wait: bool = True
    ) -> ServiceProcess:
        proc = ServiceProcess(name, {**self.env, **(env or {})}, self.workdir).start()
        self.procs[name].append(proc)
        if wait:
            proc.wait_for_log(READY[name], timeout=20)
        return proc

    def start(self) -> Stack:
        # Fan-out first, then decoders, then ingest, so nothing is published into the void.
        self.start_service("wsfanout")
        for _ in range(self.decoders):
            self.start_service("decode")
        self.start_service("ingest")
        return self

    def all_procs(self) -> list[ServiceProcess]:
        return [p for procs in self.procs.values() for p in procs]

    def stop(self) -> dict[str, list[int]]:
        """SIGTERM in pipeline order (ingest first, fan-out last); the exit codes."""
        codes: dict[str, list[int]] = {}
        for name in ("ingest", "decode", "wsfanout"):
            codes[name] = [p.stop() for p in self.procs[name] if p.proc is not None]
        return codes

    def kill_all(self) -> None:
        for proc in self.all_procs():
            proc.kill()

    def logs(self) -> str:
        return "\n".join(f"===== {p.name}\n{p.log_text()}" for p in self.all_procs())
