"""Per-source sequence accounting: gaps (lost frames), duplicates and reordering.

Every event carries its ingest's ``src`` and ``seq`` (+1 per MQTT message). Several decode
replicas interleave one source's frames, so a frame can arrive after a later one: that is a
*reorder*, not a loss. A missing seq waits in a window (``window`` seqs or ``timeout``
seconds, whichever ends first) and only then counts as lost. A frame that shows up after
that is *late* (still delivered). A seq at or below the highest seen that was never missing
is a *duplicate* (dropped) unless its ingest timestamp is newer than the highest one seen,
which means the ingest restarted with the same id and counts from 1 again.

The first frame seen of a source need not be its lowest: with several decode replicas the
frame before it may come a moment later. Seqs below the first (at most ``window`` below,
and received by ingest no later than the first) are delivered as *reordered*; only a
repeat of one of them is a duplicate.

The fan-out must SUB to everything for this to mean anything (zguide "Suicidal Snail").
"""

from __future__ import annotations

import time
from bisect import bisect_right
from collections import OrderedDict, deque
from collections.abc import Callable
from enum import Enum
from typing import Any


class Seen(Enum):
    FIRST = "first"  # first frame of a source
    NEXT = "next"  # in order (possibly after a gap)
    REORDERED = "reordered"  # filled a pending gap
    LATE = "late"  # arrived after its gap was declared lost
    DUPLICATE = "duplicate"  # seen before: drop
    RESTART = "restart"  # the source started counting again


class _Gap:
    """Seqs ``first``..``last`` missing since ``since`` (monotonic seconds)."""

    __slots__ = ("first", "last", "since")

    def __init__(self, first: int, last: int, since: float) -> None:
        self.first, self.last, self.since = first, last, since


def _first(gap: _Gap) -> int:
    return gap.first


class _Source:
    __slots__ = ("hi", "hi_ts", "lo", "lo_ts", "early", "pending", "lost")

    def __init__(self, seq: int, ts: int) -> None:
        self.hi = seq
        self.hi_ts = ts
        self.lo, self.lo_ts = seq, ts  # the first frame seen
        self.early: set[int] = set()  # seqs below ``lo`` delivered since
        # Ascending and disjoint, hence also oldest first.
        self.pending: list[_Gap] = []
        self.lost: deque[tuple[int, int]] = deque(maxlen=256)  # recently declared lost


class SeqTracker:
    def __init__(
        self,
        window: int,
        timeout: float,
        on_lost: Callable[[int], None],
        clock: Callable[[], float] = time.monotonic,
        max_sources: int = 10_000,
    ) -> None:
        self.window = window
        self.timeout = timeout
        self._on_lost = on_lost
        self._clock = clock
        self._max_sources = max_sources
        self._sources: OrderedDict[str, _Source] = OrderedDict()
        self.pending = 0  # seqs missing but still inside the reorder window

    def observe(self, src: str, seq: int, ts: int) -> Seen:
        s = self._sources.get(src)
        if s is None:
            if len(self._sources) >= self._max_sources:
                _, old = self._sources.popitem(last=False)
                self._declare(old, len(old.pending))
            self._sources[src] = _Source(seq, ts)
            return Seen.FIRST
        if seq == s.hi + 1:
            s.hi, s.hi_ts = seq, ts
            if s.pending:
                self._expire(s, self._clock())
            return Seen.NEXT
        if seq > s.hi:
            first, last = s.hi + 1, seq - 1
            if last - first + 1 > self.window:  # too many to wait for: the excess is lost now
                excess = last - first + 1 - self.window
                s.lost.append((first, first + excess - 1))
                self._on_lost(excess)
                first += excess
            s.pending.append(_Gap(first, last, self._clock()))
            self.pending += last - first + 1
            s.hi, s.hi_ts = seq, ts
            self._expire(s, self._clock())
            return Seen.NEXT
        # seq <= hi: fills a gap, or came too late, or is a repeat, or a restart
        if seq < s.lo and ts <= s.lo_ts and s.lo - seq <= self.window:
            if seq in s.early:
                return Seen.DUPLICATE
            s.early.add(seq)
            return Seen.REORDERED
        i = bisect_right(s.pending, seq, key=_first) - 1
        if i >= 0 and s.pending[i].first <= seq <= s.pending[i].last:
            self._fill(s, i, seq)
            return Seen.REORDERED
        if any(a <= seq <= b for a, b in s.lost):
            return Seen.LATE
        if ts > s.hi_ts:
            self._declare(s, len(s.pending))
            s.hi, s.hi_ts = seq, ts
            s.lo, s.lo_ts = seq, ts
            s.early.clear()
            return Seen.RESTART
        return Seen.DUPLICATE

    def export(self) -> dict[str, dict[str, Any]]:
        """Where every source stands (saved on stop, so a restart can see the gap it makes)."""
        return {
            src: {"hi": s.hi, "ts": s.hi_ts, "pending": [[g.first, g.last] for g in s.pending]}
            for src, s in self._sources.items()
        }

    def restore(self, saved: Any) -> int:
        """Take up :meth:`export`'s data (anything malformed is skipped); sources restored."""
        if not isinstance(saved, dict):
            return 0
        now = self._clock()
        for src, d in list(saved.items())[-self._max_sources :]:
            if not (isinstance(src, str) and isinstance(d, dict)):
                continue
            hi, ts, pending = d.get("hi"), d.get("ts"), d.get("pending")
            if type(hi) is not int or type(ts) is not int or not isinstance(pending, list):
                continue
            s = _Source(hi, ts)
            for gap in pending:
                if (
                    isinstance(gap, list)
                    and len(gap) == 2
                    and all(type(x) is int for x in gap)
                    and gap[0] <= gap[1] < hi
                    and (not s.pending or gap[0] > s.pending[-1].last)
                ):
                    s.pending.append(_Gap(gap[0], gap[1], now))
                    self.pending += gap[1] - gap[0] + 1
            self._sources[src] = s
        return len(self._sources)

    def expire(self) -> None:
        """Declare lost what waited too long (called periodically, so counters settle)."""
        now = self._clock()
        for s in self._sources.values():
            if s.pending:
                self._expire(s, now)

    def _fill(self, s: _Source, i: int, seq: int) -> None:
        gap = s.pending[i]
        self.pending -= 1
        if gap.first == gap.last:
            del s.pending[i]
        elif seq == gap.first:
            gap.first += 1
        elif seq == gap.last:
            gap.last -= 1
        else:
            s.pending.insert(i + 1, _Gap(seq + 1, gap.last, gap.since))
            gap.last = seq - 1

    def _expire(self, s: _Source, now: float) -> None:
        floor = s.hi - self.window
        deadline = now - self.timeout
        n = 0
        for gap in s.pending:
            if gap.last > floor and gap.since > deadline:
                break
            n += 1
        if n:
            self._declare(s, n)

    def _declare(self, s: _Source, n: int) -> None:
        """The first ``n`` pending ranges of ``s`` are lost."""
        lost = 0
        for gap in s.pending[:n]:
            lost += gap.last - gap.first + 1
            s.lost.append((gap.first, gap.last))
        del s.pending[:n]
        if lost:
            self.pending -= lost
            self._on_lost(lost)
