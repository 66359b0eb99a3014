"""The start-up every service shares: load config, set up logging, run, return an exit code."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

from shared import log
from shared.config import EXIT_CONFIG, ConfigError, HelpRequested

logger = logging.getLogger(__name__)


class HasLogLevel(Protocol):
    @property
    def log_level(self) -> str: ...


C = TypeVar("C", bound=HasLogLevel)


def main(
    service: str,
    argv: Sequence[str] | None,
    load: Callable[[Mapping[str, str], Sequence[str] | None], C],
    run: Callable[[C], int],
    environ: Mapping[str, str] | None = None,
) -> int:
    """``load`` parses config (raising ConfigError), ``run`` serves until stopped."""
    try:
        config = load(os.environ if environ is None else environ, argv)
    except HelpRequested:
        return 0
    except ConfigError as exc:
        log.setup(service)
        logger.error("❌ Bad config: %s", exc)
        return EXIT_CONFIG
    log.setup(service, config.log_level)
    try:
        return run(config)
    except OSError as exc:  # a port in use, an unreadable file: one line, not a traceback
        logger.error("❌ Cannot start: %s", exc)
        return EXIT_CONFIG


def describe(config: Any, secret_fields: frozenset[str] = frozenset()) -> str:
    """One-line summary of a config for the start-up log, secrets hidden."""
    items = []
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        shown = "<hidden>" if field.name in secret_fields and value else value
        items.append(f"{field.name}={shown}")
    return " ".join(items)
