"""The fan-out's Prometheus metrics, in a registry of its own (served at ``/metrics``).

Hot-path counters are bound to their label values once, so counting costs one method call.
The per-event ones are not even called per event: the fan-out counts a batch of events in
plain ints and adds them once per batch (see ``Fanout._flush``); ``/metrics`` is answered on
the same event loop, between batches, so it never sees a batch half counted.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.metrics_core import Metric
from prometheus_client.utils import floatToGoString

P = "gateway_wsfanout_"


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.events_received = Counter(
            P + "events_received", "Event frames received on the SUB socket", registry=r
        )
        self.events_accepted = Counter(
            P + "events_accepted", "Events numbered, buffered and dispatched", registry=r
        )
        sent = Counter(P + "messages_sent", "Messages written to clients", ["kind"], registry=r)
        self.sent_live = sent.labels("live")
        self.sent_replay = sent.labels("replay")
        self.sent_control = sent.labels("control")
        dropped = Counter(P + "dropped", "Events not delivered, by reason", ["reason"], registry=r)
        self.dropped_slow = dropped.labels("slow_client")
        self.dropped_bad_frame = dropped.labels("bad_frame")
        self.dropped_serializer = dropped.labels("serializer")
        self.dropped_duplicate = dropped.labels("duplicate")
        self._bad_frames = Counter(
            P + "bad_frames", "Malformed event frames, by reason", ["reason"], registry=r
        )
        self.frames_lost = Counter(
            P + "frames_lost",
            "Source seqs never received (gaps past the reorder window)",
            registry=r,
        )
        self.frames_pending = Gauge(
            P + "frames_pending",
            "Source seqs missing but still awaited (reorder window)",
            registry=r,
        )
        dup = Counter(P + "duplicates", "Repeated events dropped", ["kind"], registry=r)
        self.duplicates_seq = dup.labels("seq")
        self.duplicates_dedup = dup.labels("dedup")
        self.reordered = Counter(
            P + "reordered", "Events that arrived after a later one of their source", registry=r
        )
        self.late = Counter(P + "late", "Events that arrived after being counted lost", registry=r)
        self.source_restarts = Counter(
            P + "source_restarts", "Sources that started counting again", registry=r
        )
        self.clients = Gauge(P + "clients", "Connected WebSocket clients", registry=r)
        self._rejected = Counter(
            P + "handshakes_rejected",
            "WebSocket handshakes refused, by HTTP status, or invalid (not HTTP) and "
            "timeout (no whole request within WEBSOCKET_OPEN_TIMEOUT)",
            ["status"],
            registry=r,
        )
        self._closed = Counter(
            P + "clients_closed", "Client connections closed, by reason", ["reason"], registry=r
        )
        self.slow_clients = Counter(
            P + "slow_clients",
            "Clients behind for longer than the slow-client timeout (closed 1013)",
            registry=r,
        )
        self.client_errors = Counter(
            P + "client_errors", "Invalid client messages answered with an error", registry=r
        )
        self.buffered_events = Gauge(P + "buffered_events", "Events held for replay", registry=r)
        self.buffered_rings = Gauge(
            P + "buffered_devices", "Devices (and gateways) with replay history", registry=r
        )
        self.seq = Gauge(P + "seq", "Last seq assigned in this epoch", registry=r)
        self.dispatch_seconds = PlainHistogram(
            P + "dispatch_seconds",
            "Time to number, buffer and hand one event to every matching client",
            buckets=(1e-5, 5e-5, 1e-4, 5e-4, 1e-3, 5e-3, 1e-2, 5e-2, 0.1, 0.5),
            registry=r,
        )

    def bad_frame(self, reason: str) -> None:
        self._bad_frames.labels(reason).inc()
        self.dropped_bad_frame.inc()

    def rejected(self, status: int | str) -> None:
        self._rejected.labels(str(status)).inc()

    def closed(self, reason: str) -> None:
        self._closed.labels(reason).inc()

    def watch(self, gauge: Gauge, read: Callable[[], float]) -> None:
        gauge.set_function(read)

    def total(self, name: str) -> int:
        """The sum of a counter over all its labels (for the stop summary line)."""
        full = P + name + "_total"
        return int(
            sum(
                sample.value
                for family in self.registry.collect()
                for sample in family.samples
                if sample.name == full
            )
        )


class PlainHistogram:
    """A prometheus ``Histogram`` without labels, counted in plain ints: ``observe`` costs
    a bisect instead of ~1.3 µs (a lock and a value object per bucket). Only for the event
    loop's thread; the samples ``/metrics`` shows are the same as the library's (buckets,
    ``_count``, ``_sum``, ``_created``)."""

    def __init__(
        self, name: str, documentation: str, buckets: Sequence[float], registry: CollectorRegistry
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.bounds = sorted(float(b) for b in buckets)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one: above every bound (+Inf)
        self.sum = 0.0
        self.created = time.time()
        # As the library writes "le" (1e-05, 0.0001, ...).
        self._labels = [floatToGoString(b) for b in self.bounds] + ["+Inf"]  # type: ignore[no-untyped-call]
        registry.register(self)

    def observe(self, amount: float) -> None:
        # The first bucket whose upper bound is >= amount, as Histogram.observe picks it.
        self.counts[bisect_left(self.bounds, amount)] += 1
        self.sum += amount

    def describe(self) -> list[Metric]:
        return [Metric(self.name, self.documentation, "histogram")]

    def collect(self) -> Iterator[Metric]:
        metric = Metric(self.name, self.documentation, "histogram")
        total = 0
        for label, count in zip(self._labels, self.counts, strict=True):
            total += count
            metric.add_sample(self.name + "_bucket", {"le": label}, float(total))
        metric.add_sample(self.name + "_count", {}, float(total))
        metric.add_sample(self.name + "_sum", {}, self.sum)
        metric.add_sample(self.name + "_created", {}, self.created)
        yield metric
