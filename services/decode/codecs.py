"""Codecs for uplinks that arrive with raw bytes (``data``) but no decoded ``object``.

Which codec runs is chosen per uplink, most specific first:

1. ``profile:<device profile name or id>`` (ChirpStack v4 only)
2. ``application:<application name or id>``
3. ``fport:<n>``
4. ``DECODE_RAW_CODEC``: ``auto`` (default), ``cayenne_lpp`` or ``none``

The rules come from ``DECODE_CODECS``, a comma-separated list of ``selector=codec``
(``application:meters=cayenne_lpp,fport:10=mycompany.codecs:decode_meter``). A codec is
``cayenne_lpp``, ``none`` or the dotted path of a Python function (``pkg.mod:func`` or
``pkg.mod.func``), imported at start-up so a typo stops the service with one line.

Whatever decodes it, the measurement is presented in the shape of the original gateway's
codecs, one event per uplink::

    {"type": "temperature",
     "values": [{"time": 1690804800000, "time_iso": "2023-07-31T12:00:00.000Z",
                 "value": 27.2, "channel": 3, "type": "temperature"}, ...]}

Cayenne LPP values carry their ``channel`` and their own ``type``; ``object.type`` is
the type they share, or ``"mixed"`` when one uplink carries several types. ``time`` is
the network server's event time (ingest's receipt time when it has none).

``auto`` tries Cayenne LPP and, when the bytes are not valid LPP, passes the uplink on
without an ``object`` (its ``data`` is still there): nobody said those bytes were LPP.
A codec that was chosen explicitly and fails is an ``_error`` event with reason ``codec``.

A plug-in is ``def codec(data: bytes, fport: int, device: dict) -> dict | None``; it
returns ``{"type": str, "values": [...]}`` where each value is a number/boolean/object
or ``{"value": ..., "time": <epoch ms>}`` (``time`` and ``time_iso`` are filled in when
missing), or ``None`` for "no measurement in this uplink". Anything else (an exception,
NaN, a non-JSON type, integers beyond 64 bits, absurd times) is reason ``codec`` and the
worker carries on.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from services.decode import timefmt
from services.decode.decoders import cayenne_lpp
from services.decode.errors import DecodeError
from services.decode.limits import Limits, json_safe

RAW_CODECS = ("auto", "cayenne_lpp", "none")
MIXED = "mixed"

PluginFn = Callable[[bytes, int, dict[str, Any]], Any]


@dataclass(frozen=True, slots=True)
class Codec:
    """``kind`` is ``auto``, ``cayenne_lpp``, ``none`` or ``plugin`` (with ``fn``)."""

    kind: str
    name: str
    fn: PluginFn | None = None


@dataclass(frozen=True)
class Codecs:
    default: Codec = Codec("auto", "auto")
    by_profile: dict[str, Codec] = field(default_factory=dict)
    by_application: dict[str, Codec] = field(default_factory=dict)
    by_fport: dict[int, Codec] = field(default_factory=dict)

    def select(self, applications: Sequence[str], profiles: Sequence[str], fport: int) -> Codec:
        for key in profiles:
            if key in self.by_profile:
                return self.by_profile[key]
        for key in applications:
            if key in self.by_application:
                return self.by_application[key]
        return self.by_fport.get(fport, self.default)


def builtin(name: str) -> Codec:
    if name not in RAW_CODECS:
        raise ValueError(f"unknown codec {name!r}: expected one of {', '.join(RAW_CODECS)}")
    return Codec(name, name)


def load_codec(spec: str) -> Codec:
    """A built-in name or the dotted path of a function; ValueError says what is wrong."""
    spec = spec.strip()
    if spec in ("cayenne_lpp", "none"):
        return Codec(spec, spec)
    module_name, sep, attr = spec.partition(":")
    if not sep:
        module_name, _, attr = spec.rpartition(".")
    if not module_name or not attr:
        raise ValueError(f"codec {spec!r} is neither cayenne_lpp, none nor module.path:function")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or the plug-in's own import-time error
        raise ValueError(f"cannot import {module_name!r} for codec {spec!r}: {exc}") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ValueError(f"{module_name!r} has no function {attr!r}")
    return Codec("plugin", spec, fn)


def parse_rules(raw: str, default: Codec | None = None) -> Codecs:
    """Parse ``DECODE_CODECS`` (``selector=codec`` pairs, comma-separated)."""
    by_profile: dict[str, Codec] = {}
    by_application: dict[str, Codec] = {}
    by_fport: dict[int, Codec] = {}
    for item in (part.strip() for part in raw.split(",")):
        if not item:
            continue
        selector, sep, spec = item.rpartition("=")
        kind, colon, value = selector.partition(":")
        kind, value = kind.strip().lower(), value.strip()
        if not sep or not colon or not value:
            raise ValueError(
                f"{item!r} is not selector=codec "
                "(application:NAME=..., profile:NAME=..., fport:N=...)"
            )
        codec = load_codec(spec)
        if kind == "application":
            by_application[value] = codec
        elif kind == "profile":
            by_profile[value] = codec
        elif kind == "fport":
            if not value.isdigit() or not 0 <= int(value) <= 255:
                raise ValueError(f"fport must be 0..255 in {item!r}")
            by_fport[int(value)] = codec
        else:
            raise ValueError(
                f"unknown selector {kind!r} in {item!r}: use application, profile or fport"
            )
    return Codecs(default or Codec("auto", "auto"), by_profile, by_application, by_fport)


def run(
    codec: Codec,
    data: bytes,
    fport: int,
    device: dict[str, Any],
    time_ms: int,
    now_ns: int,
    limits: Limits,
) -> dict[str, Any] | None:
    """The ``object`` for an uplink's raw bytes, None when there is none to present."""
    if codec.kind == "none":
        return None
    if codec.kind in ("auto", "cayenne_lpp"):
        try:
            measurements = cayenne_lpp.decode(data)
        except cayenne_lpp.LppError as exc:
            if codec.kind == "auto":
                return None
            raise DecodeError("codec", f"cayenne_lpp: {exc}", device) from None
        return lpp_object(measurements, time_ms)
    assert codec.fn is not None
    try:
        result = codec.fn(data, fport, dict(device))
    except Exception as exc:  # a plug-in may raise anything; it must not kill the worker
        raise DecodeError(
            "codec", f"{codec.name} raised {type(exc).__name__}: {exc}", device
        ) from None
    if result is None:
        return None
    try:
        return plugin_object(result, time_ms, now_ns, limits)
    except DecodeError as exc:
        raise DecodeError("codec", f"{codec.name} returned {exc.detail}", device) from None


def lpp_object(measurements: list[cayenne_lpp.Measurement], time_ms: int) -> dict[str, Any]:
    time_iso = timefmt.iso_from_ms(time_ms)
    types = {m.type for m in measurements}
    return {
        "type": measurements[0].type if len(types) == 1 else MIXED,
        "values": [
            {
                "time": time_ms,
                "time_iso": time_iso,
                "value": m.value,
                "channel": m.channel,
                "type": m.type,
            }
            for m in measurements
        ],
    }


def plugin_object(result: Any, time_ms: int, now_ns: int, limits: Limits) -> dict[str, Any]:
    if not isinstance(result, dict):
        raise DecodeError("codec", f"a {type(result).__name__}, not a dict with type and values")
    clean = json_safe(result, limits.max_depth, "object")
    kind = clean.get("type")
    if not isinstance(kind, str) or not kind:
        raise DecodeError("codec", "no string 'type'")
    values = clean.get("values")
    if not isinstance(values, list):
        raise DecodeError("codec", "no 'values' list")
    time_iso = timefmt.iso_from_ms(time_ms)
    normalized = []
    for i, entry in enumerate(values):
        if not isinstance(entry, dict):
            entry = {"value": entry}
        if "value" not in entry:
            raise DecodeError("codec", f"object.values[{i}] without 'value'")
        if isinstance(entry["value"], str):
            raise DecodeError("codec", f"object.values[{i}].value is a string, not a measurement")
        if "time" in entry:
            timefmt.check_ms(
                entry["time"], f"object.values[{i}].time", now_ns, limits.time_tolerance_s
            )
            if "time_iso" not in entry:
                entry["time_iso"] = timefmt.iso_from_ms(int(entry["time"]))
        else:
            entry["time"] = time_ms
            entry.setdefault("time_iso", time_iso)
        normalized.append(entry)
    clean["values"] = normalized
    out: dict[str, Any] = clean
    return out
