"""ingest's faster paho receive path (services.ingest.fast_paho): the same messages, the
same MQTT v5 properties, in the same order as stock paho, and stock paho wherever the
fast path was not tested."""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable

import paho.mqtt
import paho.mqtt.client as mqtt
import pytest
from hypothesis import given
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from services.ingest.fast_paho import FastClient, FastProperties, client_class
from tests.ingest.conftest import StartIngest
from tests.ingest.helpers import UP_TOPIC, FrameCollector
from tests.support.broker import Broker
from tests.support.mqtt import Publisher
from tests.support.timing import seconds, wait_for

BIG = bytes(range(256)) * 800  # 200 KiB: many recv() calls, and TCP segments, for one packet

# --------------------------------------------------------------------------- decoding

texts = st.text(max_size=20)
publish_properties = st.fixed_dictionaries(
    {},
    optional={
        "PayloadFormatIndicator": st.sampled_from([0, 1]),
        "MessageExpiryInterval": st.integers(0, 2**32 - 1),
        "ContentType": texts,
        "ResponseTopic": texts,
        "CorrelationData": st.binary(max_size=20),
        "TopicAlias": st.integers(1, 65535),
        "SubscriptionIdentifier": st.lists(st.integers(1, 268_435_455), min_size=1, max_size=3),
        "UserProperty": st.lists(st.tuples(texts, texts), min_size=1, max_size=4),
    },
)


def packed(values: dict[str, object]) -> bytes:
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    for name, value in values.items():
        setattr(props, name, value)
    data: bytes = props.pack()  # type: ignore[no-untyped-call]
    return data


def decoded(cls: type[Properties], buffer: bytes) -> tuple[object, ...]:
    """What ``unpack`` makes of ``buffer``: the values, the length taken, the text form,
    or the exception type for a buffer it refuses."""
    try:
        props, length = cls(PacketTypes.PUBLISH).unpack(buffer)  # type: ignore[no-untyped-call]
    except Exception as exc:  # noqa: BLE001 (the type is what we compare)
        return ("refused", type(exc))
    return props.json(), length, str(props)  # type: ignore[no-untyped-call]


# Strings include U+0000, which paho refuses (MQTT-1.5.4-2): refused the same way.
@given(values=publish_properties, payload=st.binary(max_size=8))
def test_publish_properties_decode_exactly_as_stock_paho(
    values: dict[str, object], payload: bytes
) -> None:
    buffer = packed(values) + payload  # the payload follows the properties in a PUBLISH
    assert decoded(FastProperties, buffer) == decoded(Properties, buffer)


@pytest.mark.parametrize(
    "buffer",
    [b"", b"\x80", b"\x05\x02\x00", b"\x02\xff\x00", b"\x03\x01\x01\x01\x01"],
    ids=["empty", "unfinished-length", "truncated", "unknown-property", "repeated-property"],
)
def test_malformed_properties_are_refused_as_by_stock_paho(buffer: bytes) -> None:
    stock = decoded(Properties, buffer)
    assert stock[0] == "refused"
    assert decoded(FastProperties, buffer) == stock


# --------------------------------------------------------------------------- version guard


@pytest.mark.parametrize("version", ["2.3.0", "3.0.0", "2.0.0", "1.6.1", "2.x"])
def test_untested_paho_versions_get_the_stock_client(
    version: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="services.ingest.fast_paho"):
        assert client_class(version) is mqtt.Client
    [line] = caplog.messages  # one line, saying why
    assert "stock MQTT client" in line and version in line


def test_the_installed_paho_gets_the_fast_client() -> None:
    # Fails on purpose when paho-mqtt is upgraded past fast_paho.TESTED: run these tests
    # against the new version (on paho's own, too) and add it, or pin paho.
    assert client_class() is FastClient, f"paho-mqtt {paho.mqtt.__version__} is not in TESTED"


# --------------------------------------------------------------------------- real broker


class Subscriber:
    """An in-process paho v5 subscriber (its own network thread) collecting messages."""

    def __init__(self, cls: type[mqtt.Client], broker: Broker, topic: str) -> None:
        self.messages: list[mqtt.MQTTMessage] = []
        self._subscribed = threading.Event()
        self.client = cls(
            CallbackAPIVersion.VERSION2,
            client_id=f"fast-paho-test-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv5,
        )
        self.client.on_message = lambda _c, _u, msg: self.messages.append(msg)
        self.client.on_subscribe = lambda *_args: self._subscribed.set()
        self.client.on_connect = lambda client, *_args: client.subscribe(topic, qos=1)
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        assert self._subscribed.wait(seconds(20)), "no SUBACK"

    def wait(self, count: int) -> list[mqtt.MQTTMessage]:
        wait_for(lambda: len(self.messages) >= count, 30, f"{count} messages")
        return self.messages

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def publish_with_properties(
    pub: Publisher,
    items: list[tuple[str, bytes, dict[str, object]]],
    qos: list[int] | None = None,
) -> None:
    """Publish each item with its v5 properties, at QoS 1 or ``qos[i]``; wait for all."""
    infos = []
    for i, (topic, payload, values) in enumerate(items):
        props = None
        if values:
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            for name, value in values.items():
                setattr(props, name, value)
        level = 1 if qos is None else qos[i]
        infos.append(pub.client.publish(topic, payload, qos=level, properties=props))
    for info in infos:
        info.wait_for_publish(seconds(30))
        assert info.is_published()


WITH_PROPERTIES: list[dict[str, object]] = [
    {},
    {"UserProperty": [("source", "chirpstack"), ("source", "twice"), ("ünï", "✓")]},
    {"ContentType": "application/json", "PayloadFormatIndicator": 1},
    {"MessageExpiryInterval": 3600},
    {"ResponseTopic": "reply/here", "CorrelationData": b"\x00\x01\xff"},
]


def mixed_stream(small: int) -> list[tuple[str, bytes, dict[str, object]]]:
    """Small messages back to back (many per recv()), cycling through the property sets,
    with one 200 KiB message in the middle."""
    items = [
        (UP_TOPIC.format(dev=f"dev-{i % 7}"), b"%d" % i, WITH_PROPERTIES[i % len(WITH_PROPERTIES)])
        for i in range(small)
    ]
    items.insert(small // 2, (UP_TOPIC.format(dev="big"), BIG, {"ContentType": "big"}))
    return items


def test_fast_client_delivers_v5_messages_and_their_properties(broker: Broker) -> None:
    sub = Subscriber(client_class(), broker, "application/#")
    assert isinstance(sub.client, FastClient)
    pub = Publisher(broker.host, broker.port)
    items = mixed_stream(600)
    try:
        publish_with_properties(pub, items)
        got = sub.wait(len(items))
    finally:
        pub.close()
        sub.close()
    assert [(m.topic, m.payload) for m in got] == [(t, p) for t, p, _ in items]
    for msg, (_topic, _payload, sent) in zip(got, items, strict=True):
        props = msg.properties
        assert isinstance(props, Properties)
        received = props.json()  # type: ignore[no-untyped-call]
        if "MessageExpiryInterval" in sent:  # the broker sends the time left
            assert 3590 <= received.pop("MessageExpiryInterval") <= 3600
            sent = {k: v for k, v in sent.items() if k != "MessageExpiryInterval"}
        correlation = sent.get("CorrelationData")
        if isinstance(correlation, bytes):  # json() shows binary data as hex
            sent = {**sent, "CorrelationData": correlation.hex()}
        assert received == sent


@pytest.mark.parametrize("fast", ["true", "false"])
def test_a_backlog_arrives_whole_and_in_order(
    fast: str,
    broker: Broker,
    start_ingest: StartIngest,
    collect: Callable[..., FrameCollector],
) -> None:
    # Queued while ingest is away, the backlog comes in one rush after CONNACK: many
    # packets per read, and packets split across reads.
    ingest = start_ingest(MQTT_FAST_RECEIVE=fast)
    assert ingest.stop() == 0
    pub = Publisher(broker.host, broker.port)
    items = mixed_stream(2000)
    publish_with_properties(pub, items)
    pub.close()
    frames_out = collect()
    ingest = start_ingest(MQTT_FAST_RECEIVE=fast)
    wait_for(lambda: len(frames_out.frames) >= len(items), 60, "the whole backlog")
    frames = frames_out.frames
    assert [(f.topic, f.payload) for f in frames] == [(t, p) for t, p, _ in items]
    assert [f.seq for f in frames] == list(range(1, len(items) + 1))
    assert ingest.stop() == 0
    assert f"Stopped: received {len(items)}, forwarded {len(items)}" in ingest.log_text()


class CountingClient(FastClient):
    """The fast client, counting its socket writes."""

    sends = 0

    def _sock_send(self, buf: bytes) -> int:
        self.sends += 1
        sent: int = super()._sock_send(buf)
        return sent


def manual_ack_session(broker: Broker, client_id: str) -> tuple[CountingClient, list[int]]:
    """A v5 persistent-session subscriber driven by hand, as ingest drives it: manual acks
    that only queue (``on_socket_register_write``), written by ``loop_write``. Returns once
    subscribed, with the list the message ids arrive in."""
    client = CountingClient(
        CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5, manual_ack=True
    )
    mids: list[int] = []
    subacks: list[int] = []
    client.on_message = lambda _c, _u, msg: mids.append(msg.mid)
    client.on_subscribe = lambda _c, _u, mid, *_args: subacks.append(mid)
    client.on_socket_register_write = lambda *_args: None
    client.on_connect = lambda c, *_args: c.subscribe("acks/#", qos=1)
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = 300
    client.connect(broker.host, broker.port, clean_start=False, properties=props)
    pump(client, lambda: bool(subacks), "SUBACK")
    client.subacks = subacks  # type: ignore[attr-defined]
    return client, mids


def pump(client: mqtt.Client, until: Callable[[], bool], what: str) -> None:
    wait_for(lambda: client.loop(0.05) == 0 and until(), 30, what)


def test_queued_pubacks_leave_in_one_write_and_all_reach_the_broker(broker: Broker) -> None:
    client_id = f"fast-paho-acks-{uuid.uuid4().hex[:8]}"
    client, mids = manual_ack_session(broker, client_id)
    pub = Publisher(broker.host, broker.port)
    try:
        pub.publish_all([(f"acks/{i}", b"%d" % i) for i in range(200)])
        acked = 0
        batches = []
        while acked < 200:
            # The broker sends up to its inflight window, then waits for our acks.
            pump(client, lambda n=acked: len(mids) > n, "more messages")
            for _ in range(5):
                client.loop(0.02)
            batch = mids[acked:]
            for mid in batch:
                client.ack(mid, 1)
            before = client.sends
            assert client.loop_write() == 0
            assert not client.want_write()
            assert client.sends - before == 1, f"{len(batch)} PUBACKs in one write"
            acked += len(batch)
            batches.append(len(batch))
        assert acked == 200 and max(batches) >= 10  # (a window of PUBACKs at a time)
        # A round trip behind the acks: once its SUBACK is here the broker has read them.
        # (Closing right away could reset the connection before it did: mqtt_link's
        # read_until_closed is ingest's answer to that.)
        subacks: list[int] = client.subacks  # type: ignore[attr-defined]
        client.subscribe("acks/fence", qos=1)
        pump(client, lambda: len(subacks) == 2, "the fence's SUBACK")
        client.disconnect()
        pump(client, lambda: client.socket() is None, "the DISCONNECT written")
    finally:
        pub.close()
    # The broker got every ack: the session has nothing to send again.
    again, redelivered = manual_ack_session(broker, client_id)
    for _ in range(20):  # ~1 s of loops: a redelivery would come right after CONNACK
        again.loop(0.05)
    again.disconnect()
    assert redelivered == []
