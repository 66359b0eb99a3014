"""The rate limiter keeps bad-input floods out of the log but says how many it held back."""

from __future__ import annotations

import logging

from shared.log import RateLimitedLog


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_first_line_per_kind_then_at_most_one_per_interval(caplog):
    clock = Clock()
    limited = RateLimitedLog(logging.getLogger("t"), interval=10.0, clock=clock)
    with caplog.at_level(logging.WARNING):
        logged = [limited.warning("json", "bad json from %s", "dev") for _ in range(1000)]
        assert limited.warning("depth", "too deep")  # another kind is not held back
        clock.now = 10.0
        assert limited.warning("json", "bad json from %s", "dev")
    assert logged.count(True) == 1
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "bad json from dev",
        "too deep",
        "bad json from dev (999 more like this since the last line)",
    ]
