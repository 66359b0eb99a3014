"""What the format decoders share: their options, the ``object`` rules, radio metadata."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from services.decode import codecs, fields, timefmt
from services.decode.errors import DecodeError, schema, type_name
from services.decode.limits import Limits
from shared.routing import device_key


@dataclass(frozen=True)
class Options:
    """Everything a decoder may depend on besides its input; fixed at start-up."""

    limits: Limits = field(default_factory=Limits)
    codecs: codecs.Codecs = field(default_factory=codecs.Codecs)
    # ChirpStack v3 has no tenants; a v4 event without tenantName (pre-4.1 left empty
    # fields out) gets this one too, so the routing key always has four segments.
    default_tenant: str = "default"


# Decoded record for one event: the routing key and the body (without src/seq/ts).
Decoded = tuple[str, dict[str, Any]]


def check_object(obj: Any, path: str, now_ns: int, limits: Limits) -> dict[str, Any]:
    """The network server's decoded ``object``, returned unchanged once it is safe.

    Any JSON object passes. When it has the measurement shape (``values``), the shape is
    enforced: ``values`` a list of objects, each ``value`` a number/boolean/null/object
    (not a string), each ``time`` epoch milliseconds inside the sanity window.

    Hot path: one loop of plain type checks; only a failing object goes through
    :func:`_explain_object`, which builds the field path for the error."""
    if type(obj) is dict:
        values = obj.get("values")
        if values is None and "values" not in obj:
            return obj
        kind = obj.get("type")
        if type(values) is list and (kind is None or type(kind) is str):
            earliest, latest = (
                timefmt.EARLIEST_MS,
                timefmt.latest_ms(now_ns, limits.time_tolerance_s),
            )
            for entry in values:
                if type(entry) is not dict or "value" not in entry or type(entry["value"]) is str:
                    break
                t = entry.get("time")
                if not ((type(t) is int or type(t) is float) and earliest <= t <= latest):
                    break
                time_iso = entry.get("time_iso")
                if time_iso is not None and type(time_iso) is not str:
                    break
            else:
                return obj
    _explain_object(obj, path, now_ns, limits)
    raise AssertionError(f"{path} failed the fast check but passed the detailed one")


def _explain_object(obj: Any, path: str, now_ns: int, limits: Limits) -> None:
    """Raise the DecodeError that names what is wrong with ``obj``."""
    if not isinstance(obj, dict):
        raise schema(path, f"must be an object, got {type_name(obj)}")
    kind = obj.get("type")
    if kind is not None and not isinstance(kind, str):
        raise schema(f"{path}.type", f"must be a string, got {type_name(kind)}")
    values = obj["values"]
    if not isinstance(values, list):
        raise schema(f"{path}.values", f"must be an array, got {type_name(values)}")
    for i, entry in enumerate(values):
        where = f"{path}.values[{i}]"
        if not isinstance(entry, dict):
            raise schema(where, f"must be an object, got {type_name(entry)}")
        if "value" not in entry:
            raise schema(f"{where}.value", "is missing")
        if isinstance(entry["value"], str):
            raise schema(f"{where}.value", "is a string, not a measurement")
        if "time" not in entry:
            raise DecodeError("time", f"{where}.time is missing")
        timefmt.check_ms(entry["time"], f"{where}.time", now_ns, limits.time_tolerance_s)
        time_iso = entry.get("time_iso")
        if time_iso is not None and not isinstance(time_iso, str):
            raise schema(f"{where}.time_iso", f"must be a string, got {type_name(time_iso)}")


def event_time(
    doc: dict[str, Any], key: str, path: str, now_ns: int, limits: Limits
) -> tuple[str | None, int | None]:
    """The network server's time as published (ISO string) and in epoch ms."""
    value = doc.get(key)
    if value is None:
        return None, None
    return value, timefmt.parse_iso(
        value, f"{path}.{key}" if path else key, now_ns, limits.time_tolerance_s
    )


def best_by_rssi(entries: Any, path: str) -> tuple[dict[str, Any] | None, int]:
    """The reception with the strongest signal (the first one on a tie or when none has
    an RSSI), and how many gateways heard the uplink."""
    if entries is None:
        return None, 0
    if type(entries) is not list:
        raise schema(path, f"must be an array, got {type_name(entries)}")
    best: dict[str, Any] | None = None
    best_rssi: float = float("-inf")
    for entry in entries:
        if type(entry) is not dict:
            break
        rssi = entry.get("rssi")
        if rssi is None:
            score = float("-inf")
        elif (type(rssi) is int or type(rssi) is float) and rssi == rssi:
            score = rssi
        else:
            break
        if best is None or score > best_rssi:
            best, best_rssi = entry, score
    else:
        return best, len(entries)
    for i, entry in enumerate(entries):  # only to name the bad entry
        if not isinstance(entry, dict):
            raise schema(f"{path}[{i}]", f"must be an object, got {type_name(entry)}")
        fields.number(entry, "rssi", f"{path}[{i}]", None)
    raise AssertionError(f"{path} failed the fast check but passed the detailed one")


def radio(
    best: dict[str, Any] | None, gateway_key: str, snr_key: str, path: str
) -> tuple[Any, Any, Any]:
    """``(gateway, rssi, snr)`` of the best reception; absent numbers read as 0
    (Protobuf JSON leaves zeros out)."""
    if best is None:
        return None, None, None
    gateway = best.get(gateway_key)
    rssi = best.get("rssi", 0)
    snr = best.get(snr_key, 0)
    if not (
        (gateway is None or type(gateway) is str)
        and (type(rssi) is int or type(rssi) is float)
        and (type(snr) is int or type(snr) is float)
    ):
        fields.opt_text(best, gateway_key, path)
        fields.number(best, "rssi", path)
        fields.number(best, snr_key, path)
    return gateway, rssi, snr


def int_field(doc: dict[str, Any], key: str, path: str, default: int | None = 0) -> int | None:
    """``fields.integer`` with the common case (a plain int) inlined by the caller's
    hot path: only unusual values pay for the function with the error message."""
    value = doc.get(key)
    if type(value) is int:
        return value
    return fields.integer(doc, key, path, default)


def raw_object(
    data_b64: Any,
    fport: int,
    device: dict[str, Any],
    applications: tuple[str, ...],
    profiles: tuple[str, ...],
    time_ms: int,
    now_ns: int,
    opts: Options,
) -> dict[str, Any] | None:
    """Decode an uplink's raw ``data`` with the codec its application/profile/fPort
    selects; None when there is nothing to present."""
    if data_b64 is None or data_b64 == "":
        return None
    codec = opts.codecs.select(applications, profiles, fport)
    if codec.kind == "none":
        return None
    data = fields.base64_bytes(data_b64, "data")
    return codecs.run(codec, data, fport, device, time_ms, now_ns, opts.limits)


def strings(*values: Any) -> tuple[str, ...]:
    """The values that are strings (names and ids a codec rule may select on)."""
    return tuple(v for v in values if isinstance(v, str))


@lru_cache(maxsize=65_536)
def routing_key(tenant: str, application: str, device: str, event: str) -> str:
    """:func:`shared.routing.device_key`, remembered: the same few thousand devices send
    over and over, and escaping four names costs more than a cache lookup."""
    return device_key(tenant, application, device, event)
