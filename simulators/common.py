"""What every simulator shares: flags, the MQTT link, pacing, and the publish loop.

Each simulator module only says what it publishes (a generator of :class:`Message`); this
module connects (paho-mqtt 2.x, MQTT v5, Nagle off), paces the messages to ``--rate``,
stops after ``--count`` (0 = until Ctrl-C / SIGTERM), waits for the broker's
acknowledgements and prints one summary line. Broker address: ``MQTT_BROKER`` /
``MQTT_PORT`` (the gateway's own variables), overridden by ``--host`` / ``--port``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import random
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from shared import log
from shared.stopwait import sleep_unless_stopped
from simulators import payloads

logger = logging.getLogger("simulator")

EXIT_OK = 0
EXIT_FAILED = 1  # broker unreachable, refused us, or did not acknowledge everything


class BrokerUnavailable(Exception):
    """The broker cannot be reached or refused the connection; the text is one line."""


@dataclass(frozen=True)
class Message:
    topic: str
    payload: bytes
    retain: bool = False


def dumps(event: dict[str, Any]) -> bytes:
    return orjson.dumps(event)


# ---------------------------------------------------------------- flags


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except empty ones and the password (it may come from the env)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, "", False) or action.dest == "password":
            return action.help
        return super()._get_help_string(action)


def base_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """Broker and pacing flags every simulator has."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        formatter_class=_HelpFormatter,
    )
    broker = parser.add_argument_group("broker")
    broker.add_argument(
        "--host",
        default=os.environ.get("MQTT_BROKER", "localhost"),
        help="MQTT broker host [env MQTT_BROKER]",
    )
    broker.add_argument(
        "--port",
        type=tcp_port,
        default=os.environ.get("MQTT_PORT", "1883"),
        help="MQTT broker port [env MQTT_PORT]",
    )
    broker.add_argument(
        "--username",
        default=os.environ.get("MQTT_USERNAME") or None,
        help="MQTT username [env MQTT_USERNAME]",
    )
    broker.add_argument(
        "--password",
        default=os.environ.get("MQTT_PASSWORD") or None,
        help="MQTT password [env MQTT_PASSWORD]",
    )
    broker.add_argument(
        "--tls",
        action="store_true",
        default=os.environ.get("MQTT_TLS", "").lower() in ("1", "true", "yes", "on"),
        help="use TLS (on by itself when --tls-ca is given) [env MQTT_TLS]",
    )
    broker.add_argument(
        "--tls-ca",
        default=os.environ.get("MQTT_TLS_CA") or None,
        help="CA certificate file for the broker (default: system CAs) [env MQTT_TLS_CA]",
    )
    broker.add_argument("--qos", type=int, choices=(0, 1, 2), default=1, help="publish QoS")
    broker.add_argument(
        "--client-id", default="", help="MQTT client id (default: sim-NAME-<random>)"
    )
    broker.add_argument(
        "--timeout",
        type=positive_float,
        default=10.0,
        help="seconds to wait for the broker (connect, final acknowledgements)",
    )
    return parser


def add_pacing(parser: argparse.ArgumentParser, *, rate: float, count: int) -> None:
    pacing = parser.add_argument_group("pacing")
    pacing.add_argument(
        "--rate",
        type=non_negative_float,
        default=rate,
        help="messages per second, all devices together (0 = as fast as possible)",
    )
    pacing.add_argument(
        "--count",
        type=non_negative_int,
        default=count,
        help="messages to publish in total, then exit (0 = until Ctrl-C)",
    )
    pacing.add_argument(
        "--seed", type=int, default=None, help="random seed for reproducible values"
    )


def add_uplink_args(parser: argparse.ArgumentParser) -> None:
    devices = parser.add_argument_group("devices")
    devices.add_argument(
        "--devices", type=positive_int, default=5, help="number of simulated devices"
    )
    devices.add_argument(
        "--tenant", default="demo-tenant", help="tenant name (deviceInfo.tenantName)"
    )
    devices.add_argument(
        "--application",
        default="demo-application",
        help="application name (deviceInfo.applicationName)",
    )
    devices.add_argument(
        "--gateway-id", default=payloads.gateway_id_for(1), help="gateway that hears the uplinks"
    )
    devices.add_argument(
        "--raw",
        action="store_true",
        help="leave out the decoded `object` (only Cayenne LPP `data`), so the gateway decodes it",
    )


def tcp_port(raw: str) -> int:
    value = int(raw)
    if not 0 < value < 65536:
        raise argparse.ArgumentTypeError("must be 1-65535")
    return value


def positive_int(raw: str) -> int:
    value = int(raw)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def non_negative_int(raw: str) -> int:
    value = int(raw)
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


def non_negative_float(raw: str) -> float:
    value = float(raw)
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError("must be a finite number, 0 or more")
    return value


def positive_float(raw: str) -> float:
    value = non_negative_float(raw)
    if value == 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return value


# ---------------------------------------------------------------- the MQTT link


def _nagle_off(client: mqtt.Client, userdata: Any, sock: Any) -> None:
    # Simulated uplinks are small and latency is what a demo shows: send each at once.
    with contextlib.suppress(OSError, AttributeError):  # TLS/websocket wrappers may not
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class Link:
    """A connected paho client (network loop on its own thread) that counts acks."""

    def __init__(self, opts: argparse.Namespace, name: str, will: Message | None = None) -> None:
        self.opts = opts
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=opts.client_id or f"sim-{name}-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv5,
        )
        self.client.on_socket_open = _nagle_off
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        # Bound what piles up while the broker is away; a full queue counts as failed.
        self.client.max_inflight_messages_set(100)
        self.client.max_queued_messages_set(10_000)
        self.client.connect_timeout = opts.timeout
        self.client.reconnect_delay_set(1, 10)
        if opts.username:
            self.client.username_pw_set(opts.username, opts.password)

        if will is not None:
            self.client.will_set(will.topic, will.payload, qos=1, retain=will.retain)
        self.connected = threading.Event()
        self.refused: str | None = None
        self.acked = 0
        self._lock = threading.Lock()

    @property
    def address(self) -> str:
        return f"{self.opts.host}:{self.opts.port}"

    def open(self) -> Link:
        """Connect and wait for CONNACK; :class:`BrokerUnavailable` says why not."""
        try:
            if self.opts.tls or self.opts.tls_ca:
                self.client.tls_set(ca_certs=self.opts.tls_ca)
            self.client.connect(self.opts.host, self.opts.port, keepalive=30)
        except (OSError, ValueError) as exc:
            raise BrokerUnavailable(
                f"Cannot reach MQTT broker {self.address}: {describe_error(exc)}"
            ) from None
        self.client.loop_start()
        if not self.connected.wait(self.opts.timeout) or self.refused:
            self.client.loop_stop()
            why = self.refused or f"no CONNACK within {self.opts.timeout:g}s"
            raise BrokerUnavailable(
                f"MQTT broker {self.address} did not accept the connection: {why}"
            )
        return self

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        if reason.is_failure:
            self.refused = str(reason)
            client.disconnect()  # no retry loop against a broker that refuses us
        elif self.connected.is_set():
            logger.info("🔌 Reconnected to %s", self.address)
        self.connected.set()

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        if reason.is_failure and not self.refused:
            logger.warning("⚠️ Lost the broker connection (%s); retrying", reason)

    def _on_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, props: Any
    ) -> None:
        with self._lock:
            self.acked += 1

    def publish(self, message: Message) -> bool:
        """Queue one message; False when paho refused it (its queue is full)."""
        return self.publish_raw(message.topic, message.payload, message.retain)

    def publish_raw(self, topic: str, payload: bytes, retain: bool = False) -> bool:
        info = self.client.publish(topic, payload, qos=self.opts.qos, retain=retain)
        # NO_CONN: paho keeps QoS>0 messages and sends them after it reconnects.
        return info.rc in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN)

    def wait_acked(self, expected: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if self.acked >= expected:
                    return True
            time.sleep(0.01)
        return False

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def describe_error(exc: BaseException) -> str:
    if isinstance(exc, socket.gaierror):
        return f"unknown host ({exc.strerror})"
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
    return str(exc) or type(exc).__name__


# ---------------------------------------------------------------- pacing and the loop


class Pacer:
    """Spreads messages evenly at ``rate`` per second on a fixed schedule (no drift), and
    returns early when ``stop`` is set. ``rate`` 0 means no pause at all."""

    def __init__(
        self, rate: float, stop: threading.Event, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self.stop = stop
        self.clock = clock
        self.start = clock()

    def wait_turn(self, index: int) -> bool:
        """Sleep until message ``index`` is due; False if asked to stop meanwhile."""
        if self.interval:
            delay = self.start + index * self.interval - self.clock()
            if delay > 0:  # never stop.wait(): its signal handler sets it (shared/stopwait.py)
                return not sleep_unless_stopped(self.stop, delay)
        return not self.stop.is_set()


@dataclass
class Summary:
    sent: int = 0
    failed: int = 0
    acked: int = 0
    seconds: float = 0.0
    interrupted: bool = False

    def line(self, what: str) -> str:
        rate = self.sent / self.seconds if self.seconds > 0 else 0.0
        how = "Interrupted after" if self.interrupted else "Done:"
        return (
            f"{how} {self.sent} {what} published in {self.seconds:.2f}s ({rate:.1f} msg/s), "
            f"{self.acked} acknowledged, {self.failed} failed"
        )


def publish_loop(
    link: Link, messages: Iterator[Message], rate: float, count: int, stop: threading.Event
) -> Summary:
    summary = Summary()
    pacer = Pacer(rate, stop)
    started = time.monotonic()
    index = 0
    while count == 0 or index < count:
        if not pacer.wait_turn(index):
            summary.interrupted = True
            break
        if link.publish(next(messages)):
            summary.sent += 1
        else:
            summary.failed += 1
        index += 1
    summary.seconds = time.monotonic() - started
    return summary


def stop_on_signals() -> threading.Event:
    """SIGINT (Ctrl-C) and SIGTERM (supervisord, docker) both end the run cleanly."""
    stop = threading.Event()

    def handle(signum: int, frame: Any) -> None:
        if stop.is_set():  # asked twice: stop waiting for acknowledgements too
            raise KeyboardInterrupt
        stop.set()

    signal.signal(signal.SIGINT, handle)
    signal.signal(signal.SIGTERM, handle)
    return stop


def run_simulator(
    name: str,
    what: str,
    opts: argparse.Namespace,
    messages: Callable[[random.Random], Iterator[Message]],
    *,
    will: Message | None = None,
    first: Sequence[Message] = (),
    last: Sequence[Message] = (),
) -> int:
    """Connect, publish ``first``, then ``messages`` paced by the flags, then ``last``;
    print the summary. ``first``/``last`` (e.g. a gateway's online/offline state) do not
    count towards ``--count``."""
    log.setup(f"simulator.{name}", os.environ.get("LOG_LEVEL", "info"))
    stop = stop_on_signals()
    link = Link(opts, name, will=will)
    try:
        link.open()
    except BrokerUnavailable as exc:
        logger.error("❌ %s", exc)
        return EXIT_FAILED
    logger.info(
        "✅ Connected to %s, publishing %s (QoS %d, %s, %s)",
        link.address,
        what,
        opts.qos,
        f"{opts.rate:g} msg/s" if opts.rate else "unthrottled",
        f"{opts.count} in total" if opts.count else "until Ctrl-C",
    )
    rng = random.Random(opts.seed)
    extra = 0
    for message in first:
        extra += link.publish(message)
    summary = publish_loop(link, messages(rng), opts.rate, opts.count, stop)
    for message in last:
        extra += link.publish(message)
    complete = link.wait_acked(summary.sent + extra, opts.timeout)
    summary.acked = max(0, link.acked - extra)
    link.close()
    logger.info("%s %s", "🛑" if summary.interrupted else "✅", summary.line(what))
    if not complete:
        logger.error(
            "❌ The broker did not acknowledge %d messages within %gs",
            summary.sent + extra - link.acked,
            opts.timeout,
        )
        return EXIT_FAILED
    return EXIT_OK if summary.failed == 0 else EXIT_FAILED


def main_guard(run: Callable[[], int]) -> int:
    """A second Ctrl-C while shutting down exits at once, without a traceback."""
    try:
        return run()
    except KeyboardInterrupt:
        print("🛑 Interrupted", file=sys.stderr)
        return 130


# ---------------------------------------------------------------- uplink simulators

# Where each measurement starts, how far it wanders per uplink, its bounds and the
# resolution Cayenne LPP carries (so `object` and `data` agree exactly).
WALKS = {
    "voltage": ((3.4, 4.0), 0.02, (3.0, 4.2), 2),
    "current": ((0.1, 1.5), 0.05, (0.0, 5.0), 3),
}


def uplink_stream(
    opts: argparse.Namespace, simulator: str, kinds: Sequence[str], rng: random.Random
) -> Iterator[Message]:
    """Round-robin over the devices; each device sends one uplink per kind in ``kinds``
    (dual: voltage then current), with its own frame counter and a random walk."""
    devices = payloads.make_devices(simulator, opts.devices, opts.tenant, opts.application)
    values = {(d.dev_eui, k): rng.uniform(*WALKS[k][0]) for d in devices for k in kinds}
    signal_base = {d.dev_eui: (rng.randint(-110, -50), rng.uniform(-5.0, 10.0)) for d in devices}
    f_cnt = dict.fromkeys((d.dev_eui for d in devices), 0)
    uplink_id = rng.getrandbits(16)
    while True:
        for device in devices:
            for kind in kinds:
                _, step, (low, high), digits = WALKS[kind]
                key = (device.dev_eui, kind)
                values[key] = min(high, max(low, values[key] + rng.uniform(-step, step)))
                f_cnt[device.dev_eui] += 1
                uplink_id = (uplink_id + 1) % 2**32
                rssi, snr = signal_base[device.dev_eui]
                radio = payloads.Radio(
                    gateway_id=opts.gateway_id,
                    rssi=rssi + rng.randint(-3, 3),
                    snr=round(snr + rng.uniform(-1.0, 1.0), 1),
                    uplink_id=uplink_id,
                )
                event = payloads.uplink(
                    device,
                    kind=kind,
                    value=round(values[key], digits),
                    time_ns=time.time_ns(),
                    f_cnt=f_cnt[device.dev_eui],
                    radio=radio,
                    dedup_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                    with_object=not opts.raw,
                )
                yield Message(payloads.uplink_topic(device), dumps(event))


def uplink_main(
    simulator: str, kinds: Sequence[str], description: str, argv: Sequence[str] | None
) -> int:
    """The whole of the voltage, current and dual simulators."""
    parser = base_parser(f"python -m simulators.{simulator}", description)
    add_uplink_args(parser)
    add_pacing(parser, rate=1.0, count=0)
    opts = parser.parse_args(argv)
    what = f"{'+'.join(kinds)} uplinks from {opts.devices} device(s)"
    return main_guard(
        lambda: run_simulator(
            simulator, what, opts, lambda rng: uplink_stream(opts, simulator, kinds, rng)
        )
    )
