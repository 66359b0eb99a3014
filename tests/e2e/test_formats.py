"""Every network server's format, and garbage, through one running gateway: a dashboard
cannot tell the sources apart, and nothing dies (issue 3's end-to-end test)."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable

from simulators.payloads import gateway_protobuf
from tests.conftest import load_fixture
from tests.e2e.helpers import StrictCollector
from tests.support.mqtt import Publisher
from tests.support.stack import Stack
from tests.support.timing import wait_for
from tests.support.ws import Collector

LPP_TEMPERATURE = bytes.fromhex("03670110")  # channel 3, temperature 27.2 °C


def test_all_formats_and_garbage_on_one_stack(
    gateway: Callable[..., Stack], publisher: Publisher, clients: list[Collector]
) -> None:
    stack = gateway(decoders=2)
    client = StrictCollector(stack.ws_url)
    clients.append(client)

    v4 = load_fixture("chirpstack_v4_up.json")
    v4_with_object = {
        **v4,
        "deduplicationId": "e2e-object",
        "object": {"type": "voltage", "values": [{"time": 1690804800000, "value": 3.7}]},
    }
    v4_raw_lpp = {
        **v4,
        "deduplicationId": "e2e-lpp",
        "deviceInfo": {**v4["deviceInfo"], "devEui": "0202020202020299", "deviceName": "lpp"},
        "data": base64.b64encode(LPP_TEMPERATURE).decode(),
    }
    v4_status = load_fixture("chirpstack_v4_status.json")
    v3 = load_fixture("chirpstack_v3_up.json")
    tts = load_fixture("ttn_v3_up_data_formats.json")
    stats = load_fixture("chirpstack_v4_gateway_stats.json")
    gw_id = stats["gatewayId"]
    conn_pb = gateway_protobuf("conn", {"gatewayId": "aa555a0000000101", "state": "ONLINE"})
    app, dev = v4["deviceInfo"]["applicationId"], v4["deviceInfo"]["devEui"]
    items: list[tuple[str, bytes]] = [
        (f"application/{app}/device/{dev}/event/up", json.dumps(v4_with_object).encode()),
        (f"application/{app}/device/0202020202020299/event/up", json.dumps(v4_raw_lpp).encode()),
        (f"application/{app}/device/{dev}/event/status", json.dumps(v4_status).encode()),
        (f"application/{app}/device/{dev}/event/up", b"\xff\xfe binary, not UTF-8"),
        ("application/123/device/0202020202020202/event/up", json.dumps(v3).encode()),
        ("v3/app1@ttn/devices/dev1/up", json.dumps(tts).encode()),
        (f"application/{app}/device/{dev}/event/up", b'{"truncated": '),
        (f"eu868/gateway/{gw_id}/event/stats", json.dumps(stats).encode()),
        ("eu868/gateway/aa555a0000000101/state/conn", conn_pb),
        (f"application/{app}/device/{dev}/event/up", b"[1, 2, 3]"),
    ]
    publisher.publish_all(items)

    wait_for(lambda: len(client.events()) >= len(items), 30, f"{len(items)} events")
    events = client.events()
    assert len(events) == len(items)
    assert not client.rejected, "every message must parse with a browser's JSON.parse"

    ups = {m["device"]["devEui"]: m for m in events if m["event"] == "up"}
    # ChirpStack v4: the codec's object exactly as published, identity from deviceInfo.
    assert ups[dev]["object"] == v4_with_object["object"]
    assert ups[dev]["device"]["tenant"] == "ChirpStack"
    assert ups[dev]["device"]["name"] == "Test device"
    # Raw bytes decoded by the built-in Cayenne LPP codec, in the same object shape.
    lpp = ups["0202020202020299"]["object"]
    assert lpp["type"] == "temperature"
    assert [v["value"] for v in lpp["values"]] == [27.2]
    # ChirpStack v3: base64 devEUI to hex, objectJSON parsed into object.
    assert ups["0202020202020202"]["object"] == json.loads(v3["objectJSON"])
    assert ups["0202020202020202"]["device"]["name"] == v3["deviceName"]
    # The Things Stack v3: decoded_payload as object, hex devEui lower-cased.
    tts_up = ups["0004a30b001c0530"]
    assert tts_up["device"]["name"] == "dev1"
    assert tts_up["object"] == tts["uplink_message"]["decoded_payload"]
    # All three look alike to a dashboard.
    for msg in ups.values():
        assert {"event", "seq", "epoch", "received_at", "device", "object", "rx"} <= set(msg)

    status = [m for m in events if m["event"] == "status"]
    assert status and status[0]["status"]["margin"] == v4_status["margin"]
    stats_events = [m for m in events if m["event"] == "stats"]
    assert stats_events[0]["gateway"]["id"] == gw_id
    conn = [m for m in events if m["event"] == "conn"]
    assert conn and conn[0]["conn"]["online"] is True  # decoded from Protobuf

    reasons = sorted(m["error"]["reason"] for m in events if m["event"] == "error")
    assert reasons == ["encoding", "json", "schema"]
    assert all(p.running for p in stack.all_procs()), stack.logs()
