"""Why a payload could not be decoded.

Tree::

    DecodeError(reason, detail)      one per bad payload; becomes an ``_error`` event
                                     routed ``_error/{reason}`` and counted by reason

Reasons (stable metric labels, documented in the README):

===============  =============================================================
``size``         payload over ``DECODE_MAX_PAYLOAD`` (checked before parsing)
``encoding``     not UTF-8, or binary that is neither JSON nor the expected Protobuf
``json``         empty, truncated or malformed JSON
``depth``        nesting deeper than ``DECODE_MAX_DEPTH``
``schema``       valid JSON of the wrong shape; ``detail`` names the field
``number``       NaN, Infinity, or a number too large for a double
``time``         a missing or absurd timestamp
``unknown_event`` an event type or payload shape this gateway does not know
``codec``        the raw-payload codec (Cayenne LPP or a plug-in) failed
``frame``        the raw frame itself was unusable (src/seq still known)
``internal``     a bug in the gateway (logged with a traceback); please report it
===============  =============================================================
"""

from __future__ import annotations

from typing import Any

REASONS = (
    "size",
    "encoding",
    "json",
    "depth",
    "schema",
    "number",
    "time",
    "unknown_event",
    "codec",
    "frame",
    "internal",
)

# Details end up in events, logs and dashboards: keep them short whatever the input was.
MAX_DETAIL = 300


class DecodeError(Exception):
    """A payload that cannot become a record. ``device`` is set when the identity was
    already known, so operators see *which* device sends bad data."""

    def __init__(self, reason: str, detail: str, device: dict[str, Any] | None = None) -> None:
        assert reason in REASONS, reason
        if len(detail) > MAX_DETAIL:
            detail = detail[: MAX_DETAIL - 1] + "…"
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.device = device


def schema(path: str, problem: str) -> DecodeError:
    """A field of the wrong shape; ``path`` is the JSON path (``deviceInfo.devEui``)."""
    return DecodeError("schema", f"{path} {problem}")


def type_name(value: object) -> str:
    """The JSON name of a Python value's type, for error details."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__
