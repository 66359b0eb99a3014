"""The hot-path ZeroMQ helpers on real sockets: ``send_parts`` is as atomic as
``send_multipart`` (a message arrives whole or not at all), and ``readable`` says when a
message waits."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import zmq

from shared import zmq_util


class Sockets:
    """Makes sockets in one context and closes them all at the end of the test."""

    def __init__(self) -> None:
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.made: list[zmq.Socket[bytes]] = []

    def socket(self, kind: int) -> zmq.Socket[bytes]:
        sock = self.ctx.socket(kind)
        self.made.append(sock)
        return sock

    def close(self) -> None:
        for sock in self.made:
            sock.close(linger=0)
        self.ctx.term()


@pytest.fixture
def ctx() -> Iterator[Sockets]:
    sockets = Sockets()
    yield sockets
    sockets.close()


def _pair(ctx: Sockets, hwm: int) -> tuple[zmq.Socket[bytes], zmq.Socket[bytes]]:
    # inproc: ZeroMQ's own pipe, whose HWM is exactly the sum of both sides' (no kernel
    # buffer in between), so "full" is deterministic.
    tx, rx = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    tx.setsockopt(zmq.SNDHWM, hwm)
    rx.setsockopt(zmq.RCVHWM, hwm)
    rx.bind("inproc://parts")
    tx.connect("inproc://parts")
    return tx, rx


def test_send_parts_delivers_every_part_in_order_and_readable_sees_it(
    ctx: Sockets,
) -> None:
    tx, rx = _pair(ctx, hwm=10)
    assert not zmq_util.readable(rx)
    zmq_util.send_parts(tx, [b"key", b"", b"body"])
    zmq_util.send_parts(tx, [b"single"])
    assert zmq_util.readable(rx)
    assert rx.recv_multipart() == [b"key", b"", b"body"]
    assert rx.recv_multipart() == [b"single"]
    assert not zmq_util.readable(rx)


def test_send_parts_at_the_high_water_mark_queues_nothing_of_the_message(
    ctx: Sockets,
) -> None:
    tx, rx = _pair(ctx, hwm=1)
    sent = 0
    with pytest.raises(zmq.Again):
        while sent < 100:
            zmq_util.send_parts(tx, [b"k%d" % sent, b"v%d" % sent])
            sent += 1
    assert 0 < sent < 100
    got = []
    while zmq_util.readable(rx):
        got.append(rx.recv_multipart(zmq.NOBLOCK))
    # Every message that was accepted arrived whole; the refused one left no part behind.
    assert got == [[b"k%d" % i, b"v%d" % i] for i in range(sent)]


def test_send_parts_to_an_unknown_router_peer_fails_and_sends_nothing(
    ctx: Sockets,
) -> None:
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.ROUTER_MANDATORY, 1)
    router.bind("inproc://router")
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.IDENTITY, b"known")
    dealer.connect("inproc://router")
    dealer.send(b"hello")
    assert router.recv_multipart() == [b"known", b"hello"]
    with pytest.raises(zmq.ZMQError) as err:
        zmq_util.send_parts(router, [b"gone", b"frame"])
    assert err.value.errno == zmq.EHOSTUNREACH
    zmq_util.send_parts(router, [b"known", b"frame"])
    assert dealer.recv_multipart() == [b"frame"]
    assert not zmq_util.readable(dealer)


def test_recv_parts_returns_each_message_whole_and_in_order_then_again(ctx: Sockets) -> None:
    tx, rx = _pair(ctx, hwm=100)
    sent = [[b"key", b"", b"body"], [b"single"], [b"a", b"b"], [b"x" * 70_000, b"y"]]
    for parts in sent:
        tx.send_multipart(parts)
    got = []
    while len(got) < len(sent):
        try:
            got.append(zmq_util.recv_parts(rx))
        except zmq.Again:  # inproc delivers at once, but allow the pipe a moment
            assert rx.poll(1000, zmq.POLLIN)
    assert got == sent
    with pytest.raises(zmq.Again):  # nothing left: and no part of a message was kept back
        zmq_util.recv_parts(rx)
