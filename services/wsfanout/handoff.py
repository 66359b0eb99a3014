"""Closing the events SUB at stop without losing what the decoders already sent.

A PUB has no acknowledgements: an event a decoder sent a moment before the SUB closes is
in the kernel or in ZeroMQ's I/O thread, and closing the socket throws it away (the next
fan-out then counts it in ``frames_lost``). So at stop the fan-out subscribes to
:data:`shared.frames.LEAVING`; each decoder answers with a marker behind everything it
sent and holds what follows for the next fan-out. Once every connected decoder has
answered (or ``HANDOFF_SECONDS`` passed), nothing is in flight and the SUB can close.

How many decoders are connected comes from the SUB's monitor (accepted minus
disconnected connections), read on the event loop as it reports.
"""

from __future__ import annotations

import asyncio
import logging

import zmq
from zmq.utils.monitor import parse_monitor_message

logger = logging.getLogger(__name__)

HANDOFF_SECONDS = 2.0  # longest wait for the markers (decode holds events for 10 s)

PEER_EVENTS = zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED


class Peers:
    """The number of connections to a bound socket, from its monitor."""

    def __init__(self, sock: zmq.Socket[bytes]) -> None:
        self.sock = sock
        self.monitor: zmq.Socket[bytes] = sock.get_monitor_socket(PEER_EVENTS)
        self.connected = 0

    def watch(self, loop: asyncio.AbstractEventLoop) -> None:
        """Keep the count current from the loop (the monitor's queue must not fill up)."""
        loop.add_reader(self.monitor.fileno(), self.update)

    def update(self) -> int:
        """Take every event the monitor has queued; the count after them."""
        while True:
            try:
                parts = self.monitor.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:  # also re-arms the edge-triggered FD
                return self.connected
            event = parse_monitor_message(parts)["event"]
            if event == zmq.EVENT_ACCEPTED:
                self.connected += 1
            elif event == zmq.EVENT_DISCONNECTED:
                self.connected = max(0, self.connected - 1)

    def close(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        if self.monitor.closed:
            return
        if loop is not None:
            loop.remove_reader(self.monitor.fileno())
        if not self.sock.closed:
            self.sock.disable_monitor()
        self.monitor.close(linger=0)
