"""Every public sample in ../shared/fixtures decodes to the documented record."""

from __future__ import annotations

import json

import pytest
from chirpstack_api import gw
from google.protobuf import json_format

from tests.decode.helpers import (
    FIXTURE_TOPICS,
    GATEWAY,
    NOW_MS,
    TS_NS,
    V3,
    V4,
    decode,
    fixture_bytes,
    fixture_doc,
    public,
    v4_up,
)

CHIRPSTACK_DEVICE = {
    "tenant": "ChirpStack",
    "application": "Test application",
    "name": "Test device",
    "devEui": "0101010101010101",
    "tags": {"key": "value"},
}
V3_DEVICE = {
    "tenant": "default",
    "application": "temperature-sensor",
    "name": "garden-sensor",
    "devEui": "0202020202020202",
    "tags": {"key": "value"},
}
TTS_DEVICE = {
    "tenant": "tenant1",
    "application": "app1",
    "name": "dev1",
    "devEui": "0004a30b001c0530",
    "tags": {"key1": "value1", "key2": "value2"},
}


def sample(name: str) -> dict:
    event = decode(FIXTURE_TOPICS[name], fixture_bytes(name))
    assert event.body["event"] != "error", event.body
    return {"key": event.key, **public(event)}


@pytest.mark.parametrize("name", sorted(FIXTURE_TOPICS))
def test_every_sample_decodes_with_frame_fields(name: str) -> None:
    event = decode(FIXTURE_TOPICS[name], fixture_bytes(name))
    assert event.body["event"] != "error", event.body
    assert (
        event.body["src"] == "ingest-test" and event.body["seq"] == 1 and event.body["ts"] == TS_NS
    )


def test_v4_up_without_codec_output_keeps_raw_data_and_best_radio() -> None:
    record = sample("chirpstack_v4_up.json")
    assert record == {
        "key": "ChirpStack/Test application/Test device/up",
        "event": "up",
        "device": CHIRPSTACK_DEVICE,
        "time": "2022-07-18T09:34:15.775023242+00:00",
        "dedup": "up/3ac7e3c4-4401-4b8d-9386-a5c902f9202d",
        "data": "qg==",  # one byte, not Cayenne LPP: no object, no error (DECODE_RAW_CODEC=auto)
        "devAddr": "00189440",
        "rx": {
            "gateway": "0016c001f153a14c",
            "rssi": -36,
            "snr": 10.5,
            "fCnt": 0,  # left out by ChirpStack because it is 0
            "fPort": 1,
            "dr": 1,
            "frequency": 867100000,
            "gateways": 1,
        },
    }


def test_v4_up_object_is_kept_exactly_as_published() -> None:
    payload = v4_up()
    payload["object"]["extra"] = {"nested": [1, 2.5, "x", None, True]}
    event = decode(V4.format("up"), payload)
    assert event.body["object"] == payload["object"]
    assert event.body["object"]["values"][0]["value"] == 3.7


def test_v4_up_best_gateway_is_the_strongest() -> None:
    payload = v4_up()
    payload["rxInfo"] = [
        {"gatewayId": "aaaaaaaaaaaaaaaa", "rssi": -110, "snr": -5},
        {"gatewayId": "bbbbbbbbbbbbbbbb", "rssi": -60, "snr": 7.25},
        {"gatewayId": "cccccccccccccccc", "rssi": -90},
    ]
    rx = decode(V4.format("up"), payload).body["rx"]
    assert (rx["gateway"], rx["rssi"], rx["snr"], rx["gateways"]) == (
        "bbbbbbbbbbbbbbbb",
        -60,
        7.25,
        3,
    )


def test_v4_status() -> None:
    record = sample("chirpstack_v4_status.json")
    assert record["key"] == "ChirpStack/Test application/Test device/status"
    assert record["device"] == {**CHIRPSTACK_DEVICE, "tags": {}}  # this sample has no tags
    assert record["status"] == {
        "margin": 10,
        "battery": 88.3,
        "externalPower": False,
        "batteryUnavailable": False,
    }
    assert record["time"] == "2022-07-18T09:35:06.927172638+00:00"
    assert record["dedup"] == "status/bf2a9746-1c8b-49be-a92e-f0b89c8534e4"


def test_v4_status_battery_is_null_on_external_power() -> None:
    doc = fixture_doc("chirpstack_v4_status.json")
    doc["externalPowerSource"] = True
    status = decode(V4.format("status"), doc).body["status"]
    assert status["battery"] is None and status["externalPower"] is True


def test_v4_join() -> None:
    record = sample("chirpstack_v4_join.json")
    assert record["key"] == "ChirpStack/Test application/Test device/join"
    assert record["device"] == CHIRPSTACK_DEVICE
    assert record["join"] == {"devAddr": "00189440"}


def test_v4_ack() -> None:
    record = sample("chirpstack_v4_ack.json")
    assert record["ack"] == {
        "acknowledged": True,
        "fCntDown": 3,
        "queueItemId": "1bbcab1d-6ec6-4136-b3f5-d63be1dc08de",
    }
    assert record["key"].endswith("/ack")


def test_v4_txack_has_no_dedup() -> None:
    record = sample("chirpstack_v4_txack.json")
    assert record["txack"] == {
        "fCntDown": 2,
        "gateway": "0016c001f153a14c",
        "queueItemId": "42cb6459-a640-46ec-9623-bdff39dc4736",
        "downlinkId": 3461958127,
        "frequency": 867900000,
        "power": 14,
    }
    assert "dedup" not in record


def test_v4_log() -> None:
    record = sample("chirpstack_v4_log.json")
    assert record["log"] == {
        "level": "ERROR",
        "code": "UPLINK_MIC",
        "description": "MIC of join-request is invalid, make sure keys are correct",
        "context": {"deduplication_id": "4e91db13-5ce3-4c8c-ab0f-dfc626cf0771"},
    }
    # the context's id is the uplink's, not this event's: never used for duplicates
    assert "dedup" not in record


def test_v4_log_defaults_when_protobuf_left_fields_out() -> None:
    doc = fixture_doc("chirpstack_v4_log.json")
    del doc["level"], doc["code"]
    log = decode(V4.format("log"), doc).body["log"]
    assert (log["level"], log["code"]) == ("INFO", "UNKNOWN")


def test_v4_location() -> None:
    record = sample("chirpstack_v4_location.json")
    assert record["location"] == {
        "latitude": 37.344214,
        "longitude": -8.839375,
        "altitude": 2,
        "source": "UNKNOWN",
        "accuracy": 0,
    }


def test_v4_integration() -> None:
    doc = fixture_doc("chirpstack_v4_join.json")
    del doc["devAddr"]
    doc.update(integrationName="loracloud", eventType="geoloc", object={"lat": 1.5})
    record = decode(V4.format("integration"), doc).body
    assert record["integration"] == {
        "name": "loracloud",
        "eventType": "geoloc",
        "object": {"lat": 1.5},
    }


def test_gateway_stats() -> None:
    record = sample("chirpstack_v4_gateway_stats.json")
    assert record["key"] == "_gateway/0016c001f153a14c/stats"
    assert record["gateway"] == {"id": "0016c001f153a14c"}
    assert record["time"] == "2022-08-03T14:37:59Z"
    stats = record["stats"]
    assert stats["rxPacketsReceived"] == 1 and stats["rxPacketsReceivedOk"] == 1
    assert stats["txPacketsReceived"] == 1 and stats["txPacketsEmitted"] == 1
    assert stats["rxPacketsPerFrequency"] == {"867300000": 1}
    assert stats["txPacketsPerStatus"] == {"OK": 1}
    assert stats["txPacketsPerModulation"][0]["count"] == 1
    assert "device" not in record


def test_gateway_up_frame() -> None:
    record = sample("chirpstack_v4_gateway_up.json")
    assert record["key"] == "_gateway/0016c001f153a14c/up"
    assert record["time"] == "2022-08-03T14:37:43.383634108Z"  # the pre-4.x rxInfo.time
    assert record["rx"] == {
        "gateway": "0016c001f153a14c",
        "rssi": -52,
        "snr": 13.75,
        "frequency": 867300000,
        "spreadingFactor": 7,
        "uplinkId": 7895,
    }
    assert record["phyPayload"] == "gKb+agGABQABOIc6cwQ="


def test_gateway_conn_state() -> None:
    record = sample("chirpstack_v4_gateway_conn_state.json")
    assert record["key"] == "_gateway/0016c001f153a14c/conn"
    assert record["conn"] == {"state": "ONLINE", "online": True}


@pytest.mark.parametrize(
    "topic", ["gateway/0016c001f153a14c/state/conn", "a/b/gateway/0016c001f153a14c/state/conn"]
)
def test_gateway_topic_prefix_is_optional(topic: str) -> None:
    assert (
        decode(topic, fixture_bytes("chirpstack_v4_gateway_conn_state.json")).key
        == "_gateway/0016c001f153a14c/conn"
    )


@pytest.mark.parametrize(
    "name, message, event",
    [
        ("chirpstack_v4_gateway_stats.json", gw.GatewayStats, "event/stats"),
        ("chirpstack_v4_gateway_conn_state.json", gw.ConnState, "state/conn"),
    ],
)
def test_gateway_protobuf_decodes_like_json(name: str, message: type, event: str) -> None:
    """ChirpStack's gateway tools publish Protobuf by default: same record as the JSON."""
    binary = json_format.ParseDict(fixture_doc(name), message()).SerializeToString()
    assert not binary.startswith(b"{")
    as_json = public(decode(GATEWAY.format(event), fixture_bytes(name)))
    as_protobuf = public(decode(GATEWAY.format(event), binary))
    assert as_protobuf == as_json


def test_gateway_protobuf_up_frame_with_4x_field_names() -> None:
    doc = fixture_doc("chirpstack_v4_gateway_up.json")
    doc["rxInfo"]["gwTime"] = doc["rxInfo"].pop("time")
    binary = json_format.ParseDict(doc, gw.UplinkFrame()).SerializeToString()
    record = public(decode(GATEWAY.format("event/up"), binary))
    assert record["time"] == "2022-08-03T14:37:43.383634108Z"
    assert record["rx"]["rssi"] == -52 and record["rx"]["snr"] == 13.75
    assert record["phyPayload"] == "gKb+agGABQABOIc6cwQ="


def test_gateway_protobuf_offline_conn_state_has_no_fields_but_is_offline() -> None:
    binary = gw.ConnState(
        gateway_id="0016c001f153a14c", state=gw.ConnState.OFFLINE
    ).SerializeToString()
    record = public(decode(GATEWAY.format("state/conn"), binary))
    assert record["conn"] == {"state": "OFFLINE", "online": False}


def test_gateway_protobuf_legacy_id_bytes_become_hex() -> None:
    binary = gw.GatewayStats(
        gateway_id_legacy=bytes.fromhex("0016c001f153a14c"), rx_packets_received=5
    ).SerializeToString()
    record = decode("gateway/ffffffffffffffff/event/stats", binary)
    assert record.key == "_gateway/0016c001f153a14c/stats"  # the payload's id, not the topic's
    assert record.body["stats"]["rxPacketsReceived"] == 5


def test_v3_up_object_json_string_and_base64_ids() -> None:
    record = sample("chirpstack_v3_up.json")
    assert record["key"] == "default/temperature-sensor/garden-sensor/up"
    assert record["device"] == V3_DEVICE
    assert record["object"] == {"temperatureSensor": 25, "humiditySensor": 32}
    assert record["rx"] == {
        "gateway": "0303030303030303",
        "rssi": -48,
        "snr": 9,
        "fCnt": 10,
        "fPort": 5,
        "dr": 1,
        "frequency": 868100000,
        "gateways": 1,
    }
    assert record["time"] == "2019-11-08T13:59:25.048445Z"
    assert record["data"] == "..."  # the published placeholder, kept as is


def test_v3_status_and_join() -> None:
    status = sample("chirpstack_v3_status.json")
    assert status["device"] == V3_DEVICE
    assert status["status"] == {
        "margin": 6,
        "battery": 75.5,
        "externalPower": False,
        "batteryUnavailable": False,
    }
    join = sample("chirpstack_v3_join.json")
    assert join["join"] == {"devAddr": "00513942"}  # base64 AFE5Qg==


def test_v3_error_event_becomes_a_log_event() -> None:
    doc = fixture_doc("chirpstack_v3_status.json")
    doc.update(type="UPLINK_FCNT", error="frame-counter did not increment", fCnt=10)
    event = decode(V3.format("error"), doc)
    assert event.key == "default/temperature-sensor/garden-sensor/log"
    assert event.body["log"]["code"] == "UPLINK_FCNT" and event.body["log"]["level"] == "ERROR"


def test_tts_up() -> None:
    record = sample("ttn_v3_up_data_formats.json")
    assert record["key"] == "tenant1/app1/dev1/up"
    assert record["device"] == TTS_DEVICE
    assert record["object"] == {"temperature": 1.0, "luminosity": 0.64}
    assert record["rx"] == {
        "gateway": "9c5c8e00001a05c4",
        "rssi": -35,
        "snr": 5,
        "fCnt": 1,
        "fPort": 0,  # left out by The Things Stack: zero
        "dr": None,
        "frequency": 868300000,
        "gateways": 1,
    }
    assert record["time"] == "2020-02-12T15:15:46.014773143Z"
    assert record["dedup"] == "up/as:up:01E0WZGT6Y7657CPFPE5WEYDSQ"
    assert record["data"] == "gkHe"


def test_tts_join() -> None:
    record = sample("ttn_v3_join.json")
    assert record["key"] == "tenant1/app1/dev1/join"
    assert record["join"] == {"devAddr": "01497ecc"}


def test_formats_are_indistinguishable_to_a_dashboard() -> None:
    """The same keys at the top level and in ``device``/``rx`` whatever the source."""
    up_keys = {
        frozenset(sample(name)) - {"dedup", "devAddr", "object"}
        for name in (
            "chirpstack_v4_up.json",
            "chirpstack_v3_up.json",
            "ttn_v3_up_data_formats.json",
        )
    }
    assert len(up_keys) == 1
    rx_keys = {
        frozenset(sample(name)["rx"])
        for name in (
            "chirpstack_v4_up.json",
            "chirpstack_v3_up.json",
            "ttn_v3_up_data_formats.json",
        )
    }
    assert len(rx_keys) == 1


def test_same_event_twice_has_the_same_dedup() -> None:
    a = decode(V4.format("up"), fixture_bytes("chirpstack_v4_up.json")).body["dedup"]
    b = decode(V4.format("up"), fixture_bytes("chirpstack_v4_up.json")).body["dedup"]
    status = decode(
        V4.format("status"),
        json.dumps(
            {
                **fixture_doc("chirpstack_v4_status.json"),
                "deduplicationId": "3ac7e3c4-4401-4b8d-9386-a5c902f9202d",
            }
        ).encode(),
    ).body["dedup"]
    assert a == b and status != a  # an uplink and its status event are not duplicates


def test_object_time_inside_the_window() -> None:
    event = decode(V4.format("up"), v4_up())
    assert event.body["object"]["values"][0]["time"] == NOW_MS - 1000


def test_gateway_ack_json_and_protobuf() -> None:
    doc = {"gatewayId": "0016c001f153a14c", "downlinkId": 123, "items": [{"status": "OK"}, {}]}
    as_json = public(decode(GATEWAY.format("event/ack"), json.dumps(doc).encode()))
    binary = json_format.ParseDict(doc, gw.DownlinkTxAck()).SerializeToString()
    as_protobuf = public(decode(GATEWAY.format("event/ack"), binary))
    assert as_json["ack"] == {"downlinkId": 123, "items": ["OK", "IGNORED"]}
    assert as_protobuf == as_json


def tts_event(**fields: object) -> dict:
    doc = fixture_doc("ttn_v3_join.json")
    del doc["join_accept"]
    doc.update(fields)
    return doc


@pytest.mark.parametrize(
    "topic_event, body_key, expected",
    [
        ("down/ack", "ack", {"acknowledged": True, "fCntDown": 4, "queueItemId": None}),
        ("down/nack", "ack", {"acknowledged": False, "fCntDown": 4, "queueItemId": None}),
        (
            "down/sent",
            "txack",
            {
                "fCntDown": 4,
                "gateway": None,
                "queueItemId": None,
                "downlinkId": None,
                "frequency": None,
                "power": None,
            },
        ),
    ],
)
def test_tts_downlink_events(topic_event: str, body_key: str, expected: dict) -> None:
    key = {"down/ack": "downlink_ack", "down/nack": "downlink_nack", "down/sent": "downlink_sent"}[
        topic_event
    ]
    event = decode(
        f"v3/app1@tenant1/devices/dev1/{topic_event}", tts_event(**{key: {"f_cnt": 4, "f_port": 1}})
    )
    assert event.key == f"tenant1/app1/dev1/{body_key}"
    assert event.body[body_key] == expected


def test_tts_location_solved() -> None:
    loc = {
        "latitude": 52.1,
        "longitude": 4.3,
        "altitude": 7,
        "accuracy": 20,
        "source": "SOURCE_GPS",
    }
    event = decode(
        "v3/app1@tenant1/devices/dev1/location/solved", tts_event(location_solved={"location": loc})
    )
    assert event.key == "tenant1/app1/dev1/location"
    assert event.body["location"] == {
        "latitude": 52.1,
        "longitude": 4.3,
        "altitude": 7,
        "source": "SOURCE_GPS",
        "accuracy": 20,
    }


def test_tts_device_without_dev_eui_and_tenant_from_topic() -> None:
    doc = tts_event()
    del doc["end_device_ids"]["dev_eui"]
    event = decode("v3/app1@ttn/devices/dev1/join", doc)
    assert event.key == "ttn/app1/dev1/join"
    assert event.body["device"]["devEui"] is None


def test_v3_ack_txack_location() -> None:
    base = fixture_doc("chirpstack_v3_status.json")
    for name in ("margin", "externalPowerSource", "batteryLevelUnavailable", "batteryLevel"):
        del base[name]
    ack = decode(V3.format("ack"), {**base, "acknowledged": True, "fCnt": 12}).body["ack"]
    assert ack == {"acknowledged": True, "fCntDown": 12, "queueItemId": None}
    txack = decode(V3.format("txack"), {**base, "gatewayID": "AwMDAwMDAwM=", "fCnt": 12}).body[
        "txack"
    ]
    assert txack["gateway"] == "0303030303030303" and txack["fCntDown"] == 12
    loc = {"latitude": 1.5, "longitude": 2.5, "altitude": 3, "source": "GEO_RESOLVER"}
    location = decode(V3.format("location"), {**base, "location": loc}).body["location"]
    assert location["latitude"] == 1.5 and location["source"] == "GEO_RESOLVER"


def test_v3_join_has_the_v4_form() -> None:
    assert set(sample("chirpstack_v3_join.json")) == set(sample("chirpstack_v4_join.json")) - {
        "dedup"
    }
