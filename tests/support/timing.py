"""One timeout unit for the suite, scaled by TEST_TIMEOUT_SCALE on slow machines."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TypeVar

SCALE = float(os.environ.get("TEST_TIMEOUT_SCALE", "1"))

T = TypeVar("T")


def seconds(value: float) -> float:
    return value * SCALE


def wait_for(predicate: Callable[[], T], timeout: float = 10.0, what: str = "condition") -> T:
    """Poll ``predicate`` until it returns something truthy; fail loudly on timeout."""
    deadline = time.monotonic() + seconds(timeout)
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds(timeout):.1f}s waiting for {what}")
        time.sleep(0.02)
