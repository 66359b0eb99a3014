"""Closing the events SUB at stop without losing what the decoders already sent.

A PUB has no acknowledgements: an event a decoder sent a moment before the SUB closes is
in the kernel or in ZeroMQ's I/O thread, and closing the socket throws it away (the next
fan-out then counts it in ``frames_lost``). So at stop the fan-out subscribes to
:data:`shared.frames.LEAVING`; each decoder answers with a marker behind everything it
sent and holds what follows for the next fan-out. Once every connected decoder has
answered (or ``HANDOFF_SECONDS`` passed), nothing is in flight and the SUB can close.

How many decoders are connected comes from the SUB's monitor
(:class:`shared.zmq_util.Connections`), read on the event loop as it reports.
"""

from __future__ import annotations

HANDOFF_SECONDS = 2.0  # longest wait for the markers (decode holds events for 10 s)
