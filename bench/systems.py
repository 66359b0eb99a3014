"""The systems under test, each started on free loopback ports with a private broker.

- ``gateway``: ingest + N decode + wsfanout as real processes, started exactly the way
  the tests start them (tests/support/stack.py);
- ``naive``: bench/peers/naive_bridge.py (paho loop_start + websockets broadcast);
- ``nodered``: Node-RED 4, flow ``mqtt in`` → ``websocket out`` (bench/peers/nodered.py);
- ``mosquitto``: no gateway, browsers on Mosquitto's own MQTT-over-WebSocket listener.

Every system gets the same broker config (bench/broker.py). ``sut_pids`` are the
processes whose CPU and memory count as the system's; the broker is measured apart
(for ``mosquitto`` the broker *is* the system).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from bench.broker import BenchBroker
from bench.common import (
    HOST,
    PYTHON,
    ROOT,
    free_port,
    stop_process,
    wait_file_text,
    wait_port,
)
from bench.payload import TOPIC_FILTER

SYSTEMS = ("gateway", "naive", "nodered", "mosquitto")
LABELS = {
    "gateway": "gateway",
    "gateway-copy": "gateway (modified copy)",
    "naive": "naive bridge",
    "nodered": "Node-RED 4",
    "mosquitto": "Mosquitto WS",
}


class System:
    name = ""
    client_mode = "json"  # how the bench clients talk to it (see bench/load/clients.py)
    ws_path = "/"

    def __init__(self, workdir: Path, options: dict[str, object]) -> None:
        self.workdir = workdir
        self.options = options
        self.broker = BenchBroker(workdir / "broker", websockets=self.name == "mosquitto")
        self.ws_port = 0

    @property
    def label(self) -> str:
        return LABELS[self.name]

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.broker.start()
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        try:
            self._stop()
        finally:
            self.broker.stop()

    def _stop(self) -> None:
        pass

    def sut_pids(self) -> dict[str, int]:
        raise NotImplementedError

    def broker_pid(self) -> int:
        return self.broker.pid

    def logs_tail(self) -> str:
        return ""


class _SingleProcess(System):
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path

    def _popen(self, cmd: list[str], env: dict[str, str] | None = None) -> None:
        self.log_path = self.workdir / f"{self.name}.log"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=log, cwd=ROOT, env={**os.environ, **(env or {})}
            )

    def _stop(self) -> None:
        stop_process(self.proc)
        self.proc = None

    def sut_pids(self) -> dict[str, int]:
        assert self.proc is not None
        return {self.name: self.proc.pid}

    def logs_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:] if self.log_path.exists() else ""


class Gateway(System):
    name = "gateway"

    def _start(self) -> None:
        # Imported here so the peers run even while the services are being written.
        import tests.support.procs as procs
        from tests.support.stack import Stack

        env = {"LOG_LEVEL": "info", **dict(self.options.get("gateway_env", {}))}  # type: ignore[call-overload]
        decoders = self.options.get("decoders", 1)
        if self.name == "gateway-copy" and self.options.get("compare_decoders"):
            decoders = self.options["compare_decoders"]
        self.stack = Stack(self.broker, self.workdir, decoders=int(str(decoders)), env=env)  # type: ignore[arg-type]
        root = self.options.get("compare_root" if self.name == "gateway-copy" else "gateway_root")
        saved = procs.ROOT
        if root:
            # Measure a modified copy of the services (bench/run.py --gateway-root DIR):
            # ServiceProcess runs `python -m services.X` in procs.ROOT.
            procs.ROOT = Path(str(root)).resolve()
        try:
            self.stack.start()
        finally:
            procs.ROOT = saved
        self.ws_port = self.stack.ws_port

    def _stop(self) -> None:
        stack = getattr(self, "stack", None)
        if stack is None:
            return
        try:
            stack.stop()
        except AssertionError:
            stack.kill_all()

    def sut_pids(self) -> dict[str, int]:
        pids: dict[str, int] = {}
        for name, procs in self.stack.procs.items():
            for i, p in enumerate(procs):
                assert p.proc is not None
                pids[name if len(procs) == 1 else f"{name}-{i + 1}"] = p.proc.pid
        return pids

    def logs_tail(self) -> str:
        return self.stack.logs()[-4000:] if hasattr(self, "stack") else ""


class GatewayCopy(Gateway):
    """The gateway run from another checkout (``--compare-root``): before/after in one run."""

    name = "gateway-copy"


class Naive(_SingleProcess):
    name = "naive"

    def _start(self) -> None:
        self.ws_port = free_port()
        self._popen(
            [
                PYTHON,
                "-m",
                "bench.peers.naive_bridge",
                "--mqtt-host",
                HOST,
                "--mqtt-port",
                str(self.broker.port),
                "--ws-host",
                HOST,
                "--ws-port",
                str(self.ws_port),
                "--topic",
                TOPIC_FILTER,
            ],
            env={"PYTHONUNBUFFERED": "1"},
        )
        wait_file_text(self.log_path, r"listening on", 20, self.proc)
        wait_file_text(self.log_path, r"subscribed", 20, self.proc)


class NodeRed(_SingleProcess):
    name = "nodered"
    ws_path = "/ws"

    def _start(self) -> None:
        from bench.peers import nodered

        nodered.ensure_installed()
        self.ws_port = free_port()
        cmd = nodered.prepare(
            self.workdir / "nodered",
            HOST,
            self.broker.port,
            self.ws_port,
            TOPIC_FILTER,
            str(self.options.get("nodered_datatype", "auto-detect")),
        )
        self._popen(cmd)
        for pattern in nodered.READY_PATTERNS:
            wait_file_text(self.log_path, pattern, 60, self.proc)
        wait_port(self.ws_port, 10, self.proc)


class MosquittoWS(System):
    name = "mosquitto"
    client_mode = "mqtt"

    def _start(self) -> None:
        self.ws_port = self.broker.ws_port

    def sut_pids(self) -> dict[str, int]:
        return {"mosquitto": self.broker.pid}

    def logs_tail(self) -> str:
        return (
            self.broker.log_path.read_text(errors="replace")[-2000:]
            if self.broker.log_path.exists()
            else ""
        )


def make(name: str, workdir: Path, options: dict[str, object]) -> System:
    cls = {
        "gateway": Gateway,
        "gateway-copy": GatewayCopy,
        "naive": Naive,
        "nodered": NodeRed,
        "mosquitto": MosquittoWS,
    }[name]
    return cls(workdir, options)
