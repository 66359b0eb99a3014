"""Cayenne LPP against the published vectors, and the raw-payload codec rules."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from services.decode.codecs import Codec, parse_rules
from services.decode.decoders import cayenne_lpp
from services.decode.decoders.common import Options
from services.decode.dispatch import Decoder
from tests.conftest import FIXTURES
from tests.decode.helpers import NOW_MS, TS_NS, V3, V4, decode, error_of, fixture_doc

VECTORS = json.loads((FIXTURES / "cayenne_lpp_vectors.json").read_text())


@pytest.mark.parametrize("vector", VECTORS, ids=[v["note"][:40] for v in VECTORS])
def test_published_vectors(vector: dict[str, Any]) -> None:
    got = [
        (m.channel, m.type_id, m.value) for m in cayenne_lpp.decode(bytes.fromhex(vector["hex"]))
    ]
    expected = [tuple(item) for item in vector["expected"]]
    assert [(c, t) for c, t, _ in got] == [(c, t) for c, t, _ in expected]
    for (_, type_id, value), (_, _, want) in zip(got, expected, strict=True):
        if isinstance(want, dict):
            assert value == pytest.approx(want), type_id
        else:
            assert value == pytest.approx(want, rel=1e-12, abs=1e-12), type_id


def test_voltage_and_current_are_unsigned_like_chirpstack() -> None:
    (volts,) = cayenne_lpp.decode(bytes.fromhex("0174fffe"))
    (amps,) = cayenne_lpp.decode(bytes.fromhex("0175fffd"))
    assert (volts.type, volts.value) == ("voltage", 655.34)
    assert (amps.type, amps.value) == ("current", 65.533)


def test_every_type_in_the_table_is_covered_by_a_vector() -> None:
    seen = {item[1] for vector in VECTORS for item in vector["expected"]}
    assert set(cayenne_lpp.TYPES) == seen


@pytest.mark.parametrize(
    "hex_bytes, problem",
    [
        ("", "empty"),
        ("03", "truncated header"),
        ("0367", "truncated temperature"),
        ("03ff0000", "unknown type 255"),
    ],
)
def test_not_lpp(hex_bytes: str, problem: str) -> None:
    with pytest.raises(cayenne_lpp.LppError, match=problem):
        cayenne_lpp.decode(bytes.fromhex(hex_bytes))


def raw_uplink(data: bytes, fport: int = 2, **extra: Any) -> dict[str, Any]:
    doc = fixture_doc("chirpstack_v4_up.json")
    doc.update(data=base64.b64encode(data).decode(), fPort=fport, **extra)
    return doc


def decoder(rules: str = "", default: str = "auto") -> Decoder:
    return Decoder(Options(codecs=parse_rules(rules, Codec(default, default))))


def test_auto_decodes_lpp_into_the_measurement_shape() -> None:
    event = decode(V4.format("up"), raw_uplink(bytes.fromhex("03670110056700ff")))
    # the event time of the uplink, 2022-07-18T09:34:15.775Z, stamps every value
    stamp = {"time": 1658136855775, "time_iso": "2022-07-18T09:34:15.775Z"}
    assert event.body["object"] == {
        "type": "temperature",
        "values": [
            {**stamp, "value": 27.2, "channel": 3, "type": "temperature"},
            {**stamp, "value": 25.5, "channel": 5, "type": "temperature"},
        ],
    }
    assert event.body["data"] == "A2cBEAVnAP8="


def test_one_event_per_uplink_with_mixed_types() -> None:
    event = decode(V4.format("up"), raw_uplink(bytes.fromhex("0174017201750064")))
    obj = event.body["object"]
    assert obj["type"] == "mixed"
    assert [(v["type"], v["value"]) for v in obj["values"]] == [("voltage", 3.7), ("current", 0.1)]


def test_without_event_time_values_get_ingest_time() -> None:
    doc = raw_uplink(bytes.fromhex("01740172"))
    del doc["time"]
    event = decode(V4.format("up"), doc)
    assert event.body["object"]["values"][0]["time"] == TS_NS // 1_000_000
    assert event.body["time"] is None


def test_auto_passes_non_lpp_bytes_through_without_an_error() -> None:
    event = decode(V4.format("up"), raw_uplink(b"\xaa\xbb\xcc"))
    assert event.body["event"] == "up" and "object" not in event.body
    assert event.body["data"] == "qrvM"


def test_strict_lpp_makes_bad_bytes_an_error_naming_the_device() -> None:
    event = decode(V4.format("up"), raw_uplink(b"\xaa\xbb\xcc"), decoder(default="cayenne_lpp"))
    reason, detail = error_of(event)
    assert reason == "codec" and "cayenne_lpp" in detail
    assert event.body["device"]["name"] == "Test device"


def test_none_never_decodes() -> None:
    event = decode(V4.format("up"), raw_uplink(bytes.fromhex("01740172")), decoder(default="none"))
    assert "object" not in event.body


def test_codec_published_object_wins_over_raw_data() -> None:
    doc = raw_uplink(bytes.fromhex("01740172"), object={"type": "x", "values": []})
    assert decode(V4.format("up"), doc).body["object"] == {"type": "x", "values": []}


def test_data_that_is_not_base64_is_a_schema_error() -> None:
    doc = fixture_doc("chirpstack_v4_up.json")
    doc["data"] = "not base64!"
    assert error_of(decode(V4.format("up"), doc)) == ("schema", "data is not valid base64")


def test_rules_select_by_profile_then_application_then_fport() -> None:
    rules = (
        "fport:2=tests.decode.plugins:raises,"
        "application:Test application=cayenne_lpp,"
        "profile:Test device-profile=tests.decode.plugins:meter"
    )
    event = decode(V4.format("up"), raw_uplink(bytes.fromhex("00250001")), decoder(rules))
    assert event.body["object"]["type"] == "voltage"  # the profile's plug-in
    assert [v["value"] for v in event.body["object"]["values"]] == [3.7, 0.1]
    assert event.body["object"]["unit"] == "V"
    assert all(v["time"] == 1658136855775 for v in event.body["object"]["values"])

    no_profile = raw_uplink(bytes.fromhex("01740172"))
    del no_profile["deviceInfo"]["deviceProfileName"], no_profile["deviceInfo"]["deviceProfileId"]
    assert (
        decode(V4.format("up"), no_profile, decoder(rules)).body["object"]["type"] == "voltage"
    )  # LPP

    other_app = raw_uplink(
        b"\x01",
        deviceInfo={**no_profile["deviceInfo"], "applicationName": "other", "applicationId": "x"},
    )
    assert (
        error_of(decode(V4.format("up"), other_app, decoder(rules)))[0] == "codec"
    )  # fport 2 plug-in raises


def test_rules_match_ids_too() -> None:
    rules = "application:17c82e96-be03-4f38-aef3-f83d48582d97=tests.decode.plugins:meter"
    event = decode(V4.format("up"), raw_uplink(bytes.fromhex("00250001")), decoder(rules))
    assert event.body["object"]["type"] == "voltage" and event.body["object"]["unit"] == "V"


def test_plugin_returning_none_means_no_measurement() -> None:
    event = decode(V4.format("up"), raw_uplink(b""), decoder("fport:2=tests.decode.plugins:meter"))
    assert "object" not in event.body and event.body["event"] == "up"


def test_plugin_cannot_change_the_record_identity() -> None:
    event = decode(
        V4.format("up"), raw_uplink(b"\x01"), decoder("fport:2=tests.decode.plugins:mutates")
    )
    assert event.body["device"]["name"] == "Test device"


@pytest.mark.parametrize(
    "plugin, words",
    [
        ("raises", "RuntimeError: boom"),
        ("not_a_dict", "not a dict"),
        ("nan", "nan"),
        ("huge", "beyond 64 bits"),
        ("string_value", "string"),
        ("seconds", "looks like seconds"),
        ("not_json", "not a JSON value"),
        ("no_values", "no 'values' list"),
        ("deep", "deeper than 32"),
    ],
)
def test_b15_plugin_that_raises_or_returns_garbage_is_a_codec_error(
    plugin: str, words: str
) -> None:
    event = decode(
        V4.format("up"), raw_uplink(b"\x01\x02"), decoder(f"fport:2=tests.decode.plugins:{plugin}")
    )
    reason, detail = error_of(event)
    assert reason == "codec" and words in detail, detail
    assert event.body["device"]["devEui"] == "0101010101010101"


def test_v3_raw_data_goes_through_the_codec() -> None:
    doc = fixture_doc("chirpstack_v3_up.json")
    del doc["objectJSON"]
    doc["data"] = base64.b64encode(bytes.fromhex("01740172")).decode()
    obj = decode(V3.format("up"), doc).body["object"]
    assert obj["type"] == "voltage" and obj["values"][0]["value"] == 3.7
    assert obj["values"][0]["time_iso"] == "2019-11-08T13:59:25.048Z"  # the gateway's time


def test_tts_frm_payload_goes_through_the_codec() -> None:
    doc = fixture_doc("ttn_v3_up_data_formats.json")
    del doc["uplink_message"]["decoded_payload"]
    doc["uplink_message"]["frm_payload"] = "A2cBEAVnAP8="
    obj = decode("v3/app1@tenant1/devices/dev1/up", doc).body["object"]
    assert [v["value"] for v in obj["values"]] == [27.2, 25.5]


@pytest.mark.parametrize(
    "rules, words",
    [
        ("fport:2", "not selector=codec"),
        ("port:2=cayenne_lpp", "unknown selector"),
        ("fport:300=cayenne_lpp", "0..255"),
        ("fport:2=tests.decode.plugins:nope", "no function"),
        ("fport:2=tests.decode.plugins:NOT_CALLABLE", "no function"),
        ("fport:2=no_such_module_xyz:fn", "cannot import"),
        ("fport:2=lpp", "neither"),
    ],
)
def test_bad_rules_are_config_errors(rules: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        parse_rules(rules)


def test_now_ms_is_after_the_samples() -> None:
    assert NOW_MS > 1658136855775
