"""What the decode tests share: frames from fixtures, a fixed clock, body checks."""

from __future__ import annotations

import json
from typing import Any

import orjson

from services.decode.dispatch import Decoder
from shared.frames import INTERNAL_KEYS, Event, RawFrame, event_parts, parse_event
from tests.conftest import FIXTURES

# 2023-11-14T22:13:20Z: after every public sample, before any absurd future.
NOW_NS = 1_700_000_000_000_000_000
NOW_MS = NOW_NS // 1_000_000
TS_NS = NOW_NS - 5_000_000  # ingest took the message 5 ms before decode ran

V4 = "application/17c82e96-be03-4f38-aef3-f83d48582d97/device/0101010101010101/event/{}"
V3 = "application/123/device/0202020202020202/event/{}"
GATEWAY = "eu868/gateway/0016c001f153a14c/{}"
TTS = "v3/app1@tenant1/devices/dev1/{}"

# Each public sample with the topic its network server publishes it on (SOURCES.md).
FIXTURE_TOPICS = {
    "chirpstack_v4_up.json": V4.format("up"),
    "chirpstack_v4_status.json": V4.format("status"),
    "chirpstack_v4_join.json": V4.format("join"),
    "chirpstack_v4_ack.json": V4.format("ack"),
    "chirpstack_v4_txack.json": V4.format("txack"),
    "chirpstack_v4_log.json": V4.format("log"),
    "chirpstack_v4_location.json": V4.format("location"),
    "chirpstack_v4_gateway_stats.json": GATEWAY.format("event/stats"),
    "chirpstack_v4_gateway_up.json": GATEWAY.format("event/up"),
    "chirpstack_v4_gateway_conn_state.json": GATEWAY.format("state/conn"),
    "chirpstack_v3_up.json": V3.format("up"),
    "chirpstack_v3_status.json": V3.format("status"),
    "chirpstack_v3_join.json": V3.format("join"),
    "ttn_v3_up_data_formats.json": TTS.format("up"),
    "ttn_v3_join.json": TTS.format("join"),
}


def fixture_bytes(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def fixture_doc(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(fixture_bytes(name))
    return doc


def frame(
    topic: str, payload: bytes | dict[str, Any] | list[Any], seq: int = 1, src: str = "ingest-test"
) -> RawFrame:
    if not isinstance(payload, bytes):
        payload = orjson.dumps(payload)
    return RawFrame(src=src, seq=seq, ts=TS_NS, topic=topic, payload=payload, qos=1)


def decode(
    topic: str, payload: bytes | dict[str, Any] | list[Any], decoder: Decoder | None = None
) -> Event:
    event = (decoder or Decoder()).decode(frame(topic, payload), NOW_NS)
    check_body(event)
    return event


def check_body(event: Event) -> None:
    """What every event promises the fan-out: frame fields copied, JSON-safe for a
    browser, packable, and parseable back as an event frame."""
    body = event.body
    assert isinstance(event.key, str)
    assert isinstance(body["event"], str)
    assert isinstance(body["src"], str) and isinstance(body["seq"], int)
    assert isinstance(body["ts"], int) and isinstance(body["ts_decode"], int)
    text = orjson.dumps(body)  # raises on anything orjson cannot write

    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} in a body")

    assert json.loads(text, parse_constant=refuse) == orjson.loads(text)
    assert parse_event(event_parts(event)).body["event"] == body["event"]


def public(event: Event) -> dict[str, Any]:
    """The body without the gateway's internal keys (what a WebSocket client sees)."""
    return {k: v for k, v in event.body.items() if k not in INTERNAL_KEYS}


def error_of(event: Event) -> tuple[str, str]:
    assert event.body["event"] == "error", event.body
    assert event.key == "_error/" + event.body["error"]["reason"]
    return event.body["error"]["reason"], event.body["error"]["detail"]


def v4_up(**overrides: Any) -> dict[str, Any]:
    """The public v4 uplink sample with a decoded measurement object."""
    doc = fixture_doc("chirpstack_v4_up.json")
    doc["object"] = {
        "type": "voltage",
        "values": [{"time": NOW_MS - 1000, "time_iso": "2023-11-14T22:13:19.000Z", "value": 3.7}],
    }
    doc.update(overrides)
    return doc
