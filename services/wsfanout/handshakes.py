"""Handshakes that fail before :class:`~services.wsfanout.gate.Gate` sees a request.

websockets answers a request line over 8 KiB with 414, header fields over 8 KiB or more
than 128 of them with 431, and drops a connection that sends no valid HTTP or does not
finish the handshake within ``WEBSOCKET_OPEN_TIMEOUT``, all without a log line at our
level and without calling ``process_request``. Those are hostile or broken clients, so
they are counted in ``gateway_wsfanout_handshakes_rejected_total`` and logged (rate
limited) like the gate's own refusals. A connection closed before it sent a whole request
(a TCP health check, a port scan) is not bad input and is neither.
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


def counted_connection(on_refused: OnRefused) -> type[ServerConnection]:
    """A ServerConnection (``serve(create_connection=...)``) that reports handshakes
    websockets refused on its own, and those that ran out of time."""

    class CountedConnection(ServerConnection):
        async def handshake(self, *args: Any, **kwargs: Any) -> None:
            try:
                await super().handshake(*args, **kwargs)
            except asyncio.CancelledError:  # WEBSOCKET_OPEN_TIMEOUT (or shutdown)
                if self.request is None:
                    on_refused("timeout", "no complete request within the open timeout", self)
                raise
            if self.request is None and (found := refusal(self.protocol.handshake_exc)):
                on_refused(*found, self)

    return CountedConnection
