"""Broker connection test: connect, subscribe to a probe topic, publish probes to it and
report the round trip. Exit 0 when every probe came back, 1 (with one line saying why)
when the broker cannot be reached, refuses us, or does not deliver.

    python -m simulators.connection_test --host localhost --port 1883
"""

from __future__ import annotations

import logging
import os
import queue
import statistics
import time
import uuid
from collections.abc import Sequence
from typing import Any

from shared import log
from simulators.common import (
    EXIT_FAILED,
    EXIT_OK,
    BrokerUnavailable,
    Link,
    base_parser,
    main_guard,
    positive_int,
)

logger = logging.getLogger("simulator")


def round_trips(link: Link, topic: str, probes: int, timeout: float) -> list[float]:
    """Publish ``probes`` messages to ``topic`` (already subscribed) one at a time; the
    round trip of each in milliseconds. Raises TimeoutError when one does not return."""
    arrived: queue.Queue[bytes] = queue.Queue()
    link.client.on_message = lambda client, userdata, msg: arrived.put(bytes(msg.payload))
    results = []
    for n in range(probes):
        token = f"{n}:{uuid.uuid4().hex}".encode()
        sent = time.perf_counter()
        link.publish_raw(topic, token)
        deadline = sent + timeout
        while True:
            try:
                payload = arrived.get(timeout=max(0.0, deadline - time.perf_counter()))
            except queue.Empty:
                raise TimeoutError(f"probe {n + 1} did not come back within {timeout:g}s") from None
            if payload == token:
                results.append((time.perf_counter() - sent) * 1000)
                break
    return results


def subscribe(link: Link, topic: str, qos: int, timeout: float) -> None:
    granted: queue.Queue[Any] = queue.Queue()
    link.client.on_subscribe = lambda client, userdata, mid, codes, props: granted.put(codes)
    link.client.subscribe(topic, qos=qos)
    try:
        codes = granted.get(timeout=timeout)
    except queue.Empty:
        raise TimeoutError(f"no SUBACK within {timeout:g}s") from None
    if codes[0].is_failure:
        raise PermissionError(f"subscription to {topic} refused: {codes[0]}")


def run(opts: Any) -> int:
    log.setup("simulator.connection_test", os.environ.get("LOG_LEVEL", "info"))
    link = Link(opts, "connection-test")
    started = time.perf_counter()
    try:
        link.open()
    except BrokerUnavailable as exc:
        logger.error("❌ %s", exc)
        return EXIT_FAILED
    connect_ms = (time.perf_counter() - started) * 1000
    topic = f"{opts.topic_prefix.rstrip('/')}/{uuid.uuid4().hex}"
    try:
        subscribe(link, topic, opts.qos, opts.timeout)
        times = round_trips(link, topic, opts.probes, opts.timeout)
    except (TimeoutError, PermissionError) as exc:
        logger.error("❌ Connected to %s, but %s (check the broker's ACLs)", link.address, exc)
        return EXIT_FAILED
    finally:
        link.close()
    logger.info(
        "✅ Broker %s OK: connected in %.1f ms; %d probe(s) at QoS %d, "
        "round trip min %.1f / median %.1f / max %.1f ms",
        link.address,
        connect_ms,
        len(times),
        opts.qos,
        min(times),
        statistics.median(times),
        max(times),
    )
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = base_parser("python -m simulators.connection_test", __doc__.splitlines()[0])
    parser.add_argument("--probes", type=positive_int, default=3, help="probe messages to send")
    parser.add_argument(
        "--topic-prefix",
        default="lorawan-gateway/connection-test",
        help="probes go to PREFIX/<random id> (the client needs publish+subscribe there)",
    )
    opts = parser.parse_args(argv)
    return main_guard(lambda: run(opts))


if __name__ == "__main__":
    raise SystemExit(main())
