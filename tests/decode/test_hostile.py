"""Hostile input, rows B1-B13 of RELIABILITY.md §9.2: every one becomes an ``_error``
event with the right reason (or a documented conversion), never an exception."""

from __future__ import annotations

import json

import orjson
import pytest

from services.decode.decoders.common import Options
from services.decode.dispatch import Decoder
from services.decode.limits import Limits
from tests.decode.helpers import (
    GATEWAY,
    NOW_MS,
    TTS,
    V3,
    V4,
    decode,
    error_of,
    fixture_bytes,
    fixture_doc,
    v4_up,
)

UP = V4.format("up")
GOOD = fixture_bytes("chirpstack_v4_up.json").rstrip()


def reason(payload: bytes | dict | list, topic: str = UP, decoder: Decoder | None = None) -> str:
    return error_of(decode(topic, payload, decoder))[0]


@pytest.mark.parametrize(
    "payload", [GOOD[:-1], GOOD[: len(GOOD) // 2], b"{", b'{"a":', b"{'a': 1}", b"up", b'{"a":1} x']
)
def test_b1_malformed_or_truncated_json(payload: bytes) -> None:
    assert reason(payload) == "json"


@pytest.mark.parametrize(
    "payload",
    [
        b"\xff\xfe\xfd",
        b"\xc3\x28",
        GOOD.replace(b"Test device", b"Test \xed\xa0\x80device"),
        b"\x08\x01\x12\x04abcd",
        bytes(range(256)),
    ],
)
def test_b2_binary_or_not_utf8(payload: bytes) -> None:
    assert reason(payload) == "encoding"


@pytest.mark.parametrize("topic", [UP, GATEWAY.format("state/conn"), TTS.format("up")])
def test_b3_empty_payload_is_a_json_error(topic: str) -> None:
    """Also what a retained-message delete looks like; documented as reason json."""
    event = decode(topic, b"")
    assert error_of(event) == ("json", "empty payload (0 bytes)")


def test_b3_whitespace_only() -> None:
    assert reason(b"  \n ") == "json"


def test_b4_oversized_payload_is_rejected_before_parsing() -> None:
    # Valid JSON, and also invalid UTF-8 further in: only a check before parsing says "size".
    big = b'{"a": "' + b"x" * (1024 * 1024) + b'\xff"}'
    event = decode(UP, big)
    assert error_of(event) == ("size", f"payload is {len(big)} bytes, the limit is 262144")


def test_b4_payload_at_the_limit_is_parsed() -> None:
    doc = v4_up()
    doc["padding"] = ""
    size = len(orjson.dumps(doc))
    doc["padding"] = "x" * (262144 - size)
    assert len(orjson.dumps(doc)) == 262144
    assert decode(UP, doc).body["event"] == "up"


def test_b4_limit_is_configurable_and_applies_to_protobuf() -> None:
    small = Decoder(Options(limits=Limits(max_payload=100)))
    assert reason(GOOD, decoder=small) == "size"
    assert reason(b"\x12" * 101, GATEWAY.format("event/stats"), small) == "size"


def nested(depth: int, inner: str = "1") -> str:
    return "[" * depth + inner + "]" * depth


@pytest.mark.parametrize("depth", [33, 100, 300, 1000, 10_000])
def test_b5_deep_nesting_in_the_object(depth: int) -> None:
    payload = GOOD[:-1] + b', "object": {"type": "x", "deep": ' + nested(depth).encode() + b"}}"
    assert reason(payload) == "depth"


@pytest.mark.parametrize("depth", [100, 300, 10_000])
def test_b5_deep_nesting_anywhere(depth: int) -> None:
    assert reason(nested(depth).encode()) == "depth"
    assert reason(("{" + '"a":{' * depth + "}" * depth + "}").encode()) == "depth"


def test_b5_depth_within_the_limit_passes() -> None:
    doc = v4_up()
    doc["object"]["deep"] = json.loads(nested(29))  # object(1) + deep(29) + root(1) = 31 levels
    assert decode(UP, doc).body["event"] == "up"


def test_b5_limit_is_configurable() -> None:
    doc = v4_up()
    assert reason(doc, decoder=Decoder(Options(limits=Limits(max_depth=3)))) == "depth"


def schema_detail(payload: bytes | dict | list, topic: str = UP) -> str:
    got, detail = error_of(decode(topic, payload))
    assert got == "schema", detail
    return detail


@pytest.mark.parametrize(
    "change, field",
    [
        ({"object": {"type": "voltage", "values": {"0": 1}}}, "object.values must be an array"),
        ({"object": {"type": "voltage", "values": "3.7"}}, "object.values must be an array"),
        ({"object": {"type": "voltage", "values": ["3.7"]}}, "object.values[0] must be an object"),
        (
            {"object": {"type": "voltage", "values": [{"time": NOW_MS, "value": "3.7"}]}},
            "object.values[0].value is a string",
        ),
        (
            {"object": {"type": "voltage", "values": [{"time": NOW_MS}]}},
            "object.values[0].value is missing",
        ),
        ({"object": {"type": 7, "values": []}}, "object.type must be a string"),
        ({"object": [1, 2]}, "object must be an object, got array"),
        ({"object": "text"}, "object must be an object, got string"),
        ({"fCnt": "ten"}, "fCnt must be an integer"),
        ({"fPort": 1.5}, "fPort must be an integer"),
        ({"rxInfo": {"rssi": 1}}, "rxInfo must be an array"),
        ({"rxInfo": [{"rssi": "-50"}]}, "rxInfo[0].rssi must be a number"),
        ({"rxInfo": [{"rssi": -50, "gatewayId": 5}]}, "rxInfo[].gatewayId must be a string"),
        ({"data": 12}, "data must be a string"),
        ({"time": 1690804800}, "time must be an ISO 8601 string"),
    ],
)
def test_b6_wrong_types_name_the_field(change: dict, field: str) -> None:
    detail = (
        schema_detail({**v4_up(), **change})
        if "time" not in change
        else error_of(decode(UP, {**v4_up(), **change}))[1]
    )
    assert field in detail, detail


@pytest.mark.parametrize(
    "info_change, field",
    [
        ({"devEui": 257}, "deviceInfo.devEui must be a string, got number"),
        ({"devEui": "01010101"}, "deviceInfo.devEui is not 16 hex digits"),
        ({"devEui": None}, "deviceInfo.devEui is missing"),
        ({"deviceName": ["a"]}, "deviceInfo.deviceName must be a string, got array"),
        ({"applicationName": None}, "deviceInfo.applicationName is missing"),
        ({"tags": ["a"]}, "deviceInfo.tags must be an object"),
        ({"tags": {"floor": 2}}, "deviceInfo.tags.floor must be a string"),
    ],
)
def test_b6_wrong_identity_names_the_field(info_change: dict, field: str) -> None:
    doc = v4_up()
    doc["deviceInfo"] = {**doc["deviceInfo"], **info_change}
    assert field in schema_detail(doc)


@pytest.mark.parametrize("payload", [b"42", b'"up"', b"[1, 2]", b"null", b"true"])
def test_b6_json_that_is_not_an_object(payload: bytes) -> None:
    assert schema_detail(payload).startswith("payload must be a JSON object")


def test_b6_device_info_of_the_wrong_type() -> None:
    assert (
        schema_detail({**v4_up(), "deviceInfo": "x"}) == "deviceInfo must be an object, got string"
    )


@pytest.mark.parametrize(
    "literal",
    [b"NaN", b"Infinity", b"-Infinity", b"1e999", b"-1e999", b"9" * 4301, b"-" + b"9" * 400],
)
def test_b7_b8_nan_infinity_and_overflowing_numbers(literal: bytes) -> None:
    payload = GOOD[:-1] + b', "object": {"type": "x", "v": ' + literal + b"}}"
    assert reason(payload) == "number"


def test_b7_nan_in_a_name_position_is_still_a_number_error() -> None:
    assert reason('{"é": NaN}'.encode()) == "number"


def test_b8_integers_beyond_64_bits_become_doubles_like_json_parse_does() -> None:
    """Documented conversion: above 2**64-1 / below -2**63 orjson gives the nearest double,
    exactly what a browser's JSON.parse gives for any number above 2**53."""
    payload = (
        GOOD[:-1]
        + b', "object": {"type": "x", "big": 18446744073709551616, "neg": -9223372036854775809,'
        b' "max": 18446744073709551615}}'
    )
    obj = decode(UP, payload).body["object"]
    assert obj["big"] == 18446744073709551616.0 and isinstance(obj["big"], float)
    assert isinstance(obj["neg"], float)
    assert obj["max"] == 2**64 - 1 and isinstance(obj["max"], int)  # still fits: kept exact


@pytest.mark.parametrize(
    "value_time, words",
    [
        (-1, "outside"),
        (0, "outside"),
        (253402300799000, "outside"),  # 9999-12-31
        (NOW_MS // 1000, "looks like seconds"),
        (NOW_MS + 2 * 86_400_000, "outside"),
        ("2023-11-14T22:13:19Z", "must be epoch milliseconds"),
        (True, "must be epoch milliseconds"),
    ],
)
def test_b9_absurd_value_times(value_time: object, words: str) -> None:
    doc = v4_up()
    doc["object"]["values"][0]["time"] = value_time
    got, detail = error_of(decode(UP, doc))
    assert got == "time" and words in detail, detail


def test_b9_missing_value_time() -> None:
    doc = v4_up()
    del doc["object"]["values"][0]["time"]
    assert error_of(decode(UP, doc)) == ("time", "object.values[0].time is missing")


@pytest.mark.parametrize(
    "event_time",
    [
        "9999-12-31T23:59:59Z",
        "1970-01-01T00:00:00Z",
        "-0001-01-01T00:00:00Z",
        "yesterday",
        "2023-13-45T00:00:00Z",
    ],
)
def test_b9_absurd_event_times(event_time: str) -> None:
    assert reason({**v4_up(), "time": event_time}) == "time"


def test_b9_missing_event_time_is_allowed() -> None:
    doc = v4_up()
    del doc["time"]
    event = decode(UP, doc)
    assert event.body["event"] == "up" and event.body["time"] is None


def test_b9_time_tolerance_is_configurable() -> None:
    doc = v4_up()
    doc["object"]["values"][0]["time"] = NOW_MS + 60_000
    assert decode(UP, doc).body["event"] == "up"
    strict = Decoder(Options(limits=Limits(time_tolerance_s=10)))
    assert reason(doc, decoder=strict) == "time"


@pytest.mark.parametrize(
    "topic, payload",
    [
        (V4.format("frobnicate"), GOOD),
        (V4.format(""), GOOD),
        ("some/custom/topic", GOOD),
        (V3.format("frobnicate"), fixture_bytes("chirpstack_v3_up.json")),
        (TTS.format("down/queued"), fixture_bytes("ttn_v3_up_data_formats.json")),
        (TTS.format("up"), GOOD),  # a ChirpStack payload on a The Things Stack topic
        (UP, b'{"hello": "world"}'),  # no known shape at all
        (GATEWAY.format("event/exec"), b'{"gatewayId": "0016c001f153a14c"}'),
        (GATEWAY.format("state/foo"), b'{"gatewayId": "0016c001f153a14c"}'),
    ],
)
def test_b10_unknown_event_types_and_shapes(topic: str, payload: bytes) -> None:
    assert reason(payload, topic) == "unknown_event"


def test_b10_a_v3_payload_on_a_v4_topic_is_found_by_shape() -> None:
    event = decode(UP, fixture_bytes("chirpstack_v3_up.json"))
    assert event.key == "default/temperature-sensor/garden-sensor/up"


def test_b10_gateway_protobuf_garbage() -> None:
    assert reason(b"\xff\xff\xff\xff", GATEWAY.format("event/stats")) == "encoding"


def test_b10_gateway_json_of_the_wrong_shape() -> None:
    assert (
        reason(b'{"gatewayId": "x", "rxPacketsReceived": "many"}', GATEWAY.format("event/stats"))
        == "schema"
    )
    assert reason(b'{"gatewayId": "x", "state": "MAYBE"}', GATEWAY.format("state/conn")) == "schema"
    assert reason(b"[1]", GATEWAY.format("state/conn")) == "schema"


def test_b13_duplicate_keys_last_one_wins() -> None:
    payload = GOOD[:-1] + b', "fPort": 7, "fPort": 9}'
    assert decode(UP, payload).body["rx"]["fPort"] == 9


def test_long_names_are_a_schema_error_naming_the_field() -> None:
    doc = v4_up()
    doc["deviceInfo"]["deviceName"] = "x" * 10_000
    detail = schema_detail(doc)
    assert detail == "deviceInfo.deviceName is 10000 characters long, the limit is 256"


def test_error_details_and_topics_are_bounded() -> None:
    event = decode("a/" * 5000 + "up", b"{" + b"x" * 10_000)
    assert len(event.body["error"]["detail"]) <= 300
    assert len(event.body["error"]["topic"]) <= 512


def test_errors_keep_the_frame_fields_for_gap_accounting() -> None:
    event = decode(UP, b"garbage")
    assert (event.body["src"], event.body["seq"]) == ("ingest-test", 1)
    assert orjson.loads(orjson.dumps(event.body))["event"] == "error"


def test_error_events_name_the_device_when_known() -> None:
    doc = v4_up()
    doc["object"]["values"] = 5
    event = decode(UP, doc)
    assert event.body["device"]["name"] == "Test device"
    doc = fixture_doc("chirpstack_v3_up.json")
    doc["objectJSON"] = "{broken"
    event = decode(V3.format("up"), doc)
    assert error_of(event)[0] == "json" and event.body["device"]["name"] == "garden-sensor"


@pytest.mark.parametrize(
    "value, expected",
    [("42", 42), ("-7", -7), ("18446744073709551615", 2**64 - 1)],
)
def test_integers_written_as_strings_like_protobuf_json(value: str, expected: int) -> None:
    assert decode(UP, {**v4_up(), "fCnt": value}).body["rx"]["fCnt"] == expected


@pytest.mark.parametrize(
    "value, why", [("99999999999999999999", "number"), ("--5", "schema"), ("1e3", "schema")]
)
def test_integer_strings_out_of_range_or_malformed(value: str, why: str) -> None:
    assert reason({**v4_up(), "fCnt": value}) == why
