"""``python -m services.wsfanout``: wiring, signals and shutdown.

SIGTERM/SIGINT: hand off the events link (every decoder answers with a marker behind what
it sent and holds what follows for the next process: handoff.py), close the SUB socket,
stop accepting, close clients with 1001
(going away) within ``WEBSOCKET_SHUTDOWN_TIMEOUT`` (then drop the rest), save the replay
buffer, exit 0. A second signal cuts the waiting short.
SIGHUP: reload the tokens file and close connections whose token was revoked (1008).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import signal
import sys
import time
from collections.abc import Awaitable, Sequence
from typing import Any

import zmq
from websockets.asyncio.server import serve

from services.wsfanout import token_cli
from services.wsfanout.client import WRITE_LIMIT
from services.wsfanout.config import SECRET_FIELDS, Config, load
from services.wsfanout.fanout import Fanout
from services.wsfanout.gate import Gate, select_subprotocol
from services.wsfanout.handoff import HANDOFF_SECONDS
from services.wsfanout.handshakes import Handshakes
from services.wsfanout.metrics import Metrics
from shared import service
from shared.zmq_util import LINGER_MS, Connections, bind, configure

logger = logging.getLogger(__name__)

BACKLOG = 2048  # many dashboards reconnect at once after a restart
MAX_QUEUE = 8  # inbound frames buffered per connection before reading pauses


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "token":
        return token_cli.main(args[1:])
    return service.main("wsfanout", args, load, run)


def run(config: Config) -> int:
    return asyncio.run(serve_until_stopped(config))


def new_epoch() -> str:
    """Changes at every start; sortable and readable, unique thanks to the random tail."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(3)


async def serve_until_stopped(config: Config) -> int:
    loop = asyncio.get_running_loop()
    metrics = Metrics()
    fanout = Fanout(config, metrics, config.token_store(), new_epoch())
    logger.info(
        "✅ wsfanout starting: epoch %s; %s",
        fanout.epoch,
        service.describe(config, SECRET_FIELDS),
    )
    if config.websocket_state_file:
        fanout.load_state(config.websocket_state_file)

    stop = asyncio.Event()
    hurry = asyncio.Event()

    def on_signal(name: str) -> None:
        if stop.is_set():
            logger.warning("⚠️ %s again: closing without waiting", name)
            hurry.set()
        else:
            logger.info("🛑 %s received, stopping", name)
            stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig.name)
    loop.add_signal_handler(signal.SIGHUP, fanout.reload_tokens)

    ctx = zmq.Context()  # plain: Fanout.receive watches the socket's FD on the loop
    sub = ctx.socket(zmq.SUB)
    peers: Connections | None = None
    try:
        configure(
            sub,
            hwm=config.zmq_events_rcvhwm,
            kernel_buffer=config.zmq_events_rcvbuf,
            linger_ms=LINGER_MS,
            max_msg_size=config.zmq_events_max_message + 1024,
        )
        # Everything: per-source gap accounting needs every frame (zguide "Suicidal Snail").
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        peers = Connections(sub)  # watching before bind: no connection goes uncounted
        peers.watch(loop)
        bind(sub, config.zmq_events_bind, "Events SUB")
        gate = Gate(config, fanout, metrics)
        handshakes = Handshakes(gate.refused_early)
        server = await serve(
            fanout.handle,
            config.websocket_host,
            config.websocket_port,
            create_connection=handshakes.connection_class,
            process_request=gate.process_request,
            select_subprotocol=select_subprotocol,
            compression=None,  # permessage-deflate triples idle memory; CRIME-like leaks
            open_timeout=config.websocket_open_timeout,
            ping_interval=config.websocket_ping_interval or None,
            ping_timeout=config.websocket_ping_timeout or None,
            close_timeout=config.websocket_close_timeout,
            max_size=config.websocket_max_message,
            max_queue=MAX_QUEUE,
            write_limit=WRITE_LIMIT,
            server_header=None,
            ssl=config.ssl_context(),
            backlog=BACKLOG,
        )
        port = server.sockets[0].getsockname()[1]
        _warn_about_exposure(config, fanout)
        logger.info(
            "🌐 WebSocket server listening on %s://%s:%d/",
            config.scheme,
            config.websocket_host,
            port,
        )
        receiver = asyncio.create_task(fanout.receive(sub))
        sweeper = asyncio.create_task(fanout.sweep_forever())

        await stop.wait()
        fanout.stopping = True
        receiver.cancel()
        sweeper.cancel()
        await asyncio.gather(receiver, sweeper, return_exceptions=True)
        # Take what arrives until every decoder has sent its leaving marker (nothing of
        # theirs is in flight then), and close the SUB at once: the decoders hold what
        # follows, then their PUB sockets (connecting side, ZMQ_IMMEDIATE=0) queue it for
        # our successor instead of handing it to a socket that is about to be thrown away.
        drained = await fanout.hand_off(sub, peers.update, HANDOFF_SECONDS)
        answered, expected = len(fanout.goodbyes), peers.update()
        peers.close(loop)
        sub.close(linger=0)
        logger.info(
            "🔌 Events SUB closed (%d events taken at stop; %d of %d decoders handed off)",
            drained,
            answered,
            expected,
        )
        if answered < expected:
            logger.warning(
                "⚠️ %d decoders did not answer the hand-off within %g s: events they sent "
                "just now may be lost (the next fan-out counts them in frames_lost)",
                expected - answered,
                HANDOFF_SECONDS,
            )
        server.close()  # stop accepting; close open connections with 1001
        handshakes.abort_opening()  # not clients yet: nothing to close politely
        if not await _wait(server.wait_closed(), config.websocket_shutdown_timeout, hurry):
            logger.warning("⚠️ %d clients did not close in time: dropping them", len(fanout.index))
            fanout.abort_all()
            await _wait(server.wait_closed(), 2.0, hurry)
        if config.websocket_state_file:
            fanout.save_state(config.websocket_state_file)
    finally:
        if peers is not None:
            peers.close(loop)  # no-op when closed already
        sub.close(linger=LINGER_MS)  # no-op when closed already
        ctx.term()
    logger.info(
        "🛑 Stopped (epoch %s, %d events numbered): %d frames lost, %d duplicates dropped, "
        "%d reordered, %d not delivered (slow clients, duplicates, bad frames)",
        fanout.epoch,
        fanout.seq,
        metrics.total("frames_lost"),
        metrics.total("duplicates"),
        metrics.total("reordered"),
        metrics.total("dropped"),
    )
    return 0


async def _wait(aw: Awaitable[Any], timeout: float, hurry: asyncio.Event) -> bool:
    """Wait for ``aw`` up to ``timeout`` s or until ``hurry`` is set; True if it finished."""
    task = asyncio.ensure_future(aw)
    hurried = asyncio.create_task(hurry.wait())
    done, _ = await asyncio.wait(
        {task, hurried}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
    )
    hurried.cancel()
    if task not in done:
        task.cancel()
        return False
    return True


def _warn_about_exposure(config: Config, fanout: Fanout) -> None:
    if not fanout.tokens.enabled:
        if not config.loopback_only:
            logger.warning(
                "⚠️ No tokens configured and listening on %s: anyone who can reach port %d "
                "receives every event. Set WEBSOCKET_TOKENS_FILE "
                "(python -m services.wsfanout token add ...).",
                config.websocket_host,
                config.websocket_port,
            )
        return
    logger.info("🔑 Auth on: %d tokens", len(fanout.tokens))
    if len(fanout.tokens) == 0:
        logger.warning("⚠️ Auth is on but no tokens are configured: every client gets HTTP 401")
    if not config.tls and not config.loopback_only:
        logger.warning(
            "⚠️ Tokens travel in clear text: set WEBSOCKET_TLS_CERT/KEY or terminate TLS in a proxy"
        )
