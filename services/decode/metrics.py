"""decode's Prometheus metrics, in a registry of its own (never the global one).

The worker increments a cached child per label value: ``labels()`` on every frame would
cost a dict build and a lock on the hot path.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

from services.decode.errors import REASONS

EVENT_NAMES = (
    "up",
    "join",
    "ack",
    "txack",
    "status",
    "log",
    "location",
    "integration",
    "stats",
    "conn",
    "error",
)
FRAME_REASONS = ("type", "size", "msgpack", "shape", "version", "parts")


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.frames = Counter(
            "gateway_decode_frames", "Raw frames received from ingest", registry=self.registry
        )
        self._events = Counter(
            "gateway_decode_events",
            "Events published, by event name",
            ["event"],
            registry=self.registry,
        )
        self._errors = Counter(
            "gateway_decode_errors",
            "Payloads that could not be decoded (each published as an _error event), by reason",
            ["reason"],
            registry=self.registry,
        )
        self._dropped = Counter(
            "gateway_decode_dropped_frames",
            "Raw frames unusable as frames (unknown version, not msgpack, wrong types), by reason",
            ["reason"],
            registry=self.registry,
        )
        self.relinks = Counter(
            "gateway_decode_relinks",
            "Links to ingest that ZeroMQ gave up on (a frame over ZMQ_RAW_MAX_MESSAGE), "
            "reconnected",
            registry=self.registry,
        )
        # Pre-create the known series so dashboards show 0 rather than nothing.
        self._event_children = {name: self._events.labels(name) for name in EVENT_NAMES}
        self._error_children = {reason: self._errors.labels(reason) for reason in REASONS}
        self._dropped_children = {reason: self._dropped.labels(reason) for reason in FRAME_REASONS}

    def events(self, counts: dict[str, int]) -> None:
        """Count published events, ``{event name: how many}``."""
        for name, n in counts.items():
            child = self._event_children.get(name)
            if child is None:
                child = self._event_children[name] = self._events.labels(name)
            child.inc(n)

    def error(self, reason: str) -> None:
        child = self._error_children.get(reason)
        if child is None:
            child = self._error_children[reason] = self._errors.labels(reason)
        child.inc()

    def dropped(self, reason: str) -> None:
        child = self._dropped_children.get(reason)
        if child is None:
            child = self._dropped_children[reason] = self._dropped.labels(reason)
        child.inc()
