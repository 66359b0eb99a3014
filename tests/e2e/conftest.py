"""The whole gateway as real processes on a private Mosquitto, cleaned up whatever happens."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.broker import Broker
from tests.support.mqtt import Publisher
from tests.support.stack import Stack
from tests.support.ws import Collector


@pytest.fixture
def gateway(broker: Broker, tmp_path: Path) -> Iterator[Callable[..., Stack]]:
    """``gateway(decoders=1, env=None)`` (one decode worker, as make run) -> a started
    :class:`Stack`; killed at the end whatever happened, its logs printed when the test
    failed (pytest shows stdout then)."""
    stacks: list[Stack] = []

    def make(decoders: int = 1, env: dict[str, str] | None = None) -> Stack:
        stack = Stack(broker, tmp_path, decoders=decoders, env=env)
        stacks.append(stack)
        try:
            return stack.start()
        except BaseException:
            print(stack.logs())
            raise

    yield make
    for stack in stacks:
        print(stack.logs()[-20000:])
        stack.kill_all()


@pytest.fixture
def publisher(broker: Broker) -> Iterator[Publisher]:
    pub = Publisher(broker.host, broker.port)
    yield pub
    pub.close()


@pytest.fixture
def clients() -> Iterator[list[Collector]]:
    """Append every WebSocket client here; all are closed at the end."""
    opened: list[Collector] = []
    yield opened
    for client in opened:
        with contextlib.suppress(Exception):  # already closed by the server: nothing to release
            client.close()
