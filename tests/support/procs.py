"""Run a service as a real subprocess (``python -m services.<name>``) and watch its log."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.support.timing import seconds, wait_for

ROOT = Path(__file__).resolve().parents[2]


class ServiceProcess:
    def __init__(
        self,
        name: str,
        env: dict[str, str],
        workdir: Path,
        args: list[str] | None = None,
        prefix: list[str] | None = None,
    ) -> None:
        """``prefix``: a command that execs the service (``chrt``, ``setpriv``, ...)."""
        self.name = name
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", "LOG_LEVEL": "info", **env}
        self.args = args or []
        self.prefix = prefix or []
        self.log_path = workdir / f"{name}-{time.monotonic_ns()}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ServiceProcess:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [*self.prefix, sys.executable, "-m", f"services.{self.name}", *self.args],
                env=self.env,
                cwd=ROOT,
                stdout=log,
                stderr=log,
            )
        return self

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_for_log(self, pattern: str, timeout: float = 10.0) -> re.Match[str]:
        regex = re.compile(pattern)

        def found() -> re.Match[str] | None:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(
                    f"{self.name} exited with {self.proc.returncode}:\n{self.log_text()[-3000:]}"
                )
            return regex.search(self.log_text())

        return wait_for(found, timeout, f"{self.name} log line /{pattern}/")

    def send_signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        """Send ``sig`` and return the exit code; kill (and fail) if it hangs."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=seconds(timeout))
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(
                    f"{self.name} did not stop within {timeout}s:\n{self.log_text()[-3000:]}"
                ) from None
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def run_cli(
    name: str, args: list[str], env: dict[str, str] | None = None, timeout: float = 30.0
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m services.<name> ARGS`` to completion (for --help, bad config, tools)."""
    return subprocess.run(
        [sys.executable, "-m", f"services.{name}", *args],
        env={**os.environ, **(env or {})},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=seconds(timeout),
    )
