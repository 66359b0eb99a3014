"""Reconnect delays: exponential, capped, with jitter.

paho's own back-off doubles with no jitter (RELIABILITY.md §0.6), so every ingest behind
one restarted broker would retry in lock-step. Attempt ``n`` (from 0) waits a random time
between ``low`` and ``min(high, low * 2**(n+1))``: never sooner than ``low``, never longer
than ``high``, spread out from the first retry on.
"""

from __future__ import annotations

import random
from collections.abc import Callable


class Backoff:
    def __init__(self, low: float, high: float, rand: Callable[[], float] = random.random) -> None:
        if not 0 < low <= high:
            raise ValueError("need 0 < low <= high")
        self.low = low
        self.high = high
        self._rand = rand
        self.attempt = 0

    def next_delay(self) -> float:
        ceiling = min(self.high, self.low * 2.0 ** min(self.attempt + 1, 32))
        self.attempt += 1
        return self.low + (ceiling - self.low) * self._rand()

    def reset(self) -> None:
        self.attempt = 0
