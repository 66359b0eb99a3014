"""ingest's wiring: ROUTER socket (raw frames), status endpoint, the MQTT link's thread
(which also hands frames on, :mod:`services.ingest.mqtt_link`), graceful stop.

Shutdown on SIGTERM/SIGINT: take no new messages (they stay unacknowledged, so the broker
redelivers them), forward and acknowledge what is held within MQTT_DRAIN_TIMEOUT,
DISCONNECT (the persistent session stays on the broker), close the ROUTER socket with a
bounded linger, log a summary, exit 0. A second signal skips the drain.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Sequence
from types import FrameType

import zmq

from services.ingest.config import Config, load
from services.ingest.metrics import Metrics
from services.ingest.mqtt_link import MqttLink
from shared import service, zmq_util
from shared.http_status import StatusServer
from shared.stopwait import sleep_unless_stopped

logger = logging.getLogger(__name__)

MQTT_CLOSE_TIMEOUT_S = 3.0


def main(argv: Sequence[str] | None = None) -> int:
    return service.main("ingest", argv, load, run)


def open_router(ctx: zmq.Context, config: Config) -> zmq.Socket:  # type: ignore[type-arg]
    sock: zmq.Socket[bytes] = ctx.socket(zmq.ROUTER)
    # Frames go only to decoders with credit (shared.rawlink), so the decoders' credit bounds
    # what is in flight; SNDHWM and a small kernel buffer bound each pipe besides
    # (RELIABILITY.md §0.7). MANDATORY: a send to a vanished decoder fails (EHOSTUNREACH)
    # instead of silently dropping the frame, so it goes to another one.
    zmq_util.configure(sock, hwm=config.zmq_raw_sndhwm, kernel_buffer=config.zmq_raw_sndbuf)
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    try:
        zmq_util.bind(sock, config.zmq_raw_bind, "raw frames ROUTER")
    except OSError:
        sock.close(linger=0)
        raise
    return sock


def run(config: Config) -> int:
    stop = threading.Event()
    metrics = Metrics()
    link: MqttLink | None = None

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        if stop.is_set() and link is not None:
            link.abort()  # second signal: skip the drain
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    _log_start(config)
    ctx = zmq.Context()
    try:
        router = open_router(ctx, config)
    except OSError:
        ctx.term()
        raise
    link = MqttLink(config, router, metrics)
    held = link.forwarder.pending
    metrics.queue_depth.set_function(lambda: len(held))
    status: StatusServer | None = None
    if config.metrics_port:
        try:
            status = StatusServer(
                config.metrics_host, config.metrics_port, metrics.registry, link.ready
            )
        except OSError as exc:
            link.forwarder.close()  # its monitor socket would keep ctx.term() waiting
            router.close(linger=0)
            ctx.term()
            raise OSError(
                f"cannot serve metrics on {config.metrics_host}:{config.metrics_port}: {exc}"
            ) from None
        status.start()

    link.start()
    exit_code = 0
    while not sleep_unless_stopped(stop, 0.5):  # never stop.wait(): see shared/stopwait.py
        if not link.alive:  # cannot happen unless there is a bug
            logger.error("❌ The MQTT link's thread died; stopping")
            exit_code = 1
            break

    logger.info(
        "🛑 Stopping: taking no new messages; forwarding the %d held (at most %g s)",
        len(held),
        config.mqtt_drain_timeout,
    )
    left = link.finish(config.mqtt_drain_timeout, MQTT_CLOSE_TIMEOUT_S)
    if left:
        metrics.deferred.inc(left)
    router.close(linger=zmq_util.LINGER_MS)
    ctx.term()
    if status is not None:
        status.close()
    logger.info(
        "🛑 Stopped: received %d, forwarded %d (last seq %d), acknowledged %d; %d left "
        "unacknowledged for the broker to redeliver",
        metrics.value("gateway_mqtt_messages_received_total"),
        metrics.value("gateway_ingest_frames_forwarded_total"),
        link.forwarder.seq,
        metrics.value("gateway_mqtt_acks_total"),
        metrics.value("gateway_ingest_deferred_total"),
    )
    return exit_code


def _log_start(c: Config) -> None:
    session = (
        f"persistent session {c.mqtt_session_expiry} s"
        if c.mqtt_session_expiry
        else "no persistent session"
    )
    logger.info(
        "🚀 ingest %s: MQTT %s%s as %r (MQTT %s, %s, receive maximum %d, QoS %d), frames src %r",
        "starting",
        c.broker_address,
        " over TLS" if c.tls_context else "",
        c.mqtt_client_id,
        c.mqtt_protocol,
        session,
        c.mqtt_receive_maximum,
        c.mqtt_qos,
        c.zmq_raw_src,
    )
    if c.mqtt_tls_insecure:
        logger.warning(
            "⚠️ MQTT_TLS_INSECURE=true: the broker's host name is NOT checked; anyone holding a "
            "certificate from this CA can pose as the broker"
        )
    if c.mqtt_share_group:
        logger.info(
            "🤝 Shared subscription group %r: every ingest in the group needs its own "
            "MQTT_CLIENT_ID",
            c.mqtt_share_group,
        )
    if c.mqtt_qos == 0:
        logger.warning("⚠️ MQTT_QOS=0: the broker keeps nothing for us while ingest is away")
