"""Where the gateway's time goes: py-spy on every service while it carries a high rate.

py-spy is not a project dependency: it is installed on demand into its own virtualenv
under bench/.tools (gitignored). It samples each process from outside (no code change,
``--nonblocking`` so it does not pause the services); we fold its raw stacks into the
functions that use the most time, per service and per package.

    python -m bench.profiling --rate 8000 --seconds 10      # on its own
    python -m bench.run --profile                           # after the scenarios
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.common import BENCH, CLK_TCK, OUT, cpu_seconds, raise_fd_limit
from bench.harness import Options, Session
from bench.systems import make

VENV = BENCH / ".tools" / "pyspy"
PY_SPY = VENV / "bin" / "py-spy"
SAMPLE_RATE = 200


def thread_stats(pid: int) -> dict[str, tuple[str, float, int]]:
    """Per thread: (name, CPU seconds, context switches) from /proc/<pid>/task."""
    out: dict[str, tuple[str, float, int]] = {}
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return out
    for task in tasks:
        try:
            stat = (task / "stat").read_bytes()
            name = (task / "comm").read_text().strip()
            switches = 0
            for line in (task / "status").read_text().splitlines():
                if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                    switches += int(line.split()[1])
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2 :].split()
        out[task.name] = (name, (int(fields[11]) + int(fields[12])) / CLK_TCK, switches)
    return out


def ensure_py_spy() -> Path:
    if not PY_SPY.exists():
        print(
            f"Installing py-spy into {VENV} (once; not a project dependency) ...",
            file=sys.stderr,
            flush=True,
        )
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True, timeout=300)
        subprocess.run(
            [str(VENV / "bin" / "pip"), "install", "-q", "py-spy"], check=True, timeout=600
        )
    return PY_SPY


def _frame_file(frame: str) -> str:
    # "Func.name (path/to/file.py:123)" -> "path/to/file.py"
    inside = frame[frame.rfind("(") + 1 : -1] if frame.endswith(")") else ""
    return inside.rsplit(":", 1)[0]


def _package(path: str) -> str:
    parts = path.split("/")
    if parts[0] in ("services", "shared", "bench") and len(parts) > 1:
        return "/".join(parts[:2]).removesuffix(".py")
    if parts[0].startswith("<frozen"):
        return "python runtime"
    return parts[0].removesuffix(".py") if len(parts) > 0 else "?"


def fold(raw: str) -> dict[str, Any]:
    """Self time per function, inclusive time per project function, self time per package."""
    self_counts: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        if frames and frames[0].startswith("thread ("):
            threads[frames[0]] += count
            frames = frames[1:]
        if not frames:
            continue
        total += count
        leaf = frames[-1]
        self_counts[leaf] += count
        packages[_package(_frame_file(leaf))] += count
        for frame in set(frames):
            if _frame_file(frame).startswith(("services/", "shared/")):
                incl[frame] += count
    pct = (lambda c: 100.0 * c / total) if total else (lambda c: 0.0)
    # Frames on (nearly) every stack are the entry points (main, run loop): no information.
    inclusive = [(pct(c), f) for f, c in incl.most_common() if c < 0.97 * total][:15]
    return {
        "samples": total,
        "self": [(pct(c), f) for f, c in self_counts.most_common(15)],
        "inclusive": inclusive,
        "packages": [(pct(c), p) for p, c in packages.most_common(10)],
        "threads": [(pct(c), t) for t, c in threads.most_common(6)],
    }


def profile_gateway(
    results: dict[str, Any] | None,
    settings: Any,
    workdir: Path,
    rate: float,
    seconds: float,
    log: Any = print,
) -> dict[str, Any]:
    try:
        spy = ensure_py_spy()
        version = subprocess.run(
            [str(spy), "--version"], capture_output=True, text=True, timeout=30
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        return {"error": f"py-spy unavailable: {exc}"}
    if not rate:
        best = None
        for sc in (results or {}).get("scenarios", []):
            if sc["kind"] == "findmax" and sc["clients"] == 1:
                best = ((sc["systems"].get("gateway") or {}).get("measurement") or {}).get(
                    "target_rate"
                )
        rate = 0.8 * best if best else 5000.0
    options = settings.options if settings is not None else Options()
    system_options = settings.system_options if settings is not None else {}
    warmup = settings.warmup if settings is not None else 2.0
    log(f"== profile: gateway at {rate:,.0f} msg/s, 1 client, py-spy {seconds:g} s per service")
    session = Session(
        make("gateway", workdir / "system", system_options), 1, options, workdir
    ).start()
    out: dict[str, Any] = {"rate": rate, "seconds": seconds, "py_spy": version, "services": {}}
    try:
        session.warmup(rate, warmup)
        pids = session.system.sut_pids()
        holder: dict[str, Any] = {}
        runner = threading.Thread(
            target=lambda: holder.update(m=session.measure(rate, int(rate * (seconds + 3)))),
            daemon=True,
        )
        runner.start()
        time.sleep(1.5)  # the publishers start 1 s after measure() begins
        cpu0 = {name: cpu_seconds(pid) for name, pid in pids.items()}
        threads0 = {name: thread_stats(pid) for name, pid in pids.items()}
        t0 = time.monotonic()
        spies = {}
        for name, pid in pids.items():
            raw = workdir / f"{name}.raw"
            spies[name] = (
                raw,
                subprocess.Popen(
                    [
                        str(spy),
                        "record",
                        "--pid",
                        str(pid),
                        "--duration",
                        str(int(seconds)),
                        "--rate",
                        str(SAMPLE_RATE),
                        "--format",
                        "raw",
                        "--nonblocking",
                        "--threads",
                        "--function",
                        "--output",
                        str(raw),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=open(workdir / f"{name}.pyspy.log", "wb"),  # noqa: SIM115 (the child keeps it)
                ),
            )
        for _name, (_raw, proc) in spies.items():
            proc.wait(timeout=seconds + 60)
        wall = time.monotonic() - t0
        cpu = {name: cpu_seconds(pid) - cpu0[name] for name, pid in pids.items()}
        threads1 = {name: thread_stats(pid) for name, pid in pids.items()}
        messages = rate * wall
        runner.join(timeout=seconds + 200)
        m = holder.get("m")
        if m is not None:
            out["summary"] = (
                f"{m.delivered:,}/{m.expected:,} delivered, "
                f"p50 {m.p50_ms:.2f} ms, p99 {m.p99_ms:.2f} ms; "
                f"broker {m.broker_cpu_s / max(m.wall_s, 1e-9):.0%} of a core"
            )
        for name, (raw, _proc) in spies.items():
            folded = (
                fold(raw.read_text())
                if raw.exists()
                else {"samples": 0, "self": [], "inclusive": [], "packages": []}
            )
            folded["cpu_share"] = f"{cpu[name] / wall:.0%}"
            folded["cpu_us_per_msg"] = cpu[name] / messages * 1e6
            rows = []
            for tid, (tname, tcpu, sw) in threads1[name].items():
                if tid in threads0[name]:
                    _, cpu_before, sw_before = threads0[name][tid]
                    if tcpu - cpu_before > 0.005 or sw - sw_before > 10:
                        rows.append(
                            (tname, (tcpu - cpu_before) / wall, (sw - sw_before) / messages)
                        )
            folded["os_threads"] = rows
            out["services"][name] = folded
    except Exception as exc:  # profiling is extra: report, do not crash the benchmark
        out["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        session.stop()
    return out


def main() -> int:
    from bench.report import profile_section

    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--rate", type=float, default=5000)
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--decoders", type=int, default=2)
    args = p.parse_args()
    raise_fd_limit()
    workdir = OUT / f"profile-{time.strftime('%Y%m%d-%H%M%S')}"
    workdir.mkdir(parents=True, exist_ok=True)

    class _Settings:
        options = Options()
        system_options = {"decoders": args.decoders}
        warmup = 2.0

    prof = profile_gateway(None, _Settings(), workdir, args.rate, args.seconds)
    text = "\n".join(profile_section(prof))
    (workdir / "PROFILE.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
