"""The fan-out core: events in (numbered, buffered, dispatched), clients in (replay, live, ops).

Everything here runs on one asyncio loop. The two operations that must not be interleaved
are synchronous on purpose:

- :meth:`Fanout.accept` numbers an event, adds it to the history and hands it to every
  matching client, with no ``await``;
- :meth:`Fanout.start` (connect, or a new subscribe) takes the replay snapshot and
  (re-)registers the client in the index, with no ``await`` in between. So every event is
  either in the snapshot or delivered live, never both and never neither (the zguide
  "Clone" pattern's seam, without needing sequence arithmetic on the client).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from bisect import bisect_right
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
import zmq
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode

from services.wsfanout import state
from services.wsfanout.client import Client, Limits, text_frame
from services.wsfanout.config import Config
from services.wsfanout.dedup import RecentIds
from services.wsfanout.filters import Filter, FilterError, Scope, parse_filter
from services.wsfanout.history import Entry, History
from services.wsfanout.index import ClientIndex
from services.wsfanout.messages import SerializeError, client_message, describe, kind_of, serialize
from services.wsfanout.metrics import Metrics
from services.wsfanout.seqtrack import Seen, SeqTracker
from services.wsfanout.tokens import TokenError, TokenRecord, TokenStore
from shared.frames import LEAVING, FrameError, parse_event
from shared.log import RateLimitedLog
from shared.zmq_util import NOBLOCK, recv_parts

logger = logging.getLogger(__name__)

BATCH_MAX = 500  # events handled back to back before other tasks run
BATCH_SECONDS = 0.01  # ... or this long, whichever comes first
HANDOFF_POLL_SECONDS = 0.002
SUBSCRIBE_KEYS = frozenset({"op", "filter", "epoch", "seq", "id"})
MAX_FIRST_SOURCE_LOGS = 100


@dataclass(frozen=True, slots=True)
class Resume:
    epoch: str | None
    seq: int | None
    problem: str | None = None


def parse_resume(epoch: Any, seq: Any) -> Resume | None:
    """The resume position from a subscribe message or the URL (strings there)."""
    if epoch is None and seq is None:
        return None
    if epoch is None or seq is None:
        return Resume(None, None, "resume needs both epoch and seq")
    if not isinstance(epoch, str) or not epoch or len(epoch) > 64:
        return Resume(None, None, "epoch must be a non-empty string (the epoch of the last event)")
    if isinstance(seq, str) and seq.strip().isdigit():
        seq = int(seq.strip())
    if type(seq) is not int or seq < 0:
        return Resume(None, None, "seq must be a whole number >= 0 (the seq of the last event)")
    return Resume(epoch, seq)


@dataclass(frozen=True, slots=True)
class Previous:
    """The process whose saved buffer this one restored (see :meth:`Fanout.load_state`)."""

    epoch: str
    seq: int  # its last seq
    olds: list[int]  # its seq of each restored entry; entry i has seq i + 1 here
    marks: dict[str, int]  # per ring, the highest seq it had evicted
    dropped: int


@dataclass(frozen=True, slots=True)
class Admission:
    """What the handshake established (see :mod:`services.wsfanout.gate`)."""

    peer: str
    scope: Scope
    token: TokenRecord | None
    filter: Filter
    resume: Resume | None
    origin: str | None
    path: str  # token redacted


class Fanout:
    def __init__(self, config: Config, metrics: Metrics, tokens: TokenStore, epoch: str) -> None:
        self.config = config
        self.metrics = metrics
        self.tokens = tokens
        self.epoch = epoch
        self.seq = 0
        self.stopping = False
        self.history = History(config.websocket_replay_size, config.websocket_replay_devices)
        self.tracker = SeqTracker(
            config.zmq_events_reorder_window,
            config.zmq_events_reorder_timeout,
            on_lost=metrics.frames_lost.inc,
        )
        self.recent = RecentIds(config.websocket_dedup_size)
        self.index = ClientIndex()
        self.backlogged: set[Client] = set()
        self.per_token: Counter[str] = Counter()
        self.limits = Limits(
            queue_messages=config.websocket_client_queue_messages,
            queue_bytes=config.websocket_client_queue_bytes,
            rate_per_second=config.websocket_rate_limit / 60.0,
            burst=config.websocket_rate_burst,
            close_timeout=config.websocket_close_timeout,
            send_buffer=config.websocket_send_buffer,
        )
        self.started = time.monotonic()
        self.previous: Previous | None = None
        self._bad = RateLimitedLog(logger)
        self._sources_logged = 0
        # Clients with fast-path frames not written yet (Client.held), and the timer that
        # writes them when writes are coalesced (see _write_out).
        self._dirty: list[Client] = []
        self._coalesce_timer: asyncio.TimerHandle | None = None
        self._coalesce_s = config.websocket_coalesce_ms / 1000.0
        self._coalesce_min = config.websocket_coalesce_min_clients
        self.goodbyes: set[bytes] = set()  # decoders that answered the hand-off at stop
        self._accepted = 0  # counts of the current batch, added to the metrics by _flush()
        self._sent_live = 0
        metrics.watch(metrics.clients, lambda: len(self.index))
        metrics.watch(metrics.buffered_events, lambda: len(self.history))
        metrics.watch(metrics.buffered_rings, lambda: self.history.rings)
        metrics.watch(metrics.seq, lambda: self.seq)
        metrics.watch(metrics.frames_pending, lambda: self.tracker.pending)

    # Events in ------------------------------------------------------------------------

    async def receive(self, sock: zmq.Socket[bytes]) -> None:
        """Receive forever (until cancelled). Events already waiting are handled as one
        batch (up to ``BATCH_MAX`` or ``BATCH_SECONDS``): each client then gets one socket
        write for the whole batch instead of one per event, so a fan-out that falls behind
        (a burst, a busy machine) catches up with far fewer system calls. At a steady rate
        a batch is one event and nothing waits.

        No ``zmq.asyncio``: the loop watches the socket's FD itself and a callback takes
        the frames with plain non-blocking receives. That halves the CPU of a wake-up (no
        Future, no task switch, no ``EVENTS`` query per frame; measured in
        bench/wsfanout_bench.py). The FD is edge-triggered: it signals when frames arrive
        after a receive found none, not while frames wait. So a batch runs until
        ``zmq.Again`` (which re-arms it); a batch cut short by its bounds is continued by
        a callback scheduled at once, after the other tasks had their turn."""
        loop = asyncio.get_running_loop()
        recv = functools.partial(recv_parts, sock)
        fd = sock.fileno()  # ZMQ_FD
        failed: asyncio.Future[None] = loop.create_future()
        more: asyncio.Handle | None = None

        def on_readable() -> None:
            nonlocal more
            if more is not None:
                more.cancel()  # this call takes what it would have
                more = None
            try:
                _, drained = self._take(recv, BATCH_MAX, BATCH_SECONDS)
            except Exception as exc:  # the socket failed: end receive() with it, as before
                loop.remove_reader(fd)
                if not failed.done():
                    failed.set_exception(exc)
                return
            if not drained:
                more = loop.call_soon(on_readable)

        loop.add_reader(fd, on_readable)
        try:
            on_readable()  # frames that arrived before the reader was watching
            await failed
        finally:
            loop.remove_reader(fd)
            if more is not None:
                more.cancel()

    def drain(self, sock: zmq.Socket[bytes], limit: int = 100_000) -> int:
        """Handle every frame already received (at shutdown, before the socket closes:
        frames the I/O thread has taken from the decoders' queues would be lost otherwise)."""
        recv = functools.partial(recv_parts, sock)
        return self._take(recv, limit, float("inf"), coalesce=False)[0]

    async def hand_off(
        self, sock: zmq.Socket[bytes], peers: Callable[[], int], seconds: float
    ) -> int:
        """At stop: ask the decoders for their leaving marker and handle every frame until
        ``peers()`` of them answered or ``seconds`` passed (see handoff.py). The number of
        event frames handled."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        self.goodbyes.clear()
        sock.setsockopt(zmq.SUBSCRIBE, LEAVING)
        taken = 0
        while True:
            taken += self.drain(sock)
            if len(self.goodbyes) >= peers() or loop.time() >= deadline:
                return taken
            await asyncio.sleep(HANDOFF_POLL_SECONDS)

    def _take(
        self,
        recv: Callable[[int], list[bytes]],
        limit: int,
        seconds: float,
        coalesce: bool = True,
    ) -> tuple[int, bool]:
        """One batch: the frames ``recv`` returns until ``zmq.Again``, ``limit`` frames or
        ``seconds``. Returns the number of frames and whether it ended with ``zmq.Again``
        (nothing left waiting)."""
        clock = time.perf_counter
        started = clock()
        n = 0
        drained = False
        try:
            while n < limit and clock() - started < seconds:
                try:
                    parts = recv(NOBLOCK)
                except zmq.Again:
                    drained = True
                    break
                if parts[0] == LEAVING:  # a decoder's answer to hand_off: not an event
                    self.goodbyes.add(parts[-1])
                    continue
                n += 1
                self._accept_logged(parts)
        finally:
            self._flush(n, coalesce)
        return n, drained

    def _accept_logged(self, parts: list[bytes]) -> None:
        try:
            self._accept(parts)
        except Exception as exc:  # a bug must not stop the stream: log it and carry on
            if self._bad.warning(
                "internal", "❌ Event handling failed: %s: %s", type(exc).__name__, exc
            ):
                logger.debug("Event handling failed", exc_info=True)

    def _flush(self, received: int, coalesce: bool = False) -> None:
        """End of a batch: one write per client, then the batch's counts, in one go."""
        try:
            self._write_out(coalesce)
        finally:
            m = self.metrics
            if received:
                m.events_received.inc(received)
            if self._accepted:
                m.events_accepted.inc(self._accepted)
                self._accepted = 0
            if self._sent_live:
                m.sent_live.inc(self._sent_live)
                self._sent_live = 0

    def _write_out(self, coalesce: bool) -> None:
        """Write the held frames, now or (``coalesce``) a few ms later.

        With many clients the fan-out's cost is one ``send()`` per client per write, not
        the event: at 100 events/s × 1,000 clients that is 100,000 system calls a second.
        When a batch goes to ``WEBSOCKET_COALESCE_MIN_CLIENTS`` (100) or more, the writes
        wait up to ``WEBSOCKET_COALESCE_MS`` for the events that follow, so each client
        gets them in one write: there one event's writes take ~5 ms anyway, and the wait
        saves ~25 % of the fan-out's CPU. Fewer clients are written to at once: at 50,
        waiting saved ~12 % for +6 ms of p99, and ingest's ``MQTT_COALESCE_MS`` already
        hands events on in groups (bench/FINDINGS.md)."""
        dirty = self._dirty
        if not dirty or self._coalesce_timer is not None and coalesce:
            return  # nothing to write, or the timer writes it
        if coalesce and self._coalesce_s > 0 and len(dirty) >= self._coalesce_min:
            self._coalesce_timer = asyncio.get_running_loop().call_later(
                self._coalesce_s, self._write_held
            )
            return
        self._write_held()

    def _write_held(self) -> None:
        if self._coalesce_timer is not None:
            self._coalesce_timer.cancel()
            self._coalesce_timer = None
        dirty, self._dirty = self._dirty, []
        for client in dirty:
            client.write_held()

    def accept(self, parts: list[bytes]) -> None:
        """Check, number, buffer and dispatch one event frame (a batch of one)."""
        try:
            self._accept(parts)
        finally:
            self._flush(1)

    def _accept(self, parts: list[bytes]) -> None:
        """One event frame of the current batch. Counts in ``_accepted``/``_sent_live`` and
        frames for clients in ``Client.held``: :meth:`_flush` settles both."""
        t0 = time.perf_counter()
        m = self.metrics
        try:
            event = parse_event(parts, self.config.zmq_events_max_message)
        except FrameError as exc:
            m.bad_frame(exc.reason)
            self._bad.warning("frame-" + exc.reason, "⚠️ Bad event frame dropped: %s", exc)
            return
        body = event.body
        if not self._in_sequence(body):
            return
        dedup = body.get("dedup")
        if isinstance(dedup, str | int) and self.recent.seen((body["event"], dedup)):
            m.duplicates_dedup.inc()
            m.dropped_duplicate.inc()
            return
        kind = kind_of(event.key, body)
        meta = describe(kind, body, event.key)
        seq = self.seq + 1
        try:
            text = serialize(client_message(body, seq, self.epoch))
        except SerializeError as exc:
            m.dropped_serializer.inc()
            self._bad.warning(
                "serializer", "⚠️ Event %s dropped: cannot serialize it (%s)", event.key[:200], exc
            )
            return
        self.seq = seq
        entry = Entry(seq, meta, text)
        self.history.add(entry)
        self.dispatch(entry)
        self._accepted += 1
        m.dispatch_seconds.observe(time.perf_counter() - t0)

    def _in_sequence(self, body: dict[str, Any]) -> bool:
        """Gap/duplicate/reorder accounting per source; False for a repeat to drop."""
        src, seq, ts = body.get("src"), body.get("seq"), body.get("ts")
        if not isinstance(src, str) or type(seq) is not int:
            return True
        seen = self.tracker.observe(src, seq, ts if type(ts) is int else 0)
        if seen is Seen.NEXT:
            return True
        m = self.metrics
        if seen is Seen.DUPLICATE:
            m.duplicates_seq.inc()
            m.dropped_duplicate.inc()
            return False
        if seen is Seen.REORDERED:
            m.reordered.inc()
        elif seen is Seen.LATE:
            m.late.inc()
        elif seen is Seen.RESTART:
            m.source_restarts.inc()
            logger.info("📡 Source %s started counting again at seq %d", src[:100], seq)
        elif seen is Seen.FIRST and self._sources_logged < MAX_FIRST_SOURCE_LOGS:
            self._sources_logged += 1
            logger.info("📡 First event from source %s (seq %d)", src[:100], seq)
        return True

    def dispatch(self, entry: Entry) -> None:
        """Hand one event to every matching client (within a batch: see :meth:`_take`).

        Every client on the fast path gets the same frame (built once) in ``held``, which
        is written at the end of the batch or the coalescing delay (:meth:`_write_out`);
        the others queue the event and wait for their socket to drain. A client already
        holding frames from this batch passed every check of ``Client.deliver`` then, and
        only its bytes have grown since: the checks are skipped while the bytes fit (7 % of
        the fan-out's CPU per event with 50 clients, bench/wsfanout_bench.py), unless a
        relay started meanwhile (a reply, a new filter), for what follows must then queue
        behind what the relay sends."""
        size = len(entry.text)
        frame: bytes | None = None
        dirty = self._dirty
        fast = 0
        for client in self.index.matching(entry.meta):
            held = client.held
            if held is None or client.relay is not None or client.batched >= client.room:
                if not client.deliver(entry):
                    continue
                held = client.held
            if frame is None:
                frame = text_frame(entry.text)
            if held is None:
                client.held = [frame]
                dirty.append(client)
            else:
                held.append(frame)
            client.batched += size
            client.sent += 1
            fast += 1
        self._sent_live += fast

    # Clients --------------------------------------------------------------------------

    async def handle(self, conn: ServerConnection) -> None:
        """The websockets handler: one per connection, after the handshake was accepted."""
        admission: Admission = conn.gateway_admission  # type: ignore[attr-defined]
        client = Client(
            conn,
            admission.peer,
            admission.scope,
            admission.token,
            self.limits,
            self.metrics,
            self.backlogged,
        )
        if admission.token is not None:
            self.per_token[admission.token.sha256] += 1
        try:
            self.start(client, admission.filter, admission.resume, reply=False)
            who = f"token {admission.token.id}" if admission.token else "no token"
            logger.info(
                "🔗 Client %s connected (%s, origin %s, path %s, filter %s)",
                client.peer,
                who,
                admission.origin or "-",
                admission.path,
                orjson.dumps(client.filter.to_json()).decode(),
            )
            async for raw in conn:
                if client.closing or client.close_reason:
                    # Being closed (flood, slow, revoked): keep reading and discard, or a
                    # full inbound queue would pause reading and hide the peer's close frame.
                    continue
                if not client.allow_message():
                    self._flooded(client)
                    continue
                self.on_message(client, raw)
        except ConnectionClosed:
            pass
        finally:
            self.index.remove(client)
            client.stop()
            if admission.token is not None:
                self.per_token[admission.token.sha256] -= 1
                if self.per_token[admission.token.sha256] <= 0:
                    del self.per_token[admission.token.sha256]
            self._closed(client)

    def _flooded(self, client: Client) -> None:
        limit = self.config.websocket_rate_limit
        self.metrics.client_errors.inc()
        client.control(
            {"type": "error", "error": f"rate limit exceeded ({limit:g} messages per minute)"}
        )
        client.close_after_pending(CloseCode.POLICY_VIOLATION, "rate limit exceeded", "rate_limit")
        self._bad.warning("flood", "⚠️ Client %s closed with 1008: rate limit exceeded", client.peer)

    def _closed(self, client: Client) -> None:
        code = _close_code(client.conn)
        label = client.close_reason or _CLOSE_LABELS.get(code, "other")
        self.metrics.closed(label)
        logger.info(
            "👋 Client %s disconnected (code %s%s, %d events sent, %d dropped)",
            client.peer,
            code,
            f", {client.close_reason}" if client.close_reason else "",
            client.sent,
            client.dropped,
        )

    def start(
        self,
        client: Client,
        flt: Filter,
        resume: Resume | None,
        *,
        reply: bool,
        request_id: Any = None,
    ) -> None:
        """Apply a filter: reply, resume notice, replay snapshot, live registration.

        Synchronous on purpose: nothing can be dispatched between the snapshot and the
        registration, so the replay and the live stream meet without a gap or a repeat.
        """
        applied = client.scope.narrow(flt)
        client.reset_stream()
        client.filter = applied
        if reply:
            client.control(
                _with_id({"type": "subscribed", "filter": applied.to_json()}, request_id)
            )
        entries: list[Entry] | None = None
        if resume is not None:
            notice, entries = self._plan_resume(resume, applied, client.scope)
            client.control(_with_id(notice, request_id))
        client.replay(self.history.snapshot() if entries is None else entries)
        self.index.put(client)

    def _plan_resume(
        self, r: Resume, flt: Filter, scope: Scope
    ) -> tuple[dict[str, Any], list[Entry] | None]:
        """The resume reply and what to send (None: the full replay).

        A position in the epoch whose buffer this process restored at start (the process
        before a clean restart) is translated into this epoch's numbering: the client then
        gets what it missed, across the restart, without repeats (``"restarted": true``).
        """
        notice: dict[str, Any] = {"type": "resume", "epoch": self.epoch, "seq": self.seq}
        if r.problem is not None or r.seq is None:
            return {**notice, "status": "invalid", "error": r.problem, "replay": "full"}, None
        prev = self.previous
        if r.epoch == self.epoch:
            last, since, complete = self.seq, r.seq, self.history.complete_since(r.seq, flt, scope)
        elif prev is not None and r.epoch == prev.epoch:
            notice["restarted"] = True
            last, since = prev.seq, bisect_right(prev.olds, r.seq)
            complete = self.history.complete_since(since, flt, scope) and self._kept_before(
                r.seq, flt, scope
            )
        else:
            return {
                **notice,
                "status": "epoch_mismatch",
                "error": f"epoch {str(r.epoch)[:64]!r} is not the current one: full replay",
                "replay": "full",
            }, None
        if r.seq > last:
            return {
                **notice,
                "status": "invalid",
                "error": f"seq {r.seq} is ahead of that epoch's latest ({last}): full replay",
                "replay": "full",
            }, None
        if not complete:
            return {
                **notice,
                "status": "gap",
                "from": r.seq,
                "error": f"events after seq {r.seq} are no longer all buffered: full replay",
                "replay": "full",
            }, None
        notice.update(status="ok", replay="missed")
        notice["from"] = r.seq
        return notice, self.history.since(since)

    def _kept_before(self, seq: int, flt: Filter, scope: Scope) -> bool:
        """Whether the previous process had kept everything after ``seq`` (its numbering)
        that this filter and scope could want, when it saved its buffer."""
        prev = self.previous
        assert prev is not None
        if prev.dropped > seq:
            return False
        for ring, evicted in prev.marks.items():
            if evicted > seq:
                meta = self.history.ring_meta(ring)
                if meta is None or (flt.matches_device(meta) and scope.allows(meta)):
                    return False
        return True

    def on_message(self, client: Client, raw: str | bytes) -> None:
        """One client message: ``subscribe`` or ``ping``; anything else gets an error reply."""
        if not isinstance(raw, str):
            return self._error(client, "expected a JSON text message, got binary")
        try:
            msg = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            return self._error(client, f"invalid JSON: {exc}")
        if not isinstance(msg, dict):
            return self._error(client, 'expected a JSON object like {"op": "ping"}')
        request_id = msg.get("id")
        if not (isinstance(request_id, str | int) and not isinstance(request_id, bool)) or (
            isinstance(request_id, str) and len(request_id) > 64
        ):
            request_id = None
        op = msg.get("op")
        if op == "ping":
            client.control(
                _with_id({"type": "pong", "epoch": self.epoch, "seq": self.seq}, request_id)
            )
        elif op == "subscribe":
            unknown = [k for k in msg if k not in SUBSCRIBE_KEYS]
            if unknown:
                return self._error(
                    client,
                    f"subscribe: unknown key {unknown[0][:64]!r}; expected filter, epoch, seq",
                    request_id,
                )
            try:
                flt = parse_filter(msg.get("filter"))
            except FilterError as exc:
                return self._error(client, str(exc), request_id)
            resume = parse_resume(msg.get("epoch"), msg.get("seq"))
            self.start(client, flt, resume, reply=True, request_id=request_id)
        elif op is None:
            self._error(client, 'missing "op": expected "subscribe" or "ping"', request_id)
        else:
            shown = (
                op[:64] if isinstance(op, str) else orjson.dumps(op)[:64].decode(errors="replace")
            )
            self._error(client, f'unknown op {shown!r}: expected "subscribe" or "ping"', request_id)
        return None

    def _error(self, client: Client, text: str, request_id: Any = None) -> None:
        self.metrics.client_errors.inc()
        client.control(_with_id({"type": "error", "error": text}, request_id))

    # Housekeeping ---------------------------------------------------------------------

    async def sweep_forever(self) -> None:
        """Settle lost-frame counts and close clients that stayed behind too long."""
        timeout = self.config.websocket_slow_client_timeout
        interval = max(0.05, min(1.0, timeout / 4))
        while True:
            await asyncio.sleep(interval)
            self.tracker.expire()
            now = time.monotonic()
            for client in list(self.backlogged):
                if client.behind_since is not None and now - client.behind_since > timeout:
                    self._bad.warning(
                        "slow",
                        "⚠️ Client %s closed with 1013: behind for over %gs (%d events dropped)",
                        client.peer,
                        timeout,
                        client.dropped,
                    )
                    self.metrics.slow_clients.inc()
                    client.kill(CloseCode.TRY_AGAIN_LATER, "client too slow", "slow_client")

    def reload_tokens(self) -> None:
        """SIGHUP: re-read the tokens file; close connections whose token is gone or changed."""
        if not self.tokens.path:
            logger.info("🔑 SIGHUP: no tokens file configured, nothing to reload")
            return
        try:
            count = self.tokens.reload()
        except TokenError as exc:
            logger.error("❌ Tokens not reloaded, keeping the previous ones: %s", exc)
            return
        closed = 0
        for client in list(self.index.all):
            if client.token is None or client.closing:
                continue
            current = self.tokens.current(client.token)
            if current is None or current.scope != client.token.scope:
                why = "token revoked" if current is None else "token scope changed"
                client.kill(CloseCode.POLICY_VIOLATION, why, "revoked")
                closed += 1
        logger.info(
            "🔑 Reloaded %d tokens from %s; closed %d connections", count, self.tokens.path, closed
        )

    def abort_all(self) -> None:
        for client in list(self.index.all):
            client.conn.transport.abort()

    def status(self) -> dict[str, Any]:
        return {
            "status": "stopping" if self.stopping else "ok",
            "epoch": self.epoch,
            "seq": self.seq,
            "clients": len(self.index),
            "buffered_events": len(self.history),
            "devices": self.history.rings,
            "auth": self.tokens.enabled,
            "uptime_s": round(time.monotonic() - self.started, 1),
        }

    # State ----------------------------------------------------------------------------

    def save_state(self, path: str) -> None:
        try:
            n = state.save(
                path,
                self.epoch,
                self.seq,
                self.history,
                marks=self.history.marks(),
                dropped=self.history.dropped,
                sources=self.tracker.export(),
            )
        except OSError as exc:
            logger.error("❌ Could not save the replay buffer to %s: %s", path, exc)
            return
        logger.info("💾 Saved %d buffered events to %s", n, path)

    def load_state(self, path: str) -> None:
        try:
            loaded = state.load(path)
        except state.StateError as exc:
            logger.warning("⚠️ Ignoring the saved replay buffer: %s", exc)
            return
        if loaded is None:
            logger.info("📂 No saved replay buffer at %s yet", path)
            return
        olds: list[int] = []  # the saving process's seq of each restored entry, ascending
        for kind, msg in loaded.entries:
            old = msg.get("seq")
            if type(old) is not int or (olds and old <= olds[-1]):
                continue
            seq = self.seq + 1
            msg["seq"] = seq
            msg["epoch"] = self.epoch
            msg.pop("replay", None)
            try:
                text = serialize(msg)
            except SerializeError:
                continue
            self.seq = seq
            olds.append(old)
            self.history.add(Entry(seq, describe(kind, msg), text))
        self.previous = Previous(loaded.epoch, loaded.seq, olds, loaded.marks, loaded.dropped)
        sources = self.tracker.restore(loaded.sources)
        logger.info(
            "📂 Restored %d buffered events (%d devices) and %d source positions from %s, "
            "saved by epoch %s",
            len(self.history),
            self.history.rings,
            sources,
            path,
            loaded.epoch,
        )


_CLOSE_LABELS = {
    1000: "normal",
    1001: "going_away",
    1006: "abnormal",
    1008: "policy",
    1009: "too_big",
    1011: "error",
    1013: "slow_client",
}


def _close_code(conn: ServerConnection) -> int:
    """The code of whoever closed first (ours when we failed the connection, e.g. 1009)."""
    p = conn.protocol
    if p.close_sent is not None and (p.close_rcvd is None or not p.close_rcvd_then_sent):
        return p.close_sent.code
    if p.close_rcvd is not None:
        return p.close_rcvd.code
    return 1006


def _with_id(obj: dict[str, Any], request_id: Any) -> dict[str, Any]:
    if request_id is not None:
        obj["id"] = request_id
    return obj
