"""What a client asked to see (:class:`Filter`) and what its token lets it see (:class:`Scope`).

Both are pure values checked against an event's :class:`Meta`. The filter a client sends is
*narrowed* to its scope before it is applied (never widened), and the scope is checked again
on every outgoing event, so a filter bug cannot leak another tenant's data.

Filter fields (each optional; a string or a list of strings; all given fields must match):
``tenant``, ``application``, ``device`` (device name), ``devEui``, ``type`` (the measurement
type, ``object.type``), ``event`` (up, join, status, ... for devices; stats, conn ... for
gateways; error). ``devEui`` compares case-insensitively.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

FIELDS = ("tenant", "application", "device", "devEui", "type", "event")
MAX_VALUES = 100  # per field: enough for any dashboard, small enough to bound the work
MAX_VALUE_LENGTH = 256

DEVICE, GATEWAY, ERROR = "device", "gateway", "error"


@dataclass(frozen=True, slots=True)
class Meta:
    """What filters and scopes look at, computed once per event."""

    kind: str  # DEVICE | GATEWAY | ERROR
    ring: str  # history key: one ring per device (devEui), per gateway, one for errors
    event: str
    tenant: str | None = None
    application: str | None = None
    device: str | None = None
    dev_eui: str | None = None  # lower case
    type: str | None = None


class FilterError(ValueError):
    """A filter that cannot be applied; the message names the field."""


@dataclass(frozen=True, slots=True)
class Filter:
    """A set of allowed values per field; ``None`` means the field is not constrained."""

    tenant: frozenset[str] | None = None
    application: frozenset[str] | None = None
    device: frozenset[str] | None = None
    dev_eui: frozenset[str] | None = None
    type: frozenset[str] | None = None
    event: frozenset[str] | None = None

    @property
    def empty(self) -> bool:
        return (
            self.tenant is None
            and self.application is None
            and self.device is None
            and self.dev_eui is None
            and self.type is None
            and self.event is None
        )

    def matches(self, m: Meta) -> bool:
        return self.matches_device(m) and (
            (self.type is None or m.type in self.type)
            and (self.event is None or m.event in self.event)
        )

    def matches_device(self, m: Meta) -> bool:
        """The fields that are the same for every event of one device (history rings)."""
        return (
            (self.tenant is None or m.tenant in self.tenant)
            and (self.application is None or m.application in self.application)
            and (self.device is None or m.device in self.device)
            and (self.dev_eui is None or m.dev_eui in self.dev_eui)
        )

    def to_json(self) -> dict[str, list[str]]:
        """The filter as the client contract shows it (``subscribed`` replies)."""
        out: dict[str, list[str]] = {}
        for name, values in zip(FIELDS, self._values(), strict=True):
            if values is not None:
                out[name] = sorted(values)
        return out

    def _values(self) -> tuple[frozenset[str] | None, ...]:
        return (self.tenant, self.application, self.device, self.dev_eui, self.type, self.event)


EVERYTHING_FILTER = Filter()


def _values(where: str, raw: Any) -> frozenset[str] | None:
    if raw is None:
        return None
    items: Iterable[Any]
    if isinstance(raw, str):
        items = (raw,)
    elif isinstance(raw, list):
        if not raw:
            raise FilterError(f"{where}: empty list (leave the field out to allow any value)")
        if len(raw) > MAX_VALUES:
            raise FilterError(f"{where}: more than {MAX_VALUES} values")
        items = raw
    else:
        raise FilterError(f"{where}: expected a string or a list of strings")
    out = set()
    for item in items:
        if not isinstance(item, str):
            raise FilterError(f"{where}: expected a string or a list of strings")
        if not item:
            raise FilterError(f"{where}: empty string")
        if len(item) > MAX_VALUE_LENGTH:
            raise FilterError(f"{where}: value longer than {MAX_VALUE_LENGTH} characters")
        out.add(item)
    return frozenset(out)


def _build(values: Mapping[str, frozenset[str] | None]) -> Filter:
    eui = values.get("devEui")
    return Filter(
        tenant=values.get("tenant"),
        application=values.get("application"),
        device=values.get("device"),
        dev_eui=frozenset(v.lower() for v in eui) if eui is not None else None,
        type=values.get("type"),
        event=values.get("event"),
    )


def parse_filter(raw: Any) -> Filter:
    """The ``filter`` of a subscribe message (a JSON object, or null for everything)."""
    if raw is None:
        return EVERYTHING_FILTER
    if not isinstance(raw, dict):
        raise FilterError('filter: expected an object like {"tenant": "acme"}')
    unknown = [key for key in raw if key not in FIELDS]
    if unknown:
        raise FilterError(
            f"filter: unknown field {str(unknown[0])[:64]!r}; expected {', '.join(FIELDS)}"
        )
    return _build({name: _values(f"filter.{name}", raw.get(name)) for name in FIELDS})


def parse_query(params: Mapping[str, list[str]]) -> Filter:
    """The filter given on the URL: ``?tenant=a,b&type=voltage`` (repeated keys add up)."""
    values: dict[str, frozenset[str] | None] = {}
    for name in FIELDS:
        raw = params.get(name)
        if raw is None:
            continue
        items = [part.strip() for value in raw for part in value.split(",") if part.strip()]
        values[name] = _values(name, items) if items else None
    return _build(values)


@dataclass(frozen=True, slots=True)
class Scope:
    """What a token allows. ``tenants is None``: not limited (an admin token, or auth off)."""

    tenants: frozenset[str] | None = None
    applications: frozenset[str] | None = None

    @property
    def limited(self) -> bool:
        return self.tenants is not None

    def allows(self, m: Meta) -> bool:
        if self.tenants is None:
            return True
        # Gateway and error events belong to no tenant: only unlimited clients see them.
        return (
            m.kind == DEVICE
            and m.tenant in self.tenants
            and (self.applications is None or m.application in self.applications)
        )

    def narrow(self, f: Filter) -> Filter:
        """The filter intersected with this scope (an empty set then matches nothing)."""
        if self.tenants is None:
            return f
        tenant = self.tenants if f.tenant is None else f.tenant & self.tenants
        application = f.application
        if self.applications is not None:
            application = (
                self.applications if application is None else application & self.applications
            )
        return Filter(
            tenant=tenant,
            application=application,
            device=f.device,
            dev_eui=f.dev_eui,
            type=f.type,
            event=f.event,
        )


UNLIMITED = Scope()
