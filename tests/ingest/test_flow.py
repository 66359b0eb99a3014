"""Messages published to the broker come out of ingest's PUSH socket as raw frames."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

import pytest
import zmq

from services.ingest.config import load
from services.ingest.fast_paho import FastClient
from services.ingest.metrics import Metrics
from services.ingest.mqtt_link import MqttLink
from tests.ingest.conftest import StartIngest, count_lines
from tests.ingest.helpers import FrameCollector, numbered, numbers, scrape
from tests.support.broker import Broker
from tests.support.http import healthz
from tests.support.mqtt import Publisher
from tests.support.ports import free_port
from tests.support.timing import seconds, wait_for

BINARY = bytes(range(256))


@pytest.mark.parametrize("fast", ["true", "false"], ids=["fast-paho", "stock-paho"])
def test_messages_arrive_as_raw_frames_untouched(
    fast: str,
    broker: Broker,
    start_ingest: StartIngest,
    collect: Callable[..., FrameCollector],
) -> None:
    pub = Publisher(broker.host, broker.port)
    # retained before ingest subscribes: delivered with retain=True
    pub.publish(
        "eu868/gateway/0016c001f153a14c/state/conn", b'{"state":"ONLINE"}', retain=True
    ).wait_for_publish(10)
    ingest = start_ingest(MQTT_FAST_RECEIVE=fast)
    frames_out = collect()
    wait_for(lambda: len(frames_out.frames) >= 1, 20, "the retained message")

    messages = [
        (
            "application/app-1/device/0004a30b001c0530/event/up",
            b'{"fCnt": 1, "object": {"v": 3.7}}',
        ),
        ("application/app-1/device/0004a30b001c0530/event/up", BINARY),  # not UTF-8: untouched
        ("application/app-1/device/0004a30b001c0530/event/join", b""),  # empty payload
        ("eu868/gateway/0016c001f153a14c/event/up", b"\x0a\x0b\x00protobuf"),
        ("gateway/0016c001f153a14c/event/stats", b"{}"),
        ("v3/app@ttn/devices/dev-1/up", "ünïcødé ✓".encode()),
        ("application/app-1/device/0004a30b001c0530/event/up", b"x" * 200_000),
    ]
    before = time.time_ns()
    pub.publish_all(messages)
    wait_for(lambda: len(frames_out.frames) >= 1 + len(messages), 20, "every message")
    pub.close()

    frames = frames_out.frames
    retained, live = frames[0], frames[1:]
    assert (retained.topic, retained.retain, retained.qos) == (
        "eu868/gateway/0016c001f153a14c/state/conn",
        True,
        1,
    )
    assert [(f.topic, f.payload) for f in live] == messages
    assert all(f.qos == 1 and not f.retain for f in live)
    assert [f.seq for f in frames] == list(range(1, len(frames) + 1))
    assert len({f.src for f in frames}) == 1
    assert all(before <= f.ts <= time.time_ns() for f in live)
    assert ingest.stop() == 0
    assert "Stopped: received 8, forwarded 8" in ingest.log_text()


def test_qos0_is_forwarded_and_warned_about_once(
    broker: Broker, start_ingest: StartIngest, collect: Callable[..., FrameCollector]
) -> None:
    ingest = start_ingest()
    frames_out = collect()
    pub = Publisher(broker.host, broker.port)
    pub.publish_all(numbered(30), qos=0)
    frames = frames_out.wait_numbers(range(30))
    pub.close()
    assert all(f.qos == 0 for f in frames)
    assert count_lines(ingest, r"QoS 0 .*qos=1") == 1  # one warning, telling users the fix
    assert ingest.stop() == 0


@pytest.mark.parametrize("fast", ["true", "false"], ids=["fast-paho", "stock-paho"])
def test_a_qos0_burst_faster_than_the_decoders_pauses_reading_and_loses_nothing(
    fast: str, broker: Broker, start_ingest: StartIngest, collect: Callable[..., FrameCollector]
) -> None:
    # No decoder at first: the queue fills to its bound (2 x Receive Maximum = 100), then
    # ingest stops reading and the broker holds the rest; nothing is dropped on the way.
    port = free_port()
    ingest = start_ingest(MQTT_RECEIVE_MAXIMUM="50", METRICS_PORT=str(port), MQTT_FAST_RECEIVE=fast)
    total = 2000
    pad = b" " * 1000  # ~ChirpStack-sized: one read takes tens of messages, not thousands
    pub = Publisher(broker.host, broker.port)
    pub.publish_all([(topic, n + pad) for topic, n in numbered(total)], qos=0)
    pub.close()
    wait_for(lambda: scrape(port)["gateway_ingest_queue_depth"] >= 100, 10, "the queue to fill")
    wait_for(lambda: scrape(port)["gateway_ingest_read_paused_seconds_total"] > 0, 10, "a pause")
    m = scrape(port)
    assert m["gateway_mqtt_messages_received_total"] < total  # the rest waits at the broker
    frames_out = collect()
    got = numbers(frames_out.wait_numbers(range(total)))
    assert got == list(range(total))  # every one, once, in order
    m = scrape(port)
    assert m["gateway_mqtt_messages_received_total"] == total
    assert not any(k.startswith("gateway_ingest_dropped_total") and v for k, v in m.items())
    assert ingest.stop() == 0


def test_metrics_and_healthz(
    broker: Broker, start_ingest: StartIngest, collect: Callable[..., FrameCollector]
) -> None:
    port = free_port()
    ingest = start_ingest(METRICS_PORT=str(port))
    frames_out = collect()
    assert healthz(port) == 200
    pub = Publisher(broker.host, broker.port)
    pub.publish_all(numbered(50))
    pub.publish_all(numbered(5, start=50), qos=0)
    frames_out.wait_numbers(range(55))
    pub.close()

    def settled() -> dict[str, float] | None:
        m = scrape(port)
        return m if m["gateway_mqtt_acks_total"] == 50 else None

    m = wait_for(settled, 10, "acks to be counted")
    assert m is not None
    assert m["gateway_mqtt_messages_received_total"] == 55
    assert m["gateway_ingest_frames_forwarded_total"] == 55
    assert m["gateway_mqtt_qos0_messages_total"] == 5
    assert m["gateway_mqtt_connected"] == 1 and m["gateway_mqtt_subscribed"] == 1
    assert m["gateway_mqtt_connects_total"] == 1 and m["gateway_mqtt_session_lost_total"] == 0
    assert m["gateway_ingest_queue_depth"] == 0
    assert ingest.stop() == 0


def test_mqtt_socket_has_nagle_off(broker: Broker) -> None:
    # In-process, to look at the real socket paho opened (issue 6: no Nagle on any hop).
    config = load(
        {
            "MQTT_BROKER": broker.host,
            "MQTT_PORT": str(broker.port),
            "MQTT_CLIENT_ID": "nodelay-test",
        },
        [],
    )
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.bind("tcp://127.0.0.1:*")
    link = MqttLink(config, router, Metrics())
    link.start()
    try:
        wait_for(lambda: link.ready()[0], 20, "connected and subscribed")
        assert isinstance(link._client, FastClient)  # noqa: SLF001 (the default client)
        sock = link._client.socket()  # noqa: SLF001 (the point of the test)
        assert sock is not None
        assert isinstance(sock, socket.socket)
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        link.finish(1, 5)
        router.close(linger=0)
        ctx.term()
    assert not link.alive


def test_a_taken_metrics_port_ends_ingest_with_a_clear_error(start_ingest: StartIngest) -> None:
    # Everything opened before the status server (the ROUTER and its monitor) is closed
    # again, so the process exits instead of hanging in ZeroMQ's context teardown.
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        ingest = start_ingest(wait=False, METRICS_PORT=str(taken.getsockname()[1]))
        assert ingest.proc is not None
        code = ingest.proc.wait(timeout=seconds(20))
    finally:
        taken.close()
    assert code != 0
    assert "cannot serve metrics on" in ingest.log_text()


def test_a_long_pause_keeps_the_connection_alive(
    broker: Broker, start_ingest: StartIngest, collect: Callable[..., FrameCollector]
) -> None:
    # No decoder for over two keepalive periods while reading is paused: the keepalive
    # pings are still answered, so the connection stays up and nothing is redelivered.
    port = free_port()
    ingest = start_ingest(MQTT_KEEPALIVE="5", MQTT_RECEIVE_MAXIMUM="50", METRICS_PORT=str(port))
    total = 400
    pub = Publisher(broker.host, broker.port)
    pub.publish_all([(topic, n + b" " * 1000) for topic, n in numbered(total)], qos=0)
    pub.close()
    wait_for(lambda: scrape(port)["gateway_ingest_read_paused_seconds_total"] > 0, 10, "a pause")
    time.sleep(seconds(13))  # > 2 x keepalive: a lost PINGRESP would have dropped it
    m = scrape(port)
    assert m["gateway_mqtt_connects_total"] == 1 and m["gateway_mqtt_disconnects_total"] == 0
    assert m["gateway_ingest_read_paused_seconds_total"] > 5  # it really stayed paused
    frames_out = collect()
    assert numbers(frames_out.wait_numbers(range(total))) == list(range(total))
    assert ingest.stop() == 0
