"""The decoder: one raw frame in, one event out, always (Sans-I/O, no clock, no sockets).

``Decoder(options).decode(frame, now_ns)`` picks the format by topic, then by shape:

- ``v3/{app}@{tenant}/devices/{dev}/{type}``: The Things Stack v3;
- ``[{prefix}/]gateway/{id}/event/{type}`` or ``.../state/conn``: ChirpStack gateway
  events (JSON or Protobuf);
- anything else is a device event whose type is the topic's last segment (ChirpStack's
  ``application/{id}/device/{eui}/event/{type}`` or a custom template ending in the type),
  decoded as ChirpStack v4 when the payload has ``deviceInfo``, ChirpStack v3 when it has
  ``devEUI``/``applicationID``, The Things Stack when it has ``end_device_ids``.

Anything that cannot be decoded becomes an ``error`` event routed ``_error/{reason}``
(see :mod:`services.decode.errors`). Every body carries the frame's ``src``, ``seq``,
``ts`` plus ``ts_decode`` (``now_ns``); the fan-out turns ``ts`` into ``received_at``.
"""

from __future__ import annotations

from typing import Any

from services.decode.decoders import chirpstack_v3, chirpstack_v4, gateway, tts_v3
from services.decode.decoders.common import Decoded, Options
from services.decode.errors import DecodeError, schema, type_name
from services.decode.limits import parse_json
from shared.frames import Event, RawFrame
from shared.routing import error_key

MAX_TOPIC_IN_ERROR = 512


class Decoder:
    def __init__(self, options: Options | None = None) -> None:
        self.options = options or Options()

    def decode(self, frame: RawFrame, now_ns: int) -> Event:
        """Never raises for any input (a bug in a decoder aside: the worker catches that)."""
        try:
            key, body = self._decode(frame.topic, frame.payload, now_ns, frame.ts)
        except DecodeError as exc:
            key, body = (
                error_key(exc.reason),
                error_body(exc.reason, exc.detail, frame.topic, exc.device),
            )
        body["src"] = frame.src
        body["seq"] = frame.seq
        body["ts"] = frame.ts
        body["ts_decode"] = now_ns
        return Event(key, body)

    def _decode(self, topic: str, payload: bytes, now_ns: int, ts: int) -> Decoded:
        opts = self.options
        if topic.startswith("v3/"):
            ids = tts_v3.parse_topic(topic)
            if ids is not None:
                doc = self._object(payload)
                if not tts_v3.looks_like(doc):
                    raise DecodeError(
                        "unknown_event",
                        "The Things Stack topic, but no end_device_ids in the payload",
                    )
                return tts_v3.decode(ids[3], doc, opts, now_ns, ts, topic_tenant=ids[1])
        gateway_topic = gateway.parse_topic(topic)
        if gateway_topic is not None:
            return gateway.decode(*gateway_topic, payload, opts, now_ns)
        event = topic.rpartition("/")[2]
        doc = self._object(payload)
        if "deviceInfo" in doc:
            return chirpstack_v4.decode(event, doc, opts, now_ns, ts)
        if chirpstack_v3.looks_like(doc):
            return chirpstack_v3.decode(event, doc, opts, now_ns, ts)
        if tts_v3.looks_like(doc):
            return tts_v3.decode(event, doc, opts, now_ns, ts)
        raise DecodeError(
            "unknown_event",
            "not a ChirpStack v4, v3 or The Things Stack event "
            "(no deviceInfo, devEUI or end_device_ids)",
        )

    def _object(self, payload: bytes) -> dict[str, Any]:
        doc = parse_json(payload, self.options.limits)
        if not isinstance(doc, dict):
            raise schema("payload", f"must be a JSON object, got {type_name(doc)}")
        return doc


def error_body(
    reason: str, detail: str, topic: str, device: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The body of an ``error`` event; ``device`` when the identity was already known."""
    if len(topic) > MAX_TOPIC_IN_ERROR:
        topic = topic[: MAX_TOPIC_IN_ERROR - 1] + "…"
    body: dict[str, Any] = {
        "event": "error",
        "error": {"reason": reason, "detail": detail, "topic": topic},
    }
    if device is not None:
        body["device"] = device
    return body


def error_event(
    reason: str,
    detail: str,
    topic: str,
    src: str,
    seq: int,
    ts: int,
    now_ns: int,
) -> Event:
    """An error event built outside :class:`Decoder` (bad frames, bugs): same shape."""
    body = error_body(reason, detail, topic)
    body.update(src=src, seq=seq, ts=ts, ts_decode=now_ns)
    return Event(error_key(reason), body)


_default = Decoder()


def decode(frame: RawFrame, now_ns: int) -> Event:
    """Decode with the default options (no plug-ins, Cayenne LPP ``auto``)."""
    return _default.decode(frame, now_ns)
