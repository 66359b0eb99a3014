"""The replay buffer: the latest N events per device (per gateway, and N errors), in fan-out order.

Entries are immutable and shared by every client (the serialized text is held once). Besides
the rings, one dict keyed by ``seq`` keeps every buffered entry in fan-out order, so a full
replay is a plain copy (no sort) and "everything after seq S" walks back from the end.

Resume needs to know whether anything after S that a client could have wanted was thrown
away: each ring remembers the highest seq it evicted, and a ring dropped whole (too many
devices) raises a global mark.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterator
from dataclasses import dataclass

from services.wsfanout.filters import Filter, Meta, Scope


@dataclass(frozen=True, slots=True)
class Entry:
    seq: int
    meta: Meta
    text: bytes  # the client message, serialized once


class _Ring:
    __slots__ = ("entries", "evicted", "meta")

    def __init__(self, meta: Meta) -> None:
        self.entries: deque[Entry] = deque()
        self.evicted = 0  # highest seq this ring has thrown away
        self.meta = meta  # latest device metadata (for resume checks)


class History:
    def __init__(self, per_ring: int, max_rings: int) -> None:
        self.per_ring = per_ring
        self.max_rings = max_rings
        self._rings: OrderedDict[str, _Ring] = OrderedDict()  # least recently updated first
        self._order: dict[int, Entry] = {}
        self._dropped = 0  # highest seq lost with a ring dropped whole

    def add(self, entry: Entry) -> None:
        if self.per_ring <= 0:
            self._dropped = entry.seq
            return
        ring = self._rings.get(entry.meta.ring)
        if ring is None:
            if len(self._rings) >= self.max_rings:
                self._drop_oldest_ring()
            ring = self._rings[entry.meta.ring] = _Ring(entry.meta)
        else:
            self._rings.move_to_end(entry.meta.ring)
            ring.meta = entry.meta
        if len(ring.entries) >= self.per_ring:
            old = ring.entries.popleft()
            del self._order[old.seq]
            ring.evicted = old.seq
        ring.entries.append(entry)
        self._order[entry.seq] = entry

    def _drop_oldest_ring(self) -> None:
        _, ring = self._rings.popitem(last=False)
        for old in ring.entries:
            del self._order[old.seq]
            self._dropped = max(self._dropped, old.seq)

    def snapshot(self) -> list[Entry]:
        """Every buffered entry, oldest first (a copy: safe to iterate across awaits)."""
        return list(self._order.values())

    def since(self, seq: int) -> list[Entry]:
        """Buffered entries with a seq above ``seq``, oldest first."""
        newer: list[Entry] = []
        for entry in reversed(self._order.values()):
            if entry.seq <= seq:
                break
            newer.append(entry)
        newer.reverse()
        return newer

    def complete_since(self, seq: int, flt: Filter, scope: Scope) -> bool:
        """True if no event after ``seq`` that ``flt``/``scope`` could match was evicted."""
        if self._dropped > seq:
            return False
        for ring in self._rings.values():
            if ring.evicted > seq and flt.matches_device(ring.meta) and scope.allows(ring.meta):
                return False
        return True

    def marks(self) -> dict[str, int]:
        """Per ring, the highest seq it threw away (for the state file)."""
        return {key: ring.evicted for key, ring in self._rings.items() if ring.evicted}

    @property
    def dropped(self) -> int:
        return self._dropped

    def ring_meta(self, key: str) -> Meta | None:
        ring = self._rings.get(key)
        return ring.meta if ring is not None else None

    def __iter__(self) -> Iterator[Entry]:
        return iter(self._order.values())

    def __len__(self) -> int:
        return len(self._order)

    @property
    def rings(self) -> int:
        return len(self._rings)
