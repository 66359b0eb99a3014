"""decode's entry point: config, logging, sockets, metrics endpoint, signals, run."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Sequence
from types import FrameType

import zmq

from services.decode.config import DecodeConfig, load
from services.decode.dispatch import Decoder
from services.decode.metrics import Metrics
from services.decode.worker import RawLink, Worker, open_sockets
from shared import service
from shared.http_status import StatusServer
from shared.zmq_util import LINGER_MS

logger = logging.getLogger(__name__)


def main(argv: Sequence[str] | None = None) -> int:
    return service.main("decode", argv, load, run)


def run(config: DecodeConfig) -> int:
    stop = threading.Event()
    _install_signal_handlers(stop)
    metrics = Metrics()
    ready = threading.Event()

    def health() -> tuple[bool, str]:
        if stop.is_set():
            return False, "stopping"
        return (True, "ok") if ready.is_set() else (False, "starting")

    status = None
    if config.metrics_port:
        status = StatusServer(config.metrics_host, config.metrics_port, metrics.registry, health)
        status.start()
    ctx = zmq.Context()
    links: list[RawLink] = []
    pub = None
    try:
        links, pub = open_sockets(
            ctx,
            config.zmq_raw_connect,
            config.zmq_events_connect,
            rcvhwm=config.zmq_raw_rcvhwm,
            sndhwm=config.zmq_events_sndhwm,
            sndbuf=config.zmq_events_sndbuf,
            rcvbuf=config.zmq_raw_rcvbuf,
            max_msg_size=config.zmq_raw_max_message,
        )
        codecs = config.options.codecs
        worker = Worker(
            links,
            pub,
            Decoder(config.options),
            metrics,
            config.zmq_raw_max_message,
            credit=config.zmq_raw_credit,
        )
        if not worker.wait_for_subscriber(stop):
            logger.info("🛑 Stopped before any fan-out subscribed")
            return 0
        worker.connect()
        ready.set()
        logger.info(
            "🔧 Decoder ready: raw codec %s, %d codec rule(s), payload limit %d bytes",
            codecs.default.name,
            len(codecs.by_profile) + len(codecs.by_application) + len(codecs.by_fport),
            config.options.limits.max_payload,
        )
        worker.run(stop)
        logger.info("🛑 Drained; handled %d frames in all, closing sockets", worker.handled)
    finally:
        # Bounded linger: the last events get LINGER_MS to reach the fan-out, no longer.
        # Nothing queued towards ingest matters any more (a credit, a stop to a gone ingest).
        for link in links:
            link.sock.close(linger=0)
        if pub is not None:
            pub.close(linger=LINGER_MS)
        ctx.term()
        if status is not None:
            status.close()
    logger.info("🛑 Stopped")
    return 0


def _install_signal_handlers(stop: threading.Event) -> None:
    def handle(signum: int, frame: FrameType | None) -> None:
        if stop.is_set() and signum == signal.SIGINT:
            logger.warning("⚠️ Second interrupt: exiting without draining")
            raise SystemExit(1)
        logger.info("🛑 %s received: draining", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
