"""The I/O shell around the decoder: take raw frames against credit, decode, PUBlish events.

A synchronous pyzmq loop: poll with a short timeout so a stop request (a signal handler
setting an Event) is noticed within ~100 ms. On stop it asks every ingest to stop sending
and handles frames until each has answered ``stopped`` (see :meth:`Worker.drain`),
publishes them, and closes the sockets with a bounded linger so the last events still
reach the fan-out.

Socket choices (RELIABILITY.md §0.7, §2): one DEALER per ingest endpoint, with
credit-based flow control (:mod:`shared.rawlink`): ingest sends a link at most the credit
it was granted (ZMQ_RAW_CREDIT), and credit is granted back only once the frames' events
are handed to the events socket, so a killed worker loses at most its outstanding credit
(the fan-out's per-source ``seq`` shows exactly which) and a stopped one loses nothing.
Each DEALER also has a bounded RCVHWM and kernel buffer, and MAXMSGSIZE so a hostile peer
cannot make it allocate gigabytes (an oversized frame makes ZeroMQ drop that link, and
:class:`LinkWatch` reconnects it). The
events socket is an XPUB with ZMQ_IMMEDIATE off: while the fan-out restarts, up to SNDHWM
events wait for it instead of vanishing, which also refills its replay buffer. Two more
choices keep the events link from losing what ingest already acknowledged to the broker:

- a PUB drops everything until a subscriber's SUBSCRIBE has arrived (the slow joiner), so
  the worker reads no raw frame before the first subscription (XPUB reports it);
- at SNDHWM a PUB drops; with ZMQ_XPUB_NODROP the send fails instead, and the worker
  holds the batch and stops reading until the fan-out takes events again, so the pressure
  reaches ingest and the broker instead of turning into loss;
- a fan-out that stops subscribes to ``LEAVING`` first: the worker answers with a marker
  behind everything it sent and holds what follows until a fan-out subscribes afresh
  (at most ``LEAVING_HOLD_SECONDS``). Events already on the wire when the fan-out closed
  its socket would be lost otherwise: a PUB has no acknowledgements.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import threading
import time
from collections.abc import Callable

import msgpack
import zmq
from zmq.utils.monitor import recv_monitor_message

from services.decode.dispatch import Decoder, error_event
from services.decode.metrics import Metrics
from shared import rawlink, zmq_util
from shared.frames import LEAVING, Event, FrameError, event_parts, leaving_marker, unpack_raw
from shared.log import RateLimitedLog

logger = logging.getLogger(__name__)

POLL_MS = 100
# Frames handled per poll wake-up: bounds the latency a batch adds (~BATCH x 20 us).
BATCH = 64
# While frames flow, credit goes back once this many are handed on (or half a smaller
# window): ingest's acks wait for it, so larger lumps would hold them back.
GRANT_LUMP_MAX = 50
DRAIN_SECONDS = 5.0  # longest wait for every ingest's ``stopped`` after a stop request
RELINK_AFTER = 1.0  # seconds of silence after a disconnect before reconnecting by hand
HELD_RETRY_MS = 10  # how often held events are offered to a full fan-out link again
# How long events are held for a fan-out that said it is leaving, at most: it closes its
# socket within its hand-off bound (2 s) and its successor normally subscribes within a
# second; after this, events go to ZeroMQ's queue for the successor as before.
LEAVING_HOLD_SECONDS = 10.0
SUBSCRIBE_ALL = b"\x01"  # a SUBSCRIBE to every topic: what a (new) fan-out sends
SUBSCRIBE_LEAVING = b"\x01" + LEAVING


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

    def __init__(
        self,
        sock: zmq.Socket,  # type: ignore[type-arg]
        on_relink: Callable[[str], None],
        on_link: Callable[[str, bool], None] | None = None,
    ) -> None:
        self.sock = sock
        self.monitor = sock.get_monitor_socket(self.EVENTS)
        self.on_relink = on_relink
        self.on_link = on_link  # (endpoint, connected) on every connect and disconnect
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
            if self.on_link is not None and message["event"] in (
                zmq.EVENT_CONNECTED,
                zmq.EVENT_DISCONNECTED,
            ):
                self.on_link(endpoint, message["event"] == zmq.EVENT_CONNECTED)

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


class RawLink:
    """One DEALER connected to one ingest endpoint, and its credit bookkeeping."""

    def __init__(self, sock: zmq.Socket, endpoint: str) -> None:  # type: ignore[type-arg]
        self.sock = sock
        self.endpoint = endpoint
        self.watch: LinkWatch | None = None
        self.connected = False  # as the monitor last said
        self.owed = 0  # frames handled from this link whose credit is not granted back yet
        self.stopping = False  # we sent ``stop``
        self.stopped = False  # ingest answered ``stopped``: nothing more is on its way

    def send_control(self, parts: list[bytes]) -> bool:
        try:
            self.sock.send_multipart(parts, zmq.NOBLOCK)
        except zmq.Again:  # our queue to ingest is full: it is not reading; try later
            return False
        return True


class Worker:
    """Receive a batch, decode it, then send the batch back to back.

    Sending right after each decode would wake ZeroMQ's I/O thread once per event (the
    pipe is empty again by the time the next event is ready), a system call and a context
    switch that cost more than the decode itself on a busy machine. Back-to-back sends
    find the pipe still busy. A batch is only what is already queued (never waited for)
    and at most ``BATCH`` frames, so an idle worker still sends each event at once.
    Credit for a batch goes back to its ingest once its events are handed on."""

    def __init__(
        self,
        links: list[RawLink],
        pub: zmq.Socket,  # type: ignore[type-arg]
        decoder: Decoder,
        metrics: Metrics,
        max_frame: int,
        credit: int,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self.links = links
        self.pub = pub
        self.decoder = decoder
        self.metrics = metrics
        self.max_frame = max_frame
        self.credit = credit
        self.grant_lump = max(1, min(credit // 2, GRANT_LUMP_MAX))
        self.clock = clock
        self.handled = 0
        # Events per name in the current batch, counted into the metrics once per batch:
        # a labelled counter's inc() per event was ~4 % of decode's CPU.
        self._counted: dict[str, int] = {}
        self.subscribers = 0  # SUBSCRIBE messages seen on the XPUB
        self.pending: list[list[bytes]] = []  # events the XPUB could not take yet
        self._warn = RateLimitedLog(logger)
        self._held_since: float | None = None
        self.name = secrets.token_hex(4)  # tells this worker's leaving marker from others'
        self.leaving_since: float | None = None  # a fan-out said it is leaving: hold events
        self.marker_owed = False  # ... and owes it the marker (the XPUB queue was full)

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
            if message == SUBSCRIBE_LEAVING:
                self._fanout_leaving()
            elif message[:1] == b"\x01":
                self.subscribers += 1
                if message == SUBSCRIBE_ALL and self.leaving_since is not None:
                    self._release(f"a fan-out subscribed after {self._held_for():.1f} s")

    def _fanout_leaving(self) -> None:
        if self.leaving_since is None:
            logger.info(
                "🤝 The fan-out is stopping: holding events for the next one (at most %g s)",
                LEAVING_HOLD_SECONDS,
            )
        self.leaving_since = time.monotonic()
        self.marker_owed = True
        self._send_marker()

    def _send_marker(self) -> None:
        try:
            self.pub.send_multipart(leaving_marker(self.name), zmq.NOBLOCK)
        except zmq.Again:  # its queue is full: it is still draining it, try again soon
            return
        self.marker_owed = False

    def _held_for(self) -> float:
        return 0.0 if self.leaving_since is None else time.monotonic() - self.leaving_since

    def _release(self, why: str) -> None:
        logger.info("▶️ Sending events again (%d held): %s", len(self.pending), why)
        self.leaving_since = None
        self.marker_owed = False

    def _holding(self) -> bool:
        """True while events are held for a leaving fan-out (owed markers go out here)."""
        if self.leaving_since is None:
            return False
        if self.marker_owed:
            self._send_marker()
        if self._held_for() >= LEAVING_HOLD_SECONDS:
            self._release(
                f"no fan-out subscribed within {LEAVING_HOLD_SECONDS:g} s; ZeroMQ queues them"
            )
            return False
        return True

    def connect(self) -> None:
        """Connect every link, watching it first so no connect event is missed: each
        connect (the first one, and every one after ingest restarted) grants the initial
        credit to the ingest at the other end."""
        for link in self.links:

            def on_link(_endpoint: str, connected: bool, link: RawLink = link) -> None:
                self._link_changed(link, connected)

            link.watch = LinkWatch(link.sock, self._relinked, on_link)
            link.sock.connect(link.endpoint)
            logger.info("🔌 raw frames DEALER connecting to %s", link.endpoint)

    def _link_changed(self, link: RawLink, connected: bool) -> None:
        link.connected = connected
        if not connected:
            return
        link.owed = 0  # what the previous ingest was owed is void: a new one counts afresh
        if link.stopping:
            link.send_control(rawlink.STOP_MESSAGE)
        else:
            link.send_control(rawlink.credit_message(self.credit, self.max_frame))

    def _poller(self) -> zmq.Poller:
        poller = zmq.Poller()
        for link in self.links:
            poller.register(link.sock, zmq.POLLIN)
            if link.watch is not None:
                poller.register(link.watch.monitor, zmq.POLLIN)
        return poller

    def _watch(self, ready: dict[object, int]) -> None:
        for link in self.links:
            if link.watch is None:
                continue
            if link.watch.monitor in ready:
                link.watch.handle_events()
            link.watch.check()

    def run(self, stop: threading.Event) -> None:
        poller = self._poller()
        poller.register(self.pub, zmq.POLLIN)
        try:
            while not stop.is_set():
                # While events are held, poll briefly and take no new frames (and grant no
                # credit): ingest runs out of credit for us, waits and stops acknowledging,
                # the broker keeps the rest.
                held = self.pending or self.marker_owed
                ready = dict(poller.poll(HELD_RETRY_MS if held else POLL_MS))
                self._watch(ready)
                if self.pub in ready:
                    self.read_subscriptions()
                busy = False
                if self.pending or self.marker_owed:
                    self.flush()
                else:
                    for link in self.links:
                        if link.sock in ready:
                            busy = self.batch(link) > 0 or busy
                            if self.pending:
                                break
                if not self.pending:
                    # While frames flow, credit goes back in lumps (GRANT_LUMP_MAX; ingest
                    # keeps the rest of the window, so it never waits on us): a grant
                    # per frame would wake both sides' ZeroMQ I/O threads per frame.
                    # A quiet link gets everything back.
                    self.grant(self.grant_lump if busy else 1)
            self.drain()
        finally:
            for link in self.links:
                if link.watch is not None:
                    link.watch.close()

    def grant(self, at_least: int = 1) -> None:
        """Give each link back the credit of the frames handed on since the last grant,
        once it is ``at_least`` frames."""
        for link in self.links:
            if (
                link.owed >= at_least
                and not link.stopping
                and link.send_control(rawlink.credit_message(link.owed, self.max_frame))
            ):
                link.owed = 0

    def batch(self, link: RawLink) -> int:
        """Handle up to BATCH frames already queued on ``link``; the number handled."""
        sock = link.sock
        recv = zmq_util.recv_parts
        outgoing: list[list[bytes]] = []
        count = 0
        for _ in range(BATCH):
            try:
                parts = recv(sock)
            except zmq.Again:
                break
            if len(parts) == 2 and rawlink.is_stopped(parts):
                link.stopped = True  # every frame ingest sent us came before this
                continue
            count += 1
            event = self.handle(parts)
            if event is not None:
                outgoing.append(event)
        if count:
            self.handled += count
            link.owed += count
            self.metrics.frames.inc(count)
            self.metrics.events(self._counted)
            self._counted.clear()
        self.pending = outgoing
        self.flush()
        return count

    def flush(self) -> bool:
        """Send the held events in order; True when none is left."""
        if self._holding():
            return not self.pending
        pub = self.pub
        send = zmq_util.send_parts
        sent = 0
        try:
            for event in self.pending:
                send(pub, event)
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
        """After a stop request: ask every connected ingest to stop sending, and handle
        frames until each has answered ``stopped`` (ZeroMQ keeps a pipe in order, so then
        nothing more is on its way) or its link is gone, at most DRAIN_SECONDS."""
        for link in self.links:
            link.stopping = True
            link.send_control(rawlink.STOP_MESSAGE)
        drained = 0
        deadline = time.monotonic() + DRAIN_SECONDS
        poller = self._poller()
        while True:
            waiting = [link for link in self.links if link.connected and not link.stopped]
            if not waiting and not self.pending:
                break
            if time.monotonic() >= deadline:
                break
            if self.pending:
                self.read_subscriptions()  # a successor's SUBSCRIBE ends a hand-off hold
                if not self.flush():
                    time.sleep(HELD_RETRY_MS / 1000)
                continue
            ready = dict(poller.poll(POLL_MS))
            self._watch(ready)
            for link in self.links:
                if link.sock in ready:
                    drained += self.batch(link)
                    if self.pending:
                        break
        # What already arrived on a link that is gone is still in its queue: take it too.
        for link in self.links:
            while not self.pending and time.monotonic() < deadline and self.batch(link):
                pass
        while self.pending and time.monotonic() < deadline:
            self.read_subscriptions()
            if self.flush():
                break
            time.sleep(HELD_RETRY_MS / 1000)
        if waiting:
            logger.warning(
                "⚠️ No 'stopped' from %s within %g s: frames still on their way from there "
                "are lost (the fan-out counts them)",
                ", ".join(link.endpoint for link in waiting),
                DRAIN_SECONDS,
            )
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
        counted = self._counted
        counted[name] = counted.get(name, 0) + 1
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
    sndbuf: int,
    rcvbuf: int,
    max_msg_size: int,
) -> tuple[list[RawLink], zmq.Socket]:  # type: ignore[type-arg]
    """One DEALER per ingest endpoint (not connected yet: :meth:`Worker.connect` does that
    once a fan-out has subscribed, so until then ingest keeps its frames for workers that
    can deliver), and the events XPUB, connected."""
    links = []
    for endpoint in raw_endpoints:
        dealer = ctx.socket(zmq.DEALER)
        zmq_util.configure(dealer, hwm=rcvhwm, kernel_buffer=rcvbuf, max_msg_size=max_msg_size)
        links.append(RawLink(dealer, endpoint))
    pub = ctx.socket(zmq.XPUB)
    # A bounded kernel buffer too: a stalled link then holds about SNDHWM events, not
    # megabytes more, before the worker feels it (and a fan-out killed meanwhile loses less).
    zmq_util.configure(pub, hwm=sndhwm, kernel_buffer=sndbuf)
    # Every subscriber's SUBSCRIBE reaches us (not only the first of a topic), and a full
    # queue fails the send instead of dropping the event.
    pub.setsockopt(zmq.XPUB_VERBOSE, 1)
    pub.setsockopt(zmq.XPUB_NODROP, 1)
    zmq_util.connect_all(pub, event_endpoints, "events XPUB")
    return links, pub
