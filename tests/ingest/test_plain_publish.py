"""The fast client's own PUBLISH reader (services.ingest.fast_paho.plain_publish and
FastClient.on_plain_publish): what it takes it decodes exactly as paho does, what it does
not take (properties, QoS 2, cut packets, malformed bytes) it leaves to paho, and on a
real broker every message arrives once, whole and in order, whichever reader took it."""

from __future__ import annotations

import threading
import uuid

import paho.mqtt.client as mqtt
from hypothesis import example, given
from hypothesis import strategies as st
from paho.mqtt import _packet
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from services.ingest.fast_paho import FastClient, plain_publish
from tests.ingest.test_fast_paho import (
    BIG,
    manual_ack_session,
    packed,
    publish_with_properties,
    pump,
)
from tests.support.broker import Broker
from tests.support.mqtt import Publisher
from tests.support.timing import seconds, wait_for

V5 = MQTTProtocolVersion.MQTTv5
V311 = MQTTProtocolVersion.MQTTv311


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def publish_packet(
    topic: bytes, payload: bytes, qos: int, mid: int, dup: bool, retain: bool, props: bytes | None
) -> tuple[int, bytes, bytes]:
    """(first byte, variable header + payload, the whole packet) as the MQTT spec lays out
    a PUBLISH; ``props`` is the v5 property block (None for v3.1.1)."""
    header = 0x30 | (8 if dup else 0) | (qos << 1) | (1 if retain else 0)
    body = len(topic).to_bytes(2, "big") + topic
    if qos:
        body += mid.to_bytes(2, "big")
    if props is not None:
        body += props
    body += payload
    return header, body, bytes([header]) + varint(len(body)) + body


def paho_reads(header: int, body: bytes, v5: bool) -> tuple[object, ...]:
    """What paho's own reader makes of a PUBLISH (or the exception type it refuses it with)."""
    try:
        got = _packet.decode_publish(header, bytearray(body), V5 if v5 else V311)
    except Exception as exc:  # noqa: BLE001 (the type is what we compare)
        return ("refused", type(exc))
    return bytes(got.topic), bytes(got.payload), got.qos, got.mid, got.dup, got.retain


publishes = st.fixed_dictionaries(
    {
        # Any bytes: a topic that is not UTF-8 is the caller's to handle, as with paho.
        "topic": st.binary(max_size=40),
        "payload": st.binary(max_size=300),
        "qos": st.integers(0, 2),
        "mid": st.integers(0, 65535),
        "dup": st.booleans(),
        "retain": st.booleans(),
        "v5": st.booleans(),
        "qos1": st.booleans(),
        "props": st.sampled_from(
            [
                {},
                {"ContentType": "application/json"},
                {"TopicAlias": 3},
                {"UserProperty": [("a", "b")]},
            ]
        ),
    }
)


@given(p=publishes)
@example(
    p={
        "topic": b"",
        "payload": b"x",
        "qos": 0,
        "mid": 0,
        "dup": False,
        "retain": False,
        "v5": True,
        "qos1": True,
        "props": {"TopicAlias": 3},
    }
)
@example(
    p={
        "topic": b"a/b",
        "payload": b"x" * 200,
        "qos": 1,
        "mid": 7,
        "dup": True,
        "retain": True,
        "v5": False,
        "qos1": True,
        "props": {},
    }
)
def test_what_it_takes_paho_reads_alike_and_only_plain_packets(p: dict[str, object]) -> None:
    v5 = bool(p["v5"])
    props = packed(p["props"]) if v5 else None  # type: ignore[arg-type]
    header, body, packet = publish_packet(
        p["topic"],
        p["payload"],
        p["qos"],
        p["mid"],
        p["dup"],
        p["retain"],
        props,  # type: ignore[arg-type]
    )
    got = plain_publish(packet, 0, v5, bool(p["qos1"]))
    # QoS 1 only for a client that acks by hand (else paho must send the PUBACK).
    qos_ok = p["qos"] == 0 or p["qos"] == 1 and p["qos1"]
    plain = qos_ok and p["topic"] != b"" and (not v5 or props == b"\x00")
    if not plain:
        assert got is None  # paho's reader takes it: properties, QoS 2, topic aliases
        return
    assert got is not None
    assert got[0] == len(packet)
    assert got[1:] == paho_reads(header, body, v5)
    assert got[1:] == (
        p["topic"],
        p["payload"],
        p["qos"],
        p["mid"] if p["qos"] else 0,
        p["dup"],
        p["retain"],
    )


@given(p=publishes, cut=st.integers(0, 400))
def test_a_packet_not_whole_in_the_buffer_is_left_alone(p: dict[str, object], cut: int) -> None:
    _header, _body, packet = publish_packet(
        p["topic"],
        p["payload"],
        min(int(p["qos"]), 1),
        p["mid"],
        p["dup"],
        p["retain"],  # type: ignore[arg-type]
        b"\x00" if p["v5"] else None,
    )
    cut = min(cut, len(packet) - 1)
    # The buffer holds an earlier packet's end and the first ``cut`` bytes of this one.
    assert plain_publish(b"junk" + packet[:cut], 4, bool(p["v5"])) is None


@given(data=st.binary(min_size=1, max_size=64), v5=st.booleans())
@example(data=b"\x30\xff\xff\xff\xff\x7f", v5=False)  # a 5-byte remaining length
@example(data=b"\x30\x01\x00", v5=False)  # too short for the topic length
@example(data=b"\x32\x04\x00\x01a\x00", v5=False)  # QoS 1 without a whole message id
@example(data=b"\x30\x03\x00\x05a", v5=True)  # the topic runs past the packet
def test_any_bytes_are_either_left_to_paho_or_read_as_paho_reads_them(
    data: bytes, v5: bool
) -> None:
    got = plain_publish(data, 0, v5)  # never raises
    if got is None:
        return
    end = got[0]
    # The variable header starts after the first byte and the remaining-length bytes.
    i = 1
    while data[i] & 0x80:
        i += 1
    body_start = i + 1
    assert paho_reads(data[0], data[body_start:end], v5) == got[1:]


def test_a_run_of_packets_is_read_one_after_another() -> None:
    items = [(b"t/%d" % i, b"p" * i, i % 2, i + 1) for i in range(50)]
    buf = b"".join(publish_packet(t, p, q, m, False, False, b"\x00")[2] for t, p, q, m in items)
    pos, seen = 0, []
    while pos < len(buf):
        got = plain_publish(buf, pos, True)
        assert got is not None
        pos = got[0]
        seen.append((got[1], got[2], got[3], got[4] if got[3] else 0))
    assert seen == [(t, p, q, m if q else 0) for t, p, q, m in items]


# --------------------------------------------------------------------------- real broker


class PlainSubscriber:
    """A FastClient on its own network thread, counting which reader delivered what."""

    def __init__(self, broker: Broker, protocol: int) -> None:
        self.got: list[tuple[str, bytes, int, bool, str]] = []
        self._subscribed = threading.Event()
        # Acks by hand, as ingest does: only then does the plain reader take QoS 1.
        self.client = FastClient(
            CallbackAPIVersion.VERSION2,
            client_id=f"plain-publish-{uuid.uuid4().hex[:8]}",
            protocol=protocol,
            manual_ack=True,
        )
        self.client.on_message = lambda _c, _u, m: self._got(
            m.topic, bytes(m.payload), m.qos, m.mid, bool(m.retain), "paho"
        )
        self.client.on_plain_publish = lambda topic, payload, qos, mid, _dup, retain: self._got(
            topic.decode(), payload, qos, mid, retain, "plain"
        )
        self.client.on_subscribe = lambda *_args: self._subscribed.set()
        self.client.on_connect = lambda client, *_args: client.subscribe("plain/#", qos=1)
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        assert self._subscribed.wait(seconds(20)), "no SUBACK"

    def _got(self, topic: str, payload: bytes, qos: int, mid: int, retain: bool, by: str) -> None:
        self.got.append((topic, payload, qos, retain, by))
        self.client.ack(mid, qos)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_a_mixed_stream_arrives_once_whole_and_in_order_on_a_real_broker(broker: Broker) -> None:
    # Many small messages per read, packets cut by reads, a 200 KiB one (many reads),
    # QoS 0 and 1, retained, and some with properties that only paho's reader may take.
    items: list[tuple[str, bytes, int, dict[str, object]]] = []
    for i in range(1500):
        props: dict[str, object] = {"ContentType": "text/plain"} if i % 50 == 7 else {}
        items.append((f"plain/dev-{i % 9}/up", b"m%d-" % i + b"x" * (i % 700), i % 2, props))
    items.insert(700, ("plain/big/up", BIG, 1, {}))
    for protocol in (mqtt.MQTTv5, mqtt.MQTTv311):
        sub = PlainSubscriber(broker, protocol)
        pub = Publisher(broker.host, broker.port)
        try:
            publish_with_properties(
                pub, [(t, p, values) for t, p, _q, values in items], [q for _t, _p, q, _ in items]
            )
            wait_for(lambda s=sub: len(s.got) >= len(items), 60, "every message")
        finally:
            pub.close()
            sub.close()
        got = [(t, p, q) for t, p, q, _r, _by in sub.got]
        sent = [(t, p, q) for t, p, q, _ in items]
        # Each QoS level in order (the broker may send a QoS 0 message ahead of QoS 1
        # ones waiting for its inflight window), and every message exactly once.
        for qos in (0, 1):
            assert [m for m in got if m[2] == qos] == [m for m in sent if m[2] == qos]
        assert len(got) == len(sent)
        readers = {by for *_rest, by in sub.got}
        assert readers == {"plain", "paho"}, readers  # both readers took part
        reader = {payload: by for _t, payload, _q, _r, by in sub.got}
        if protocol == mqtt.MQTTv5:  # (v3.1.1 has no properties: the broker drops them)
            assert {reader[payload] for _t, payload, _q, values in items if values} == {"paho"}
        plain_share = sum(1 for *_rest, by in sub.got if by == "plain") / len(items)
        assert plain_share > 0.5, plain_share  # most: only cut packets go to paho


def test_a_retained_message_keeps_its_flag(broker: Broker) -> None:
    pub = Publisher(broker.host, broker.port)
    try:
        pub.publish("plain/retained", b"kept", qos=1, retain=True).wait_for_publish(seconds(10))
        sub = PlainSubscriber(broker, mqtt.MQTTv5)
        try:
            wait_for(lambda: bool(sub.got), 20, "the retained message")
            before = sub.client._last_bytes_received
            pub.publish("plain/live", b"live", qos=0).wait_for_publish(seconds(10))
            wait_for(lambda: len(sub.got) >= 2, 20, "the live message")
            # The keepalive sees what the plain reader read.
            assert sub.client._last_bytes_received > before
        finally:
            sub.close()
    finally:
        pub.close()
    assert sub.got == [
        ("plain/retained", b"kept", 1, True, "plain"),
        ("plain/live", b"live", 0, False, "plain"),
    ]


def test_a_callback_that_closes_the_socket_gets_nothing_more_from_that_connection(
    broker: Broker,
) -> None:
    # A persistent session's backlog arrives in one rush: many packets per read.
    client_id = f"plain-close-{uuid.uuid4().hex[:8]}"
    first, _ = manual_ack_session(broker, client_id)
    first.disconnect()
    pump(first, lambda: first.socket() is None, "the DISCONNECT written")
    pub = Publisher(broker.host, broker.port)
    try:
        pub.publish_all([(f"acks/{i}", b"%d" % i) for i in range(100)])
    finally:
        pub.close()
    client = FastClient(
        CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5, manual_ack=True
    )
    got: list[bytes] = []

    def close_at_first(_t: bytes, payload: bytes, *_rest: object) -> None:
        got.append(payload)
        client._sock_close()  # as paho does on a socket error

    client.on_plain_publish = close_at_first
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = 300
    client.connect(broker.host, broker.port, clean_start=False, properties=props)
    wait_for(lambda: client.loop(0.05) != 0 or client.socket() is None, 30, "the close")
    assert got == [b"0"]  # nothing after the close, from the bytes already read
    assert client._rbuf == b""
