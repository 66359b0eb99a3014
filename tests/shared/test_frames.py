"""The two wire formats: round trips, and every kind of bad frame rejected with a reason."""

from __future__ import annotations

import contextlib

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.frames import (
    INTERNAL_KEYS,
    Event,
    FrameError,
    RawFrame,
    event_parts,
    pack_raw,
    parse_event,
    unpack_raw,
)


def raw(**overrides: object) -> dict[str, object]:
    frame = {
        "v": 1,
        "src": "ingest-1",
        "seq": 7,
        "ts": 1,
        "topic": "t",
        "payload": b"x",
        "qos": 1,
        "retain": False,
    }
    frame.update(overrides)
    return frame


@given(
    src=st.text(max_size=50),
    seq=st.integers(0, 2**63 - 1),
    ts=st.integers(0, 2**63 - 1),
    topic=st.text(max_size=200),
    payload=st.binary(max_size=2000),
    qos=st.integers(0, 2),
    retain=st.booleans(),
)
def test_raw_frame_round_trips_with_payload_untouched(src, seq, ts, topic, payload, qos, retain):
    frame = RawFrame(src=src, seq=seq, ts=ts, topic=topic, payload=payload, qos=qos, retain=retain)
    assert unpack_raw(pack_raw(frame)) == frame


def test_event_round_trips_with_key_in_its_own_part():
    event = Event(
        "acme/app/dev%2F1/up", {"event": "up", "object": {"type": "voltage", "values": []}}
    )
    parts = event_parts(event)
    assert parts[0] == b"acme/app/dev%2F1/up"
    back = parse_event(parts)
    assert back.key == event.key
    assert back.body == {**event.body, "v": 1}


def test_internal_keys_are_the_gateways_bookkeeping():
    assert {"src", "seq", "ts", "ts_decode", "v"} == INTERNAL_KEYS


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "msgpack"),
        (b"\xc1", "msgpack"),  # never-used msgpack byte
        (b"not msgpack at all", "msgpack"),
        (msgpack.packb([1, 2, 3]), "shape"),
        (msgpack.packb(raw(v=2)), "version"),
        (msgpack.packb(raw(v=None)), "version"),
        (msgpack.packb({k: v for k, v in raw().items() if k != "payload"}), "shape"),
        (msgpack.packb(raw(payload="text, not bytes")), "shape"),
        (msgpack.packb(raw(seq="7")), "shape"),
        (msgpack.packb(raw(seq=True)), "shape"),
        (msgpack.packb(raw()) + b"\x00", "msgpack"),  # trailing data
        (b"\xdd\xff\xff\xff\xff", "msgpack"),  # a 4G-element array header in 5 bytes
        (b"\xdf\xff\xff\xff\xff", "msgpack"),  # a 4G-entry map header
        (b"\x81\x91\x01\x01", "msgpack"),  # a map whose key is an array (unhashable)
    ],
)
def test_bad_raw_frames_are_rejected_with_a_reason(data, reason):
    with pytest.raises(FrameError) as info:
        unpack_raw(data)
    assert info.value.reason == reason


def test_oversized_raw_frame_is_rejected_before_unpacking():
    with pytest.raises(FrameError) as info:
        unpack_raw(pack_raw(RawFrame("s", 1, 1, "t", b"x" * 2000)), max_bytes=1000)
    assert info.value.reason == "size"


@pytest.mark.parametrize(
    ("parts", "reason"),
    [
        ([b"k"], "parts"),
        ([b"k", b"x", b"y"], "parts"),
        ([b"\xff\xfe", msgpack.packb({"v": 1, "event": "up"})], "key"),
        ([b"k", b"garbage"], "msgpack"),
        ([b"k", msgpack.packb({"v": 9, "event": "up"})], "version"),
        ([b"k", msgpack.packb({"v": 1})], "shape"),
        ([b"k", msgpack.packb({"v": 1, "event": 5})], "shape"),
        ([b"k", msgpack.packb({"v": 1, "event": "up", 3: "int key"})], "msgpack"),
    ],
)
def test_bad_events_are_rejected_with_a_reason(parts, reason):
    with pytest.raises(FrameError) as info:
        parse_event(parts)
    assert info.value.reason == reason


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_random_bytes_never_escape_as_anything_but_frame_error(data):
    for call in (lambda: unpack_raw(data), lambda: parse_event([b"k", data])):
        with contextlib.suppress(FrameError):
            call()
