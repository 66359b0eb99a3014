"""Hostile and slow clients (RELIABILITY.md W1, W2, W9, W11, W13) and many connections."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
import statistics
import threading
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.support.timing import seconds, wait_for
from tests.wsfanout.helpers import (
    Fanout,
    collector,
    device_event,
    raw_upgrade,
    tiny_buffer_client,
    value_of,
)

T = TypeVar("T")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def dispatch_cost(fanout: Fanout) -> tuple[float, float]:
    m = fanout.metrics()
    none: frozenset[tuple[str, str]] = frozenset()
    return m[("gateway_wsfanout_dispatch_seconds_sum", none)], m[
        ("gateway_wsfanout_dispatch_seconds_count", none)
    ]


def test_an_oversized_client_message_closes_that_client_with_1009_only(start_fanout, open_feed):
    fanout = start_fanout({"WEBSOCKET_MAX_MESSAGE": "1024"})
    feed = open_feed(fanout)
    bystander = collector(fanout.url())
    big = collector(fanout.url())
    big.send({"op": "ping", "pad": "x" * 2000})
    wait_for(lambda: big.closed is not None, 10, "the oversized client to be closed")
    assert big.closed.rcvd is not None and big.closed.rcvd.code == 1009
    feed.send(device_event(value=1))
    assert value_of(bystander.wait_events(1)[0]) == 1
    fanout.wait_metric("gateway_wsfanout_clients_closed_total", 1, reason="too_big")
    bystander.close()


def test_a_flood_gets_an_error_then_close_1008_and_others_carry_on(start_fanout, open_feed):
    fanout = start_fanout({"WEBSOCKET_RATE_LIMIT": "60", "WEBSOCKET_RATE_BURST": "5"})
    feed = open_feed(fanout)
    bystander = collector(fanout.url())
    flood = collector(fanout.url())
    for _ in range(30):
        try:
            flood.send({"op": "ping"})
        except ConnectionClosed:
            break
    wait_for(lambda: flood.closed is not None, 10, "the flooding client to be closed")
    replies = flood.snapshot()
    assert [m["type"] for m in replies[:-1]] == ["pong"] * 5  # the burst allowance
    assert replies[-1]["type"] == "error" and "rate limit" in replies[-1]["error"]
    assert flood.closed.rcvd is not None and flood.closed.rcvd.code == 1008
    feed.send(device_event(value=1))
    assert value_of(bystander.wait_events(1)[0]) == 1
    bystander.close()


def test_slowloris_handshakes_are_dropped_at_the_open_timeout(start_fanout):
    fanout = start_fanout({"WEBSOCKET_OPEN_TIMEOUT": "1"})
    # Closed by the with even if a recv times out or an assert fails (a plain socket left to
    # the collector raises its ResourceWarning in whichever test runs next).
    with (
        socket.create_connection(("127.0.0.1", fanout.port), timeout=seconds(15)) as partial,
        socket.create_connection(("127.0.0.1", fanout.port), timeout=seconds(15)) as silent,
    ):
        partial.sendall(
            b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        )  # never finished
        for sock in (partial, silent):
            with contextlib.suppress(ConnectionResetError):  # a reset is closed too
                assert sock.recv(1024) == b""  # the server closed it
            sock.close()
    assert fanout.health()["clients"] == 0
    assert fanout.wait_metric(REJECTED, 2, status="timeout") == 2
    assert "no complete request within the open timeout (timeout)" in fanout.log()


REJECTED = "gateway_wsfanout_handshakes_rejected_total"


def tls_client_hello() -> bytes:
    """The first bytes a TLS client sends: what a wss:// URL sends to a plain ws:// port."""
    tls = ssl.create_default_context().wrap_bio(
        ssl.MemoryBIO(), outgoing := ssl.MemoryBIO(), server_hostname="localhost"
    )
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def send_and_close(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=seconds(10)) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        with contextlib.suppress(ConnectionResetError):
            return s.recv(1024)
    return b""


def test_requests_websockets_cannot_read_are_refused_counted_and_logged(start_fanout):
    """A request line over 8 KiB gets 414, header fields over 8 KiB or more than 128 of
    them 431, bytes that are not HTTP a closed connection; each is counted and logged
    (once per 10 s per kind), also when the client keeps its socket open afterwards. A
    connection closed before it sent a byte is a probe, not bad input: neither."""
    fanout = start_fanout({"WEBSOCKET_OPEN_TIMEOUT": "2"})
    assert raw_upgrade(fanout.port, "/" + "a" * 10_000).startswith(b"HTTP/1.1 414")
    assert raw_upgrade(fanout.port, "/", {"X-Big": "b" * 20_000}).startswith(b"HTTP/1.1 431")
    many = {f"X-H{i}": "v" for i in range(300)}
    assert raw_upgrade(fanout.port, "/", many).startswith(b"HTTP/1.1 431")
    # Refused, and then the client just sits there until the open timeout.
    with socket.create_connection(("127.0.0.1", fanout.port), timeout=seconds(10)) as held:
        held.sendall(b"GET /" + b"a" * 10_000 + b" HTTP/1.1\r\n")
        assert held.recv(1024).startswith(b"HTTP/1.1 414")
        assert fanout.wait_metric(REJECTED, 2, status="414") == 2
    not_http = [
        tls_client_hello(),  # wss:// to a ws:// port
        b"GET / HTTP/1.1\nHost: x\n\n",  # bare LF
        bytes(range(256)),
    ]
    for data in not_http:
        assert send_and_close(fanout.port, data) == b""  # closed, no HTTP response
    assert send_and_close(fanout.port, b"") == b""  # a probe
    assert fanout.wait_metric(REJECTED, len(not_http), status="invalid") == len(not_http)
    assert fanout.wait_metric(REJECTED, 2, status="431") == 2
    log = fanout.log()
    assert "request line too long (414)" in log and "not a valid HTTP request" in log
    assert log.count("header fields too large or too many (431)") == 1  # rate-limited
    # The peer's bytes appear only as a short repr: no 8 KiB lines, no raw control bytes.
    refused = [line for line in log.splitlines() if "Refused" in line]
    assert refused and all(len(line) < 400 and "\x1b" not in line for line in refused)
    # The probe was not counted, and nothing above was mistaken for a slow client.
    assert sum(fanout.metric(REJECTED, status=s) for s in ("timeout", "400")) == 0
    assert raw_upgrade(fanout.port, "/").startswith(b"HTTP/1.1 101")  # still serving


async def _reader(url: str, got: list[tuple[int, float]], ready: asyncio.Event, total: int) -> None:
    async with connect(url, ping_interval=None) as ws:
        ready.set()
        async for text in ws:
            msg = json.loads(text)
            got.append(
                (
                    value_of(msg),
                    (time.time_ns() - msg["object"]["values"][0]["time"] * 1_000_000) / 1e6,
                )
            )
            if len(got) >= total:
                return


def _publish(
    fanout: Fanout, feed_factory: Any, first: int, count: int, rate: float, pad: str
) -> None:
    feed = feed_factory(fanout)
    interval = 1.0 / rate
    start = time.monotonic()
    for i in range(first, first + count):
        now_ms = time.time_ns() // 1_000_000
        obj = {"type": "voltage", "values": [{"time": now_ms, "value": i}], "pad": pad}
        feed.send(device_event(device=f"m{i % 20}", value=i, obj=obj))
        delay = start + (i - first + 1) * interval - time.monotonic()
        if delay > 0:
            time.sleep(delay)


async def closing_after(scenario: Coroutine[Any, Any, T], opened: list[ClientConnection]) -> T:
    """``scenario``, then close the connections it put in ``opened`` whatever happened: one
    left open when it failed would be collected, and warned about (an unclosed transport),
    in whichever test runs next."""
    try:
        return await scenario
    finally:
        await asyncio.gather(*(ws.close() for ws in opened))


def test_a_slow_client_among_50_is_dropped_and_closed_1013_the_50_get_everything(
    start_fanout, open_feed
):
    """W1: one client stops reading; the 50 others receive every event; memory stays bounded."""
    fanout = start_fanout(
        {
            "WEBSOCKET_CLIENT_QUEUE_MESSAGES": "300",
            "WEBSOCKET_CLIENT_QUEUE_BYTES": "1000000",
            "WEBSOCKET_SLOW_CLIENT_TIMEOUT": "2",
            "WEBSOCKET_CLOSE_TIMEOUT": "60",
            "WEBSOCKET_SEND_BUFFER": "65536",
        }
    )
    baseline_n, slow_n, rate = 250, 1250, 250.0
    total = baseline_n + slow_n
    pad = "x" * 800  # ~1 KiB events: a stalled socket fills within a second
    feeds: list[Any] = []

    def feed_factory(f: Fanout) -> Any:
        feeds.append(open_feed(f))
        return feeds[-1]

    opened: list[ClientConnection] = []  # closed even if the scenario fails

    async def scenario() -> dict[str, Any]:
        url = fanout.url(tenant="acme")
        got: list[list[tuple[int, float]]] = [[] for _ in range(50)]
        readies = [asyncio.Event() for _ in range(50)]
        readers = [asyncio.create_task(_reader(url, got[i], readies[i], total)) for i in range(50)]
        for r in readies:
            await asyncio.wait_for(r.wait(), seconds(30))
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, _publish, fanout, feed_factory, 0, baseline_n, rate, pad)

        # The slow client: a tiny receive buffer, and it never reads.
        slow = await tiny_buffer_client(url, fanout.port)
        opened.append(slow)
        cost_base = await loop.run_in_executor(None, dispatch_cost, fanout)
        rss_before = rss_kib(fanout.pid)
        rss_samples: list[int] = []

        def sample() -> None:
            while len(rss_samples) < 1000 and not done.wait(0.1):
                rss_samples.append(rss_kib(fanout.pid))

        done = threading.Event()
        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            await loop.run_in_executor(
                None, _publish, fanout, feed_factory, baseline_n, slow_n, rate, pad
            )
            await asyncio.wait_for(asyncio.gather(*readers), seconds(60))
            await loop.run_in_executor(
                None,
                lambda: wait_for(
                    lambda: fanout.metric("gateway_wsfanout_slow_clients_total") >= 1,
                    30,
                    "the slow client to be closed",
                ),
            )
        finally:
            done.set()
            sampler.join()
        cost_all = await loop.run_in_executor(None, dispatch_cost, fanout)
        # Now read what reached the slow client: then its close frame.
        slow_got = 0
        code = None
        try:
            async with asyncio.timeout(seconds(30)):
                async for _ in slow:
                    slow_got += 1
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd else None
        if code is None and slow.close_code is not None:
            code = slow.close_code
        return {
            "got": got,
            "slow_got": slow_got,
            "code": code,
            "rss_before": rss_before,
            "rss_max": max(rss_samples or [rss_before]),
            "cost_base": cost_base,
            "cost_all": cost_all,
        }

    r = asyncio.run(closing_after(scenario(), opened))
    for i, values in enumerate(r["got"]):
        assert [v for v, _ in values] == list(range(total)), (
            f"fast client {i} missed or repeated events"
        )
    assert r["code"] == 1013
    assert r["slow_got"] < total
    dropped = fanout.metric("gateway_wsfanout_dropped_total", reason="slow_client")
    assert dropped > 0
    growth = r["rss_max"] - r["rss_before"]
    assert growth < 40 * 1024, f"fan-out RSS grew by {growth} KiB with a stalled client"
    lat_base = [ms for values in r["got"] for v, ms in values if v < baseline_n]
    lat_slow = [ms for values in r["got"] for v, ms in values if v >= baseline_n]
    q = lambda xs, p: statistics.quantiles(xs, n=100)[p - 1]  # noqa: E731
    (sum0, n0), (sum1, n1) = r["cost_base"], r["cost_all"]
    # Client-side latency includes this test process (50 clients, one thread) and whatever
    # else the machine runs; the fan-out's own dispatch cost per event is the clean figure.
    print(
        f"\nW1: 50 clients x {total} events; dispatch µs/event baseline {sum0 / n0 * 1e6:.0f},"
        f" with stalled client {(sum1 - sum0) / (n1 - n0) * 1e6:.0f}; client latency ms p50/p99"
        f" baseline {q(lat_base, 50):.1f}/{q(lat_base, 99):.1f},"
        f" with stalled client {q(lat_slow, 50):.1f}/{q(lat_slow, 99):.1f};"
        f" slow client got {r['slow_got']}, dropped {dropped:.0f}, closed {r['code']};"
        f" RSS {r['rss_before']} -> max {r['rss_max']} KiB"
    )


def test_two_thousand_connections_idle_and_active(start_fanout, open_feed):
    """W2 (small): 2000 idle connections and 20 active ones; the active get every event."""
    fanout = start_fanout()
    feed = open_feed(fanout)
    idle_n, active_n, events = 2000, 20, 100
    opened: list[ClientConnection] = []  # closed even if the scenario fails

    async def scenario() -> list[list[int]]:
        limit = asyncio.Semaphore(100)

        async def open_idle() -> ClientConnection:
            async with limit:
                ws = await connect(
                    fanout.url(tenant="nobody"), ping_interval=None, open_timeout=seconds(30)
                )
            opened.append(ws)
            return ws

        idle = await asyncio.gather(*(open_idle() for _ in range(idle_n)))
        got: list[list[int]] = [[] for _ in range(active_n)]
        readies = [asyncio.Event() for _ in range(active_n)]

        async def active(i: int) -> None:
            async with connect(fanout.url(tenant="acme"), ping_interval=None) as ws:
                readies[i].set()
                async for text in ws:
                    got[i].append(value_of(json.loads(text)))
                    if len(got[i]) >= events:
                        return

        tasks = [asyncio.create_task(active(i)) for i in range(active_n)]
        for r in readies:
            await asyncio.wait_for(r.wait(), seconds(30))
        loop = asyncio.get_running_loop()
        health = await loop.run_in_executor(None, fanout.health)
        assert health["clients"] == idle_n + active_n
        await loop.run_in_executor(
            None, lambda: feed.send(*(device_event(value=i) for i in range(events)))
        )
        await asyncio.wait_for(asyncio.gather(*tasks), seconds(60))
        await asyncio.gather(*(ws.close() for ws in idle))
        return got

    got = asyncio.run(closing_after(scenario(), opened))
    assert all(values == list(range(events)) for values in got)
    wait_for(lambda: fanout.health()["clients"] == 0, 30, "every connection cleaned up")
