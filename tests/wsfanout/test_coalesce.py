"""Coalesced writes (WEBSOCKET_COALESCE_MS): an event for many clients waits a moment for
the next ones so each client gets them in one write; one or two dashboards are written to
at once; nothing is lost, doubled or reordered, for fast and slow clients alike."""

from __future__ import annotations

import json
import select
import socket
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.support.timing import seconds, wait_for
from tests.wsfanout.helpers import Source, collector, device_event, value_of

# Long enough that five events handled one by one surely fall inside one window, short
# enough for a test (the events then arrive after it).
WINDOW_MS = "3000"
MIN_CLIENTS = 8  # WEBSOCKET_COALESCE_MIN_CLIENTS here (default 100): fewer test clients


class RawReader:
    """A WebSocket client on a plain socket that records each recv() separately, to see
    how the server's writes were cut."""

    def __init__(self, port: int, rcvbuf: int = 0) -> None:
        self.sock = socket.socket()
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(seconds(30))
        self.sock.connect(("127.0.0.1", port))
        self.payloads: list[bytes] = []
        key = "dGhlIHNhbXBsZSBub25jZQ=="
        self.sock.sendall(
            (
                f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            head += self.sock.recv(1)
        assert head.startswith(b"HTTP/1.1 101"), head

    def reads(self, frames: int) -> list[int]:
        """Read until ``frames`` unfragmented server frames came; frames per recv()."""
        per_read: list[int] = []
        buf = b""
        done = 0
        while done < frames:
            chunk = self.sock.recv(1 << 20)
            assert chunk, "server closed"
            buf += chunk
            count = 0
            while len(buf) >= 2:
                n = buf[1] & 0x7F
                head = 2 if n < 126 else 4 if n == 126 else 10
                if n == 126 and len(buf) >= 4:
                    n = int.from_bytes(buf[2:4], "big")
                elif n == 127 and len(buf) >= 10:
                    n = int.from_bytes(buf[2:10], "big")
                if len(buf) < head + n:
                    break
                self.payloads.append(buf[head : head + n])
                buf = buf[head + n :]
                count += 1
            done += count
            per_read.append(count)
        return per_read

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def open_raw() -> Iterator[Callable[..., RawReader]]:
    """``open_raw(port, rcvbuf=0)``: a RawReader closed at the end even if the test failed
    (else its socket is collected, and warned about, in whichever test runs next)."""
    readers: list[RawReader] = []

    def open_(port: int, rcvbuf: int = 0) -> RawReader:
        readers.append(RawReader(port, rcvbuf))
        return readers[-1]

    yield open_
    for r in readers:
        r.close()


def test_an_event_for_many_clients_is_written_with_the_next_ones_in_one_write(
    start_fanout: Any, open_feed: Any, open_raw: Any
) -> None:
    fanout = start_fanout(
        {"WEBSOCKET_COALESCE_MS": WINDOW_MS, "WEBSOCKET_COALESCE_MIN_CLIENTS": str(MIN_CLIENTS)}
    )
    feed = open_feed(fanout)
    others = [collector(fanout.url()) for _ in range(MIN_CLIENTS)]
    raw = open_raw(fanout.port)
    wait_for(lambda: fanout.metric("gateway_wsfanout_clients") == len(others) + 1, 10, "clients")
    source = Source(f"src-{uuid.uuid4().hex[:6]}")
    for i in range(1, 6):  # five events, each handled on its own (a batch of one)
        feed.send(device_event(device=f"m{i}", value=i, source=source))
        fanout.wait_metric("gateway_wsfanout_events_accepted_total", i)
    # Handled, but still held (written at once, loopback data would be here already) ...
    poller = select.poll()
    poller.register(raw.sock, select.POLLIN)
    assert poller.poll(0) == []
    # ... then all five go out in one write: the first recv() holds every frame.
    assert raw.reads(5) == [5]
    for c in others:
        assert [value_of(m) for m in c.wait_events(5)] == [1, 2, 3, 4, 5]
        c.close()


def test_one_dashboard_is_written_to_at_once(start_fanout: Any, open_feed: Any) -> None:
    # A window of minutes: if a single client's events waited for it, none would arrive.
    fanout = start_fanout({"WEBSOCKET_COALESCE_MS": "600000"})
    feed = open_feed(fanout)
    client = collector(fanout.url())
    wait_for(lambda: fanout.metric("gateway_wsfanout_clients") == 1, 10, "client")
    for i in range(1, 4):
        feed.send(device_event(device="m1", value=i))
        assert [value_of(m) for m in client.wait_events(i, timeout=10)] == list(range(1, i + 1))
    client.close()


def test_an_audience_below_the_threshold_is_written_to_at_once(
    start_fanout: Any, open_feed: Any
) -> None:
    # One client short of WEBSOCKET_COALESCE_MIN_CLIENTS, with a window of minutes: if
    # their events waited for it, none would arrive.
    fanout = start_fanout(
        {"WEBSOCKET_COALESCE_MS": "600000", "WEBSOCKET_COALESCE_MIN_CLIENTS": str(MIN_CLIENTS)}
    )
    feed = open_feed(fanout)
    clients = [collector(fanout.url()) for _ in range(MIN_CLIENTS - 1)]
    wait_for(lambda: fanout.metric("gateway_wsfanout_clients") == len(clients), 10, "clients")
    for i in range(1, 4):
        feed.send(device_event(device="m1", value=i))
        for c in clients:
            got = [value_of(m) for m in c.wait_events(i, timeout=10)]
            assert got == list(range(1, i + 1))
    for c in clients:
        c.close()


def test_many_clients_with_replies_and_a_slow_one_get_every_event_once_in_order(
    start_fanout: Any, open_feed: Any, open_raw: Any
) -> None:
    # Coalescing on, replies (pong) asked for mid-stream, and one client that does not read
    # until the end, so its events overflow its socket and go through its queue while the
    # others' wait in the window: each client gets every event exactly once, in order.
    fanout = start_fanout(
        {
            "WEBSOCKET_COALESCE_MS": "20",
            "WEBSOCKET_COALESCE_MIN_CLIENTS": str(MIN_CLIENTS),
            "WEBSOCKET_SEND_BUFFER": "4096",
        }
    )
    feed = open_feed(fanout)
    clients = [collector(fanout.url()) for _ in range(MIN_CLIENTS + 2)]
    slow = open_raw(fanout.port, rcvbuf=4096)
    wait_for(lambda: fanout.metric("gateway_wsfanout_clients") == len(clients) + 1, 10, "clients")
    source = Source(f"src-{uuid.uuid4().hex[:6]}")
    total = 600
    pad = "y" * 300
    for i in range(1, total + 1):
        obj = {"type": "voltage", "values": [{"value": i}], "pad": pad}
        feed.send(device_event(device=f"m{i % 13}", value=i, source=source, obj=obj))
        if i % 150 == 0:
            for c in clients[:3]:
                c.send({"op": "ping", "id": i})
    for c in clients:
        assert [value_of(m) for m in c.wait_events(total, timeout=30)] == list(range(1, total + 1))

    # The last ping is sent after the last event, so its pong may come after it: wait for it,
    # then check no pong came twice.
    def pongs() -> list[int]:
        return [m["id"] for m in clients[0].snapshot() if m.get("type") == "pong"]

    wait_for(lambda: len(pongs()) >= total // 150, 10, "pongs")
    assert pongs() == list(range(150, total + 1, 150))
    slow.reads(total)
    assert [value_of(json.loads(p)) for p in slow.payloads] == list(range(1, total + 1))
    assert fanout.metric("gateway_wsfanout_messages_sent_total", kind="live") == total * (
        len(clients) + 1
    )
    for c in clients:
        c.close()
