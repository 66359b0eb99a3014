"""The fault-injection harness: a numbered QoS 1 stream in, WebSocket clients out, and the
arithmetic that says what was lost, duplicated or reordered (RELIABILITY.md §9).

- :func:`uplink` builds one ChirpStack v4 ``up`` event (the public fixture's shape) that
  carries the run id and its number ``n`` in ``object`` (kept exactly as published by
  decode), in ``fCnt`` and in a ``deduplicationId`` unique per ``n``.
- :class:`StreamPublisher` publishes ``n = 0 .. count-1`` at QoS 1 from background threads,
  paced at a fixed rate (or as fast as possible for bursts), survives broker restarts (paho
  re-sends what was not PUBACKed) and knows which ``n`` the broker acknowledged.
- :func:`analyse` compares what a client received with what was acknowledged.
- :func:`scrape` reads a service's Prometheus ``/metrics``; :func:`peak_rss_kib` its
  ``VmHWM``.

The definitions are the matrix's: **lost** = published and PUBACKed, never received;
**duplicate** = received more than once; **reordered** = received after a higher ``n`` of
the same device.
"""

from __future__ import annotations

import copy
import json
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from prometheus_client.parser import text_string_to_metric_families

from tests.support.timing import seconds, wait_for

FIXTURE = (
    Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "chirpstack_v4_up.json"
)
TENANT = "faults"
APPLICATION_ID = "17c82e96-be03-4f38-aef3-f83d48582d97"


def dev_eui(device: int) -> str:
    return f"fa017000{device:08x}"


@dataclass(frozen=True)
class Stream:
    """What one run publishes: ``count`` uplinks spread round-robin over ``devices``."""

    run_id: str
    count: int
    devices: int = 8

    def device_of(self, n: int) -> str:
        return dev_eui(n % self.devices)


def new_stream(count: int, devices: int = 8) -> Stream:
    return Stream(run_id=uuid.uuid4().hex[:12], count=count, devices=devices)


_template: dict[str, Any] | None = None


def uplink(stream: Stream, n: int) -> tuple[str, bytes]:
    """Topic and payload of uplink ``n`` (ChirpStack v4 ``application/.../event/up``)."""
    global _template
    if _template is None:
        _template = json.loads(FIXTURE.read_text())
    body = copy.deepcopy(_template)
    eui = stream.device_of(n)
    now_ms = time.time_ns() // 1_000_000
    body["deduplicationId"] = str(uuid.uuid5(uuid.NAMESPACE_OID, f"{stream.run_id}/{n}"))
    body["time"] = (
        time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now_ms / 1000))
        + f".{now_ms % 1000:03d}+00:00"
    )
    info = body["deviceInfo"]
    info["tenantName"] = TENANT
    info["applicationName"] = "fault-injection"
    info["deviceName"] = f"dev-{eui}"
    info["devEui"] = eui
    body["fCnt"] = n
    body["object"] = {
        "type": "voltage",
        "run": stream.run_id,
        "n": n,
        "values": [{"time": now_ms, "value": round(3.0 + (n % 100) / 100, 2)}],
    }
    return f"application/{APPLICATION_ID}/device/{eui}/event/up", json.dumps(body).encode()


# --------------------------------------------------------------------------- publishing


class _Lane:
    """One paho client and the thread that feeds it a share of the stream."""

    def __init__(self, host: str, port: int, name: str, inflight: int) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=name, protocol=mqtt.MQTTv5)
        # paho keeps every QoS 1 message until its PUBACK and re-sends the unacknowledged
        # ones after a reconnect, so a broker restart costs the publisher nothing.
        self.client.max_inflight_messages_set(inflight)
        self.client.max_queued_messages_set(0)
        self.client.reconnect_delay_set(1, 2)
        self.connected = threading.Event()
        self.client.on_connect = lambda *a: self.connected.set()
        # PUBACKs are recorded by message id in paho's thread; a lock here would deadlock
        # (paho calls on_publish holding its own mutex), set.add is atomic. Message ids
        # wrap at 65535, so one lane publishes at most MAX_PER_LANE messages.
        self.acked_mids: set[int] = set()
        self.client.on_publish = lambda client, userdata, mid, *rest: self.acked_mids.add(mid)
        self.client.connect_async(host, port, keepalive=30)
        self.client.loop_start()
        self.sent: list[tuple[int, int]] = []  # (n, mid) in publish order

    def acked(self) -> list[int]:
        acked = self.acked_mids
        return [n for n, mid in self.sent if mid in acked]

    def unacked(self) -> int:
        acked = self.acked_mids
        return sum(1 for _, mid in self.sent if mid not in acked)


MAX_PER_LANE = 60_000


class StreamPublisher:
    """Publish ``stream`` at QoS 1: ``rate`` messages/s in total (None: as fast as paho
    takes them), split over ``lanes`` clients/threads (lane i publishes n ≡ i mod lanes)."""

    def __init__(
        self,
        host: str,
        port: int,
        stream: Stream,
        rate: float | None = 200.0,
        lanes: int = 1,
        inflight: int = 100,
    ) -> None:
        if stream.count / lanes > MAX_PER_LANE:
            raise ValueError(f"more than {MAX_PER_LANE} messages per lane: use more lanes")
        self.stream = stream
        self.rate = rate
        self._lanes = [
            _Lane(host, port, f"faults-pub-{stream.run_id}-{i}", inflight) for i in range(lanes)
        ]
        self._sent = [0] * lanes
        self._built = [threading.Event() for _ in range(lanes)]
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(i,), name=f"publisher-{i}", daemon=True)
            for i in range(lanes)
        ]
        self.started_at = 0.0

    def start(self) -> StreamPublisher:
        for lane in self._lanes:
            if not lane.connected.wait(seconds(10)):
                raise AssertionError("the test publisher could not connect to the broker")
        self.started_at = time.monotonic()
        for t in self._threads:
            t.start()
        return self

    def _run(self, index: int) -> None:
        lane = self._lanes[index]
        lanes = len(self._lanes)
        mine = range(index, self.stream.count, lanes)
        # A burst is built before the clock starts, so it measures publishing, not JSON
        # (and the test process keeps its CPU for the WebSocket client).
        built = [uplink(self.stream, n) for n in mine] if self.rate is None else None
        self._built[index].set()
        interval = lanes / self.rate if self.rate else 0.0
        for e in self._built:
            e.wait()
        start = time.monotonic()
        for k, n in enumerate(mine):
            if self._stop.is_set():
                return
            if interval:
                # Pacing a load generator (not waiting for a condition): keep a fixed rate.
                delay = start + k * interval - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            topic, payload = built[k] if built is not None else uplink(self.stream, n)
            # Published while disconnected, paho queues it (rc NO_CONN) and sends it on
            # reconnect; the PUBACK decides whether it counts.
            info = lane.client.publish(topic, payload, qos=1)
            lane.sent.append((n, info.mid))
            self._sent[index] += 1

    @property
    def sent(self) -> int:
        """How many publish() calls were made (acknowledged or not)."""
        return sum(self._sent)

    def wait_sent(self, count: int, timeout: float = 60.0) -> None:
        wait_for(
            lambda: self.sent >= count, timeout, f"publisher to send {count} (sent {self.sent})"
        )

    def done_publishing(self) -> bool:
        return all(not t.is_alive() for t in self._threads)

    def wait_done(self, timeout: float = 120.0) -> None:
        """Every message handed to paho and acknowledged by the broker."""
        wait_for(self.done_publishing, timeout, f"publisher threads to finish (sent {self.sent})")
        wait_for(
            lambda: self.unacked_count() == 0,
            timeout,
            "the broker to PUBACK every message",
        )

    def unacked_count(self) -> int:
        return sum(lane.unacked() for lane in self._lanes)

    def acked(self) -> list[int]:
        return sorted(n for lane in self._lanes for n in lane.acked())

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=5)

    def close(self) -> None:
        self.stop()
        for lane in self._lanes:
            lane.client.disconnect()
            lane.client.loop_stop()


# --------------------------------------------------------------------------- analysis


@dataclass
class StreamReport:
    """What one client got of one stream."""

    expected: int
    received: int
    lost: list[int]
    duplicates: int
    reordered: int
    unexpected: int
    replayed: int
    per_device_lost: dict[str, int] = field(default_factory=dict)

    @property
    def distinct(self) -> int:
        return self.received - self.duplicates

    def summary(self) -> str:
        lost = self.lost if len(self.lost) <= 20 else [*self.lost[:10], "...", *self.lost[-10:]]
        return (
            f"expected={self.expected} received={self.received} lost={len(self.lost)} {lost} "
            f"dup={self.duplicates} reordered={self.reordered} unexpected={self.unexpected} "
            f"replayed={self.replayed}"
        )


def numbers(stream: Stream, events: Iterable[dict[str, Any]], *, replay: bool = False) -> list[int]:
    """The ``n`` of every event of this run, in arrival order (``replay`` ones only if asked)."""
    out: list[int] = []
    for ev in events:
        if ev.get("replay") and not replay:
            continue
        obj = ev.get("object")
        if isinstance(obj, dict) and obj.get("run") == stream.run_id:
            out.append(int(obj["n"]))
    return out


def analyse(
    stream: Stream,
    events: list[dict[str, Any]],
    expected: Iterable[int] | None = None,
    *,
    count_replay: bool = False,
) -> StreamReport:
    """Lost / duplicated / reordered per the matrix's definitions.

    ``expected``: the ``n`` the broker acknowledged (default: the whole stream).
    ``count_replay``: treat replayed events as deliveries (resume tests: a replay of an
    event the client already had is then a duplicate, which is what must not happen).
    """
    want = set(range(stream.count) if expected is None else expected)
    got = numbers(stream, events, replay=count_replay)
    replayed = sum(1 for ev in events if ev.get("replay")) if not count_replay else 0
    counts = Counter(got)
    highest: dict[str, int] = {}
    reordered = 0
    for n in got:
        dev = stream.device_of(n)
        if n < highest.get(dev, -1):
            reordered += 1
        highest[dev] = max(highest.get(dev, -1), n)
    lost = sorted(want - counts.keys())
    per_device: Counter[str] = Counter(stream.device_of(n) for n in lost)
    return StreamReport(
        expected=len(want),
        received=len(got),
        lost=lost,
        duplicates=sum(c - 1 for c in counts.values() if c > 1),
        reordered=reordered,
        unexpected=len(counts.keys() - want),
        replayed=replayed,
        per_device_lost=dict(per_device),
    )


def distinct_received(collector: Any, stream: Stream, replay: bool = False) -> int:
    if hasattr(collector, "distinct"):
        return int(collector.distinct(stream.run_id, replay))
    return len(set(numbers(stream, collector.snapshot(), replay=replay)))


def wait_received(
    collector: Any, stream: Stream, count: int, timeout: float = 60.0, replay: bool = False
) -> None:
    """Until the client holds ``count`` distinct numbers of this run."""
    try:
        wait_for(lambda: distinct_received(collector, stream, replay) >= count, timeout, "")
    except AssertionError:
        have = distinct_received(collector, stream, replay)
        raise AssertionError(
            f"timed out after {seconds(timeout):.0f}s waiting for the client to receive {count} "
            f"of run {stream.run_id}: it has {have}"
        ) from None


def settle(
    collector: Any, stream: Stream, expected: int, quiet: float = 1.0, timeout: float = 60.0
) -> None:
    """Until the client has everything (``expected`` distinct numbers) or nothing new has
    arrived for ``quiet`` seconds, whichever is first. Used where loss is possible: the
    assertions that follow say how much."""
    last = [-1, time.monotonic()]

    def done() -> bool:
        have = len(collector.snapshot())
        if have != last[0]:
            last[0], last[1] = have, time.monotonic()
        if distinct_received(collector, stream) >= expected:
            return True
        return time.monotonic() - last[1] > seconds(quiet)

    wait_for(done, timeout, "the stream to settle")


# --------------------------------------------------------------------------- gateway figures


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str, timeout: float = 5.0) -> Samples:
    """``{(sample name, sorted labels): value}`` from a Prometheus text endpoint."""
    with urllib.request.urlopen(url, timeout=seconds(timeout)) as resp:
        text = resp.read().decode()
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = float(s.value)
    return out


def metric(samples: Samples, name: str, **labels: str) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels`` (0 if none)."""
    want = set(labels.items())
    return sum(v for (n, lab), v in samples.items() if n == name and want <= set(lab))


def metric_names(samples: Samples) -> list[str]:
    return sorted({n for n, _ in samples})


def http_status(url: str, timeout: float = 3.0) -> int | None:
    """HTTP status of a GET, or None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=seconds(timeout)) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return None


def peak_rss_kib(pid: int) -> int:
    """The process's resident-set high-water mark (``VmHWM``) in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmHWM for pid {pid}")
