"""One fault case, start to finish: a client connects, a numbered stream flows, the fault is
injected once the client has seen a share of it, the stream finishes, and the report says
what the client got. The cases in ``test_*.py`` differ only in the fault and the asserts."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tests.faults.client import StreamClient
from tests.faults.gateway import FaultStack
from tests.faults.harness import (
    Stream,
    StreamPublisher,
    StreamReport,
    analyse,
    distinct_received,
    new_stream,
    numbers,
    settle,
    wait_received,
)


@dataclass
class Outcome:
    stream: Stream
    report: StreamReport
    publisher: StreamPublisher
    collector: Any
    sent_at_fault: int = 0
    fault_seconds: float = 0.0  # how long the fault function took (restart, drain...)
    gap_seconds: float = 0.0  # longest silence seen by the client around the fault
    notes: dict[str, Any] = field(default_factory=dict)


def longest_silence(collector: Any, stream: Stream, since: float) -> float:
    """Longest time between two consecutive events of ``stream`` received after ``since``."""
    stamps = [
        t for t, ev in getattr(collector, "stamps", []) if t >= since and numbers(stream, [ev])
    ]
    return max((b - a for a, b in zip(stamps, stamps[1:], strict=False)), default=0.0)


def run_stream(
    gw: FaultStack,
    resources: list[Any],
    *,
    count: int,
    rate: float | None,
    fault: Callable[[], Any] | None = None,
    fault_at: float = 0.3,
    devices: int = 8,
    lanes: int = 1,
    expect_all: bool = True,
    collector: Any = None,
    timeout: float = 60.0,
    arrive_timeout: float = 10.0,
    replay: bool = False,
) -> Outcome:
    """Publish ``count`` uplinks; call ``fault()`` once the client has ``fault_at`` of them.

    ``expect_all``: wait until the client has every number (the "nothing lost" cases fail
    with the missing numbers if not); otherwise wait until the stream settles.
    ``replay``: replayed events count as deliveries (clients that reconnect and resume).
    """
    stream = new_stream(count, devices)
    client = collector
    if client is None:
        client = StreamClient(gw.ws_url)
        resources.append(client)
    pub = StreamPublisher(gw.broker.host, gw.broker.port, stream, rate=rate, lanes=lanes)
    resources.append(pub)
    pub.start()
    outcome = Outcome(stream=stream, report=analyse(stream, []), publisher=pub, collector=client)
    if fault is not None:
        wait_received(client, stream, int(count * fault_at), timeout)
        outcome.sent_at_fault = pub.sent
        # The fault must hit a flowing stream, or the case proves nothing.
        had = distinct_received(client, stream)
        assert had < count, "the client had the whole stream before the fault: raise count"
        started = time.monotonic()
        result = fault()
        outcome.fault_seconds = time.monotonic() - started
        if result is not None:
            outcome.notes["fault"] = result
        fault_started = started
    pub.wait_done(timeout)
    acked = pub.acked()
    if expect_all:
        with contextlib.suppress(AssertionError):  # the report below names what is missing
            wait_received(client, stream, len(acked), arrive_timeout, replay=replay)
    else:
        settle(client, stream, len(acked), quiet=3.0, timeout=arrive_timeout)
    outcome.report = analyse(stream, client.snapshot(), acked, count_replay=replay)
    if fault is not None:
        outcome.gap_seconds = longest_silence(client, stream, fault_started - 1.0)
    return outcome
