"""The payload builders produce events shaped like ChirpStack v4's own (the public samples)."""

from __future__ import annotations

import base64
import re
from typing import Any

import orjson
from chirpstack_api import gw

from simulators import payloads
from tests.conftest import load_fixture

T_NS = 1_690_804_800_012_345_678  # 2023-07-31T12:00:00.012345678Z
RADIO = payloads.Radio(gateway_id="0016c001f153a14c", rssi=-57, snr=9.5, uplink_id=7)


def keys(obj: dict[str, Any]) -> set[str]:
    return set(obj)


def make_uplink(**overrides: Any) -> dict[str, Any]:
    device = payloads.make_devices("voltage", 3, "acme", "substation-7")[1]
    args: dict[str, Any] = dict(
        kind="voltage", value=3.71, time_ns=T_NS, f_cnt=10, radio=RADIO, dedup_id="d-1"
    )
    args.update(overrides)
    return payloads.uplink(device, **args)


def test_uplink_has_every_field_of_the_chirpstack_v4_sample() -> None:
    sample = load_fixture("chirpstack_v4_up.json")
    event = make_uplink()
    assert keys(sample) <= keys(event)
    assert keys(sample["deviceInfo"]) == keys(event["deviceInfo"])
    assert keys(sample["rxInfo"][0]) <= keys(event["rxInfo"][0])
    assert keys(sample["txInfo"]["modulation"]["lora"]) == keys(
        event["txInfo"]["modulation"]["lora"]
    )
    # Same JSON types field by field where both have the field.
    for name in ("deduplicationId", "time", "devAddr", "dr", "fPort", "data"):
        assert type(event[name]) is type(sample[name]), name
    for name in ("gatewayId", "uplinkId", "rssi", "snr", "context"):
        assert type(event["rxInfo"][0][name]) is type(sample["rxInfo"][0][name]), name


def test_uplink_identity_radio_and_measurement() -> None:
    event = make_uplink()
    info = event["deviceInfo"]
    assert (info["tenantName"], info["applicationName"], info["deviceName"]) == (
        "acme",
        "substation-7",
        "voltage-sensor-002",
    )
    assert re.fullmatch(r"[0-9a-f]{16}", info["devEui"])
    assert event["time"] == "2023-07-31T12:00:00.012345678+00:00"
    assert (event["fCnt"], event["fPort"], event["deduplicationId"]) == (10, 2, "d-1")
    assert event["rxInfo"][0]["rssi"] == -57 and event["rxInfo"][0]["snr"] == 9.5
    assert event["object"] == {
        "type": "voltage",
        "values": [
            {"time": 1_690_804_800_012, "time_iso": "2023-07-31T12:00:00.012Z", "value": 3.71}
        ],
    }


def test_raw_data_is_cayenne_lpp_matching_the_object() -> None:
    voltage = base64.b64decode(make_uplink(value=3.71)["data"])
    assert voltage == bytes([1, 116]) + (371).to_bytes(2, "big")
    current = base64.b64decode(make_uplink(kind="current", value=0.125)["data"])
    assert current == bytes([1, 117]) + (125).to_bytes(2, "big")
    assert "object" not in make_uplink(with_object=False)


def test_uplink_topic_is_chirpstack_v4_device_event_up() -> None:
    device = payloads.make_devices("dual", 1, "acme", "substation-7")[0]
    topic = payloads.uplink_topic(device)
    assert topic == f"application/{device.application_id}/device/{device.dev_eui}/event/up"
    assert re.fullmatch(r"application/[0-9a-f-]{36}/device/[0-9a-f]{16}/event/up", topic)


def test_devices_are_stable_and_unique() -> None:
    first = payloads.make_devices("voltage", 50, "acme", "app")
    assert first == payloads.make_devices("voltage", 50, "acme", "app")
    assert len({d.dev_eui for d in first}) == 50
    other_kind = payloads.make_devices("current", 50, "acme", "app")
    other_tenant = payloads.make_devices("voltage", 50, "other", "app")
    assert not {d.dev_eui for d in first} & {d.dev_eui for d in other_kind}
    assert not {d.dev_eui for d in first} & {d.dev_eui for d in other_tenant}
    assert first[0].application_id != other_tenant[0].application_id


def test_uplink_serializes_to_json_a_browser_accepts() -> None:
    # orjson refuses NaN/Infinity and non-str keys: if this passes the event is strict JSON.
    text = orjson.dumps(make_uplink(value=4.2))
    assert orjson.loads(text) == make_uplink(value=4.2)


def test_gateway_stats_and_conn_match_the_samples() -> None:
    sample = load_fixture("chirpstack_v4_gateway_stats.json")
    stats = payloads.gateway_stats("0016c001f153a14c", time_ns=T_NS, rx=5, rx_ok=4, tx=1)
    assert keys(sample) <= keys(stats)
    assert stats["time"] == "2023-07-31T12:00:00Z"
    assert (
        stats["rxPacketsReceived"],
        stats["rxPacketsReceivedOk"],
        stats["txPacketsEmitted"],
    ) == (5, 4, 1)
    conn = payloads.gateway_conn("0016c001f153a14c", online=True)
    assert conn == load_fixture("chirpstack_v4_gateway_conn_state.json")
    assert payloads.gateway_conn("x", online=False)["state"] == "OFFLINE"
    assert payloads.gateway_stats_topic("eu868", "ab") == "eu868/gateway/ab/event/stats"
    assert payloads.gateway_conn_topic("", "ab") == "gateway/ab/state/conn"


def test_gateway_protobuf_parses_with_chirpstacks_own_definitions() -> None:
    stats = payloads.gateway_stats("0016c001f153a14c", time_ns=T_NS, rx=5, rx_ok=4, tx=1)
    parsed = gw.GatewayStats.FromString(payloads.gateway_protobuf("stats", stats))
    assert (parsed.gateway_id, parsed.rx_packets_received, parsed.rx_packets_received_ok) == (
        "0016c001f153a14c",
        5,
        4,
    )
    assert parsed.time.seconds == T_NS // 1_000_000_000
    assert dict(parsed.rx_packets_per_frequency) == {868100000: 4}
    conn = gw.ConnState.FromString(
        payloads.gateway_protobuf("conn", payloads.gateway_conn("ab", online=True))
    )
    assert (conn.gateway_id, conn.state) == ("ab", gw.ConnState.State.ONLINE)


def test_iso_forms() -> None:
    assert payloads.iso_ms(0) == "1970-01-01T00:00:00.000Z"
    assert payloads.iso_ms(1_690_804_800_999) == "2023-07-31T12:00:00.999Z"
    assert payloads.iso_event_time(1) == "1970-01-01T00:00:00.000000001+00:00"
