"""Limits applied to every payload, and the JSON-safety rules every record obeys.

What reaches a WebSocket client must be valid for a browser's ``JSON.parse`` and must
survive ``orjson.dumps`` (RELIABILITY.md §0.9). The rules, in the order they apply:

1. **Size** is checked before anything is parsed: over ``max_payload`` bytes is ``size``.
2. **Parsing** is orjson: strict UTF-8 (no lone surrogates), no ``NaN``/``Infinity``
   literals, no number that overflows a double (``1e999``, a 4301-digit integer):
   ``encoding``, ``json`` or ``number``.
3. **Integers beyond 64 bits** (above 2**64-1 or below -2**63) are converted to the
   nearest double by orjson. This is documented, not an error: a browser's
   ``JSON.parse`` does exactly the same to every number above 2**53.
4. **Depth** over ``max_depth`` (default 32) is ``depth``, so nothing near orjson's
   output limit (254) or msgpack's (1024) ever reaches the fan-out.
5. Values a Python plug-in returns are checked by :func:`json_safe` (same rules, plus
   string keys and plain JSON types only).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import orjson

from services.decode.errors import DecodeError, type_name

KIB = 1024
# Control characters JSON text never contains outside strings (and never raw inside):
# their presence means binary data, not broken JSON.
_BINARY = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f]")
MIN_INT = -(2**63)
MAX_INT = 2**64 - 1


@dataclass(frozen=True, slots=True)
class Limits:
    max_payload: int = 256 * KIB
    max_depth: int = 32
    max_name: int = 256
    time_tolerance_s: int = 86_400


def check_size(payload: bytes, limits: Limits) -> None:
    size = len(payload)
    if size > limits.max_payload:
        raise DecodeError("size", f"payload is {size} bytes, the limit is {limits.max_payload}")


def parse_json(payload: bytes, limits: Limits) -> Any:
    """Size check, orjson parse, depth check; every failure is a DecodeError."""
    check_size(payload, limits)
    if not payload:
        raise DecodeError("json", "empty payload (0 bytes)")
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise _classify(exc, payload) from None
    # Cheap bound first: nesting can't exceed the number of brackets. A typical uplink
    # has ~10, so the walk below only runs for unusual payloads.
    if payload.count(b"{") + payload.count(b"[") > limits.max_depth:
        check_depth(doc, limits.max_depth)
    return doc


def parse_json_text(text: str, path: str, limits: Limits) -> Any:
    """The same rules for JSON carried inside a string (ChirpStack v3 ``objectJSON``)."""
    try:
        raw = text.encode("utf-8")
    except UnicodeEncodeError:
        raise DecodeError("encoding", f"{path} is not valid UTF-8") from None
    try:
        return parse_json(raw, limits)
    except DecodeError as exc:
        raise DecodeError(exc.reason, f"{path}: {exc.detail}") from None


def _classify(exc: orjson.JSONDecodeError, payload: bytes) -> DecodeError:
    msg = exc.msg
    if "UTF-8" in msg:
        return DecodeError("encoding", "payload is not valid UTF-8")
    if _BINARY.search(payload, 0, 4096):
        return DecodeError("encoding", "binary payload, not JSON text")
    if "depth limit" in msg:
        return DecodeError("depth", "nesting deeper than the parser allows (1024)")
    if "infinity" in msg:
        return DecodeError("number", f"a number overflows a double (char {exc.pos})")
    if "unexpected character" in msg or "no digit after sign" in msg:
        # orjson's position counts characters, not bytes.
        text = payload.decode("utf-8", "replace")
        around = text[max(0, exc.pos - 1) : exc.pos + 9]
        if "NaN" in around or "Infinity" in around:
            return DecodeError("number", f"NaN/Infinity is not JSON (char {exc.pos})")
    if not payload.strip():
        return DecodeError("json", "payload is only whitespace")
    return DecodeError("json", f"{msg} (char {exc.pos})")


def check_depth(doc: Any, max_depth: int) -> None:
    """Iterative, so a hostile 10,000-level document cannot cause a RecursionError."""
    stack: list[tuple[Any, int]] = [(doc, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > max_depth:
            raise DecodeError("depth", f"nesting deeper than {max_depth}")
        children = value.values() if isinstance(value, dict) else value
        for child in children:
            if isinstance(child, dict | list):
                stack.append((child, depth + 1))


def json_safe(value: Any, max_depth: int, path: str = "value") -> Any:
    """A copy of ``value`` made of plain JSON types, or DecodeError naming the first
    offending path. For values that did not come out of orjson (plug-in codecs)."""
    return _safe(value, max_depth, path, 1)


def _safe(value: Any, max_depth: int, path: str, depth: int) -> Any:
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        if not MIN_INT <= value <= MAX_INT:
            raise DecodeError("number", f"{path} is an integer beyond 64 bits")
        return int(value)  # an IntEnum or other int subclass becomes a plain int
    if isinstance(value, float):
        if not math.isfinite(value):
            raise DecodeError("number", f"{path} is {value} (not valid JSON)")
        return float(value)
    if depth > max_depth:
        raise DecodeError("depth", f"{path} nests deeper than {max_depth}")
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise DecodeError("schema", f"{path} has a non-string key {key!r:.40}")
            out[key] = _safe(item, max_depth, f"{path}.{key}", depth + 1)
        return out
    if isinstance(value, list | tuple):
        return [_safe(item, max_depth, f"{path}[{i}]", depth + 1) for i, item in enumerate(value)]
    raise DecodeError("schema", f"{path} is a {type_name(value)}, not a JSON value")
