"""ChirpStack v4 device events (``application/{applicationId}/device/{devEui}/event/{type}``).

Identity comes from ``deviceInfo`` (tenantName, applicationName, deviceName, devEui,
tags), never from the topic. ChirpStack writes its Protobuf messages as JSON and, before
4.1, left out fields holding their default value (0, false, "", the first enum value), so
a missing field reads as that default here. ``rxInfo.time`` became ``gwTime``/``nsTime``;
only the event's top-level ``time`` is used.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from services.decode import fields
from services.decode.decoders.common import (
    Decoded,
    Options,
    best_by_rssi,
    check_object,
    event_time,
    int_field,
    radio,
    raw_object,
    routing_key,
    strings,
)
from services.decode.errors import DecodeError

Handler = Callable[[dict[str, Any], dict[str, Any], dict[str, Any], Options, int, int], None]


def decode(event: str, doc: dict[str, Any], opts: Options, now_ns: int, ts: int) -> Decoded:
    handler = HANDLERS.get(event)
    if handler is None:
        raise DecodeError("unknown_event", f"ChirpStack v4 event type {event[:60]!r}")
    info = doc.get("deviceInfo")
    device = _device_fast(info, opts) or _device(info, opts)
    try:
        time_iso, time_ms = event_time(doc, "time", "", now_ns, opts.limits)
        body: dict[str, Any] = {"event": event, "device": device, "time": time_iso}
        dedup = doc.get("deduplicationId")
        if type(dedup) is str and dedup:
            # ChirpStack gives an uplink's status/location events the uplink's id: scope
            # it by event so the fan-out's duplicate filter never drops one of them.
            body["dedup"] = event + "/" + dedup
        assert isinstance(info, dict)  # _device raised otherwise
        handler(doc, body, info, opts, now_ns, ts // 1_000_000 if time_ms is None else time_ms)
    except DecodeError as exc:
        exc.device = device
        raise
    return routing_key(device["tenant"], device["application"], device["name"], event), body


def _device_fast(info: Any, opts: Options) -> dict[str, Any] | None:
    """The identity when every field is plainly right (the hot path), else None."""
    if type(info) is not dict:
        return None
    tenant = info.get("tenantName", opts.default_tenant)
    application = info.get("applicationName")
    name = info.get("deviceName")
    eui = info.get("devEui")
    tags = info.get("tags")
    limit = opts.limits.max_name
    if not (
        type(tenant) is str
        and type(application) is str
        and type(name) is str
        and type(eui) is str
        and len(tenant) <= limit
        and len(application) <= limit
        and len(name) <= limit
        and fields.is_eui(eui)
    ):
        return None
    if tags is None:
        tags = {}
    elif type(tags) is dict:
        for value in tags.values():
            if type(value) is not str:
                return None
    else:
        return None
    return {
        "tenant": tenant,
        "application": application,
        "name": name,
        "devEui": eui.lower(),
        "tags": tags,
    }


def _device(info: Any, opts: Options) -> dict[str, Any]:
    """The same identity, field by field, raising the error that names the bad one."""
    if not isinstance(info, dict):
        info = fields.obj({"deviceInfo": info}, "deviceInfo", "")
    path, limits = "deviceInfo", opts.limits
    return {
        "tenant": fields.name(info, "tenantName", path, limits, opts.default_tenant),
        "application": fields.name(info, "applicationName", path, limits),
        "name": fields.name(info, "deviceName", path, limits),
        "devEui": fields.hex_eui(info.get("devEui"), "deviceInfo.devEui"),
        "tags": fields.tags(info, "tags", path),
    }


def _up(
    doc: dict[str, Any],
    body: dict[str, Any],
    info: dict[str, Any],
    opts: Options,
    now_ns: int,
    time_ms: int,
) -> None:
    fport = int_field(doc, "fPort", "") or 0
    obj = doc.get("object")
    data = doc.get("data")
    if data is not None and type(data) is not str:
        fields.opt_text(doc, "data", "")
    if obj is not None:
        body["object"] = check_object(obj, "object", now_ns, opts.limits)
    else:
        decoded = raw_object(
            data,
            fport,
            body["device"],
            strings(info.get("applicationName"), info.get("applicationId")),
            strings(info.get("deviceProfileName"), info.get("deviceProfileId")),
            time_ms,
            now_ns,
            opts,
        )
        if decoded is not None:
            body["object"] = decoded
    if data is not None:
        body["data"] = data
    best, count = best_by_rssi(doc.get("rxInfo"), "rxInfo")
    gateway, rssi, snr = radio(best, "gatewayId", "snr", "rxInfo[]")
    tx = doc.get("txInfo")
    if tx is None:
        tx = {}
    elif type(tx) is not dict:
        tx = fields.obj(doc, "txInfo", "")
    body["rx"] = {
        "gateway": gateway,
        "rssi": rssi,
        "snr": snr,
        "fCnt": int_field(doc, "fCnt", ""),
        "fPort": fport,
        "dr": int_field(doc, "dr", ""),
        "frequency": int_field(tx, "frequency", "txInfo"),
        "gateways": count,
    }
    dev_addr = doc.get("devAddr")
    if dev_addr is not None:
        body["devAddr"] = dev_addr if type(dev_addr) is str else fields.opt_text(doc, "devAddr", "")


def _join(
    doc: dict[str, Any],
    body: dict[str, Any],
    info: dict[str, Any],
    opts: Options,
    now_ns: int,
    time_ms: int,
) -> None:
    body["join"] = {"devAddr": fields.opt_text(doc, "devAddr", "")}


def _status(
    doc: dict[str, Any],
    body: dict[str, Any],
    info: dict[str, Any],
    opts: Options,
    now_ns: int,
    time_ms: int,
) -> None:
    external = fields.flag(doc, "externalPowerSource", "")
    unavailable = fields.flag(doc, "batteryLevelUnavailable", "")
    level = fields.number(doc, "batteryLevel", "")
    body["status"] = {
        "margin": fields.integer(doc, "margin", ""),
        # A battery level is only meaningful when the device reports one.
        "battery": None if external or unavailable else level,
        "externalPower": external,
        "batteryUnavailable": unavailable,
    }


def _ack(
    doc: dict[str, Any],
    body: dict[str, Any],
    info: dict[str, Any],
    opts: Options,
    now_ns: int,
    time_ms: int,
) -> None:
    body["ack"] = {
        "acknowledged": fields.flag(doc, "acknowledged", ""),
        "fCntDown": fields.integer(doc, "fCntDown", ""),
        "queueItemId": fields.opt_text(doc, "queueItemId", ""),
    }


def _txack(
    doc: dict[str, Any],
    body: dict[str, Any],
    info: dict[str, Any],
    opts: Options,
    now_ns: int,
    time_ms: int,
) -> None:
    tx = fields.opt_obj(doc, "txInfo", "") or {}
    body["txack"] = {
        "fCntDown": fields.integer(doc, "fCntDown", ""),
        "gateway": fields.opt_text(doc, "gatewayId", ""),
        "queueItemId": fields.opt_text(doc, "queueItemId", ""),
        "downlinkId": fields.integer(doc, "downlinkId", ""),
        "frequency": fields.integer(tx, "frequency", "txInfo"),
        "power": fields.integer(tx, "power", "txInfo"),
    }


def _log(
    doc: dict[str, Any],
    body: dict[str, Any],
    info: dict[str, Any],
    opts: Options,
    now_ns: int,
    time_ms: int,
) -> None:
    body["log"] = {
        "level": fields.opt_text(doc, "level", "", "INFO"),
        "code": fields.opt_text(doc, "code", "", "UNKNOWN"),
        "description": fields.opt_text(doc, "description", "", ""),
        "context": fields.tags(doc, "context", ""),
    }


def location_fields(loc: dict[str, Any], path: str) -> dict[str, Any]:
    lat = fields.number(loc, "latitude", path)
    lon = fields.number(loc, "longitude", path)
    assert lat is not None and lon is not None
    if not -90 <= lat <= 90:
        raise DecodeError("schema", f"{path}.latitude {lat} is outside -90..90")
    if not -180 <= lon <= 180:
        raise DecodeError("schema", f"{path}.longitude {lon} is outside -180..180")
    return {
        "latitude": lat,
        "longitude": lon,
        "altitude": fields.number(loc, "altitude", path),
        "source": fields.opt_text(loc, "source", path, "UNKNOWN"),
        "accuracy": fields.number(loc, "accuracy", path),
    }


def _location(
    doc: dict[str, Any],
    body: dict[str, Any],
    info: dict[str, Any],
    opts: Options,
    now_ns: int,
    time_ms: int,
) -> None:
    body["location"] = location_fields(fields.obj(doc, "location", ""), "location")


def _integration(
    doc: dict[str, Any],
    body: dict[str, Any],
    info: dict[str, Any],
    opts: Options,
    now_ns: int,
    time_ms: int,
) -> None:
    body["integration"] = {
        "name": fields.opt_text(doc, "integrationName", "", ""),
        "eventType": fields.opt_text(doc, "eventType", "", ""),
        "object": fields.opt_obj(doc, "object", ""),
    }


HANDLERS: dict[str, Handler] = {
    "up": _up,
    "join": _join,
    "status": _status,
    "ack": _ack,
    "txack": _txack,
    "log": _log,
    "location": _location,
    "integration": _integration,
}
