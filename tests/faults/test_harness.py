"""The harness's own arithmetic and publisher: if these are wrong, every fault case is."""

from __future__ import annotations

import json
import threading
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.faults.harness import StreamPublisher, analyse, new_stream, uplink, wait_received
from tests.support.broker import Broker
from tests.support.timing import seconds


def event(stream_run: str, n: int, replay: bool = False) -> dict[str, Any]:
    ev: dict[str, Any] = {"event": "up", "object": {"run": stream_run, "n": n}}
    if replay:
        ev["replay"] = True
    return ev


def test_analysis_counts_lost_duplicates_and_reordered_per_device() -> None:
    stream = new_stream(count=10, devices=2)  # device of n = n % 2
    arrived = [0, 1, 2, 3, 2, 6, 4, 7, 9, 9, 9]  # 5 and 8 lost; 2 twice, 9 thrice; 4 after 6
    report = analyse(stream, [event(stream.run_id, n) for n in arrived] + [event("other-run", 5)])
    assert report.lost == [5, 8]
    assert report.duplicates == 1 + 2
    assert report.reordered == 1  # 4 after 6 (device 0); 3 before 2 is another device
    assert report.received == len(arrived)
    assert report.per_device_lost == {stream.device_of(5): 1, stream.device_of(8): 1}


def test_analysis_ignores_replay_unless_asked_and_then_counts_it_as_duplicate() -> None:
    stream = new_stream(count=3, devices=1)
    evs = [
        event(stream.run_id, 0),
        event(stream.run_id, 1),
        event(stream.run_id, 1, replay=True),
        event(stream.run_id, 2),
    ]
    assert analyse(stream, evs).duplicates == 0
    assert analyse(stream, evs).replayed == 1
    assert analyse(stream, evs, count_replay=True).duplicates == 1


def test_uplink_is_chirpstack_v4_shaped_and_unique_per_number() -> None:
    stream = new_stream(count=3, devices=2)
    topic, payload = uplink(stream, 1)
    body = json.loads(payload)
    app = body["deviceInfo"]["applicationId"]
    assert topic == f"application/{app}/device/{stream.device_of(1)}/event/up"
    assert body["object"] == {**body["object"], "run": stream.run_id, "n": 1}
    assert body["fCnt"] == 1 and body["deviceInfo"]["devEui"] == stream.device_of(1)
    ids = {json.loads(uplink(stream, n)[1])["deduplicationId"] for n in range(3)}
    assert len(ids) == 3


@pytest.mark.timeout(60)
def test_publisher_loses_nothing_over_a_broker_restart_on_its_own(broker: Broker) -> None:
    """Baseline for F1: harness + broker alone. A subscriber with a persistent session
    receives every acknowledged number, so any F1 loss is the gateway's."""
    stream = new_stream(count=600, devices=4)
    got: list[dict[str, Any]] = []
    lock = threading.Lock()
    sub = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id="faults-baseline-sub", protocol=mqtt.MQTTv5
    )
    sub.reconnect_delay_set(1, 2)
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = 300

    subscribed = threading.Event()

    def on_connect(client: mqtt.Client, *_: Any) -> None:
        client.subscribe("application/#", qos=1)

    def on_subscribe(*_: Any) -> None:
        subscribed.set()

    def on_message(client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with lock:
            got.append(json.loads(msg.payload))

    class View:
        def snapshot(self) -> list[dict[str, Any]]:
            with lock:
                return list(got)

    sub.on_connect = on_connect
    sub.on_message = on_message
    sub.on_subscribe = on_subscribe
    sub.connect(broker.host, broker.port, clean_start=False, properties=props)
    sub.loop_start()
    assert subscribed.wait(seconds(10)), "the baseline subscriber never got its SUBACK"
    pub = StreamPublisher(broker.host, broker.port, stream, rate=300).start()
    try:
        wait_received(View(), stream, 150)
        broker.restart()
        pub.wait_done()
        wait_received(View(), stream, stream.count)
        report = analyse(stream, View().snapshot(), pub.acked())
        assert report.lost == [] and report.expected == stream.count, report.summary()
    finally:
        pub.close()
        sub.disconnect()
        sub.loop_stop()
