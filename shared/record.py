"""The decoded record: the body of an event frame, what decode promises fan-out.

Every value is JSON-safe for a browser (no NaN/Infinity, integers within 64 bits, nesting
bounded), so fan-out can serialize it without checks. Keys:

- ``event``: ``up``, ``join``, ``ack``, ``txack``, ``status``, ``log``, ``location``,
  ``integration`` for devices; ``stats``, ``up``, ``conn`` ... for gateways; ``error``.
- ``src``, ``seq``, ``ts`` (ingest, copied from the raw frame) and ``ts_decode``
  (time_ns): internal, never sent to WebSocket clients (:data:`shared.frames.INTERNAL_KEYS`).
- ``device``: ``{"tenant", "application", "name", "devEui", "tags"}`` (device events).
- ``gateway``: ``{"id": ...}`` (gateway events).
- ``object``: the network server codec's output exactly as published (may be absent).
- ``rx``: ``{"gateway", "rssi", "snr", "fCnt", "fPort", ...}`` radio metadata.
- ``time``: the network server's own event time (ISO string) where it has one.
- ``dedup``: the network server's deduplication id, where it has one (fan-out drops
  repeats; internal, not sent to clients).
- ``error``: ``{"reason", "detail", "topic"}`` (``event == "error"``).
- event-specific fields (``status``, ``ack``, ``log``, ``location``, ``stats`` ...).
"""

from __future__ import annotations

from typing import Any

# Keys that never reach a WebSocket client besides shared.frames.INTERNAL_KEYS.
PRIVATE_KEYS = frozenset({"dedup"})


def device_eui(body: dict[str, Any]) -> str | None:
    device = body.get("device")
    if isinstance(device, dict):
        eui = device.get("devEui")
        if isinstance(eui, str):
            return eui
    return None


def measurement_type(body: dict[str, Any]) -> str | None:
    obj = body.get("object")
    if isinstance(obj, dict):
        kind = obj.get("type")
        if isinstance(kind, str):
            return kind
    return None
