"""The broker connection and the hand-off to decoders: paho-mqtt and the
:class:`~services.ingest.forwarder.Forwarder`, driven by one thread of our own.

Why not ``loop_forever``/``loop_start``: paho's reconnect back-off has no jitter and logs
nothing we can act on (RELIABILITY.md §3), so this thread makes each attempt itself,
logs one line per failed attempt or lost connection with the reason and a hint, and
waits a jittered, growing delay (:mod:`services.ingest.backoff`).

What the session guarantees (RELIABILITY.md §0.1, §0.5, §0.6):
- a stable client id, ``clean_start=False`` and a session expiry interval, so messages
  published while ingest is away are queued by the broker;
- subscriptions re-sent on every CONNACK (a broker may lose them over a restart);
- ``manual_ack=True``: the forwarder acks each message once a decoder confirmed its frame;
- callbacks never block and never raise (they enqueue, count and log).

One thread does everything: it polls the broker's socket and the decoders' ROUTER
together, reads with ``loop_read``, lets the forwarder hand on what was read and queue
the acks it can, then writes them all with one ``loop_write``. An earlier design had a
paho thread and a forwarder thread; every message then cost two thread wake-ups (the
queue between them, and paho's socket pair to wake it for the PUBACK), which was most of
ingest's CPU at moderate rates (bench/FINDINGS.md). paho's ``loop()`` is never called
while connected, so paho creates no socket pair, and ``on_socket_register_write`` keeps
``ack()`` from writing the socket itself: PUBACKs queue up and leave together.
While the forwarder holds enough messages no decoder could take, the socket is simply
not polled for reading (but still written: acks, keepalive pings). While messages keep
coming, a pass runs at most once per ``MQTT_COALESCE_MS`` (:meth:`MqttLink._coalesced_step`),
so the messages of a few milliseconds travel down the pipeline together.

The client is :class:`services.ingest.fast_paho.FastClient` (larger reads, cheaper v5
properties) on the paho versions it was tested with, stock paho otherwise or with
``MQTT_FAST_RECEIVE=false``; nothing else here depends on which.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import ssl
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
import zmq
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from services.ingest import fast_paho
from services.ingest.backoff import Backoff
from services.ingest.config import Config
from services.ingest.explain import AUTH_REASONS, describe_connect_error, describe_reason
from services.ingest.forwarder import Forwarder, Inbound
from services.ingest.metrics import Metrics
from shared.log import RateLimitedLog
from shared.zmq_util import POLLIN, POLLOUT

logger = logging.getLogger(__name__)

LOOP_TIMEOUT_S = 0.2  # how often the loop looks up from its poll (stop request, timeouts)
BUSY_PASS = 8  # a pass that read this many messages doubles the next MQTT_COALESCE_MS window
STABLE_AFTER_S = 10.0  # a connection that lasted this long resets the back-off
GOODBYE_TIMEOUT_S = 2.0  # time to flush the last acks and DISCONNECT on shutdown
LINGER_AFTER_DISCONNECT_S = 1.0  # how long to read until the broker closes its side
FLAPPING_AFTER = 3  # this many short-lived connections in a row suggest a client id clash
LOST = "connection lost"


def set_nodelay(sock: Any) -> None:
    """Turn Nagle off: PUBACKs and small PUBLISHes must not wait 40 ms for company.
    paho does not do it itself."""
    # A unix socket or a wrapper without options has no Nagle to turn off.
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def pending_bytes(sock: Any) -> int:
    """Bytes a TLS socket has decrypted but not handed out: poll() cannot see them."""
    pending = getattr(sock, "pending", None)
    return int(pending()) if pending is not None else 0


class MqttLink:
    def __init__(
        self,
        config: Config,
        router: zmq.Socket,  # type: ignore[type-arg]
        metrics: Metrics,
    ) -> None:
        self._cfg = config
        self._m = metrics
        self._router = router
        self.forwarder = Forwarder(
            router, self, config.zmq_raw_src, metrics, config.zmq_raw_confirm_timeout
        )
        self._v5 = config.mqtt_protocol == "5"
        self._persistent = config.mqtt_session_expiry > 0
        self._backoff = Backoff(config.mqtt_reconnect_min, config.mqtt_reconnect_max)
        # Messages waiting for a decoder at which reading from the broker pauses (and
        # half of it, at which it resumes). QoS 1 alone never gets there (the Receive
        # Maximum bounds it); QoS 0 has no flow control of its own, so this is its
        # backpressure: the broker holds what ingest does not read (max_queued_messages).
        self._pause_at = max(100, 2 * config.mqtt_receive_maximum)
        self._paused_at: float | None = None  # reading paused since (monotonic)
        self._rate_limited = RateLimitedLog(logger)

        self._conn = 0  # +1 per connection attempt; tags messages so acks go to the right one
        self._connected = False
        self._subscribed = False
        self._accepting = True
        self._had_connection = False  # a CONNACK succeeded earlier in this process
        self._established_at: float | None = None
        self._outcome: str | None = None  # why the current attempt or connection ended
        self._outcome_kind = "network"
        self._pending_subscriptions: dict[int, tuple[str, ...]] = {}
        self._qos0_warned = False
        self._short_lived = 0  # connections in a row that dropped soon after CONNACK
        self._tracebacks_logged: set[str] = set()

        self._closing = threading.Event()  # finish: drain, ack, DISCONNECT, end the thread
        self._drain_until = 0.0  # monotonic deadline for forwarding what is held at a stop
        self._aborted = False  # a second signal: skip the drain
        self._drained = False
        self._coalesce_s = config.mqtt_coalesce_ms / 1000
        self._next_read = 0.0  # monotonic: no pass before this while messages keep coming
        self._woke_at = 0.0  # monotonic: when the last pass's poll returned
        self._received = 0  # messages taken from the broker (a pass that read some counts)
        self._client = self._make_client()
        self._heard_attr = fast_paho.received_at_attr(self._client)
        self._thread = threading.Thread(target=self._run, name="mqtt", daemon=True)

    # ------------------------------------------------------------------ other threads

    def start(self) -> None:
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def ready(self) -> tuple[bool, str]:
        if self._connected and self._subscribed:
            return True, f"connected to {self._cfg.broker_address} and subscribed"
        if self._connected:
            return False, "connected, subscription not confirmed"
        why = f": {self._outcome}" if self._outcome else ""
        return False, f"not connected to {self._cfg.broker_address}{why}"

    def finish(self, drain_timeout: float, close_timeout: float) -> int:
        """Take no new messages (the broker redelivers them), forward what is held within
        ``drain_timeout``, ack what was handed on, DISCONNECT (the session stays on the
        broker), stop. Returns how many messages were left unsent (never acknowledged)."""
        self._accepting = False
        self._drain_until = time.monotonic() + drain_timeout
        self._closing.set()
        self._thread.join(drain_timeout + close_timeout)
        if self._thread.is_alive():
            self._aborted = True
            self._thread.join(close_timeout)
        return len(self.forwarder.pending)

    def abort(self) -> None:
        """Skip the drain of :meth:`finish` (the held messages stay unacknowledged)."""
        self._aborted = True

    def ack(self, mid: int, qos: int, conn: int) -> bool:
        # Message ids belong to the connection that delivered the message. After a
        # reconnect the broker resends what we had not acked, so the old ack is moot.
        if conn != self._conn or not self._connected:
            return False
        self._client.ack(mid, qos)
        return True

    # ------------------------------------------------------------------ set-up

    def _make_client(self) -> mqtt.Client:
        c = self._cfg
        # The fast client only changes how paho reads the socket and decodes PUBLISH
        # properties (services.ingest.fast_paho); everything below applies to both.
        client_class = fast_paho.client_class() if c.mqtt_fast_receive else mqtt.Client
        client = client_class(
            CallbackAPIVersion.VERSION2,
            client_id=c.mqtt_client_id,
            protocol=mqtt.MQTTv5 if self._v5 else mqtt.MQTTv311,
            # v3.1.1 has no expiry: a persistent session is clean_session=False.
            clean_session=None if self._v5 else not self._persistent,
            reconnect_on_failure=False,
            manual_ack=True,
        )
        client.suppress_exceptions = True
        if logger.isEnabledFor(logging.DEBUG):
            # paho logs socket errors at ERROR; our own lines say the same in plain words.
            client.enable_logger(logging.getLogger("paho.mqtt"))
        client.connect_timeout = c.mqtt_connect_timeout
        if c.mqtt_username:
            client.username_pw_set(c.mqtt_username, c.mqtt_password or None)
        if c.tls_context is not None:
            client.tls_set_context(c.tls_context)
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        if isinstance(client, fast_paho.FastClient):
            client.on_plain_publish = self._on_publish
        client.on_disconnect = self._on_disconnect
        client.on_socket_open = lambda _client, _userdata, sock: set_nodelay(sock)
        client.on_socket_register_write = lambda _client, _userdata, _sock: None
        properties = None
        if self._v5:
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = c.mqtt_session_expiry
            properties.ReceiveMaximum = c.mqtt_receive_maximum
            client.connect_async(
                c.mqtt_broker,
                c.mqtt_port,
                c.mqtt_keepalive,
                clean_start=False,
                properties=properties,
            )
        else:
            client.connect_async(c.mqtt_broker, c.mqtt_port, c.mqtt_keepalive)
        return client

    # ------------------------------------------------------------------ the thread

    def _run(self) -> None:
        try:
            while not self._closing.is_set():
                try:
                    self._attempt()
                except Exception:  # a bug must not end the connection for good
                    self._m.callback_errors.inc()
                    logger.error("❌ Unexpected error in the MQTT connection", exc_info=True)
                    self._outcome = self._outcome or "unexpected error (see above)"
                    self._mark_down()
                if self._closing.is_set():
                    break
                self._wait_before_retry()
            self._drain()  # once more when stopping while not connected (acks are then moot)
        finally:
            self.forwarder.close()  # even after a bug: an open monitor would block ctx.term()

    def _step(self, read: bool, timeout: float) -> bool:
        """One pass: wait for the broker's socket or the ROUTER (at most ``timeout``),
        read, forward, ack, write. False when the MQTT connection ended."""
        client = self._client
        sock = client.socket()
        items: list[tuple[Any, int]] = [(self._router, POLLIN)]
        buffered = 0  # TLS bytes already decrypted: the poll cannot see them
        if sock is not None:
            events = POLLOUT if client.want_write() else 0
            if read:
                events |= POLLIN
                buffered = pending_bytes(sock)
                if buffered:
                    timeout = 0.0
            if events:
                items.append((sock, events))
        ready = zmq.zmq_poll(items, int(timeout * 1000))
        self._woke_at = time.monotonic()
        read_ok = True
        if sock is not None and read and (buffered or _readable(ready, sock)):
            read_ok = client.loop_read() == MQTTErrorCode.MQTT_ERR_SUCCESS
        self.forwarder.work()  # also after a failed read: what it read is held
        if not read_ok or client.socket() is None:
            return False
        if read:  # a ping's answer is only seen by reading (not so while draining)
            self._check_silence()
        if client.want_write() and client.loop_write() != MQTTErrorCode.MQTT_ERR_SUCCESS:
            return False
        return client.loop_misc() == MQTTErrorCode.MQTT_ERR_SUCCESS

    def _check_silence(self) -> None:
        """Ask a silent broker early, and give up on it early. paho pings after a whole
        keepalive without a byte from the broker and waits another for the answer, so a
        dead link (a partition, a broker host gone without a FIN) went unnoticed for up to
        two keepalives while the broker held our messages. Here the ping goes out after
        half a keepalive of silence, and a ping unanswered for half a keepalive ends the
        connection (through paho's own keepalive path, which sees the ping as overdue):
        a dead link is noticed within one keepalive (RELIABILITY.md §9.1 F17)."""
        client = self._client
        if not self._connected:
            return
        half = self._cfg.mqtt_keepalive / 2
        pinged = getattr(client, "_ping_t", 0)
        if pinged:
            if self._woke_at - pinged >= half:
                self._outcome = (
                    f"{LOST} (no answer to a ping within {half:g} s: the network to the "
                    "broker, or the broker, is gone)"
                )
                client._ping_t = pinged - self._cfg.mqtt_keepalive  # loop_misc() ends it
        elif self._woke_at - getattr(client, self._heard_attr) >= half:
            client._send_pingreq()

    def _reading(self) -> bool:
        """Whether to read from the broker: not while the forwarder holds ``_pause_at``
        messages (until it is down to half), counting the time paused. Always until the
        subscription is confirmed: the SUBACK comes behind whatever the broker sends
        first (a resumed session's redeliveries), and without it ingest is not ready.
        And while a keepalive ping waits for its answer."""
        held = len(self.forwarder.pending)
        now = time.monotonic()
        if not self._subscribed:
            self._paused_at = None
            return True
        if getattr(self._client, "_ping_t", 0):
            # paho sent a PINGREQ: its answer must be read, or paho drops the connection
            # after a second keepalive period (the paused socket holds at most what is
            # in flight, or the Receive Maximum at QoS 1).
            return True
        if self._paused_at is None:
            if held < self._pause_at:
                return True
            self._paused_at = now
            return False
        self._m.read_paused.inc(now - self._paused_at)  # as it goes: /metrics sees a long pause
        self._paused_at = now
        if held > self._pause_at // 2:
            return False
        self._paused_at = None
        return True

    def _drain(self) -> None:
        """At a stop: forward what is held until the deadline (or an abort), reading no
        more from the broker, then ack everything handed on."""
        if self._drained:
            return
        self._drained = True
        fw = self.forwarder
        while fw.pending and not self._aborted:
            left = self._drain_until - time.monotonic()
            if left <= 0:
                break
            # Without a connection it still forwards; the acks are then moot (the broker
            # sends those messages again on the next connection).
            self._step(read=False, timeout=min(LOOP_TIMEOUT_S, left))
        fw.finish()  # its acks leave with the DISCONNECT (_say_goodbye), in order

    def _attempt(self) -> None:
        self._conn += 1
        self._outcome = None
        self._outcome_kind = "network"
        self._established_at = None
        try:
            self._client.reconnect()
        except Exception as exc:
            self._outcome_kind, self._outcome = describe_connect_error(exc, self._cfg)
            self._m.connect_failures.labels(self._outcome_kind).inc()
            return
        started = time.monotonic()
        while self._client.socket() is not None:
            if self._closing.is_set():
                self._drain()
                self._say_goodbye()
                break
            if (
                self._established_at is None
                and time.monotonic() - started > self._cfg.mqtt_connect_timeout
            ):
                self._outcome_kind = "timeout"
                self._outcome = f"no CONNACK within {self._cfg.mqtt_connect_timeout:g} s"
                self._m.connect_failures.labels("timeout").inc()
                self._say_goodbye()
                break
            if not self._coalesced_step():
                break
        self._mark_down()

    def _coalesced_step(self) -> bool:
        """One pass, at most one per MQTT_COALESCE_MS while messages keep coming: the ones
        that arrive meanwhile wait in the kernel and are read and handed on together. At
        1,000 msg/s and the default 3 ms that cuts the wake-ups of every thread down the
        pipeline to a third (the gateway's CPU per message -25 % against 2 ms and -40 %
        against 0, bench/FINDINGS.md): it is the one place the pipeline waits on purpose.
        After a pass that read ``BUSY_PASS`` messages or more the window doubles: under
        heavy load (about 2,700 msg/s and up with 3 ms) that is another -10 % of CPU for
        +3 ms of latency, while a dashboard's moderate stream keeps the short window. A
        message after a quiet spell is read at once."""
        wait = self._next_read - time.monotonic()
        if wait > 0:
            self._closing.wait(wait)
        before = self._received
        ok = self._step(self._reading(), LOOP_TIMEOUT_S)
        read = self._received - before
        if read:
            busy = read >= BUSY_PASS
            self._next_read = self._woke_at + self._coalesce_s * (2 if busy else 1)
        return ok

    def _say_goodbye(self) -> None:
        """DISCONNECT after whatever acks are queued (paho writes packets in order)."""
        self._client.disconnect()
        deadline = time.monotonic() + GOODBYE_TIMEOUT_S
        while self._client.socket() is not None and time.monotonic() < deadline:
            self._client.loop(timeout=0.05)

    def _mark_down(self) -> None:
        if self._connected:  # paho did not call on_disconnect (socket already gone)
            self._connected = False
            self._subscribed = False
            self._m.connected.set(0)
            self._m.subscribed.set(0)
            self._m.disconnects.inc()

    def _wait_before_retry(self) -> None:
        up_since = self._established_at
        established = up_since is not None
        if up_since is not None and time.monotonic() - up_since >= STABLE_AFTER_S:
            self._backoff.reset()
        delay = self._backoff.next_delay()
        where = self._cfg.broker_address
        if established:
            logger.warning(
                "🔌 Disconnected from %s: %s%s; reconnecting in %.1f s",
                where,
                self._outcome,
                self._flapping_hint(),
                delay,
            )
        else:
            level = logging.ERROR if self._outcome_kind in ("auth", "tls") else logging.WARNING
            icon = "❌" if level == logging.ERROR else "⚠️"
            logger.log(
                level,
                "%s Cannot connect to %s: %s; retrying in %.1f s (attempt %d)",
                icon,
                where,
                self._outcome,
                delay,
                self._backoff.attempt,
            )
        until = time.monotonic() + delay
        while not self._closing.is_set() and (left := until - time.monotonic()) > 0:
            self._step(read=False, timeout=min(LOOP_TIMEOUT_S, left))  # decoders still served

    def _flapping_hint(self) -> str:
        # Brokers that do not send "session taken over" (Mosquitto 2.0.11 just closes the
        # old connection) leave a pattern instead: connections that keep dropping right
        # after CONNACK.
        assert self._established_at is not None
        short = time.monotonic() - self._established_at < STABLE_AFTER_S
        self._short_lived = self._short_lived + 1 if short and self._outcome == LOST else 0
        if self._short_lived < FLAPPING_AFTER:
            return ""
        return (
            f" ({self._short_lived} short connections in a row: is another client using "
            f"the same MQTT_CLIENT_ID={self._cfg.mqtt_client_id!r}? Each one takes the session "
            "from the other)"
        )

    # ------------------------------------------------------------------ paho callbacks
    # Each one runs on this thread, must not block and must not raise.

    def _on_connect(
        self,
        client: mqtt.Client,
        _userdata: Any,
        flags: mqtt.ConnectFlags,
        reason: ReasonCode,
        props: Properties | None,
    ) -> None:
        try:
            if reason.is_failure:
                self._outcome_kind = "auth" if reason.value in AUTH_REASONS else "refused"
                self._outcome = f"the broker refused the connection: {describe_reason(reason)}"
                self._m.connect_failures.labels(self._outcome_kind).inc()
                return
            self._established_at = time.monotonic()
            self._connected = True
            self._m.connected.set(1)
            self._m.connects.inc()
            present = bool(flags.session_present)
            logger.info(
                "✅ Connected to %s (session present: %s)",
                self._cfg.broker_address,
                "yes" if present else "no",
            )
            self._check_session(present, props)
            self._had_connection = True
            self._subscribe(client)
        except Exception:
            self._callback_failed("on_connect")

    def _check_session(self, present: bool, props: Properties | None) -> None:
        if not self._persistent or present:
            return
        if self._had_connection:
            self._m.session_lost.inc()
            logger.warning(
                "⚠️ The broker no longer had our session (expired, or lost in a broker restart "
                "without persistence): messages published while we were disconnected may be missing"
            )
        else:
            logger.info(
                "🆕 New MQTT session for client id %r: a first start with this id, or the old "
                "session expired (MQTT_SESSION_EXPIRY=%d s)",
                self._cfg.mqtt_client_id,
                self._cfg.mqtt_session_expiry,
            )
        granted = getattr(props, "SessionExpiryInterval", None) if props is not None else None
        if granted is not None and granted < self._cfg.mqtt_session_expiry:
            logger.warning(
                "⚠️ The broker keeps our session only %d s (asked for %d s)",
                granted,
                self._cfg.mqtt_session_expiry,
            )

    def _subscribe(self, client: mqtt.Client) -> None:
        # Always, even with session present: a broker may forget subscriptions over a
        # restart (Mosquitto 2.0.11 does for $share, RELIABILITY.md §0.5).
        filters = self._cfg.subscriptions
        qos = self._cfg.mqtt_qos
        topics: list[tuple[str, Any]]
        if self._v5:
            # Retained messages only on a new subscription, not on every reconnect.
            options = SubscribeOptions(
                qos=qos, retainHandling=SubscribeOptions.RETAIN_SEND_IF_NEW_SUB
            )
            topics = [(f, options) for f in filters]
        else:
            topics = [(f, qos) for f in filters]
        result, mid = client.subscribe(topics)
        if result == MQTTErrorCode.MQTT_ERR_SUCCESS and mid is not None:
            self._pending_subscriptions[mid] = filters
        else:
            logger.error("❌ Could not send SUBSCRIBE: %s", mqtt.error_string(result))

    def _on_subscribe(
        self,
        _client: mqtt.Client,
        _userdata: Any,
        mid: int,
        reasons: list[ReasonCode],
        _props: Properties | None,
    ) -> None:
        try:
            filters = self._pending_subscriptions.pop(mid, ())
            granted, refused, downgraded = [], [], []
            for topic, reason in zip(filters, reasons, strict=False):
                if reason.is_failure:
                    refused.append(f"{topic} ({describe_reason(reason)})")
                else:
                    granted.append(topic)
                    if reason.value < self._cfg.mqtt_qos:
                        downgraded.append(f"{topic} (QoS {reason.value})")
            if refused:
                logger.error("❌ The broker refused the subscription to %s", ", ".join(refused))
            if downgraded:
                logger.warning(
                    "⚠️ The broker granted a lower QoS than MQTT_QOS=%d for %s: it will not keep "
                    "those messages while ingest is away",
                    self._cfg.mqtt_qos,
                    ", ".join(downgraded),
                )
            if granted:
                self._subscribed = True
                self._m.subscribed.set(1)
                logger.info("📥 Subscribed to %s (QoS %d)", ", ".join(granted), self._cfg.mqtt_qos)
        except Exception:
            self._callback_failed("on_subscribe")

    def _on_message(self, _client: mqtt.Client, _userdata: Any, msg: mqtt.MQTTMessage) -> None:
        """paho's delivery (messages with v5 properties, QoS 2, or the stock client)."""
        self._on_publish(
            getattr(msg, "_topic", b""), bytes(msg.payload), msg.qos, msg.mid, msg.dup, msg.retain
        )

    def _on_publish(
        self, topic: bytes, payload: bytes, qos: int, mid: int, dup: bool, retain: bool
    ) -> None:
        """One message from the broker: the fast client calls this for plain PUBLISHes."""
        try:
            ts = time.time_ns()
            if not self._accepting:
                # Shutting down: not acked, so the broker redelivers it next time (QoS 1).
                if qos:
                    self._m.deferred.inc()
                else:
                    self._m.dropped.labels("shutdown").inc()
                return
            name = self._topic_text(topic)
            if qos == 0:
                self._m.qos0.inc()
                self._warn_qos0_once(name)
            if dup:
                self._m.redelivered.inc()
            self.forwarder.offer(Inbound(mid, qos, name, payload, bool(retain), ts, self._conn))
            self._received += 1
            self._m.received.inc()
        except Exception:
            self._callback_failed("on_message")

    def _topic_text(self, topic: bytes) -> str:
        try:
            return topic.decode("utf-8")
        except UnicodeDecodeError:  # brokers should refuse these; keep the message anyway
            self._rate_limited.warning("topic_utf8", "⚠️ A message topic is not valid UTF-8")
            return topic.decode("utf-8", errors="replace")

    def _warn_qos0_once(self, topic: str) -> None:
        if self._qos0_warned or self._cfg.mqtt_qos == 0:
            return
        self._qos0_warned = True
        logger.warning(
            "⚠️ Messages arrive at QoS 0 (first on %r): the publisher sends QoS 0, so the "
            "broker will not keep them while ingest is away. For ChirpStack set "
            "[integration.mqtt] qos=1 in chirpstack.toml",
            topic,
        )

    def _on_disconnect(
        self,
        _client: mqtt.Client,
        _userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason: ReasonCode,
        _props: Properties | None,
    ) -> None:
        try:
            was_connected = self._connected
            self._connected = False
            self._subscribed = False
            self._m.connected.set(0)
            self._m.subscribed.set(0)
            if was_connected:
                self._m.disconnects.inc()
            if self._closing.is_set() and not flags.is_disconnect_packet_from_server:
                # Our DISCONNECT is written; paho closes the socket right after this call.
                sock = _client.socket()
                if sock is not None:
                    read_until_closed(sock, LINGER_AFTER_DISCONNECT_S)
            if self._outcome is not None or self._closing.is_set():
                return
            if flags.is_disconnect_packet_from_server:
                self._outcome = f"the broker disconnected us: {describe_reason(reason)}"
            elif was_connected:
                detail = "" if reason.getName() == "Unspecified error" else f" ({reason})"
                self._outcome = f"{LOST}{detail}"
            else:
                self._outcome = (
                    "the broker closed the connection before CONNACK (a TLS port without TLS "
                    "settings, or the wrong MQTT_PROTOCOL?)"
                )
                self._m.connect_failures.labels("closed").inc()
        except Exception:
            self._callback_failed("on_disconnect")

    def _callback_failed(self, name: str) -> None:
        self._m.callback_errors.inc()
        if name not in self._tracebacks_logged:  # the first one with its traceback, then counted
            self._tracebacks_logged.add(name)
            logger.error("❌ Unexpected error in %s (counted from now on)", name, exc_info=True)
        else:
            self._rate_limited.warning(name, "❌ Unexpected error in %s", name)


def read_until_closed(sock: Any, seconds: float) -> None:
    """After our DISCONNECT: read, and drop, what the broker still sends until it closes
    its side (at most ``seconds``). Closing a socket with unread data sends a TCP RST, and
    the broker's kernel then discards what the broker had not read yet: our last PUBACKs
    and the DISCONNECT itself ("Broken pipe" in its log), so it sent those messages again.
    What is dropped here was never acknowledged: the broker keeps it for next time."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            readable, _, _ = select.select([sock], [], [], left)
            if not readable:
                return
            if not sock.recv(65536):
                return  # the broker closed its side: nothing unread is left
        except ssl.SSLWantReadError:  # TLS: a record is not complete yet
            continue
        except OSError:
            return


def _readable(ready: list[tuple[Any, int]], sock: Any) -> bool:
    fd = sock.fileno()  # zmq_poll answers with the descriptor of a plain socket
    return any(s == fd and events & POLLIN for s, events in ready)
