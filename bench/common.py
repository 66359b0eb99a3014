"""What every part of the benchmark shares: paths, free ports, /proc readings, percentiles.

The harness reads CPU time and memory straight from /proc (Linux only) so it needs no
extra dependency; CPU is utime+stime of the whole process (all threads).
"""

from __future__ import annotations

import os
import platform
import re
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
OUT = BENCH / "out"
PYTHON = sys.executable
CLK_TCK = os.sysconf("SC_CLK_TCK")
# Every benchmark target lives on loopback (the workplace forbids traffic elsewhere).
HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def stop_process(proc: subprocess.Popen[bytes] | None, timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if it does not exit within ``timeout`` seconds."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait_port(port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Wait until something accepts TCP connections on HOST:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection((HOST, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {HOST}:{port} after {timeout:.0f}s")


def wait_file_text(
    path: Path, pattern: str, timeout: float, proc: subprocess.Popen[bytes] | None = None
) -> None:
    regex = re.compile(pattern)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and regex.search(path.read_text(errors="replace")):
            return
        if proc is not None and proc.poll() is not None:
            tail = path.read_text(errors="replace")[-2000:] if path.exists() else ""
            raise RuntimeError(f"process exited with {proc.returncode} before /{pattern}/:\n{tail}")
        time.sleep(0.05)
    raise RuntimeError(f"/{pattern}/ not seen in {path} after {timeout:.0f}s")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds; 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return 0.0
    # The command name may contain spaces and parentheses: split after the last ')'.
    fields = stat[stat.rindex(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def memory_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process in KiB: resident now and its peak since it started."""
    rss = hwm = 0
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
                elif line.startswith("VmHWM:"):
                    hwm = int(line.split()[1])
    except OSError:
        pass
    return rss, hwm


def cpu_times(stat_line: str) -> tuple[float, float]:
    """The first line of /proc/stat → (seconds the cores were busy, seconds stolen).

    Busy is user, nice, system, irq and softirq (guest time is inside user). Steal is
    time the hypervisor gave this virtual machine's cores to other machines: neither our
    processes nor anyone else's here, so it is counted apart."""
    fields = [int(x) for x in stat_line.split()[1:]]
    fields += [0] * (8 - len(fields))
    busy = fields[0] + fields[1] + fields[2] + fields[5] + fields[6]
    return busy / CLK_TCK, fields[7] / CLK_TCK


def machine_cpu_seconds() -> tuple[float, float]:
    """(busy, stolen) CPU seconds of all cores since boot, to tell how much of the machine
    other processes, and the hypervisor, took during a run."""
    with open("/proc/stat") as f:
        return cpu_times(f.readline())


def pss_kib(pid: int) -> int:
    """Proportional set size: shared pages (the interpreter, libraries) split between the
    processes that map them, so a sum over processes does not count them N times."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


@dataclass
class ProcSample:
    cpu: dict[int, float]
    at: float


def sample_cpu(pids: list[int]) -> ProcSample:
    return ProcSample({pid: cpu_seconds(pid) for pid in pids}, time.monotonic())


def percentile(sorted_values: list[int] | list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list (q in 0..100)."""
    if not sorted_values:
        return float("nan")
    rank = max(0, min(len(sorted_values) - 1, int(round(q / 100.0 * len(sorted_values) + 0.5)) - 1))
    return float(sorted_values[rank])


def machine_info() -> dict[str, str]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass

    def version(cmd: list[str]) -> str:
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
            return (out.stdout or out.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "n/a"

    def pkg(name: str) -> str:
        from importlib.metadata import PackageNotFoundError
        from importlib.metadata import version as v

        try:
            return v(name)
        except PackageNotFoundError:
            return "n/a"

    return {
        "nproc": str(os.cpu_count()),
        "cpu": model or platform.processor(),
        "memory": f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.1f} GiB",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "mosquitto": version(["mosquitto", "-h"]).replace("mosquitto version ", ""),
        "node": version(["node", "--version"]),
        "paho-mqtt": pkg("paho-mqtt"),
        "websockets": pkg("websockets"),
        "pyzmq": pkg("pyzmq"),
        "orjson": pkg("orjson"),
        "loadavg at start": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
    }


def raise_fd_limit() -> None:
    """1,000 WebSocket clients need more descriptors than a default soft limit of 1024;
    children (the systems under test, the clients) inherit the raised limit."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
