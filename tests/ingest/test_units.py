"""Small pure parts of ingest: back-off delays, reason hints, Nagle off on the MQTT socket."""

from __future__ import annotations

import socket

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from services.ingest.backoff import Backoff
from services.ingest.explain import describe_reason
from services.ingest.mqtt_link import set_nodelay


def test_backoff_grows_to_the_maximum_and_never_below_the_minimum() -> None:
    highest = Backoff(1.0, 60.0, rand=lambda: 1.0)
    assert [highest.next_delay() for _ in range(8)] == [2, 4, 8, 16, 32, 60, 60, 60]
    lowest = Backoff(1.0, 60.0, rand=lambda: 0.0)
    assert {lowest.next_delay() for _ in range(8)} == {1.0}
    highest.reset()
    assert highest.next_delay() == 2


def test_backoff_is_jittered() -> None:
    delays = {round(Backoff(1.0, 60.0).next_delay(), 6) for _ in range(20)}
    assert len(delays) > 1 and all(1.0 <= d <= 2.0 for d in delays)


def test_backoff_survives_thousands_of_attempts() -> None:
    b = Backoff(0.5, 30.0)
    assert all(0.5 <= b.next_delay() <= 30.0 for _ in range(5000))


def test_session_takeover_gets_a_hint_about_client_ids() -> None:
    text = describe_reason(ReasonCode(PacketTypes.DISCONNECT, "Session taken over"))
    assert "0x8E" in text and "MQTT_CLIENT_ID" in text
    assert "MQTT_PASSWORD" in describe_reason(
        ReasonCode(PacketTypes.CONNACK, "Bad user name or password")
    )


def test_set_nodelay_turns_nagle_off_on_a_tcp_socket() -> None:
    with (
        socket.create_server(("127.0.0.1", 0)) as server,
        socket.create_connection(server.getsockname()) as client,
    ):
        assert client.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0
        set_nodelay(client)
        assert client.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    a, b = socket.socketpair()  # a unix socket has no Nagle: must not raise
    with a, b:
        set_nodelay(a)
