"""Fixtures for the simulator tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.simulators.helpers import Subscriber
from tests.support.broker import Broker


@pytest.fixture
def subscriber(broker: Broker) -> Iterator[Subscriber]:
    sub = Subscriber(broker, "application/#", "+/gateway/#", "gateway/#")
    yield sub
    sub.close()
