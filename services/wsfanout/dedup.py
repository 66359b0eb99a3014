"""A bounded memory of recently seen ids (the network server's deduplicationId).

ChirpStack gives every uplink a ``deduplicationId``; the same id twice means the same uplink
reached us twice (an MQTT redelivery after an ingest crash, two ingests on one broker).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable


class RecentIds:
    def __init__(self, size: int) -> None:
        self._size = size
        self._seen: OrderedDict[Hashable, None] = OrderedDict()

    def seen(self, key: Hashable) -> bool:
        """True if ``key`` was seen among the last ``size`` ids; remembers it either way."""
        if self._size <= 0:
            return False
        if key in self._seen:
            self._seen.move_to_end(key)
            return True
        self._seen[key] = None
        if len(self._seen) > self._size:
            self._seen.popitem(last=False)
        return False

    def __len__(self) -> int:
        return len(self._seen)
