"""ingest's Prometheus metrics, in a registry of its own (never the global one)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.connected = Gauge(
            "gateway_mqtt_connected", "1 while connected to the broker", registry=r
        )
        self.subscribed = Gauge(
            "gateway_mqtt_subscribed", "1 while the subscriptions are in place", registry=r
        )
        self.connects = Counter("gateway_mqtt_connects", "successful CONNACKs", registry=r)
        self.connect_failures = Counter(
            "gateway_mqtt_connect_failures",
            "connection attempts that failed, by reason",
            ["reason"],
            registry=r,
        )
        self.disconnects = Counter(
            "gateway_mqtt_disconnects", "established connections that ended", registry=r
        )
        self.session_lost = Counter(
            "gateway_mqtt_session_lost",
            "reconnects where the broker no longer had our session (messages may have been missed)",
            registry=r,
        )
        self.received = Counter(
            "gateway_mqtt_messages_received", "messages taken from the broker", registry=r
        )
        self.redelivered = Counter(
            "gateway_mqtt_messages_redelivered",
            "messages the broker flagged as redelivered (DUP)",
            registry=r,
        )
        self.qos0 = Counter(
            "gateway_mqtt_qos0_messages", "messages that arrived at QoS 0", registry=r
        )
        self.acked = Counter(
            "gateway_mqtt_acks", "QoS 1/2 messages acknowledged to the broker", registry=r
        )
        self.acks_skipped = Counter(
            "gateway_mqtt_acks_skipped",
            "acks not sent because the connection that delivered the message is gone "
            "(the broker redelivers those)",
            registry=r,
        )
        self.acks_unconfirmed = Counter(
            "gateway_mqtt_acks_unconfirmed",
            "acks sent before a decoder confirmed the frame: it stopped or disconnected, "
            "ZMQ_RAW_CONFIRM_TIMEOUT passed (a frozen decoder, a stalled fan-out), or "
            "ingest was stopping",
            registry=r,
        )
        self.forwarded = Counter(
            "gateway_ingest_frames_forwarded", "raw frames handed to ZeroMQ", registry=r
        )
        self.dropped = Counter(
            "gateway_ingest_dropped",
            "messages dropped inside ingest, by reason",
            ["reason"],
            registry=r,
        )
        self.deferred = Counter(
            "gateway_ingest_deferred",
            "messages left unacknowledged at shutdown for the broker to redeliver",
            registry=r,
        )
        self.callback_errors = Counter(
            "gateway_ingest_callback_errors",
            "unexpected errors caught in MQTT callbacks",
            registry=r,
        )
        self.send_wait = Counter(
            "gateway_ingest_send_wait_seconds",
            "time spent waiting for a decoder to take frames (backpressure)",
            registry=r,
        )
        self.read_paused = Counter(
            "gateway_ingest_read_paused_seconds",
            "time ingest stopped reading from the broker because decoders were behind "
            "(QoS 0 has no other flow control: the broker holds the rest)",
            registry=r,
        )
        self.queue_depth = Gauge(
            "gateway_ingest_queue_depth",
            "messages received but not yet handed to ZeroMQ",
            registry=r,
        )

    def value(self, name: str, labels: dict[str, str] | None = None) -> float:
        return self.registry.get_sample_value(name, labels or {}) or 0.0
