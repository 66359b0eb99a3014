"""Timestamps: the ISO forms the record uses, and the sanity window every time must fit.

Times in a record are either ISO 8601 strings as the network server wrote them (``time``)
or epoch milliseconds with a matching ``time_iso`` (inside ``object.values``, the shape
the original gateway's codecs produce). Anything before 2000-01-01 or further in the
future than the tolerance is "absurd": a device clock that never synced, seconds sent
where milliseconds belong, or an overflow.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

from services.decode.errors import DecodeError

EARLIEST_MS = 946_684_800_000  # 2000-01-01T00:00:00Z


def iso_from_ms(ms: int) -> str:
    """``2023-07-31T12:00:00.000Z`` (UTC, milliseconds), the form of ``time_iso``."""
    seconds, millis = divmod(ms, 1000)
    t = time.gmtime(seconds)
    return (
        f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}T"
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}.{millis:03d}Z"
    )


def latest_ms(now_ns: int, tolerance_s: int) -> int:
    return now_ns // 1_000_000 + tolerance_s * 1000


def check_ms(value: object, path: str, now_ns: int, tolerance_s: int) -> int | float:
    """An epoch-milliseconds time inside the sanity window, or DecodeError("time")."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise DecodeError("time", f"{path} must be epoch milliseconds, got {_shown(value)}")
    if value != value:  # NaN (only from plug-in codecs; JSON input cannot carry it)
        raise DecodeError("time", f"{path} is NaN")
    latest = latest_ms(now_ns, tolerance_s)
    if EARLIEST_MS <= value <= latest:
        return value
    if EARLIEST_MS <= value * 1000 <= latest:
        raise DecodeError("time", f"{path}={value} looks like seconds; expected milliseconds")
    raise DecodeError("time", f"{path}={value} is outside 2000-01-01 .. now+{tolerance_s}s")


def parse_iso(value: object, path: str, now_ns: int, tolerance_s: int) -> int:
    """Epoch milliseconds of an ISO 8601 / RFC 3339 string inside the sanity window.

    Python 3.11's ``fromisoformat`` takes ChirpStack's nanoseconds and ``+00:00`` and The
    Things Stack's ``Z``; a time without an offset is taken as UTC."""
    if not isinstance(value, str):
        raise DecodeError("time", f"{path} must be an ISO 8601 string, got {_shown(value)}")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise DecodeError("time", f"{path}={value[:40]!r} is not an ISO 8601 time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    try:
        ms = int(moment.timestamp() * 1000)
    except (OverflowError, OSError, ValueError):
        raise DecodeError("time", f"{path}={value[:40]!r} is out of range") from None
    if not EARLIEST_MS <= ms <= latest_ms(now_ns, tolerance_s):
        raise DecodeError(
            "time", f"{path}={value[:40]!r} is outside 2000-01-01 .. now+{tolerance_s}s"
        )
    return ms


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:39] + "…"
