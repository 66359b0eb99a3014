"""One WebSocket client: what it wants, what it may see, and how events reach it.

Two paths, chosen per event:

- **fast**: nothing is pending for this client and its socket buffer is below the write
  limit, so the event is written right away, inside the dispatch, together with every other
  such client: the JSON is serialized once and the WebSocket frame built once per event,
  then written to each transport (no task switch; about half the CPU of
  ``websockets.broadcast``, which frames the message again for every connection);
- **queued**: otherwise the event goes to a bounded queue (messages *and* bytes) drained by
  a relay task with backpressure (``await send``). When the queue is full the *oldest*
  events are dropped and counted; a client that stays behind longer than the slow-client
  timeout is closed with 1013 by the fan-out's sweeper.

Replies and replays go first (``pre``: control messages, replay batches, a close request),
then queued live events, so a ``subscribed`` reply always precedes the replay it announces
and the replay precedes live events. The relay task exists only while something is pending:
idle clients cost no task besides the connection's own.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from websockets.asyncio.server import ServerConnection, broadcast
from websockets.exceptions import ConnectionClosed
from websockets.frames import Opcode
from websockets.protocol import State

from services.wsfanout import messages
from services.wsfanout.filters import EVERYTHING_FILTER, Filter, Meta, Scope
from services.wsfanout.history import Entry
from services.wsfanout.metrics import Metrics
from services.wsfanout.tokens import TokenRecord

# High-water mark of each connection's write buffer (passed to serve(write_limit=...)):
# above it an event takes the queued path and the relay waits for the socket to drain.
WRITE_LIMIT = 32 * 1024
REPLAY_YIELD_EVERY = 200  # buffered entries looked at between yields to the loop


@dataclass(frozen=True, slots=True)
class Limits:
    queue_messages: int
    queue_bytes: int
    rate_per_second: float
    burst: int
    close_timeout: float
    send_buffer: int


class ReplayBatch:
    """Buffered entries to send as ``"replay": true``, filtered when sent."""

    __slots__ = ("entries", "pos", "cancelled")

    def __init__(self, entries: Sequence[Entry]) -> None:
        self.entries = entries
        self.pos = 0
        self.cancelled = False


@dataclass(frozen=True, slots=True)
class CloseRequest:
    code: int
    reason: str


_closing: set[asyncio.Task[None]] = set()


_HEAD_16 = struct.Struct("!BBH").pack
_HEAD_64 = struct.Struct("!BBQ").pack
_FIN_TEXT = 0x80 | Opcode.TEXT.value


def text_frame(data: bytes) -> bytes:
    """One unmasked text frame, exactly as websockets writes it when no extension is active
    (what ``broadcast`` would build once per connection, built once per event): FIN + TEXT,
    then the length in 7, 7+16 or 7+64 bits (RFC 6455 5.2). A fifth of the cost of
    ``Frame(...).serialize``."""
    n = len(data)
    if n < 126:
        return bytes((_FIN_TEXT, n)) + data
    if n < 65536:
        return _HEAD_16(_FIN_TEXT, 126, n) + data
    return _HEAD_64(_FIN_TEXT, 127, n) + data


async def close_bounded(conn: ServerConnection, code: int, reason: str, timeout: float) -> None:
    """``conn.close`` waits for the write buffer to drain, forever if the peer stopped reading:
    bound it, then drop the TCP connection."""
    try:
        async with asyncio.timeout(timeout):
            await conn.close(code, reason)
    except TimeoutError:
        conn.transport.abort()


class Client:
    __slots__ = (
        "conn",
        "peer",
        "scope",
        "token",
        "filter",
        "limits",
        "metrics",
        "pre",
        "live",
        "live_bytes",
        "relay",
        "behind_since",
        "closing",
        "close_reason",
        "sent",
        "dropped",
        "index_slot",
        "raw",
        "batched",
        "held",
        "room",
        "_allowance",
        "_last",
        "_backlogged",
    )

    def __init__(
        self,
        conn: ServerConnection,
        peer: str,
        scope: Scope,
        token: TokenRecord | None,
        limits: Limits,
        metrics: Metrics,
        backlogged: set[Client],
    ) -> None:
        self.conn = conn
        self.peer = peer
        self.scope = scope
        self.token = token
        self.filter: Filter = EVERYTHING_FILTER
        self.limits = limits
        self.metrics = metrics
        # Created when first needed and dropped when drained: an idle client holds no queue
        # (an empty deque is 760 bytes; thousands of idle dashboards add up).
        self.pre: deque[bytes | ReplayBatch | CloseRequest] | None = None
        self.live: deque[Entry] | None = None
        self.live_bytes = 0
        self.relay: asyncio.Task[None] | None = None
        self.behind_since: float | None = None
        self.closing = False
        self.close_reason = ""  # metrics label when we closed it on purpose
        self.sent = 0
        self.dropped = 0
        self.index_slot: Any = None  # owned by ClientIndex
        # Without extensions (compression=None) a server frame is the same bytes for every
        # client, so the fast path may write one pre-built frame to each transport.
        self.raw = not conn.protocol.extensions
        self.batched = 0  # bytes of the fast-path frames in ``held``
        self.held: list[bytes] | None = None  # fast-path frames the fan-out writes soon
        self.room = 0  # what the socket buffer took below WRITE_LIMIT when ``held`` began
        self._allowance = float(limits.burst)
        self._last = time.monotonic()
        self._backlogged = backlogged
        _tune_socket(conn, limits.send_buffer)

    def __repr__(self) -> str:
        return f"<Client {self.peer}>"

    # What it may receive -------------------------------------------------------------

    def wants(self, meta: Meta) -> bool:
        return self.filter.matches(meta) and self.scope.allows(meta)

    def allow_message(self) -> bool:
        """Token bucket for inbound messages."""
        now = time.monotonic()
        self._allowance = min(
            float(self.limits.burst),
            self._allowance + (now - self._last) * self.limits.rate_per_second,
        )
        self._last = now
        if self._allowance < 1.0:
            return False
        self._allowance -= 1.0
        return True

    # Outgoing --------------------------------------------------------------------------

    def writable(self) -> bool:
        """True when a reply can be written now without overtaking anything."""
        return (
            self.relay is None
            and self.batched == 0
            and self.conn.transport.get_write_buffer_size() < WRITE_LIMIT
        )

    def write_held(self) -> None:
        """Write what the fast path held for this client (one syscall for all of it)."""
        frames, self.held = self.held, None
        self.batched = 0
        if not frames:
            return
        transport = self.conn.transport
        if self.conn.protocol.state is State.OPEN and not transport.is_closing():
            transport.write(frames[0] if len(frames) == 1 else b"".join(frames))

    def deliver(self, entry: Entry) -> bool:
        """Hand one live event to this client: True when it takes the fast path (the
        caller adds the frame, built once, to ``held`` and counts it), else it is queued."""
        if self.closing:
            return False
        transport = self.conn.transport
        if self.relay is None and self.raw:
            room = WRITE_LIMIT - transport.get_write_buffer_size()
            if self.batched < room:
                if self.conn.protocol.state is State.OPEN and not transport.is_closing():
                    self.room = room
                    return True
                return False
        live = self.live
        if live is None:
            live = self.live = deque()
        live.append(entry)
        self.live_bytes += len(entry.text)
        limits = self.limits
        while len(live) > limits.queue_messages or (
            self.live_bytes > limits.queue_bytes and len(live) > 1
        ):
            old = live.popleft()
            self.live_bytes -= len(old.text)
            self.dropped += 1
            self.metrics.dropped_slow.inc()
        if self.behind_since is None:
            self.behind_since = time.monotonic()
            self._backlogged.add(self)
        self._ensure_relay()
        return False

    def control(self, obj: dict[str, Any]) -> None:
        """A reply (``type`` key): sent now if nothing is pending, else queued ahead of live
        events."""
        if self.closing:
            return
        data = messages.control(obj)
        if self.writable():
            broadcast([self.conn], data, text=True)
            self.metrics.sent_control.inc()
        else:
            self._pending().append(data)
            self._ensure_relay()

    def replay(self, entries: Sequence[Entry]) -> None:
        if entries and not self.closing:
            self._pending().append(ReplayBatch(entries))
            self._ensure_relay()

    def reset_stream(self) -> None:
        """Forget what is pending for the previous filter (replays and live events);
        replies already queued are kept."""
        if self.pre:
            kept: deque[bytes | ReplayBatch | CloseRequest] = deque()
            for item in self.pre:
                if isinstance(item, ReplayBatch):
                    item.cancelled = True
                else:
                    kept.append(item)
            self.pre = kept or None
        self.live = None
        self.live_bytes = 0

    def close_after_pending(self, code: int, reason: str, label: str) -> None:
        """Close once what is already queued (e.g. an error reply) is written."""
        if self.closing:
            return
        self.close_reason = label
        self.live = None
        self.live_bytes = 0
        self._pending().append(CloseRequest(code, reason))
        self._ensure_relay()

    def kill(self, code: int, reason: str, label: str) -> None:
        """Close now, dropping whatever is pending (slow client, revoked token)."""
        if self.closing:
            return
        self.closing = True
        self.close_reason = label
        self._forget_pending()
        if self.relay is not None:
            self.relay.cancel()
        task = asyncio.get_running_loop().create_task(
            close_bounded(self.conn, code, reason, self.limits.close_timeout)
        )
        _closing.add(task)  # keep a reference until it is done
        task.add_done_callback(_closing.discard)

    def stop(self) -> None:
        """The connection is gone: release everything."""
        self.closing = True
        self._forget_pending()
        if self.relay is not None:
            self.relay.cancel()

    def _forget_pending(self) -> None:
        for item in self.pre or ():
            if isinstance(item, ReplayBatch):
                item.cancelled = True
        self.pre = None
        self.live = None
        self.live_bytes = 0
        self.held = None
        self.batched = 0
        self.behind_since = None
        self._backlogged.discard(self)

    def _pending(self) -> deque[bytes | ReplayBatch | CloseRequest]:
        if self.pre is None:
            self.pre = deque()
        return self.pre

    def _ensure_relay(self) -> None:
        if self.relay is None:
            self.relay = asyncio.get_running_loop().create_task(self._relay())

    async def _relay(self) -> None:
        conn = self.conn
        try:
            while not self.closing:
                if self.held:  # written before anything queued after them
                    self.write_held()
                pre, live = self.pre, self.live
                if pre:
                    item = pre[0]
                    if isinstance(item, bytes):
                        pre.popleft()
                        await conn.send(item, text=True)
                        self.metrics.sent_control.inc()
                    elif isinstance(item, ReplayBatch):
                        await self._send_replay(item)
                        if self.pre and self.pre[0] is item:
                            self.pre.popleft()
                    else:
                        pre.popleft()
                        self.closing = True
                        await close_bounded(conn, item.code, item.reason, self.limits.close_timeout)
                        return
                elif live:
                    if len(live) > 1 and self.raw:
                        self._write_ahead(live)
                    entry = live.popleft()
                    self.live_bytes -= len(entry.text)
                    # Waits while the socket buffer is above the write limit (backpressure).
                    await conn.send(entry.text, text=True)
                    self.sent += 1
                    self.metrics.sent_live.inc()
                else:
                    self.pre = self.live = None  # drained: back to the fast path, no queues
                    return
        except ConnectionClosed:
            pass
        finally:
            self.relay = None
            if not self.live and self.behind_since is not None:
                self.behind_since = None
                self._backlogged.discard(self)

    def _write_ahead(self, live: deque[Entry]) -> None:
        """Write queued events in one go, pre-framed like the fast path does, leaving the
        next one for ``conn.send`` (which then waits for the buffer to drain): a client that
        fell behind catches up with one write per ~``WRITE_LIMIT`` bytes instead of one
        ``send`` per event. The socket buffer stays within ``WRITE_LIMIT`` plus one event,
        as with ``send`` alone, so the rest waits in the bounded queue (oldest dropped)."""
        transport = self.conn.transport
        if self.conn.protocol.state is not State.OPEN or transport.is_closing():
            return  # conn.send reports it (ConnectionClosed)
        room = WRITE_LIMIT - transport.get_write_buffer_size()
        frames: list[bytes] = []
        size = 0
        while len(live) > 1 and size + len(live[0].text) <= room:
            text = live.popleft().text
            size += len(text)
            frames.append(text_frame(text))
        if frames:
            transport.write(b"".join(frames))
            self.live_bytes -= size
            self.sent += len(frames)
            self.metrics.sent_live.inc(len(frames))

    async def _send_replay(self, batch: ReplayBatch) -> None:
        conn = self.conn
        entries = batch.entries
        sent = counted = 0
        try:
            while batch.pos < len(entries) and not batch.cancelled and not self.closing:
                entry = entries[batch.pos]
                batch.pos += 1
                # Filter and scope are checked when sending, not when the batch was made.
                if self.wants(entry.meta):
                    await conn.send(messages.replay_text(entry.text), text=True)
                    sent += 1
                if batch.pos % REPLAY_YIELD_EVERY == 0:  # a long replay must not hold the loop
                    self.metrics.sent_replay.inc(sent - counted)
                    counted = sent
                    await asyncio.sleep(0)
        finally:
            self.sent += sent
            self.metrics.sent_replay.inc(sent - counted)


def _tune_socket(conn: ServerConnection, send_buffer: int) -> None:
    sock = conn.transport.get_extra_info("socket")
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    try:
        # asyncio already disables Nagle on TCP transports; say so explicitly: an event must
        # not wait up to 40 ms for the next one.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if send_buffer > 0:
            # A fixed buffer stops the kernel from autotuning a stalled client's buffer to
            # megabytes (memory outside our queue bounds), and makes "behind" visible sooner.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)
    except OSError:
        pass
