"""Fixtures shared by the whole suite: a private Mosquitto, service processes, fixtures dir."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.broker import Broker
from tests.support.procs import ServiceProcess

# The public sample events (read-only, beside the repo; CI lays shared/ there too).
FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"


def load_fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """A fresh Mosquitto for one test; stop/restart it at will."""
    b = Broker(tmp_path / "broker").start()
    yield b
    b.stop()


@pytest.fixture
def services(tmp_path: Path) -> Iterator[list[ServiceProcess]]:
    """Start services with ``services.append(ServiceProcess(...).start())``; all are
    stopped (and their logs kept in tmp_path) when the test ends."""
    started: list[ServiceProcess] = []
    yield started
    for proc in reversed(started):
        proc.kill()
