"""The I/O shell around the decoder: PULL raw frames, decode, PUBlish events.

A synchronous pyzmq loop: poll with a short timeout so a stop request (a signal handler
setting an Event) is noticed within ~100 ms. On stop it takes what ingest already sent
it until the link is quiet (see :meth:`Worker.drain`), publishes it, and closes both
sockets with a bounded linger so the last events still reach the fan-out.

Socket choices (RELIABILITY.md §0.7, §2): the PULL has a small RCVHWM *and* a small
kernel buffer, so a killed worker loses at most about RCVHWM + RCVBUF/frame frames (the
fan-out's per-source ``seq`` shows exactly which), and MAXMSGSIZE so a hostile peer
cannot make it allocate gigabytes (an oversized frame makes ZeroMQ drop that link, and
:class:`LinkWatch` reconnects it). The
events socket is an XPUB with ZMQ_IMMEDIATE off: while the fan-out restarts, up to SNDHWM
events wait for it instead of vanishing, which also refills its replay buffer. Two more
choices keep the events link from losing what ingest already acknowledged to the broker:

- a PUB drops everything until a subscriber's SUBSCRIBE has arrived (the slow joiner), so
  the worker reads no raw frame before the first subscription (XPUB reports it);
- at SNDHWM a PUB drops; with ZMQ_XPUB_NODROP the send fails instead, and the worker
  holds the batch and stops reading until the fan-out takes events again, so the pressure
  reaches ingest and the broker instead of turning into loss.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable

import msgpack
import zmq
from zmq.utils.monitor import recv_monitor_message

from services.decode.dispatch import Decoder, error_event
from services.decode.metrics import Metrics
from shared import zmq_util
from shared.frames import Event, FrameError, event_parts, unpack_raw
from shared.log import RateLimitedLog

logger = logging.getLogger(__name__)

POLL_MS = 100
# Frames handled per poll wake-up: bounds the latency a batch adds (~BATCH x 20 us).
BATCH = 64
DRAIN_SECONDS = 2.0
DRAIN_QUIET = 0.3
RELINK_AFTER = 1.0  # seconds of silence after a disconnect before reconnecting by hand
HELD_RETRY_MS = 10  # how often held events are offered to a full fan-out link again


def recover_ids(data: bytes) -> tuple[str, int, int, str] | None:
    """``(src, seq, ts, topic)`` of a frame that failed :func:`unpack_raw`, when its map
    still says who sent it: an error event with them keeps the fan-out's gap count exact."""
    try:
        obj = msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=False,
            max_bin_len=len(data),
            max_str_len=len(data),
            max_array_len=len(data),
            max_map_len=len(data),
            max_ext_len=0,
        )
    except Exception:  # msgpack raises ValueError, ExtraData, TypeError, ...
        return None
    if not isinstance(obj, dict):
        return None
    src, seq = obj.get("src"), obj.get("seq")
    if not isinstance(src, str) or type(seq) is not int:
        return None
    ts, topic = obj.get("ts"), obj.get("topic")
    return src, seq, ts if type(ts) is int else 0, topic if isinstance(topic, str) else ""


class LinkWatch:
    """Reconnects links ZeroMQ gave up on.

    A frame over ZMQ_MAXMSGSIZE is a protocol error, and libzmq does *not* reconnect a
    connecting socket after one (``session_base::engine_error`` terminates the session):
    one oversized MQTT message would silently cut this worker off ingest for good. An
    ordinary disconnect (ingest restarting) is followed by ``CONNECT_RETRIED`` within the
    reconnect interval; a disconnect followed by silence is reconnected here."""

    EVENTS = (
        zmq.EVENT_CONNECTED
        | zmq.EVENT_DISCONNECTED
        | zmq.EVENT_CONNECT_RETRIED
        | zmq.EVENT_CONNECT_DELAYED
    )

    def __init__(self, sock: zmq.Socket, on_relink: Callable[[str], None]) -> None:  # type: ignore[type-arg]
        self.sock = sock
        self.monitor = sock.get_monitor_socket(self.EVENTS)
        self.on_relink = on_relink
        self.silent_since: dict[str, float] = {}

    def handle_events(self) -> None:
        while True:
            try:
                message = recv_monitor_message(self.monitor, zmq.NOBLOCK)
            except zmq.Again:
                return
            endpoint = (
                message["endpoint"].decode()
                if isinstance(message["endpoint"], bytes)
                else str(message["endpoint"])
            )
            if message["event"] == zmq.EVENT_DISCONNECTED:
                self.silent_since[endpoint] = time.monotonic()
            else:
                self.silent_since.pop(endpoint, None)

    def check(self) -> None:
        if not self.silent_since:
            return
        now = time.monotonic()
        for endpoint, since in list(self.silent_since.items()):
            if now - since >= RELINK_AFTER:
                del self.silent_since[endpoint]
                with contextlib.suppress(zmq.ZMQError):  # the session is gone already
                    self.sock.disconnect(endpoint)
                self.sock.connect(endpoint)
                self.on_relink(endpoint)

    def close(self) -> None:
        self.sock.disable_monitor()
        self.monitor.close(linger=0)


class Worker:
    """Receive a batch, decode it, then send the batch back to back.

    Sending right after each decode would wake ZeroMQ's I/O thread once per event (the
    pipe is empty again by the time the next event is ready), a system call and a context
    switch that cost more than the decode itself on a busy machine. Back-to-back sends
    find the pipe still busy. A batch is only what is already queued (never waited for)
    and at most ``BATCH`` frames, so an idle worker still sends each event at once."""

    def __init__(
        self,
        pull: zmq.Socket,  # type: ignore[type-arg]
        pub: zmq.Socket,  # type: ignore[type-arg]
        decoder: Decoder,
        metrics: Metrics,
        max_frame: int,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self.pull = pull
        self.pub = pub
        self.decoder = decoder
        self.metrics = metrics
        self.max_frame = max_frame
        self.clock = clock
        self.handled = 0
        self.subscribers = 0  # SUBSCRIBE messages seen on the XPUB
        self.pending: list[list[bytes]] = []  # events the XPUB could not take yet
        self._warn = RateLimitedLog(logger)
        self._held_since: float | None = None

    def wait_for_subscriber(self, stop: threading.Event) -> bool:
        """Block until a fan-out has subscribed (False if stopped first): events published
        before that would be dropped by ZeroMQ, after ingest acknowledged their frames."""
        noticed = time.monotonic() + 1.0
        while not stop.is_set():
            if self.pub.poll(POLL_MS, zmq.POLLIN):
                self.read_subscriptions()
            if self.subscribers:
                return True
            if time.monotonic() >= noticed:
                noticed = float("inf")
                logger.info("⏳ Waiting for a fan-out to subscribe before taking raw frames")
        return False

    def read_subscriptions(self) -> None:
        while True:
            try:
                message = self.pub.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            if message[:1] == b"\x01":
                self.subscribers += 1

    def run(self, stop: threading.Event) -> None:
        watch = LinkWatch(self.pull, self._relinked)
        poller = zmq.Poller()
        poller.register(self.pull, zmq.POLLIN)
        poller.register(watch.monitor, zmq.POLLIN)
        poller.register(self.pub, zmq.POLLIN)
        try:
            while not stop.is_set():
                # While events are held, poll briefly and take no new frames: the raw link
                # fills, ingest waits and stops acknowledging, the broker keeps the rest.
                ready = dict(poller.poll(HELD_RETRY_MS if self.pending else POLL_MS))
                if watch.monitor in ready:
                    watch.handle_events()
                watch.check()
                if self.pub in ready:
                    self.read_subscriptions()
                if self.pending:
                    self.flush()
                elif self.pull in ready:
                    self.batch()
            self.drain()
        finally:
            watch.close()

    def batch(self) -> int:
        """Handle up to BATCH frames already queued; the number handled."""
        recv = self.pull.recv_multipart
        outgoing: list[list[bytes]] = []
        count = 0
        for count in range(1, BATCH + 1):  # noqa: B007 (count is the result)
            try:
                parts = recv(zmq.NOBLOCK)
            except zmq.Again:
                count -= 1
                break
            event = self.handle(parts)
            if event is not None:
                outgoing.append(event)
        if count:
            self.handled += count
            self.metrics.frames.inc(count)
        self.pending = outgoing
        self.flush()
        return count

    def flush(self) -> bool:
        """Send the held events in order; True when none is left."""
        send = self.pub.send_multipart
        sent = 0
        try:
            for event in self.pending:
                send(event, zmq.NOBLOCK)
                sent += 1
        except zmq.Again:  # XPUB_NODROP: the fan-out's queue is full (or it is away)
            del self.pending[:sent]
            if self._held_since is None:
                self._held_since = time.monotonic()
                self._warn.warning(
                    "held",
                    "⏸️ The fan-out is not taking events (queue full or away): holding %d "
                    "and taking no raw frames until it does",
                    len(self.pending),
                )
            return False
        self.pending = []
        if self._held_since is not None:
            logger.info(
                "▶️ The fan-out takes events again after %.1f s",
                time.monotonic() - self._held_since,
            )
            self._held_since = None
        return True

    def drain(self) -> int:
        """After a stop request: keep taking what ingest already sent this worker until
        the link has been quiet for DRAIN_QUIET seconds (at most DRAIN_SECONDS).

        ZeroMQ cannot stop a PULL's inflow without discarding its queue (disconnect drops
        the pipe), so "stop pulling" means "stop once nothing more is on its way": frames
        still in flight at the very end are lost with the link and show up as gaps."""
        drained = 0
        deadline = time.monotonic() + DRAIN_SECONDS
        while time.monotonic() < deadline:
            if self.pending:
                if not self.flush():
                    time.sleep(HELD_RETRY_MS / 1000)
                continue
            handled = self.batch()
            drained += handled
            if not handled and not self.pull.poll(int(DRAIN_QUIET * 1000)):
                break
        if self.pending:
            logger.warning(
                "⚠️ %d events could not be handed to a fan-out before the drain limit",
                len(self.pending),
            )
        return drained

    def _relinked(self, endpoint: str) -> None:
        self.metrics.relinks.inc()
        logger.warning(
            "⚠️ ZeroMQ dropped the link to %s and gave up "
            "(a frame over ZMQ_RAW_MAX_MESSAGE?): reconnected",
            endpoint,
        )

    def handle(self, parts: list[bytes]) -> list[bytes] | None:
        """The parts of the event for one raw frame; None for a frame dropped unseen."""
        if len(parts) != 1:
            return self._bad_frame(FrameError("parts", f"{len(parts)} parts, expected 1"), None)
        try:
            frame = unpack_raw(parts[0], self.max_frame)
        except FrameError as exc:
            return self._bad_frame(exc, parts[0])
        now = self.clock()
        try:
            event = self.decoder.decode(frame, now)
        except Exception as exc:  # a decoder bug must cost one frame, not the worker
            if self._warn.warning(
                "internal", "❌ Decoder bug on topic %.200s: %s", frame.topic, exc
            ):
                logger.error("Traceback of the decoder bug above", exc_info=True)
            event = error_event(
                "internal", type(exc).__name__, frame.topic, frame.src, frame.seq, frame.ts, now
            )
        return self.encode(event)

    def encode(self, event: Event) -> list[bytes]:
        """Count and pack one event (an ``error`` is also logged, rate-limited)."""
        body = event.body
        name = body["event"]
        if name == "error":
            error = body["error"]
            self.metrics.error(error["reason"])
            self._warn.warning(
                error["reason"],
                "⚠️ Could not decode a message on %.200s (%s): %.300s",
                error["topic"],
                error["reason"],
                error["detail"],
            )
        try:
            parts = event_parts(event)
        except (ValueError, TypeError, OverflowError) as exc:  # a body msgpack refuses: our bug
            self._warn.warning("pack", "❌ Cannot pack an event for %.200s: %s", event.key, exc)
            event = error_event(
                "internal",
                f"pack: {type(exc).__name__}",
                "",
                body["src"],
                body["seq"],
                body["ts"],
                body["ts_decode"],
            )
            self.metrics.error("internal")
            name = "error"
            parts = event_parts(event)
        self.metrics.event(name)
        return parts

    def _bad_frame(self, exc: FrameError, data: bytes | None) -> list[bytes] | None:
        self.metrics.dropped(exc.reason)
        self._warn.warning(
            "frame:" + exc.reason, "⚠️ Dropped a bad raw frame (%s): %.200s", exc.reason, exc.detail
        )
        ids = recover_ids(data) if data is not None else None
        if ids is None:
            return None
        src, seq, ts, topic = ids
        return self.encode(
            error_event("frame", f"{exc.reason}: {exc.detail}", topic, src, seq, ts, self.clock())
        )


def open_sockets(
    ctx: zmq.Context,  # type: ignore[type-arg]
    raw_endpoints: tuple[str, ...],
    event_endpoints: tuple[str, ...],
    *,
    rcvhwm: int,
    sndhwm: int,
    rcvbuf: int,
    max_msg_size: int,
) -> tuple[zmq.Socket, zmq.Socket]:  # type: ignore[type-arg]
    pull = ctx.socket(zmq.PULL)
    pub = ctx.socket(zmq.XPUB)
    zmq_util.configure(pull, hwm=rcvhwm, kernel_buffer=rcvbuf, max_msg_size=max_msg_size)
    zmq_util.configure(pub, hwm=sndhwm)
    # Every subscriber's SUBSCRIBE reaches us (not only the first of a topic), and a full
    # queue fails the send instead of dropping the event.
    pub.setsockopt(zmq.XPUB_VERBOSE, 1)
    pub.setsockopt(zmq.XPUB_NODROP, 1)
    zmq_util.connect_all(pub, event_endpoints, "events XPUB")
    # The PULL connects only once a fan-out has subscribed (connect_raw): until then ingest
    # keeps its frames for workers that can deliver.
    return pull, pub


def connect_raw(pull: zmq.Socket, raw_endpoints: tuple[str, ...]) -> None:  # type: ignore[type-arg]
    zmq_util.connect_all(pull, raw_endpoints, "raw frames PULL")
