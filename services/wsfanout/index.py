"""Clients indexed by what they subscribed to, so the work per event does not grow with the
number of clients that cannot want it.

Each client sits in exactly one place (so no event is offered twice):

- ``everyone``: no filter and an unlimited scope: gets every event, no check at all;
- ``by_tenant[t]``: its applied filter names tenants (every tenant-scoped token lands here);
- ``by_eui[e]``: no tenant but devEuis;
- ``scan``: any other filter (type or event only, ...): checked one by one.

A tenant-scoped client whose filter narrowed to no tenant at all is in none of them: it
receives nothing, which is what it is allowed.
"""

from __future__ import annotations

from collections.abc import Iterator

from services.wsfanout.client import Client
from services.wsfanout.filters import Meta


class ClientIndex:
    def __init__(self) -> None:
        self.all: set[Client] = set()
        self.everyone: set[Client] = set()
        self.by_tenant: dict[str, set[Client]] = {}
        self.by_eui: dict[str, set[Client]] = {}
        self.scan: set[Client] = set()

    def put(self, c: Client) -> None:
        """Add ``c``, or move it after its filter changed."""
        self._unplace(c)
        f = c.filter
        if f.tenant is not None:
            c.index_slot = ("tenant", f.tenant)
            for t in f.tenant:
                self.by_tenant.setdefault(t, set()).add(c)
        elif f.dev_eui is not None:
            c.index_slot = ("eui", f.dev_eui)
            for e in f.dev_eui:
                self.by_eui.setdefault(e, set()).add(c)
        elif f.empty and not c.scope.limited:
            c.index_slot = ("everyone", None)
            self.everyone.add(c)
        else:
            c.index_slot = ("scan", None)
            self.scan.add(c)
        self.all.add(c)

    def remove(self, c: Client) -> None:
        self._unplace(c)
        self.all.discard(c)

    def _unplace(self, c: Client) -> None:
        slot = c.index_slot
        if slot is None:
            return
        kind, keys = slot
        if kind == "everyone":
            self.everyone.discard(c)
        elif kind == "scan":
            self.scan.discard(c)
        else:
            table = self.by_tenant if kind == "tenant" else self.by_eui
            for key in keys:
                group = table.get(key)
                if group is not None:
                    group.discard(c)
                    if not group:
                        del table[key]
        c.index_slot = None

    def matching(self, meta: Meta) -> Iterator[Client]:
        """Every client that wants this event (filter and scope both checked)."""
        yield from self.everyone
        if meta.tenant is not None:
            for c in self.by_tenant.get(meta.tenant, ()):
                if c.wants(meta):
                    yield c
        if meta.dev_eui is not None:
            for c in self.by_eui.get(meta.dev_eui, ()):
                if c.wants(meta):
                    yield c
        for c in self.scan:
            if c.wants(meta):
                yield c

    def __len__(self) -> int:
        return len(self.all)
