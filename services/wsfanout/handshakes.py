"""Handshakes that fail before :class:`~services.wsfanout.gate.Gate` sees a request.

websockets answers a request line over 8 KiB with 414, header fields over 8 KiB or more
than 128 of them with 431, and drops a connection that sends no valid HTTP or does not
finish the handshake within ``WEBSOCKET_OPEN_TIMEOUT``, all without a log line at our
level and without calling ``process_request``. Those are hostile or broken clients, so
they are counted in ``gateway_wsfanout_handshakes_rejected_total`` and logged (rate
limited) like the gate's own refusals. A connection closed before it sent a whole request
(a TCP health check, a port scan) is not bad input and is neither. At shutdown the
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
    counter and the log, or None when there is nothing to report (no failure, or the
    peer closed the connection before sending a whole request line)."""
    if exc is None:
        return None
    if isinstance(exc, RequestLineTooLong):
        return "414", "request line too long"
    if isinstance(exc, HeaderLineTooLong | TooManyHeaders):
        return "431", "header fields too large or too many"
    if isinstance(exc, InvalidMessage):
        if isinstance(exc.__cause__, EOFError):
            return None  # closed before a whole request: a probe or a give-up, not bad input
        return "invalid", f"not a valid HTTP request ({exc.__cause__ or exc})"
    return None


class Handshakes:
    """Connections in their opening handshake: counted when websockets refuses them or
    they run out of time, and dropped at shutdown (they are not clients yet, so nothing
    is lost, and a port scanner must not hold the stop for the open timeout)."""

    def __init__(self, on_refused: OnRefused) -> None:
        self.opening: set[ServerConnection] = set()
        self.connection_class = self._connection_class(on_refused)

    def _connection_class(self, on_refused: OnRefused) -> type[ServerConnection]:
        opening = self.opening

        class CountedConnection(ServerConnection):
            async def handshake(self, *args: Any, **kwargs: Any) -> None:
                opening.add(self)
                try:
                    await super().handshake(*args, **kwargs)
                except asyncio.CancelledError:  # WEBSOCKET_OPEN_TIMEOUT
                    if self.request is None:
                        on_refused("timeout", "no complete request within the open timeout", self)
                    raise
                finally:
                    opening.discard(self)
                if self.request is None and (found := refusal(self.protocol.handshake_exc)):
                    on_refused(*found, self)

        return CountedConnection

    def abort_opening(self) -> int:
        """Drop every connection still in its handshake; how many there were."""
        dropped = list(self.opening)
        for conn in dropped:
            conn.transport.abort()
        return len(dropped)
