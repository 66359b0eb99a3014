"""The gateway's own view of a case: its counters, read the way an operator would, and the
asserts that tie them to what the harness measured."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from tests.faults.gateway import FaultStack
from tests.faults.harness import StreamReport, metric
from tests.support.timing import wait_for

F = "gateway_wsfanout_"


@dataclass
class FanoutCounters:
    received: float
    accepted: float
    frames_lost: float
    pending: float
    reordered: float
    late: float
    dup_seq: float
    dup_dedup: float
    source_restarts: float
    dropped_slow: float
    bad_frames: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def fanout_counters(gw: FaultStack) -> FanoutCounters:
    s = gw.metrics("wsfanout")
    return FanoutCounters(
        received=metric(s, F + "events_received_total"),
        accepted=metric(s, F + "events_accepted_total"),
        frames_lost=metric(s, F + "frames_lost_total"),
        pending=metric(s, F + "frames_pending"),
        reordered=metric(s, F + "reordered_total"),
        late=metric(s, F + "late_total"),
        dup_seq=metric(s, F + "duplicates_total", kind="seq"),
        dup_dedup=metric(s, F + "duplicates_total", kind="dedup"),
        source_restarts=metric(s, F + "source_restarts_total"),
        dropped_slow=metric(s, F + "dropped_total", reason="slow_client"),
        bad_frames=metric(s, F + "dropped_total", reason="bad_frame"),
    )


def settled_counters(gw: FaultStack, timeout: float = 30.0) -> FanoutCounters:
    """The fan-out's counters once no seq is awaited any more (gaps declared lost or filled:
    the reorder window is ZMQ_EVENTS_REORDER_TIMEOUT, 3 s in these cases), minus the
    warm-up uplink's (:meth:`FaultStack.warm_up`): what the case itself caused."""

    def settled() -> FanoutCounters | None:
        c = fanout_counters(gw)
        return c if c.pending == 0 else None

    found = wait_for(
        settled, timeout, "the fan-out to settle its reorder window (frames_pending == 0)"
    )
    assert found is not None
    if gw.baseline is None:
        return found
    base = gw.baseline.as_dict()
    return FanoutCounters(
        **{k: v if k == "pending" else v - base[k] for k, v in found.as_dict().items()}
    )


def ingest_value(gw: FaultStack, name: str, **labels: str) -> float:
    return metric(gw.metrics("ingest"), name, **labels)


def assert_accounted(c: FanoutCounters, delivered_unique: int) -> None:
    """Every event frame the fan-out received is either one of the distinct events the
    client got or a counted drop: nothing vanishes between the SUB socket and the client."""
    assert c.received == c.accepted + c.dup_dedup + c.dup_seq + c.bad_frames, c
    assert c.accepted == delivered_unique, (c, delivered_unique)


def assert_late_not_lost(report: StreamReport, c: FanoutCounters, awaited: float) -> None:
    """Frames held back (a frozen decoder, a silent line) arrived late: the client has
    every event once, and the fan-out counted each awaited seq as reordered, none lost."""
    assert report.lost == [], report.summary()
    assert report.duplicates == 0, report.summary()
    assert c.frames_lost == 0 and c.late == 0, c
    assert report.reordered > 0  # the held frames did arrive after later ones
    assert c.reordered >= awaited  # each awaited seq filled its gap
    assert_accounted(c, report.distinct)
