"""Fixtures for the ingest tests: ingest as a real subprocess against the per-test
Mosquitto, frame collectors on real DEALER sockets, and logs printed when a test fails."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.ingest.helpers import FrameCollector
from tests.support.broker import Broker
from tests.support.ports import free_endpoint
from tests.support.procs import ServiceProcess
from tests.support.timing import wait_for

SUBSCRIBED = r"📥 Subscribed to"

StartIngest = Callable[..., ServiceProcess]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed:
        for proc in item.stash.get(_PROCS, []):
            report.sections.append((f"ingest log {proc.log_path.name}", proc.log_text()[-5000:]))
        for b in item.stash.get(_BROKERS, []):
            report.sections.append(("mosquitto log", b.log_text()[-3000:]))


_PROCS = pytest.StashKey[list[ServiceProcess]]()
_BROKERS = pytest.StashKey[list[Broker]]()


@pytest.fixture
def ingest_env(broker: Broker, request: pytest.FixtureRequest) -> dict[str, str]:
    """Settings for one test's ingest: the test broker, a free PUSH endpoint, short back-off."""
    request.node.stash.setdefault(_BROKERS, []).append(broker)
    return {
        "MQTT_BROKER": broker.host,
        "MQTT_PORT": str(broker.port),
        "MQTT_CLIENT_ID": f"ingest-test-{uuid.uuid4().hex[:8]}",
        "ZMQ_RAW_BIND": free_endpoint(),
        "METRICS_PORT": "0",
        "MQTT_RECONNECT_MIN": "0.1",
        "MQTT_RECONNECT_MAX": "0.5",
        "MQTT_DRAIN_TIMEOUT": "2",
    }


@pytest.fixture
def start_ingest(
    ingest_env: dict[str, str],
    services: list[ServiceProcess],
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> StartIngest:
    """``start_ingest(wait=True, **env)``: a running ingest (env on top of ``ingest_env``)."""

    def start(wait: bool = True, **env: str) -> ServiceProcess:
        proc = ServiceProcess("ingest", {**ingest_env, **env}, tmp_path).start()
        services.append(proc)
        request.node.stash.setdefault(_PROCS, []).append(proc)
        if wait:
            proc.wait_for_log(SUBSCRIBED, timeout=30)
        return proc

    return start


@pytest.fixture
def collect(ingest_env: dict[str, str]) -> Iterator[Callable[..., FrameCollector]]:
    """``collect()``: a credit-granting DEALER on ingest's endpoint, closed when the test ends."""
    opened: list[FrameCollector] = []

    def make(endpoint: str | None = None, **kwargs: int) -> FrameCollector:
        c = FrameCollector(endpoint or ingest_env["ZMQ_RAW_BIND"], **kwargs)
        opened.append(c)
        return c

    yield make
    for c in opened:
        c.close()


def count_lines(proc: ServiceProcess, pattern: str) -> int:
    return len(re.findall(pattern, proc.log_text()))


def wait_for_lines(proc: ServiceProcess, pattern: str, count: int, timeout: float = 30.0) -> None:
    """Wait until ``pattern`` occurs ``count`` times in the log (fail early if it exited)."""

    def enough() -> bool:
        if not proc.running:
            raise AssertionError(f"ingest exited with {proc.proc and proc.proc.returncode}")
        return count_lines(proc, pattern) >= count

    wait_for(enough, timeout, f"{count}× /{pattern}/ in the ingest log")
