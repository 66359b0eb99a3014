"""Fixtures for the fault-injection suite: a gateway factory that always cleans up and,
when a case fails, prints the tail of every service log and of the broker log."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

import pytest

from tests.faults.gateway import FaultStack
from tests.support.broker import Broker


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.stash[_FAILED] = report.failed


_FAILED = pytest.StashKey[bool]()

GatewayFactory = Callable[..., FaultStack]

# Settings every case uses, so recovery is quick and the counters settle quickly:
# ingest retries the broker after 0.2-2 s instead of 1-60 s, and the fan-out declares a
# missing seq lost after 3 s instead of 30 s (cases about reordering raise it again).
QUICK = {
    "MQTT_RECONNECT_MIN": "0.2",
    "MQTT_RECONNECT_MAX": "2",
    "ZMQ_EVENTS_REORDER_TIMEOUT": "3",
}


class Closable(Protocol):
    def close(self) -> None: ...


@pytest.fixture
def gateway(
    broker: Broker, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[GatewayFactory]:
    """``gateway(decoders=3, env={...}, start=True)`` -> a running :class:`FaultStack`."""
    stacks: list[FaultStack] = []

    def make(
        decoders: int = 1,
        env: dict[str, str] | None = None,
        service_env: dict[str, dict[str, str]] | None = None,
        start: bool = True,
    ) -> FaultStack:
        stack = FaultStack(
            broker,
            tmp_path,
            decoders=decoders,
            env={**QUICK, **(env or {})},
            service_env=service_env,
        )
        stacks.append(stack)
        return stack.start() if start else stack

    yield make
    for stack in stacks:
        stack.kill_all()
    if request.node.stash.get(_FAILED, False):
        for stack in stacks:
            for proc in stack.all_procs():
                tail = proc.log_text()[-4000:]
                print(f"\n===== {proc.name} ({proc.log_path.name}) last lines\n{tail}")
        print(f"\n===== mosquitto\n{broker.log_text()[-3000:]}")


@pytest.fixture
def resources() -> Iterator[list[Closable]]:
    """Publishers and WebSocket clients appended here are closed when the test ends."""
    opened: list[Closable] = []
    yield opened
    for item in reversed(opened):
        item.close()


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Iterator[dict[str, object]]:
    """Measured figures of a case: printed at the end (``pytest -s`` or ``-rA`` shows them),
    attached to the JUnit report, and appended as a JSON line to $FAULTS_FIGURES if set."""
    found: dict[str, object] = {}
    yield found
    if not found:
        return
    line = json.dumps({"case": request.node.name, **found}, default=str)
    print(f"\nFIGURES {line}")
    request.node.user_properties.append(("figures", line))
    path = os.environ.get("FAULTS_FIGURES")
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")
