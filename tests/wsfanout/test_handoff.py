"""The fan-out's side of the stop hand-off (services/wsfanout/handoff.py), on real TCP
ZeroMQ sockets: XPUBs play decoders that answer the LEAVING subscription the way
services/decode/worker.py does (tests/decode/test_worker.py checks the real one)."""

from __future__ import annotations

import asyncio
import threading
import uuid

import zmq

from services.wsfanout.config import load
from services.wsfanout.fanout import Fanout
from services.wsfanout.metrics import Metrics
from services.wsfanout.tokens import TokenStore
from shared.frames import LEAVING, event_parts, leaving_marker
from shared.zmq_util import Connections
from tests.support.timing import seconds
from tests.wsfanout.helpers import Source, device_event


class FakeDecoder(threading.Thread):
    """An XPUB connected to the SUB. When the LEAVING subscription arrives it sends
    ``late`` more events (already on their way when the fan-out asked) and then, if
    ``answers``, its marker; a decoder that does not answer plays one that is stuck."""

    def __init__(
        self, ctx: zmq.Context[zmq.Socket[bytes]], endpoint: str, late: int, answers: bool
    ):
        super().__init__(daemon=True)
        self.sock = ctx.socket(zmq.XPUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.XPUB_VERBOSE, 1)
        self.sock.connect(endpoint)
        self.source = Source(f"src-{uuid.uuid4().hex[:6]}")
        self.late = late
        self.answers = answers
        self.subscribed = threading.Event()
        self.quit = threading.Event()
        self.sent = 0

    def send(self, count: int) -> None:
        for _ in range(count):
            self.sent += 1
            event = device_event(device="d", value=self.sent, source=self.source)
            self.sock.send_multipart(event_parts(event))

    def run(self) -> None:
        try:
            self.answer()
        finally:
            self.sock.close(0)

    def answer(self) -> None:
        while not self.quit.is_set():
            if not self.sock.poll(10):
                continue
            message = self.sock.recv()
            if message == b"\x01":
                self.subscribed.set()
            elif message == b"\x01" + LEAVING:
                self.send(self.late)
                if self.answers:
                    self.sock.send_multipart(leaving_marker(self.source.src))


class Bench:
    def __init__(self) -> None:
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.LINGER, 0)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")
        self.peers = Connections(self.sub)
        self.sub.bind("tcp://127.0.0.1:0")
        self.endpoint = self.sub.getsockopt_string(zmq.LAST_ENDPOINT)
        config = load({"WEBSOCKET_STATE_FILE": ""}, [])
        self.fanout = Fanout(config, Metrics(), TokenStore(None, ""), "test-epoch")
        self.decoders: list[FakeDecoder] = []

    def decoder(self, late: int = 0, answers: bool = True) -> FakeDecoder:
        d = FakeDecoder(self.ctx, self.endpoint, late, answers)
        self.decoders.append(d)
        d.start()
        return d

    async def connected(self, n: int) -> None:
        """Until ``n`` decoders are counted and each has the fan-out's subscription (a
        bound SUB attaches connections only when its own thread touches it)."""
        async with asyncio.timeout(seconds(20)):
            while self.peers.update() != n or not all(d.subscribed.is_set() for d in self.decoders):
                self.sub.getsockopt(zmq.EVENTS)
                await asyncio.sleep(0.01)

    def close(self) -> None:
        for d in self.decoders:
            d.quit.set()
            d.join(seconds(5))
        self.peers.close()
        self.sub.close(0)
        self.ctx.term()


def test_hand_off_takes_everything_sent_before_each_decoders_marker() -> None:
    async def main() -> None:
        bench = Bench()
        try:
            a, b = bench.decoder(late=30), bench.decoder(late=0)
            await bench.connected(2)
            a.send(20)
            b.send(5)
            taken = await bench.fanout.hand_off(bench.sub, bench.peers.update, seconds(60))
            # Every event either decoder sent before its marker was handled, in order.
            assert taken == 20 + 30 + 5
            assert bench.fanout.seq == 55
            assert bench.fanout.goodbyes == {a.source.src.encode(), b.source.src.encode()}
            assert bench.fanout.metrics.total("frames_lost") == 0
            # A marker is not an event: nothing counts it as received or as a bad frame.
            assert bench.fanout.metrics.total("events_received") == 55
            assert bench.fanout.metrics.total("bad_frames") == 0
        finally:
            bench.close()

    asyncio.run(main())


def test_hand_off_with_a_decoder_that_never_answers_stops_at_its_bound() -> None:
    async def main() -> None:
        bench = Bench()
        try:
            bench.decoder(late=10)
            bench.decoder(late=3, answers=False)
            await bench.connected(2)
            taken = await bench.fanout.hand_off(bench.sub, bench.peers.update, seconds(2))
            # It gave up on the silent one, after taking what both sent.
            assert len(bench.fanout.goodbyes) == 1
            assert taken == 13
        finally:
            bench.close()

    asyncio.run(main())


def test_hand_off_with_no_decoder_connected_returns_at_once() -> None:
    async def main() -> None:
        bench = Bench()
        try:
            d = bench.decoder()
            await bench.connected(1)
            d.quit.set()  # the only decoder goes away: the count follows
            d.join(seconds(5))
            async with asyncio.timeout(seconds(20)):
                while bench.peers.update() != 0:
                    await asyncio.sleep(0.01)
            # Bounded at a minute: only the count of connected decoders lets it return.
            async with asyncio.timeout(seconds(30)):
                taken = await bench.fanout.hand_off(bench.sub, bench.peers.update, 60)
            assert taken == 0 and not bench.fanout.goodbyes
        finally:
            bench.close()

    asyncio.run(main())
