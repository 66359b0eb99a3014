"""The fan-out's per-event shortcuts do exactly what the plain code did.

- the receive loop watches the SUB socket's edge-triggered FD itself: frames after idle
  gaps, bursts longer than a batch, and frames that arrive while the loop is busy are all
  taken, promptly, and the counters are exact whenever ``/metrics`` could look;
- ``iso_ms`` caches the formatted second: same text as the plain formula;
- ``describe`` caches one Meta per device and event kind: same Meta as building it;
- ``text_frame`` builds the frame header by hand: same bytes as websockets;
- ``PlainHistogram``: same ``/metrics`` lines as prometheus_client's ``Histogram``;
- a client that fell behind catches up (queued events written ahead in one go): every
  event, in order, counted once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any, TypeVar

import pytest
import zmq
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from websockets.asyncio.client import ClientConnection
from websockets.frames import Frame, Opcode

from services.wsfanout import fanout as fanout_module
from services.wsfanout import messages
from services.wsfanout.client import text_frame
from services.wsfanout.config import load
from services.wsfanout.fanout import Fanout
from services.wsfanout.filters import DEVICE, Meta
from services.wsfanout.messages import describe, iso_ms
from services.wsfanout.metrics import Metrics, PlainHistogram
from services.wsfanout.tokens import TokenStore
from shared import routing
from shared.frames import event_parts
from tests.support.timing import seconds, wait_for
from tests.wsfanout.helpers import Source, collector, device_event, tiny_buffer_client, value_of

T = TypeVar("T")
MAX_NS = 253402300799 * 1_000_000_000 + 999_999_999  # 9999-12-31T23:59:59.999Z


def plain_iso_ms(ns: int) -> str:
    """The formula iso_ms had before its cache (valid input only)."""
    secs, rest = divmod(ns, 1_000_000_000)
    t = time.gmtime(secs)
    return (
        f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}T"
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}.{rest // 1_000_000:03d}Z"
    )


# Pure parts ------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=MAX_NS), min_size=1, max_size=20))
def test_iso_ms_is_the_plain_formula_for_any_times_in_any_order(stamps):
    for ns in stamps:
        assert iso_ms(ns) == plain_iso_ms(ns)


STEPS_MAX, STEP_MAX_US = 50, 3_000_000


@settings(max_examples=100, deadline=None)
@given(
    # Room for every step after the start: past year 9999 iso_ms answers "now" by design.
    st.integers(min_value=0, max_value=MAX_NS - STEPS_MAX * STEP_MAX_US * 1000),
    st.lists(st.integers(min_value=0, max_value=STEP_MAX_US), min_size=1, max_size=STEPS_MAX),
)
def test_iso_ms_across_second_boundaries_in_time_order(start, steps_us):
    ns = start
    for step in steps_us:  # microsecond steps: many calls per second, crossing some
        ns += step * 1000
        assert iso_ms(ns) == plain_iso_ms(ns)


def test_iso_ms_at_the_edges_of_a_second():
    s = 1690804800 * 1_000_000_000
    assert iso_ms(s - 1) == "2023-07-31T11:59:59.999Z"
    assert iso_ms(s) == "2023-07-31T12:00:00.000Z"
    assert iso_ms(s + 999_999_999) == "2023-07-31T12:00:00.999Z"
    assert iso_ms(s - 1) == "2023-07-31T11:59:59.999Z"  # back again: not the cached second
    assert iso_ms(s + 1_000_000_000) == "2023-07-31T12:00:01.000Z"


@pytest.mark.parametrize(
    "bad", [None, "1690804800000000000", 1.5e18, MAX_NS + 1, 10**30, -(10**30), True]
)
def test_iso_ms_of_unusable_input_is_now(bad):
    before = plain_iso_ms(time.time_ns())
    got = iso_ms(bad)
    after = plain_iso_ms(time.time_ns())
    assert before <= got <= after


@settings(max_examples=200, deadline=None)
@given(
    st.one_of(
        st.integers(min_value=0, max_value=70_000),
        st.sampled_from([0, 1, 125, 126, 127, 65535, 65536, 65537]),
    )
)
def test_text_frame_is_the_frame_websockets_writes(length):
    data = bytes(i % 251 for i in range(length))
    assert text_frame(data) == Frame(Opcode.TEXT, data).serialize(mask=False, extensions=[])


def plain_describe(body: dict[str, Any], key: str) -> Meta:
    """A device event's Meta as describe built it before its cache."""
    info = body.get("device") if isinstance(body.get("device"), dict) else {}
    text = lambda v: v if isinstance(v, str) else None  # noqa: E731
    tenant, application, name = (
        text(info.get("tenant")),
        text(info.get("application")),
        text(info.get("name")),
    )
    if (tenant is None or application is None or name is None) and key:
        parts = routing.split(key)
        if len(parts) >= 4:
            tenant = tenant if tenant is not None else parts[0]
            application = application if application is not None else parts[1]
            name = name if name is not None else parts[2]
    eui = text(info.get("devEui"))
    eui = eui.lower() if eui else None
    ring = (
        f"eui:{eui}"
        if eui
        else "name:" + "/".join(routing.escape(p or "") for p in (tenant, application, name))
    )
    obj = body.get("object")
    return Meta(
        kind=DEVICE,
        ring=ring,
        event=str(body.get("event")),
        tenant=tenant,
        application=application,
        device=name,
        dev_eui=eui,
        type=text(obj.get("type")) if isinstance(obj, dict) else None,
    )


# A small universe, so that events often share all fields but one.
names = st.sampled_from(["a", "a", "a", "B/x", "B/x", "B/x", None, 7])
devices = st.lists(st.tuples(names, names, names), min_size=1, max_size=3)
euis = st.sampled_from([None, "", "0101010101010101", "0101010101010101".upper()])
measurements = st.sampled_from([None, 5, "voltage", "temperature"])


@settings(max_examples=300, deadline=None)
@given(
    devices,
    st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=2),
            st.sampled_from(["up", "join"]),
            euis,
            measurements,
            st.booleans(),
        ),
        min_size=1,
        max_size=40,
    ),
    st.sampled_from([1, 2, 3, 1000]),
)
def test_describe_gives_the_meta_it_built_before_its_cache(devices, events, cache_size):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(messages, "METAS_MAX", cache_size)  # evictions too
        messages._METAS.clear()
        for index, event, eui, kind, with_object in events:
            tenant, application, name = devices[index % len(devices)]
            body: dict[str, Any] = {
                "event": event,
                "device": {"tenant": tenant, "application": application, "name": name},
            }
            if eui is not None:
                body["device"]["devEui"] = eui
            if with_object:
                body["object"] = {"type": kind}
            key = routing.device_key("kt", "ka", "kd", event)
            for _ in range(2):  # built, then found (or evicted and built again)
                assert describe(DEVICE, body, key) == plain_describe(body, key)
            assert len(messages._METAS) <= cache_size


def test_describe_tells_apart_events_that_differ_in_one_field_only():
    base: dict[str, Any] = {
        "event": "up",
        "device": {"tenant": "t", "application": "a", "name": "n", "devEui": "0A0B"},
        "object": {"type": "voltage"},
    }
    variants = [base]
    for path, value in [
        (("event",), "join"),
        (("device", "tenant"), "t2"),
        (("device", "application"), "a2"),
        (("device", "name"), "n2"),
        (("device", "devEui"), "0a0c"),
        (("device", "devEui"), None),
        (("object", "type"), "temperature"),
    ]:
        body = json.loads(json.dumps(base))
        where = body
        for step in path[:-1]:
            where = where[step]
        where[path[-1]] = value
        variants.append(body)
    key = routing.device_key("kt", "ka", "kd", "up")
    for _ in range(2):
        for body in variants:
            assert describe(DEVICE, body, key) == plain_describe(body, key)


BUCKETS = (1e-5, 5e-5, 1e-4, 5e-4, 1e-3, 5e-3, 1e-2, 5e-2, 0.1, 0.5)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.floats(min_value=0, max_value=2, allow_nan=False),
            st.sampled_from(BUCKETS),  # exactly on a bound: counted in that bucket
        ),
        max_size=50,
    )
)
def test_plain_histogram_shows_what_prometheus_histogram_shows(values):
    theirs, ours = CollectorRegistry(), CollectorRegistry()
    h = Histogram("x_dispatch_seconds", "Time to dispatch", buckets=BUCKETS, registry=theirs)
    p = PlainHistogram("x_dispatch_seconds", "Time to dispatch", BUCKETS, registry=ours)
    for v in values:
        h.observe(v)
        p.observe(v)

    def lines(registry: CollectorRegistry) -> list[str]:
        text = generate_latest(registry).decode()
        return [
            line for line in text.splitlines() if not line.startswith("x_dispatch_seconds_created")
        ]

    assert lines(ours) == lines(theirs)


# The receive loop, in this process: real ZeroMQ sockets, a real asyncio loop ------------


class LoopThread:
    """An asyncio loop on its own thread, running ``Fanout.receive`` on a SUB socket fed
    by an XPUB over inproc (a send puts the frame straight into the SUB's queue)."""

    def __init__(self, receive: bool = True) -> None:
        self.ctx = zmq.Context()
        endpoint = f"inproc://fanout-{uuid.uuid4().hex}"
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")
        self.sub.setsockopt(zmq.LINGER, 0)
        self.sub.bind(endpoint)
        self.pub = self.ctx.socket(zmq.XPUB)
        self.pub.setsockopt(zmq.LINGER, 0)
        self.pub.setsockopt(zmq.SNDHWM, 100_000)
        self.sub.setsockopt(zmq.RCVHWM, 100_000)
        self.pub.connect(endpoint)
        # Over inproc the SUB sends its subscription when it handles the connection, which
        # happens in its next call: nudge it until the XPUB hears it.
        wait_for(
            lambda: self.sub.getsockopt(zmq.EVENTS) is not None and self.pub.poll(50),
            10,
            "the SUB to subscribe",
        )
        self.pub.recv()
        config = load({"WEBSOCKET_STATE_FILE": ""}, [])
        self.metrics = Metrics()
        self.fanout = Fanout(config, self.metrics, TokenStore(None, ""), "test-epoch")
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.receiving: Future[None] | None = None
        if receive:
            self.receiving = asyncio.run_coroutine_threadsafe(
                self.fanout.receive(self.sub), self.loop
            )
        self.source = Source(f"src-{uuid.uuid4().hex[:6]}")
        self.sent = 0

    def send(self, count: int) -> None:
        for _ in range(count):
            self.sent += 1
            event = device_event(device=f"m{self.sent % 7}", value=self.sent, source=self.source)
            self.pub.send_multipart(event_parts(event))

    def on_loop(self, fn: Callable[[], T]) -> T:
        """``fn()`` run on the loop between two callbacks, where /metrics would run."""

        async def call() -> T:
            return fn()

        return asyncio.run_coroutine_threadsafe(call(), self.loop).result(seconds(10))

    def blocked(self) -> threading.Event:
        """Hold the loop busy until the returned event is set."""
        entered, release = threading.Event(), threading.Event()

        def hold() -> None:
            entered.set()
            release.wait(seconds(30))

        self.loop.call_soon_threadsafe(hold)
        assert entered.wait(seconds(10))
        return release

    def wait_all(self) -> None:
        wait_for(lambda: self.fanout.seq >= self.sent, 10, f"{self.sent} events taken")
        assert self.receiving is not None and not self.receiving.done()  # still receiving

    def counts(self) -> dict[str, float]:
        def read() -> dict[str, float]:
            out = {}
            for family in self.metrics.registry.collect():
                for s in family.samples:
                    if s.name.endswith("_created"):
                        continue
                    labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
                    out[s.name + (f"{{{labels}}}" if labels else "")] = s.value
            return out

        return self.on_loop(read)

    def close(self) -> None:
        if self.receiving is not None:
            self.loop.call_soon_threadsafe(self.receiving.cancel)
            with contextlib.suppress(BaseException):  # cancelled, as asked
                self.receiving.result(seconds(10))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(seconds(10))
        self.loop.close()
        self.pub.close(0)
        self.sub.close(0)
        self.ctx.term()


@pytest.fixture
def looped() -> Iterator[LoopThread]:
    lt = LoopThread()
    yield lt
    lt.close()


def _expect_counts(lt: LoopThread) -> None:
    c = lt.counts()
    n = float(lt.sent)
    assert c["gateway_wsfanout_events_received_total"] == n
    assert c["gateway_wsfanout_events_accepted_total"] == n
    assert c["gateway_wsfanout_dispatch_seconds_count"] == n
    assert c["gateway_wsfanout_dispatch_seconds_bucket{le=+Inf}"] == n
    assert c["gateway_wsfanout_seq"] == n


def test_frames_after_idle_gaps_are_taken_each_time(looped):
    # Each round starts with the loop idle in its selector, waiting on the FD: a frame that
    # comes then must wake it, however many batches came before.
    for round_ in range(40):
        looped.send(1 + round_ % 3)
        looped.wait_all()
        _expect_counts(looped)  # exact after every batch


def test_frames_queued_past_a_batch_while_the_loop_was_busy_are_all_taken(looped, monkeypatch):
    # The loop is held while frames pile up in the SUB's queue: they raise the FD once. With
    # batches of 2, all but the first batch must be picked up without a new FD signal.
    monkeypatch.setattr(fanout_module, "BATCH_MAX", 2)
    for count in (7, 1, 2, 3, 50):
        release = looped.blocked()
        looped.send(count)
        release.set()
        looped.wait_all()
        _expect_counts(looped)
        looped.send(1)  # and after that, idle again: the FD still wakes the loop
        looped.wait_all()
        _expect_counts(looped)


def test_drain_at_stop_takes_what_is_queued():
    lt = LoopThread(receive=False)
    try:
        lt.send(5)
        assert lt.on_loop(lambda: lt.fanout.drain(lt.sub)) == 5
        _expect_counts(lt)
        assert lt.on_loop(lambda: lt.fanout.drain(lt.sub)) == 0
    finally:
        lt.close()


# The real service --------------------------------------------------------------------------


def test_bursts_and_idle_gaps_reach_a_client_and_metrics_are_exact(start_fanout, open_feed):
    fanout = start_fanout()
    feed = open_feed(fanout)
    client = collector(fanout.url())
    source = Source(f"src-{uuid.uuid4().hex[:6]}")
    sent = 0
    for count in (1, 1, 3, 700, 1, 2, 1200, 1):  # 700 and 1200: more than one batch (500)
        for _ in range(count):
            sent += 1
            feed.send(device_event(device=f"m{sent % 9}", value=sent, source=source))
        client.wait_events(sent, timeout=30)
    assert [value_of(m) for m in client.events()] == list(range(1, sent + 1))
    assert fanout.metric("gateway_wsfanout_events_received_total") == sent
    assert fanout.metric("gateway_wsfanout_events_accepted_total") == sent
    assert fanout.metric("gateway_wsfanout_messages_sent_total", kind="live") == sent
    assert fanout.metric("gateway_wsfanout_dispatch_seconds_count") == sent
    client.close()


def test_a_client_that_fell_behind_catches_up_with_every_event_in_order(start_fanout, open_feed):
    # A tiny socket buffer on both ends and a client that does not read for a while: the
    # fan-out's buffer for it passes the write limit, events queue, and the relay writes
    # them ahead in chunks once the client reads again.
    fanout = start_fanout({"WEBSOCKET_SEND_BUFFER": "4096"})
    feed = open_feed(fanout)
    total = 400
    pad = "x" * 800

    async def scenario() -> list[int]:
        ws = await tiny_buffer_client(fanout.url(), fanout.port)
        # Closed even if what follows fails: left open, it would be collected, and warned
        # about (an unclosed transport), in whichever test runs next.
        async with ws:
            return await catch_up(ws)

    async def catch_up(ws: ClientConnection) -> list[int]:
        loop = asyncio.get_running_loop()

        def publish() -> None:
            for i in range(total):
                obj: dict[str, Any] = {"type": "voltage", "values": [{"value": i}], "pad": pad}
                feed.send(device_event(device=f"m{i % 5}", value=i, obj=obj))
            fanout.wait_metric("gateway_wsfanout_events_accepted_total", total)

        await loop.run_in_executor(None, publish)
        got: list[int] = []
        async with asyncio.timeout(seconds(30)):
            async for text in ws:
                msg = json.loads(text)
                if "type" not in msg:
                    got.append(value_of(msg))
                if len(got) == total:
                    break
        return got

    got = asyncio.run(scenario())
    assert got == list(range(total))
    assert fanout.metric("gateway_wsfanout_messages_sent_total", kind="live") == total
    assert fanout.metric("gateway_wsfanout_dropped_total", reason="slow_client") == 0
