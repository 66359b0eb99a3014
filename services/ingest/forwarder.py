"""Hands each received message to a decoder that has credit for it (ROUTER,
:mod:`shared.rawlink`) as a raw frame, then acks it.

It runs on the MQTT link's thread (:mod:`services.ingest.mqtt_link`): paho's callback
only appends to :attr:`Forwarder.pending`, and the link's loop calls :meth:`Forwarder.work`
after every read and whenever the ROUTER has something, so a message crosses no thread
inside ingest (each hand-off between threads cost ~30 µs of wake-up on a small VM,
bench/FINDINGS.md). When no decoder has credit (all busy, stopping, or none connected)
messages wait in ``pending``; once that holds enough, the link stops reading from the
broker, whose inflight window fills because nothing is acknowledged, and the broker
holds the rest. Nothing is dropped, but a message whose frame is larger than the
decoder it would go to takes (it says so with its credit): sent, ZeroMQ would drop that
link and every frame in flight on it. A decoder's ``stop`` is answered with ``stopped``
after the last frame sent to it, so a decoder that stops loses nothing; a peer that
vanished (EHOSTUNREACH, ROUTER_MANDATORY) is forgotten and the frame goes to another.

Acks go out in receive order, one per message, once the decoder has confirmed the frame:
its credit comes back only after the frame's event was handed on, and the link is in
order, so credit ``n`` from a decoder confirms its ``n`` oldest frames. Acking as soon as
ZeroMQ took the frame would lose, at a SIGKILL or OOM kill of ingest, what still sat in
ZeroMQ's queue in this process (up to the credit of every decoder): acknowledged, so the
broker never sends it again. What a decoder will not confirm is acked anyway, as
before, and counted: its frames when it stops (its drain publishes them) or when any
decoder disconnects (a ROUTER does not say which; a killed one would otherwise hold every
later ack back), and any frame after ``confirm_timeout`` (ZMQ_RAW_CONFIRM_TIMEOUT: acks go
out in receive order, so a frozen decoder, or one held back by a stalled fan-out, would
otherwise hold back the acks of every other decoder's frames too). A working decoder
confirms within milliseconds.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Protocol

import zmq

from services.ingest.metrics import Metrics
from shared import rawlink, zmq_util
from shared.frames import RawFrame, pack_raw
from shared.log import RateLimitedLog

logger = logging.getLogger(__name__)

BLOCKED_NOTICE_S = 1.0  # a wait this long is worth a log line (shorter ones are normal)


@dataclass(slots=True)
class Inbound:
    """One message as paho delivered it, waiting for a decoder's credit."""

    mid: int
    qos: int
    topic: str
    payload: bytes
    retain: bool
    ts: int  # time.time_ns() at receipt
    conn: int  # which connection delivered it: an ack is only valid on that one


@dataclass(slots=True)
class Sent:
    """A message whose frame a decoder has, waiting for the decoder's confirmation."""

    item: Inbound
    at: float  # time.monotonic() when ZeroMQ took the frame
    done: bool = False  # confirmed: its credit came back


class Acker(Protocol):
    def ack(self, mid: int, qos: int, conn: int) -> bool:
        """Acknowledge to the broker; False when the connection ``conn`` is gone."""
        ...


class Forwarder:
    """Passive: the MQTT link's thread calls it after each read and each wake-up of the
    ROUTER (:meth:`work`), so a message crosses no thread inside ingest."""

    def __init__(
        self,
        sock: zmq.Socket,  # type: ignore[type-arg]
        acker: Acker,
        src: str,
        metrics: Metrics,
        confirm_timeout: float = 1.0,
    ) -> None:
        self._sock = sock
        self._acker = acker
        self._src = src
        self._m = metrics
        self._confirm_timeout = confirm_timeout
        self._seq = 0
        self.pending: deque[Inbound] = deque()  # received, waiting for a decoder's credit
        self._blocked_at: float | None = None  # since when no decoder could take a frame
        self._noticed = False  # that wait was long enough to be logged
        # Credit per decoder (ROUTER identity), only those with credit left (> 0), in
        # round-robin order.
        self._credit: dict[bytes, int] = {}
        # The largest frame each of those peers takes (sent with its credit; absent: not
        # said, as by an older decoder).
        self._max_frame: dict[bytes, int] = {}
        self._bad = RateLimitedLog(logger)
        self._stopped: set[bytes] = set()  # peers that asked to stop: their credit is void
        self._sent: deque[Sent] = deque()  # in receive order: acks leave from the left
        self._awaiting: dict[bytes, deque[Sent]] = {}  # per decoder, oldest first
        self._connections = zmq_util.Connections(sock)

    @property
    def seq(self) -> int:
        return self._seq

    def offer(self, item: Inbound) -> None:
        self.pending.append(item)

    def work(self) -> None:
        """Read the decoders' control messages, hand on what credit allows, ack what is
        confirmed (or waited too long). Never blocks."""
        self._pump()
        if self.pending:
            self._send_pending()
        if self._sent:
            self._ack_ready()

    def finish(self) -> None:
        """At a stop (clean or cut short): ack everything handed on, confirmed or not, as
        ack-at-hand-off did (ZeroMQ's linger still delivers the frames). Waiting for the
        confirmations could outlast MQTT_DRAIN_TIMEOUT, and what is not acked before the
        DISCONNECT comes again from the broker. What was never handed on stays unacked."""
        self._give_up(self._sent)
        self._ack_ready()
        self._awaiting.clear()

    def close(self) -> None:
        """Stop watching the ROUTER's connections (idempotent); before it closes."""
        self._connections.close()

    def _send_pending(self) -> None:
        pending = self.pending
        while pending:
            if not self._credit:
                self._wait_noted()
                return
            item = pending[0]
            try:
                if not self._forward(item):
                    self._wait_noted()
                    return
            except Exception:  # a bug here must not silently stop the whole flow
                self._m.callback_errors.inc()
                logger.error("❌ Unexpected error forwarding a message", exc_info=True)
                self._ack(item)  # never stall the broker's window on one bad message
            pending.popleft()
        self._wait_ended()

    def _wait_noted(self) -> None:
        """No decoder can take the next frame (none connected, all busy or stopping): it
        waits here, and the broker's window fills because nothing is acknowledged."""
        now = time.monotonic()
        if self._blocked_at is None:
            self._blocked_at = now
        elif not self._noticed and now - self._blocked_at >= BLOCKED_NOTICE_S:
            self._noticed = True
            logger.warning(
                "⏸️ No decoder is taking frames (none connected, or all busy): waiting "
                "with %d messages held; the broker keeps the rest",
                len(self.pending),
            )

    def _wait_ended(self) -> None:
        if self._blocked_at is None:
            return
        waited = time.monotonic() - self._blocked_at
        self._m.send_wait.inc(waited)
        if self._noticed:
            logger.info("▶️ Decoders are taking frames again after %.1f s", waited)
        self._blocked_at = None
        self._noticed = False

    def _forward(self, item: Inbound) -> bool:
        frame = RawFrame(
            src=self._src,
            seq=self._seq + 1,
            ts=item.ts,
            topic=item.topic,
            payload=item.payload,
            qos=item.qos,
            retain=item.retain,
        )
        data = pack_raw(frame)
        # The limit of the decoder next in turn (they share one config in practice).
        limit = self._max_frame.get(next(iter(self._credit), b""), 0)
        if limit and len(data) > limit:
            self._drop_too_large(item, len(data), limit)
            return True
        peer = self._try_send(data)
        if peer is None:
            return False
        self._seq += 1  # numbered only once sent, so a seq gap always means a lost frame
        self._m.forwarded.inc()
        sent = Sent(item, time.monotonic())
        self._sent.append(sent)
        waiting = self._awaiting.get(peer)
        if waiting is None:
            waiting = self._awaiting[peer] = deque()
        waiting.append(sent)
        return True

    def _pump(self) -> None:
        """Read every control message queued on the ROUTER and every disconnect (never
        blocks)."""
        self._note_disconnects()
        sock = self._sock
        while zmq_util.readable(sock):
            try:
                parts = zmq_util.recv_parts(sock)
            except zmq.Again:
                return
            self._control(parts[0], parts[1:])

    def _control(self, peer: bytes, parts: list[bytes]) -> None:
        msg = rawlink.parse_control(parts)
        if msg is None:
            logger.warning("⚠️ Ignored a malformed control message from a decoder: %.80r", parts)
            return
        if msg.kind == rawlink.CREDIT:
            if peer not in self._stopped:
                self._credit[peer] = self._credit.get(peer, 0) + msg.n
                if msg.max_frame:
                    self._max_frame[peer] = msg.max_frame
            self._confirm(peer, msg.n)
            return
        # STOP: nothing more goes to this peer; everything sent so far precedes the answer.
        self._credit.pop(peer, None)
        self._max_frame.pop(peer, None)
        self._stopped.add(peer)
        # Its drain publishes every frame it has and grants no more credit.
        self._give_up(self._awaiting.pop(peer, ()))
        # Gone already (EHOSTUNREACH) or its pipe is full: the decoder's drain times out.
        with contextlib.suppress(zmq.ZMQError):
            self._sock.send_multipart([peer, *rawlink.STOPPED_MESSAGE], zmq.NOBLOCK)
        logger.info("👋 A decoder asked to stop: it gets no more frames")

    def _confirm(self, peer: bytes, n: int) -> None:
        """Credit ``n`` came back from ``peer``: its ``n`` oldest frames were handed on.
        (The first grant of a new peer finds nothing waiting and confirms nothing.)"""
        waiting = self._awaiting.get(peer)
        if not waiting:
            return
        for _ in range(min(n, len(waiting))):
            waiting.popleft().done = True
        if not waiting:
            del self._awaiting[peer]

    def _note_disconnects(self) -> None:
        before = self._connections.disconnects
        self._connections.update()
        if self._connections.disconnects != before and self._awaiting:
            waiting = sum(len(w) for w in self._awaiting.values())
            for peer_waiting in self._awaiting.values():
                self._give_up(peer_waiting)
            self._awaiting.clear()
            logger.info(
                "👋 A decoder disconnected: acknowledging the %d frames still waiting for "
                "a decoder's confirmation",
                waiting,
            )

    def _give_up(self, waiting: deque[Sent] | tuple[()]) -> None:
        """These frames will not be confirmed: let their acks go."""
        for sent in waiting:
            if not sent.done:
                sent.done = True
                self._m.acks_unconfirmed.inc()

    def _ack_ready(self) -> None:
        """Ack, in receive order, every message confirmed or waiting too long."""
        sent = self._sent
        now = time.monotonic()
        while sent:
            head = sent[0]
            if not head.done:
                if now - head.at < self._confirm_timeout:
                    break
                head.done = True
                self._m.acks_unconfirmed.inc()
            sent.popleft()
            self._ack(head.item)

    def _try_send(self, data: bytes) -> bytes | None:
        """Hand ``data`` to the next decoder with credit, round-robin (the one served
        moves to the end); the decoder's identity, or None when none could take it."""
        credits = self._credit
        for peer in list(credits):
            credit = credits[peer]
            try:
                zmq_util.send_parts(self._sock, [peer, data])
            except zmq.Again:  # its pipe is at SNDHWM: try the others
                continue
            except zmq.ZMQError as exc:
                if exc.errno != zmq.EHOSTUNREACH:
                    raise
                del credits[peer]  # vanished (killed, or relinked under a new identity)
                self._max_frame.pop(peer, None)
                logger.info("👋 A decoder vanished with %d credit left: sending to others", credit)
                self._give_up(self._awaiting.pop(peer, ()))
                continue
            del credits[peer]  # to the end of the order, or out until it grants more (so a
            if credit > 1:  # vanished peer without credit is not kept)
                credits[peer] = credit - 1
            else:
                self._max_frame.pop(peer, None)  # its next grant says it again
            return peer
        return None

    def _drop_too_large(self, item: Inbound, size: int, limit: int) -> None:
        """A frame over what the decoder said it takes: ZeroMQ would drop the link for it,
        and with it every frame in flight there. Dropped here, counted, and acked in its
        turn (the broker would only send it again)."""
        self._m.dropped.labels("too_large").inc()
        self._bad.warning(
            "too-large",
            "⚠️ Message on %s dropped: its frame is %d bytes, over the %d a decoder takes "
            "(ZMQ_RAW_MAX_MESSAGE, DECODE_MAX_PAYLOAD)",
            item.topic[:200],
            size,
            limit,
        )
        self._sent.append(Sent(item, time.monotonic(), done=True))

    def _ack(self, item: Inbound) -> None:
        if item.qos == 0:
            return
        if self._acker.ack(item.mid, item.qos, item.conn):
            self._m.acked.inc()
        else:
            self._m.acks_skipped.inc()
