"""The scenarios of issue 6 and how each is run against one system.

Every paced scenario starts a fresh system (and broker), connects its clients, warms up
at the scenario's rate (unmeasured), then measures one numbered stream. ``find-max``
climbs a ladder of rates on one system until a step is not clean (loss > 0.1 % or
p99 > 100 ms), restarts the system to clear any backlog, and bisects between the last
clean and the first failing rate. ``burst`` publishes N messages as fast as the
publishers can and measures how long the system takes to deliver them.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.harness import Measurement, Options, Session
from bench.systems import make

LADDER = [
    1000,
    2000,
    3000,
    5000,
    7500,
    10000,
    15000,
    20000,
    25000,
    30000,
    40000,
    50000,
    60000,
    80000,
    100000,
    150000,
    200000,
]


@dataclass
class Scenario:
    key: str
    title: str
    kind: str  # paced | findmax | burst
    rate: float = 0.0
    clients: int = 1
    seconds: float = 10.0
    count: int = 0
    qos: int | None = None  # None: the run's --qos


@dataclass
class Settings:
    """Knobs shared by every scenario of one run (from the command line)."""

    options: Options
    system_options: dict[str, object]
    warmup: float = 2.0
    step_seconds: float = 5.0
    max_start: float = 2000
    max_limit: float = 200000
    refine: int = 2


def default_scenarios(seconds: float, burst: int, burst_qos: int = 1) -> list[Scenario]:
    return [
        Scenario("1k-1", "1,000 msg/s, 1 client", "paced", 1000, 1, seconds),
        Scenario("1k-50", "1,000 msg/s, 50 clients", "paced", 1000, 50, seconds),
        Scenario("100-1000", "100 msg/s, 1,000 clients", "paced", 100, 1000, seconds),
        Scenario("max-1", "highest clean rate (--find-max), 1 client", "findmax", 0, 1),
        Scenario(
            "burst",
            f"{burst:,}-message burst, 1 client, QoS {burst_qos}",
            "burst",
            0,
            1,
            count=burst,
            qos=burst_qos,
        ),
    ]


def run_scenario(
    scenario: Scenario, system: str, settings: Settings, workdir: Path, log: Callable[[str], None]
) -> dict[str, Any]:
    """One scenario on one system: {"measurement": ..., "steps": [...]} or {"error": ...}."""

    options = settings.options
    if scenario.qos is not None and scenario.qos != options.qos:
        options = dataclasses.replace(options, qos=scenario.qos)

    def new_session(tag: str) -> Session:
        sys_obj = make(system, workdir / tag / "system", settings.system_options)
        return Session(sys_obj, scenario.clients, options, workdir / tag).start()

    if scenario.kind == "paced":
        session = new_session("run")
        try:
            session.warmup(scenario.rate, settings.warmup)
            m = session.measure(scenario.rate, int(scenario.rate * scenario.seconds))
        finally:
            session.stop()
        log(f"    {system}: {summary_line(m)}")
        return {"measurement": m.as_dict()}
    if scenario.kind == "burst":
        session = new_session("run")
        try:
            session.warmup(1000, settings.warmup)
            m = session.measure(0, scenario.count, drain_cap=180)
        finally:
            session.stop()
        log(f"    {system}: {summary_line(m)}")
        return {"measurement": m.as_dict()}
    if scenario.kind == "findmax":
        return find_max(new_session, settings, log, system)
    raise ValueError(scenario.kind)


def step_ok(m: Measurement) -> tuple[bool, str]:
    if m.target_rate and m.pub_rate < 0.95 * m.target_rate:
        return False, f"publishers reached only {m.pub_rate:,.0f} msg/s"
    if m.loss > 0.001:
        return False, f"loss {m.loss:.2%}"
    if m.p99_ms > 100:
        return False, f"p99 {m.p99_ms:,.1f} ms"
    return True, "clean"


def find_max(
    new_session: Callable[[str], Session],
    settings: Settings,
    log: Callable[[str], None],
    system: str,
) -> dict[str, Any]:
    """Climb the ladder; a failing step is tried once more on a fresh system (the machine
    is shared: one noisy neighbour must not decide the result), then bisect."""
    ladder = [r for r in LADDER if settings.max_start <= r <= settings.max_limit] or [
        settings.max_start
    ]
    steps: list[dict[str, Any]] = []
    best: Measurement | None = None
    failed: Measurement | None = None
    state = {"session": None, "restarts": 0}

    def fresh(rate: float) -> Session:
        old = state["session"]
        if old is not None:
            old.stop()  # type: ignore[attr-defined]
            time.sleep(0.5)
        session = new_session(f"s{state['restarts']}")
        state["restarts"] += 1  # type: ignore[operator]
        state["session"] = session
        session.warmup(min(rate, 2000), settings.warmup)
        return session

    def measure(rate: float, note: str = "") -> Measurement:
        session: Session = state["session"]  # type: ignore[assignment]
        m = session.measure(
            rate, int(rate * settings.step_seconds), drain_cap=max(10.0, 2 * settings.step_seconds)
        )
        ok, why = step_ok(m)
        d = m.as_dict()
        d["verdict"] = why + note
        steps.append(d)
        log(f"    {system} @ {rate:,.0f}{note}: {why}; {summary_line(m)}")
        return m

    def attempt(rate: float) -> tuple[bool, Measurement]:
        m = measure(rate)
        if step_ok(m)[0]:
            return True, m
        # A failed step leaves a backlog behind: retry on a clean system.
        fresh(rate)
        m = measure(rate, " (retry)")
        ok = step_ok(m)[0]
        if not ok:
            fresh(rate)  # the next step starts clean too
        return ok, m

    try:
        fresh(ladder[0])
        for rate in ladder:
            ok, m = attempt(rate)
            if ok:
                best = m
            else:
                failed = m
                break
        lo = best.target_rate if best else 0.0
        hi = failed.target_rate if failed else 0.0
        for _ in range(settings.refine if failed is not None else 0):
            mid = (
                round((lo + hi) / 2 / 500) * 500
                if hi - lo > 1000
                else round((lo + hi) / 2 / 100) * 100
            )
            if mid <= lo or mid >= hi:
                break
            ok, m = attempt(mid)
            if ok:
                best, lo = m, mid
            else:
                hi = mid
    finally:
        if state["session"] is not None:
            state["session"].stop()  # type: ignore[attr-defined]
    if failed is None and best is not None:
        limit = f"ladder ended at {best.target_rate:,.0f} msg/s without a failure"
    elif failed is not None:
        limit = (
            f"failed twice at {failed.target_rate:,.0f} msg/s ({step_ok(failed)[1]}); "
            f"lowest failing rate after bisection: {hi:,.0f} msg/s"
        )
    else:
        limit = "no clean step"
    return {"measurement": best.as_dict() if best else None, "steps": steps, "limit": limit}


def summary_line(m: Measurement) -> str:
    return (
        f"{m.delivered:,}/{m.expected:,} delivered, lost {m.loss:.3%}, dup {m.dups}, "
        f"p50 {m.p50_ms:.2f} p99 {m.p99_ms:.2f} max {m.max_ms:.1f} ms, pub {m.pub_rate:,.0f}/s, "
        f"delivered {m.delivery_rate:,.0f}/s/client, CPU {m.cpu_per_1k:.3f} s/1k, "
        f"RSS {m.sut_rss_mb:.0f} MB" + (f" [{'; '.join(m.limits)}]" if m.limits else "")
    )
