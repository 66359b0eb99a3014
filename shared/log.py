"""Logging set-up, done once per process in ``main``, and a rate limiter for bad input.

Lines keep the original gateway's format::

    2023-07-31 12:00:00,000 - ingest - INFO - ✅ Connected to localhost:1883

Modules log through ``logging.getLogger(__name__)``; the service name in the line comes
from the formatter so module loggers stay hierarchical.
"""

from __future__ import annotations

import logging
import logging.config
import time
from collections.abc import Callable

LEVELS = ("debug", "info", "warning", "error")


def setup(service: str, level: str = "info") -> None:
    logging.config.dictConfig(
        {
            "version": 1,
            "disable_existing_loggers": False,
            "formatters": {
                "gateway": {"format": f"%(asctime)s - {service} - %(levelname)s - %(message)s"}
            },
            "handlers": {
                "stderr": {
                    "class": "logging.StreamHandler",
                    "formatter": "gateway",
                    "stream": "ext://sys.stderr",
                }
            },
            "root": {"handlers": ["stderr"], "level": level.upper()},
            # paho and websockets are chatty at DEBUG; keep them at our level or above INFO.
            "loggers": {
                "websockets": {"level": "WARNING"},
                "paho": {"level": max(logging.INFO, logging.getLevelName(level.upper()))},
            },
        }
    )


class RateLimitedLog:
    """Logs the first occurrence of each kind at once, then at most one line per
    ``interval`` seconds per kind, saying how many were suppressed in between.

    Bad input can arrive thousands of times a second; counters carry the totals, the log
    only has to say that it is happening.
    """

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._interval = interval
        self._clock = clock
        self._next: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warning(self, kind: str, msg: str, *args: object) -> bool:
        """Log ``msg`` for ``kind`` unless one was logged recently; True if logged."""
        now = self._clock()
        if now < self._next.get(kind, 0.0):
            self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
            return False
        self._next[kind] = now + self._interval
        suppressed = self._suppressed.pop(kind, 0)
        if suppressed:
            msg += " (%d more like this since the last line)"
            args = (*args, suppressed)
        self._logger.warning(msg, *args)
        return True
