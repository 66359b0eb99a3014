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


class CommonConfig(Protocol):
    @property
    def log_level(self) -> str: ...

    @property
    def cpu_scheduling_policy(self) -> str: ...


C = TypeVar("C", bound=CommonConfig)

SCHEDULING_POLICIES = {"batch": "SCHED_BATCH", "other": "SCHED_OTHER"}


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
    # Before run() starts any thread (ZeroMQ's I/O thread too): new threads inherit it.
    set_scheduling_policy(config.cpu_scheduling_policy)
    try:
        return run(config)
    except OSError as exc:  # a port in use, an unreadable file: one line, not a traceback
        logger.error("❌ Cannot start: %s", exc)
        return EXIT_CONFIG


def set_scheduling_policy(name: str) -> None:
    """Put the calling thread, and so every thread it starts later, under a Linux
    scheduling policy. Under SCHED_BATCH a thread that wakes up does not preempt the one
    running: on a busy machine each runs longer, with warm caches, and takes more messages
    per wake-up (bench/FINDINGS.md). No privilege is needed to choose it; where the
    platform refuses, the service runs on under the default policy and says so."""
    try:
        os.sched_setscheduler(0, getattr(os, SCHEDULING_POLICIES[name]), os.sched_param(0))
    except (AttributeError, OSError) as exc:  # not Linux, or a sandbox that forbids it
        logger.warning(
            "⚠️ Cannot set the CPU scheduling policy to %s (%s): kept the default", name, exc
        )


def describe(config: Any, secret_fields: frozenset[str] = frozenset()) -> str:
    """One-line summary of a config for the start-up log, secrets hidden."""
    items = []
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        shown = "<hidden>" if field.name in secret_fields and value else value
        items.append(f"{field.name}={shown}")
    return " ".join(items)
