"""ChirpStack v3 device events (``application/{id}/device/{devEUI}/event/{type}``).

Mapped to the same record as v4 so a dashboard cannot tell them apart. The differences:
``applicationName``/``deviceName``/``devEUI`` at the top level (no tenants: the record
gets ``DECODE_DEFAULT_TENANT``); EUIs, gateway ids and DevAddr base64-encoded (turned into
lowercase hex); the decoded payload in ``objectJSON``, a JSON *string* (``object`` with
the older ``json`` marshaler); ``loRaSNR`` for ``snr``; no event ``time`` (an uplink's is
taken from its best gateway); the ``error`` event, published as a ``log`` event like v4's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from services.decode import fields
from services.decode.decoders import chirpstack_v4
from services.decode.decoders.common import (
    Decoded,
    Options,
    best_by_rssi,
    check_object,
    raw_object,
    routing_key,
    strings,
)
from services.decode.errors import DecodeError
from services.decode.limits import parse_json_text
from services.decode.timefmt import parse_iso

Handler = Callable[[dict[str, Any], dict[str, Any], Options, int, int], None]


def looks_like(doc: dict[str, Any]) -> bool:
    return "devEUI" in doc or "applicationID" in doc


def decode(event: str, doc: dict[str, Any], opts: Options, now_ns: int, ts: int) -> Decoded:
    handler = HANDLERS.get(event)
    if handler is None:
        raise DecodeError("unknown_event", f"ChirpStack v3 event type {event[:60]!r}")
    limits = opts.limits
    device: dict[str, Any] = {
        "tenant": opts.default_tenant,
        "application": fields.name(doc, "applicationName", "", limits),
        "name": fields.name(doc, "deviceName", "", limits),
        "devEui": fields.eui_from_base64_or_hex(doc.get("devEUI"), "devEUI"),
        "tags": fields.tags(doc, "tags", ""),
    }
    name = "log" if event == "error" else event
    body: dict[str, Any] = {"event": name, "device": device, "time": None}
    try:
        handler(doc, body, opts, now_ns, ts)
    except DecodeError as exc:
        exc.device = device
        raise
    return routing_key(device["tenant"], device["application"], device["name"], name), body


def _rx(doc: dict[str, Any], body: dict[str, Any], opts: Options, now_ns: int) -> int | None:
    """Fill ``rx`` and ``time`` from the best gateway; the event time in ms, if any."""
    best, count = best_by_rssi(fields.opt_list(doc, "rxInfo", ""), "rxInfo")
    tx = fields.opt_obj(doc, "txInfo", "") or {}
    gateway = None
    time_ms = None
    if best is not None:
        if best.get("gatewayID") is not None:
            gateway = fields.eui_from_base64_or_hex(best["gatewayID"], "rxInfo[].gatewayID")
        rx_time = best.get("time")
        if rx_time is not None:
            time_ms = parse_iso(rx_time, "rxInfo[].time", now_ns, opts.limits.time_tolerance_s)
            body["time"] = rx_time
    body["rx"] = {
        "gateway": gateway,
        "rssi": fields.number(best, "rssi", "rxInfo[]") if best else None,
        "snr": fields.number(best, "loRaSNR", "rxInfo[]") if best else None,
        "fCnt": fields.integer(doc, "fCnt", ""),
        "fPort": fields.integer(doc, "fPort", ""),
        "dr": fields.integer(doc, "dr", ""),
        "frequency": fields.integer(tx, "frequency", "txInfo"),
        "gateways": count,
    }
    return time_ms


def _up(doc: dict[str, Any], body: dict[str, Any], opts: Options, now_ns: int, ts: int) -> None:
    time_ms = _rx(doc, body, opts, now_ns)
    obj = doc.get("object")
    object_json = fields.opt_text(doc, "objectJSON", "")
    if obj is None and object_json:
        obj = parse_json_text(object_json, "objectJSON", opts.limits)
    data = fields.opt_text(doc, "data", "")
    if obj is not None:
        body["object"] = check_object(
            obj, "objectJSON" if object_json else "object", now_ns, opts.limits
        )
    else:
        decoded = raw_object(
            data,
            body["rx"]["fPort"],
            body["device"],
            strings(doc.get("applicationName"), doc.get("applicationID")),
            (),
            ts // 1_000_000 if time_ms is None else time_ms,
            now_ns,
            opts,
        )
        if decoded is not None:
            body["object"] = decoded
    if data is not None:
        body["data"] = data
    if doc.get("devAddr") is not None:
        body["devAddr"] = fields.hex_from_base64_or_hex(doc["devAddr"], "devAddr")


def _join(doc: dict[str, Any], body: dict[str, Any], opts: Options, now_ns: int, ts: int) -> None:
    _rx(doc, body, opts, now_ns)  # for the time; v4's join has no radio metadata, so drop it
    del body["rx"]
    dev_addr = doc.get("devAddr")
    body["join"] = {
        "devAddr": None if dev_addr is None else fields.hex_from_base64_or_hex(dev_addr, "devAddr")
    }


def _status(doc: dict[str, Any], body: dict[str, Any], opts: Options, now_ns: int, ts: int) -> None:
    external = fields.flag(doc, "externalPowerSource", "")
    unavailable = fields.flag(doc, "batteryLevelUnavailable", "")
    body["status"] = {
        "margin": fields.integer(doc, "margin", ""),
        "battery": None if external or unavailable else fields.number(doc, "batteryLevel", ""),
        "externalPower": external,
        "batteryUnavailable": unavailable,
    }


def _ack(doc: dict[str, Any], body: dict[str, Any], opts: Options, now_ns: int, ts: int) -> None:
    body["ack"] = {
        "acknowledged": fields.flag(doc, "acknowledged", ""),
        "fCntDown": fields.integer(doc, "fCnt", ""),
        "queueItemId": None,
    }


def _txack(doc: dict[str, Any], body: dict[str, Any], opts: Options, now_ns: int, ts: int) -> None:
    gateway = doc.get("gatewayID")
    body["txack"] = {
        "fCntDown": fields.integer(doc, "fCnt", ""),
        "gateway": None if gateway is None else fields.eui_from_base64_or_hex(gateway, "gatewayID"),
        "queueItemId": None,
        "downlinkId": None,
        "frequency": None,
        "power": None,
    }


def _error(doc: dict[str, Any], body: dict[str, Any], opts: Options, now_ns: int, ts: int) -> None:
    body["log"] = {
        "level": "ERROR",
        "code": fields.opt_text(doc, "type", "", "UNKNOWN"),
        "description": fields.opt_text(doc, "error", "", ""),
        "context": {},
    }


def _location(
    doc: dict[str, Any], body: dict[str, Any], opts: Options, now_ns: int, ts: int
) -> None:
    body["location"] = chirpstack_v4.location_fields(fields.obj(doc, "location", ""), "location")


HANDLERS: dict[str, Handler] = {
    "up": _up,
    "join": _join,
    "status": _status,
    "ack": _ack,
    "txack": _txack,
    "error": _error,
    "location": _location,
}
