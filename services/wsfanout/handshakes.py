"""Handshakes that fail before :class:`~services.wsfanout.gate.Gate` sees a request.

websockets answers a request line over 8 KiB with 414, header fields over 8 KiB or more
than 128 of them with 431, and drops a connection that sends no valid HTTP or does not
finish the handshake within ``WEBSOCKET_OPEN_TIMEOUT``, all without a log line at our
level and without calling ``process_request``. Those are hostile or broken clients, so
they are counted in ``gateway_wsfanout_handshakes_rejected_total`` and logged (rate
limited) like the gate's own refusals. A connection closed without sending a byte (a TCP
health check, a port scan) is not bad input and is neither. At shutdown the
connections still in their handshake are dropped at once: they are not clients yet.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import (
    HeaderLineTooLong,
    InvalidMessage,
    RequestLineTooLong,
    TooManyHeaders,
)

# (label, why, connection) -> None
OnRefused = Callable[[str, str, ServerConnection], None]


def refusal(exc: BaseException | None) -> tuple[str, str] | None:
    """Why websockets refused a request it could not read: ``(label, why)`` for the
    counter and the log, or None when there is nothing to report (no failure, or a peer
    that closed the connection without sending a byte)."""
    if exc is None:
        return None
    if isinstance(exc, RequestLineTooLong):
        return "414", "request line too long"
    if isinstance(exc, HeaderLineTooLong | TooManyHeaders):
        return "431", "header fields too large or too many"
    if isinstance(exc, InvalidMessage):
        if _closed_silently(exc):
            return None  # a TCP health check or a port scan: not bad input
        # websockets reads up to 8 KiB of the peer's bytes into its message: keep it short.
        shown = repr(str(exc.__cause__ or exc)[:120])
        return "invalid", f"not a valid HTTP request ({shown})"
    return None


def _closed_silently(exc: BaseException) -> bool:
    """Closed before the first byte. Any other end of stream (a line without CRLF, which
    includes TLS sent to a plain port, or a request cut short) is a bad request."""
    reading = exc.__cause__
    root = reading.__cause__ if reading is not None else None
    return (
        isinstance(reading, EOFError)
        and "request line" in str(reading)
        and isinstance(root, EOFError)
        and str(root).startswith("stream ends after 0 bytes")
    )


class Handshakes:
    """Connections in their opening handshake: counted when websockets refuses them or
    they run out of time, and dropped at shutdown (they are not clients yet, so nothing
    is lost, and a port scanner must not hold the stop for the open timeout)."""

    def __init__(self, on_refused: OnRefused) -> None:
        self.opening: set[ServerConnection] = set()
        self.closing = False
        self.on_refused = on_refused
        self.connection_class = self._connection_class()

    def _connection_class(self) -> type[ServerConnection]:
        handshakes = self

        class CountedConnection(ServerConnection):
            async def handshake(self, *args: Any, **kwargs: Any) -> None:
                if handshakes.closing:  # accepted while the server was closing
                    self.transport.abort()
                handshakes.opening.add(self)
                timed_out = False
                try:
                    await super().handshake(*args, **kwargs)
                except asyncio.CancelledError:  # the open timeout, or the loop ending
                    timed_out = True
                    raise
                finally:
                    handshakes.opening.discard(self)
                    handshakes._report(self, timed_out)

        return CountedConnection

    def _report(self, conn: ServerConnection, timed_out: bool) -> None:
        if conn.request is not None or self.closing:  # the gate's, or dropped by us
            return
        # A client refused with 414/431 that keeps its socket open also runs out of time:
        # it counts by its status.
        found = refusal(conn.protocol.handshake_exc)
        if found is None and timed_out:
            found = ("timeout", "no complete request within the open timeout")
        if found is not None:
            self.on_refused(*found, conn)

    def abort_opening(self) -> None:
        """At shutdown: drop every connection still in its handshake, and any accepted
        from now on."""
        self.closing = True
        for conn in list(self.opening):  # a copy: each leaves the set as its handshake ends
            conn.transport.abort()
