"""The benchmark's load generator: every paced message reaches the broker exactly once,
with the marker clients correlate by, whether it leaves alone or in a tick's group."""

from __future__ import annotations

import threading

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from bench.load import publisher
from bench.payload import MARKER_KEY, TOPIC_FILTER, parse_marker
from tests.support.broker import Broker
from tests.support.timing import seconds, wait_for


class Collector:
    """A subscriber that keeps the marker of every message it gets."""

    def __init__(self, broker: Broker) -> None:
        self.markers: list[tuple[bytes, int, int, int]] = []
        self.subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-test-sub")
        self.client.on_message = self._message
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.connect(broker.host, broker.port)
        self.client.subscribe(TOPIC_FILTER, qos=1)
        self.client.loop_start()
        assert self.subscribed.wait(seconds(10))

    def _message(self, _client: object, _userdata: object, msg: mqtt.MQTTMessage) -> None:
        payload = msg.payload
        start = payload.index(MARKER_KEY) + len(MARKER_KEY)
        self.markers.append(parse_marker(payload[start : payload.index(b'"', start)]))

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.mark.parametrize("qos", [0, 1])
def test_every_paced_message_arrives_once_and_groups_share_a_tick(broker: Broker, qos: int) -> None:
    collector = Collector(broker)
    try:
        count = 1500
        spec = {
            "host": broker.host,
            "port": broker.port,
            "pub": 3,
            "run": "t1",
            "rate": 3000,  # a message every 1/3 ms: about three per 1 ms tick
            "count": count,
            "qos": qos,
            "devices": [0, 1, 2],
        }
        result = publisher.run(spec)
        wait_for(lambda: len(collector.markers) >= count, timeout=30, what=f"{count} messages")
    finally:
        collector.close()

    assert result["sent"] == count and result["acked"] == count
    runs = {(run, pub) for run, pub, _, _ in collector.markers}
    assert runs == {(b"t1", 3)}
    seqs = sorted(seq for _, _, seq, _ in collector.markers)
    assert seqs == list(range(count))  # none lost, none twice
    # Messages due within one tick leave together, stamped with the same send time, and
    # the publisher wakes at most once per tick (1 ms): not once per message.
    stamps = sorted({t_ns for _, _, _, t_ns in collector.markers})
    assert 1 < len(stamps) < count / 2
    assert min(b - a for a, b in zip(stamps, stamps[1:], strict=False)) >= 1_000_000
