"""ChirpStack gateway events (MQTT forwarder / gateway bridge), JSON **and** Protobuf.

Topics: ``[{prefix}/]gateway/{gatewayId}/event/{stats|up|ack}`` and
``[{prefix}/]gateway/{gatewayId}/state/conn`` (retained). The region prefix (``eu868/``)
is optional and ignored. ChirpStack's gateway tools publish Protobuf by default; JSON is
their debugging format. A payload starting with ``{`` is read as JSON, anything else as
the Protobuf message of that topic, parsed by ChirpStack's own ``chirpstack_api.gw``
package and turned into the same dict as its JSON form, so one mapper serves both.

The gateway id comes from the payload (``gatewayId``, the legacy bytes id, or
``rxInfo.gatewayId`` for ``up``), the topic's only as a fallback. Protobuf leaves out
default values: a ``conn`` message without ``state`` is ``OFFLINE``, absent counters are 0.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from services.decode import fields
from services.decode.decoders.common import Decoded, Options, event_time
from services.decode.errors import DecodeError, schema, type_name
from services.decode.limits import check_size, json_safe, parse_json
from shared.routing import gateway_key

if TYPE_CHECKING:
    from google.protobuf.message import Message  # type: ignore[import-untyped]

Handler = Callable[[dict[str, Any], dict[str, Any], Options, int], None]


@functools.cache
def protobuf_types() -> dict[str, type[Message]]:
    """The Protobuf message per gateway event. Imported on first use: protobuf and
    chirpstack_api cost each worker ~6 MB, and most deployments only see device events."""
    from chirpstack_api import gw

    return {
        "stats": gw.GatewayStats,
        "up": gw.UplinkFrame,
        "ack": gw.DownlinkTxAck,
        "conn": gw.ConnState,
    }


def parse_topic(topic: str) -> tuple[str, str, str] | None:
    """``eu868/gateway/0016c001f153a14c/event/stats`` -> (id, "event", "stats")."""
    if "gateway/" not in topic:  # the common case (device events) without a split
        return None
    parts = topic.split("/")
    if len(parts) >= 4 and parts[-4] == "gateway" and parts[-2] in ("event", "state"):
        return parts[-3], parts[-2], parts[-1]
    return None


def decode(
    topic_id: str, kind: str, event: str, payload: bytes, opts: Options, now_ns: int
) -> Decoded:
    known = (kind == "state" and event == "conn") or (
        kind == "event" and event in ("stats", "up", "ack")
    )
    if not known:
        raise DecodeError("unknown_event", f"gateway {kind} {event[:60]!r}")
    doc = _load(event, payload, opts)
    gateway_id = _gateway_id(doc, event, opts) or topic_id
    if len(gateway_id) > opts.limits.max_name:
        raise DecodeError(
            "schema",
            f"gateway id is {len(gateway_id)} characters long, the limit is {opts.limits.max_name}",
        )
    body: dict[str, Any] = {"event": event, "gateway": {"id": gateway_id}, "time": None}
    HANDLERS[event](doc, body, opts, now_ns)
    return gateway_key(gateway_id, event), body


def _load(event: str, payload: bytes, opts: Options) -> dict[str, Any]:
    # "{" and "[" start wire-format groups, which proto3 never writes: unambiguous.
    if payload[:64].lstrip()[:1] in (b"{", b"["):
        doc = parse_json(payload, opts.limits)
        if not isinstance(doc, dict):
            raise schema("payload", f"must be a JSON object, got {type_name(doc)}")
        return doc
    check_size(payload, opts.limits)
    if not payload:
        raise DecodeError("json", "empty payload (0 bytes)")
    from google.protobuf import json_format  # type: ignore[import-untyped]
    from google.protobuf.message import DecodeError as ProtobufError

    message = protobuf_types()[event]()
    try:
        message.ParseFromString(payload)
    except (ProtobufError, RuntimeError, ValueError):
        raise DecodeError(
            "encoding", f"neither JSON nor a Protobuf {message.DESCRIPTOR.name}"
        ) from None
    as_dict = json_format.MessageToDict(message)
    safe: dict[str, Any] = json_safe(as_dict, opts.limits.max_depth, "payload")
    return safe


def _gateway_id(doc: dict[str, Any], event: str, opts: Options) -> str | None:
    source = doc
    path = ""
    if event == "up":
        source = fields.opt_obj(doc, "rxInfo", "") or {}
        path = "rxInfo"
    gateway_id = fields.opt_text(source, "gatewayId", path)
    if gateway_id:
        return gateway_id.lower() if fields.is_eui(gateway_id) else gateway_id
    for legacy in ("gatewayIdLegacy", "gatewayID"):  # Protobuf bytes / v3 bridge: base64
        if source.get(legacy):
            return fields.eui_from_base64_or_hex(
                source[legacy], f"{path}.{legacy}" if path else legacy
            )
    return None


def _counts(doc: dict[str, Any], key: str) -> dict[str, int]:
    value = fields.opt_obj(doc, key, "") or {}
    for label, count in value.items():
        if type(count) is not int:
            raise schema(f"{key}.{label}", f"must be an integer, got {type_name(count)}")
    return value


def _stats(doc: dict[str, Any], body: dict[str, Any], opts: Options, now_ns: int) -> None:
    body["time"], _ = event_time(doc, "time", "", now_ns, opts.limits)
    stats: dict[str, Any] = {
        key: fields.integer(doc, key, "")
        for key in (
            "rxPacketsReceived",
            "rxPacketsReceivedOk",
            "txPacketsReceived",
            "txPacketsEmitted",
        )
    }
    for key in ("rxPacketsPerFrequency", "txPacketsPerFrequency", "txPacketsPerStatus"):
        stats[key] = _counts(doc, key)
    for key in ("rxPacketsPerModulation", "txPacketsPerModulation"):
        items = fields.opt_list(doc, key, "")
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                raise schema(f"{key}[{i}]", f"must be an object, got {type_name(item)}")
        stats[key] = items
    body["stats"] = stats
    location = fields.opt_obj(doc, "location", "")
    if location:
        body["location"] = location
    metadata = fields.tags(doc, "metadata", "")
    if metadata:
        body["metadata"] = metadata


def _up(doc: dict[str, Any], body: dict[str, Any], opts: Options, now_ns: int) -> None:
    rx = fields.opt_obj(doc, "rxInfo", "") or {}
    tx = fields.opt_obj(doc, "txInfo", "") or {}
    for key in ("gwTime", "nsTime", "time"):  # 4.x names first, then the older "time"
        if rx.get(key) is not None:
            body["time"], _ = event_time(rx, key, "rxInfo", now_ns, opts.limits)
            break
    lora = ((fields.opt_obj(tx, "modulation", "txInfo") or {}).get("lora")) or {}
    body["rx"] = {
        "gateway": body["gateway"]["id"],
        "rssi": fields.number(rx, "rssi", "rxInfo"),
        "snr": fields.number(rx, "snr", "rxInfo"),
        "frequency": fields.integer(tx, "frequency", "txInfo"),
        "spreadingFactor": fields.integer(lora, "spreadingFactor", "txInfo.modulation.lora", None)
        if isinstance(lora, dict)
        else None,
        "uplinkId": fields.integer(rx, "uplinkId", "rxInfo"),
    }
    body["phyPayload"] = fields.opt_text(doc, "phyPayload", "")


def _ack(doc: dict[str, Any], body: dict[str, Any], opts: Options, now_ns: int) -> None:
    items = []
    for i, item in enumerate(fields.opt_list(doc, "items", "")):
        if not isinstance(item, dict):
            raise schema(f"items[{i}]", f"must be an object, got {type_name(item)}")
        items.append(fields.opt_text(item, "status", f"items[{i}]", "IGNORED"))  # enum value 0
    body["ack"] = {"downlinkId": fields.integer(doc, "downlinkId", ""), "items": items}


def _conn(doc: dict[str, Any], body: dict[str, Any], opts: Options, now_ns: int) -> None:
    state = fields.opt_text(doc, "state", "", "OFFLINE") or "OFFLINE"
    if state not in ("ONLINE", "OFFLINE"):
        raise schema("state", f"must be ONLINE or OFFLINE, got {state[:40]!r}")
    body["conn"] = {"state": state, "online": state == "ONLINE"}


HANDLERS: dict[str, Handler] = {"stats": _stats, "up": _up, "ack": _ack, "conn": _conn}
