"""Config loading shared by every service: environment variables, overridden by flags.

Each service declares its settings as a tuple of :class:`Setting` and turns the result of
:func:`load` into its own frozen dataclass. Every setting has exactly one environment
variable (``MQTT_BROKER``) and one flag derived from it (``--mqtt-broker``). A bad value
raises :class:`ConfigError` naming the variable; ``main`` logs that one line and exits
with :data:`EXIT_CONFIG`.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

EXIT_CONFIG = 3  # uvicorn's STARTUP_FAILURE: bad config, distinct from a crash (1)


class ConfigError(Exception):
    """A setting that cannot be used; the message names the variable."""


@dataclass(frozen=True)
class Setting:
    env: str
    default: str
    parse: Callable[[str], Any]
    help: str
    secret: bool = False

    @property
    def flag(self) -> str:
        return "--" + self.env.lower().replace("_", "-")

    @property
    def field(self) -> str:
        return self.env.lower()


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise ConfigError(message)


class HelpRequested(Exception):
    """``--help`` was given; the text is already printed."""


def load(
    settings: Sequence[Setting],
    environ: Mapping[str, str],
    argv: Sequence[str] | None,
    *,
    prog: str,
    description: str,
) -> dict[str, Any]:
    """Return ``{setting.field: parsed value}``: flag, else environment, else default."""
    parser = _Parser(
        prog=prog,
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Every flag can also be set by the environment variable named in its help.",
    )
    for s in settings:
        shown = "(hidden)" if s.secret and s.default else repr(s.default)
        parser.add_argument(
            s.flag, dest=s.field, metavar="VALUE", help=f"{s.help} [{s.env}, default {shown}]"
        )
    try:
        args = parser.parse_args(list(argv) if argv is not None else None)
    except SystemExit as exc:  # --help prints and exits 0
        if exc.code == 0:
            raise HelpRequested() from None
        raise
    values: dict[str, Any] = {}
    for s in settings:
        from_flag = getattr(args, s.field)
        raw = from_flag if from_flag is not None else environ.get(s.env, s.default)
        source = s.flag if from_flag is not None else s.env
        try:
            values[s.field] = s.parse(raw)
        except (ValueError, TypeError) as exc:
            shown = "<hidden>" if s.secret else repr(raw)
            raise ConfigError(f"{source}={shown}: {exc}") from None
    return values


# Parsers: each raises ValueError with a short reason.


def text(raw: str) -> str:
    return raw


def non_empty(raw: str) -> str:
    if not raw.strip():
        raise ValueError("must not be empty")
    return raw.strip()


def integer(low: int | None = None, high: int | None = None) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw.strip())
        except ValueError:
            raise ValueError("not a whole number") from None
        if low is not None and value < low:
            raise ValueError(f"must be at least {low}")
        if high is not None and value > high:
            raise ValueError(f"must be at most {high}")
        return value

    return parse


port = integer(0, 65535)


def number(low: float | None = None, high: float | None = None) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        try:
            value = float(raw.strip())
        except ValueError:
            raise ValueError("not a number") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError("must be finite")
        if low is not None and value < low:
            raise ValueError(f"must be at least {low}")
        if high is not None and value > high:
            raise ValueError(f"must be at most {high}")
        return value

    return parse


def boolean(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("expected true or false")


def choice(*options: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in options:
            raise ValueError(f"expected one of {', '.join(options)}")
        return value

    return parse


def csv(raw: str) -> tuple[str, ...]:
    """A comma-separated list; blanks are dropped."""
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def endpoints(raw: str) -> tuple[str, ...]:
    items = csv(raw)
    if not items:
        raise ValueError("needs at least one endpoint")
    for item in items:
        if "://" not in item:
            raise ValueError(f"{item!r} is not a ZeroMQ endpoint like tcp://127.0.0.1:5557")
    return items


def endpoint(raw: str) -> str:
    items = endpoints(raw)
    if len(items) != 1:
        raise ValueError("expected exactly one endpoint")
    return items[0]


def optional_file(raw: str) -> str | None:
    """A path that must exist when given; empty means unset."""
    path = raw.strip()
    if not path:
        return None
    if not os.path.isfile(path):
        raise ValueError(f"no such file: {path}")
    return path


LOG_LEVEL = Setting("LOG_LEVEL", "info", choice("debug", "info", "warning", "error"), "log level")
CPU_SCHEDULING_POLICY = Setting(
    "CPU_SCHEDULING_POLICY",
    "batch",
    choice("batch", "other"),
    "Linux scheduling policy of every thread of the service: batch (a thread that wakes up "
    "does not preempt the one running, so each runs longer with warm caches: less CPU per "
    "message under load) or other (the kernel's default)",
)
