"""The Things Stack v3 (``v3/{application}@{tenant}/devices/{device}/{type}``).

Mapped to the same record as ChirpStack: identity from ``end_device_ids`` (device_id,
application_ids.application_id, dev_eui) with the tenant from
``uplink_message.network_ids.tenant_id``, else the topic's ``@tenant``; the decoded
payload from ``uplink_message.decoded_payload`` (``frm_payload`` goes through the codec
when there is none); radio metadata from ``rx_metadata`` (gateway EUI when known, else
its id); ``received_at`` as the event ``time``; the ``as:up:`` correlation id as ``dedup``.
The Things Stack leaves out zero and false fields, so missing ``f_port``/``f_cnt`` are 0.
Devices without a DevEUI (ABP) get ``devEui: null``.

Event types: ``up``, ``join``, ``down/ack`` and ``down/nack`` (→ ``ack``), ``down/sent``
(→ ``txack``), ``location/solved`` (→ ``location``); others are ``unknown_event``.
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
    event_time,
    raw_object,
    routing_key,
    strings,
)
from services.decode.errors import DecodeError

Handler = Callable[[dict[str, Any], dict[str, Any], Options, int, int], None]
TopicIds = tuple[str, str, str, str]  # application, tenant, device, event type


def parse_topic(topic: str) -> TopicIds | None:
    """``v3/app1@tenant1/devices/dev1/down/ack`` -> (app1, tenant1, dev1, down/ack)."""
    parts = topic.split("/", 4)
    if len(parts) < 5 or parts[0] != "v3" or parts[2] != "devices":
        return None
    application, _, tenant = parts[1].partition("@")
    return application, tenant, parts[3], parts[4]


def looks_like(doc: dict[str, Any]) -> bool:
    return "end_device_ids" in doc


EVENT_NAMES = {
    "up": "up",
    "join": "join",
    "down/ack": "ack",
    "down/nack": "ack",
    "down/sent": "txack",
    "location/solved": "location",
}


def decode(
    event: str, doc: dict[str, Any], opts: Options, now_ns: int, ts: int, topic_tenant: str = ""
) -> Decoded:
    name = EVENT_NAMES.get(event)
    if name is None:
        raise DecodeError("unknown_event", f"The Things Stack event type {event[:60]!r}")
    ids = fields.obj(doc, "end_device_ids", "")
    app_ids = fields.obj(ids, "application_ids", "end_device_ids")
    uplink = fields.opt_obj(doc, "uplink_message", "") or {}
    network = fields.opt_obj(uplink, "network_ids", "uplink_message") or {}
    limits = opts.limits
    tenant = fields.opt_text(network, "tenant_id", "uplink_message.network_ids") or topic_tenant
    if len(tenant) > limits.max_name:
        raise DecodeError(
            "schema", f"tenant is {len(tenant)} characters long, the limit is {limits.max_name}"
        )
    dev_eui = ids.get("dev_eui")
    attributes = (
        uplink if "attributes" in uplink else (fields.opt_obj(doc, "join_accept", "") or {})
    )
    device: dict[str, Any] = {
        "tenant": tenant or opts.default_tenant,
        "application": fields.name(
            app_ids, "application_id", "end_device_ids.application_ids", limits
        ),
        "name": fields.name(ids, "device_id", "end_device_ids", limits),
        "devEui": None if dev_eui is None else fields.hex_eui(dev_eui, "end_device_ids.dev_eui"),
        "tags": fields.tags(attributes, "attributes", ""),
    }
    try:
        time_iso, time_ms = event_time(doc, "received_at", "", now_ns, limits)
        body: dict[str, Any] = {"event": name, "device": device, "time": time_iso}
        for cid in fields.opt_list(doc, "correlation_ids", ""):
            if isinstance(cid, str) and cid.startswith("as:up:") and name == "up":
                body["dedup"] = f"up/{cid}"
                break
        HANDLERS[event](doc, body, opts, now_ns, ts // 1_000_000 if time_ms is None else time_ms)
    except DecodeError as exc:
        exc.device = device
        raise
    return routing_key(device["tenant"], device["application"], device["name"], name), body


def _up(
    doc: dict[str, Any], body: dict[str, Any], opts: Options, now_ns: int, time_ms: int
) -> None:
    up = fields.obj(doc, "uplink_message", "")
    fport = fields.integer(up, "f_port", "uplink_message") or 0
    payload = fields.opt_text(up, "frm_payload", "uplink_message")
    decoded = up.get("decoded_payload")
    if decoded is not None:
        body["object"] = check_object(
            decoded, "uplink_message.decoded_payload", now_ns, opts.limits
        )
    else:
        app = body["device"]["application"]
        obj = raw_object(payload, fport, body["device"], strings(app), (), time_ms, now_ns, opts)
        if obj is not None:
            body["object"] = obj
    if payload is not None:
        body["data"] = payload
    best, count = best_by_rssi(
        fields.opt_list(up, "rx_metadata", "uplink_message"), "uplink_message.rx_metadata"
    )
    gateway = None
    if best is not None:
        gw_ids = fields.opt_obj(best, "gateway_ids", "uplink_message.rx_metadata[]") or {}
        eui = gw_ids.get("eui")
        gateway = (
            fields.hex_eui(eui, "rx_metadata[].gateway_ids.eui")
            if eui is not None
            else fields.opt_text(gw_ids, "gateway_id", "rx_metadata[].gateway_ids")
        )
    settings = fields.opt_obj(up, "settings", "uplink_message") or {}
    body["rx"] = {
        "gateway": gateway,
        "rssi": fields.number(best, "rssi", "rx_metadata[]") if best else None,
        "snr": fields.number(best, "snr", "rx_metadata[]") if best else None,
        "fCnt": fields.integer(up, "f_cnt", "uplink_message"),
        "fPort": fport,
        "dr": fields.integer(settings, "data_rate_index", "uplink_message.settings", None),
        "frequency": fields.integer(settings, "frequency", "uplink_message.settings"),
        "gateways": count,
    }
    ids = doc["end_device_ids"]
    if ids.get("dev_addr") is not None:
        body["devAddr"] = fields.hex_from_base64_or_hex(ids["dev_addr"], "end_device_ids.dev_addr")


def _join(
    doc: dict[str, Any], body: dict[str, Any], opts: Options, now_ns: int, time_ms: int
) -> None:
    ids = doc["end_device_ids"]
    dev_addr = ids.get("dev_addr")
    body["join"] = {
        "devAddr": None
        if dev_addr is None
        else fields.hex_from_base64_or_hex(dev_addr, "end_device_ids.dev_addr")
    }


def _ack(key: str, acknowledged: bool) -> Handler:
    def handler(
        doc: dict[str, Any], body: dict[str, Any], opts: Options, now_ns: int, time_ms: int
    ) -> None:
        down = fields.opt_obj(doc, key, "") or {}
        body["ack"] = {
            "acknowledged": acknowledged,
            "fCntDown": fields.integer(down, "f_cnt", key),
            "queueItemId": None,
        }

    return handler


def _sent(
    doc: dict[str, Any], body: dict[str, Any], opts: Options, now_ns: int, time_ms: int
) -> None:
    down = fields.opt_obj(doc, "downlink_sent", "") or {}
    body["txack"] = {
        "fCntDown": fields.integer(down, "f_cnt", "downlink_sent"),
        "gateway": None,
        "queueItemId": None,
        "downlinkId": None,
        "frequency": None,
        "power": None,
    }


def _location(
    doc: dict[str, Any], body: dict[str, Any], opts: Options, now_ns: int, time_ms: int
) -> None:
    solved = fields.obj(doc, "location_solved", "")
    loc = fields.obj(solved, "location", "location_solved")
    body["location"] = chirpstack_v4.location_fields(loc, "location_solved.location")


HANDLERS: dict[str, Handler] = {
    "up": _up,
    "join": _join,
    "down/ack": _ack("downlink_ack", True),
    "down/nack": _ack("downlink_nack", False),
    "down/sent": _sent,
    "location/solved": _location,
}
