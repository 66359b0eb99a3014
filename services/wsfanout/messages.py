"""Event body → the JSON message clients receive, serialized once for every client.

The message is the body without the gateway's bookkeeping (:data:`shared.frames.INTERNAL_KEYS`,
:data:`shared.record.PRIVATE_KEYS`), plus ``seq`` and ``epoch`` (this process's numbering,
for resume) and ``received_at`` (when ingest took it from MQTT, UTC with milliseconds)::

    {"event": "up", "seq": 1842, "epoch": "20230731T120000-4f2a9c",
     "received_at": "2023-07-31T12:00:00.012Z", "device": {...}, "object": {...}, "rx": {...}}

Control replies carry a ``type`` key; event messages never do, so a body's own top-level
``type`` (not part of the record contract) is dropped rather than confuse clients.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from services.wsfanout.filters import DEVICE, ERROR, GATEWAY, Meta
from shared import routing
from shared.frames import INTERNAL_KEYS
from shared.record import PRIVATE_KEYS, device_eui, measurement_type

# Keys we set ourselves (they win) or that must not reach clients.
_SKIP = INTERNAL_KEYS | PRIVATE_KEYS | {"event", "seq", "epoch", "received_at", "replay", "type"}
_REPLAY_SUFFIX = b',"replay":true}'


class SerializeError(ValueError):
    """The message cannot be turned into JSON (too deep, a non-string key, ...)."""


def kind_of(key: str, body: dict[str, Any]) -> str:
    head = key.split("/", 1)[0]
    if head == routing.GATEWAY_PREFIX:
        return GATEWAY
    if head == routing.ERROR_PREFIX or body.get("event") == "error":
        return ERROR
    return DEVICE


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


# describe's cache: one Meta per device, event and measurement type, shared by all their
# events and history entries. Finding it costs a fifth of building it, and the history holds
# one Meta (and one copy of its names) per device instead of one per buffered event.
# Cleared when full: a bound on memory, and a cost only with more devices than it holds.
_METAS: dict[tuple[str, str, str, str, str | None, str | None], Meta] = {}
METAS_MAX = 8192


def describe(kind: str, body: dict[str, Any], key: str = "") -> Meta:
    """Metadata for filters, scopes and the history ring, from the body (names unescaped)."""
    event = str(body.get("event"))
    if kind == GATEWAY:
        gateway = body.get("gateway")
        gw_id = _text(gateway.get("id")) if isinstance(gateway, dict) else None
        if gw_id is None:
            parts = routing.split(key)
            gw_id = parts[1] if len(parts) > 1 else "?"
        return Meta(kind=GATEWAY, ring=f"gateway:{gw_id}", event=event)
    if kind == ERROR:
        return Meta(kind=ERROR, ring="error", event=event)
    device = body.get("device")
    info: dict[str, Any] = device if isinstance(device, dict) else {}
    tenant, application, name = (
        _text(info.get("tenant")),
        _text(info.get("application")),
        _text(info.get("name")),
    )
    eui = device_eui(body)
    kind_of_measurement = measurement_type(body)
    if tenant is not None and application is not None and name is not None:
        cache_key = (event, tenant, application, name, eui, kind_of_measurement)
        meta = _METAS.get(cache_key)
        if meta is None:
            meta = _device_meta(event, tenant, application, name, eui, kind_of_measurement)
            if len(_METAS) >= METAS_MAX:
                _METAS.clear()
            _METAS[cache_key] = meta
        return meta
    if key:
        # Fall back to the routing key (the same names, escaped) when the body lacks them.
        parts = routing.split(key)
        if len(parts) >= 4:
            tenant = tenant if tenant is not None else parts[0]
            application = application if application is not None else parts[1]
            name = name if name is not None else parts[2]
    return _device_meta(event, tenant, application, name, eui, kind_of_measurement)


def _device_meta(
    event: str,
    tenant: str | None,
    application: str | None,
    name: str | None,
    eui: str | None,
    kind_of_measurement: str | None,
) -> Meta:
    eui = eui.lower() if eui else None
    ring = (
        f"eui:{eui}"
        if eui
        else "name:" + "/".join(routing.escape(part or "") for part in (tenant, application, name))
    )
    return Meta(
        kind=DEVICE,
        ring=ring,
        event=event,
        tenant=tenant,
        application=application,
        device=name,
        dev_eui=eui,
        type=kind_of_measurement,
    )


# iso_ms's cache: the formatted second of the last call (events come in time order, so
# nearly every call falls in the same second as the one before), and the millisecond tails.
_second: tuple[int, str] = (-(2**63), "")
_MILLIS = tuple(f".{ms:03d}Z" for ms in range(1000))


def iso_ms(ns: Any) -> str:
    """time_ns → ``2023-07-31T12:00:00.012Z``; anything unusable → now."""
    global _second
    stamp: int = ns if type(ns) is int else time.time_ns()
    secs, rest = divmod(stamp, 1_000_000_000)
    cached_secs, prefix = _second
    if secs != cached_secs:
        try:
            t = time.gmtime(secs)
            if not 0 < t.tm_year <= 9999:
                raise ValueError("year out of range")
        except (OverflowError, OSError, ValueError):
            return iso_ms(time.time_ns())
        prefix = (
            f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}T"
            f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}"
        )
        _second = (secs, prefix)
    return prefix + _MILLIS[rest // 1_000_000]


def client_message(body: dict[str, Any], seq: int, epoch: str) -> dict[str, Any]:
    msg: dict[str, Any] = {
        "event": body.get("event"),
        "seq": seq,
        "epoch": epoch,
        "received_at": iso_ms(body.get("ts")),
    }
    for key, value in body.items():
        if key not in _SKIP:
            msg[key] = value
    return msg


def serialize(msg: dict[str, Any]) -> bytes:
    try:
        return orjson.dumps(msg)
    except Exception as exc:  # orjson.JSONEncodeError (a TypeError), or anything else: never escape
        raise SerializeError(str(exc)) from None


def replay_text(text: bytes) -> bytes:
    """The same message marked ``"replay": true`` (cheap: no re-serialization)."""
    return text[:-1] + _REPLAY_SUFFIX


def control(obj: dict[str, Any]) -> bytes:
    return orjson.dumps(obj)
