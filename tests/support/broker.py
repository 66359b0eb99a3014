"""A private Mosquitto per test (or per session), on a free loopback port.

The config follows RELIABILITY.md §8: persistence that works when run as root
(``user root``), a queue sized for bursts, Nagle off. Tests can stop, kill and restart it,
and add auth or TLS through ``extra`` config lines.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from tests.support.ports import free_port
from tests.support.timing import seconds

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


class Broker:
    def __init__(
        self, workdir: Path, port: int | None = None, extra: str = "", listener_extra: str = ""
    ) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.extra = extra
        self.listener_extra = listener_extra
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "mosquitto.log"
        self.conf_path = workdir / "mosquitto.conf"
        (workdir / "data").mkdir(parents=True, exist_ok=True)

    def config_text(self) -> str:
        return "\n".join(
            [
                "user root",
                f"listener {self.port} 127.0.0.1",
                self.listener_extra,
                "allow_anonymous true" if "password_file" not in self.extra else "",
                "persistence true",
                f"persistence_location {self.workdir / 'data'}/",
                "autosave_interval 1",
                "max_queued_messages 200000",
                "max_inflight_messages 100",
                "set_tcp_nodelay true",
                "log_dest stderr",
                "log_type error",
                "log_type warning",
                "log_type notice",
                "log_type information",
                "connection_messages true",
                self.extra,
                "",
            ]
        )

    def start(self) -> Broker:
        self.conf_path.write_text(self.config_text())
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [MOSQUITTO, "-c", str(self.conf_path)], stdout=log, stderr=log
            )
        deadline = time.monotonic() + seconds(10)
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {self.log_path.read_text()[-2000:]}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("mosquitto did not start listening")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=seconds(10))
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self, sig: int = signal.SIGTERM) -> None:
        self.stop(sig)
        self.start()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
