"""A private Mosquitto for one system under test, on free loopback ports.

Same settings as the test broker (tests/support/broker.py) where they matter for speed:
Nagle off, queues sized for the 50,000-message burst. Persistence is off: a benchmark
broker has no state worth keeping, and every system gets the same broker. With
``websockets=True`` it also opens its own MQTT-over-WebSocket listener (the peer that
puts no gateway at all between the broker and the browsers).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from bench.common import HOST, free_port, stop_process, wait_port

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


class BenchBroker:
    def __init__(self, workdir: Path, websockets: bool = False) -> None:
        self.workdir = workdir
        self.host = HOST
        self.port = free_port()
        self.ws_port = free_port() if websockets else 0
        self.proc: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / "mosquitto.log"

    def config_text(self) -> str:
        lines = [
            "user root",
            "per_listener_settings false",
            "allow_anonymous true",
            f"listener {self.port} {self.host}",
        ]
        if self.ws_port:
            lines += [f"listener {self.ws_port} {self.host}", "protocol websockets"]
        lines += [
            "persistence false",
            "max_queued_messages 1000000",
            "max_inflight_messages 100",
            "set_tcp_nodelay true",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "",
        ]
        return "\n".join(lines)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> BenchBroker:
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(self.config_text())
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=log, stderr=log)
        wait_port(self.port, 10, self.proc)
        if self.ws_port:
            wait_port(self.ws_port, 10, self.proc)
        return self

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None
