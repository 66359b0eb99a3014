"""End to end through real processes: MQTT -> ingest -> decode -> wsfanout -> WebSocket."""

from __future__ import annotations

import re
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from tests.e2e.helpers import INTERNAL, StrictCollector, Uplink, devices, publish, uplinks
from tests.support.mqtt import Publisher
from tests.support.stack import Stack
from tests.support.timing import wait_for
from tests.support.ws import Collector

ISO_MS_Z = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def by_device_fcnt(items: list[Uplink]) -> dict[tuple[str, int], Uplink]:
    return {(u.dev_eui, u.f_cnt): u for u in items}


def key_of(msg: dict[str, Any]) -> tuple[str, int]:
    return msg["device"]["devEui"], msg["rx"]["fCnt"]


def assert_intact(msg: dict[str, Any], sent: Uplink) -> None:
    """What a client receives is what the network server published, in the DESIGN's shape."""
    event = sent.event
    info = event["deviceInfo"]
    assert msg["event"] == "up"
    assert msg["object"] == event["object"]  # exactly as published
    assert msg["device"] == {
        "tenant": info["tenantName"],
        "application": info["applicationName"],
        "name": info["deviceName"],
        "devEui": info["devEui"],
        "tags": info["tags"],
    }
    rx = msg["rx"]
    radio = event["rxInfo"][0]
    assert (rx["gateway"], rx["rssi"], rx["snr"]) == (
        radio["gatewayId"],
        radio["rssi"],
        radio["snr"],
    )
    assert (rx["fCnt"], rx["fPort"]) == (event["fCnt"], event["fPort"])
    assert str(msg["time"])[:19] == event["time"][:19]
    assert ISO_MS_Z.fullmatch(msg["received_at"]), msg["received_at"]
    assert isinstance(msg["seq"], int)
    assert not INTERNAL & set(msg), f"internal keys leaked: {INTERNAL & set(msg)}"


def test_hundreds_of_uplinks_over_many_devices_arrive_intact(
    gateway: Callable[..., Stack], publisher: Publisher, clients: list[Collector]
) -> None:
    stack = gateway(decoders=2)
    client = StrictCollector(stack.ws_url)
    clients.append(client)
    sent = uplinks(devices(40), per_device=10)  # 400 uplinks, round-robin over 40 devices
    started = datetime.now(UTC)
    publish(publisher, sent)
    received = client.wait_events(400, timeout=60)
    finished = datetime.now(UTC)

    assert len(received) == 400 and not client.rejected
    expected = by_device_fcnt(sent)
    assert {key_of(m) for m in received} == set(expected)  # every one, none twice
    for msg in received:
        assert_intact(msg, expected[key_of(msg)])
        assert not msg.get("replay")
        at = datetime.strptime(msg["received_at"], "%Y-%m-%dT%H:%M:%S.%f%z")
        assert started.replace(microsecond=0) <= at.replace(microsecond=0) <= finished
    seqs = [m["seq"] for m in received]
    assert seqs == sorted(set(seqs)), "seq must increase by arrival, without repeats"
    assert all(p.running for p in stack.all_procs())


def test_late_client_gets_latest_10_per_device_then_live_without_a_seam(
    gateway: Callable[..., Stack], publisher: Publisher, clients: list[Collector]
) -> None:
    # One decoder: ingest order is then fan-out order, so "oldest first" is exact.
    stack = gateway(decoders=1)
    devs = devices(5)
    watcher = StrictCollector(stack.ws_url)
    clients.append(watcher)
    publish(publisher, uplinks(devs, per_device=15))  # 75 buffered, 15 per device
    watcher.wait_events(75)

    # More traffic while the late client connects: its replay/live seam falls mid-stream.
    live = uplinks(devs, per_device=10, first_f_cnt=16)

    def feed() -> None:
        for item in live:  # about 100/s, each acknowledged before the next
            publish(publisher, [item])
            time.sleep(0.005)

    feeding = threading.Thread(target=feed)
    feeding.start()
    wait_for(lambda: len(watcher.events()) >= 80, 20, "the live stream to start")
    late = StrictCollector(stack.ws_url)
    clients.append(late)
    feeding.join()
    watcher.wait_events(125)
    wait_for(
        lambda: any(key_of(m) == (devs[-1].dev_eui, 25) for m in late.events()),
        20,
        "the last live uplink",
    )

    events = late.events()
    assert not late.rejected
    flags = [m.get("replay") is True for m in events]
    assert flags == sorted(flags, reverse=True), "every replayed event comes before the live ones"
    assert not any(m.get("replay") for m in watcher.events()), (
        "a client connected first gets no replay"
    )
    per_device: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for msg in events:
        per_device[msg["device"]["devEui"]].append(msg)
    assert set(per_device) == {d.dev_eui for d in devs}
    for dev_eui, msgs in per_device.items():
        replayed = [m["rx"]["fCnt"] for m in msgs if m.get("replay")]
        seen = [m["rx"]["fCnt"] for m in msgs]
        assert len(replayed) == 10, f"{dev_eui}: replayed {replayed}"
        # Oldest first, then live, each frame counter exactly once and nothing skipped.
        assert seen == list(range(seen[0], 26)), f"{dev_eui}: {seen}"
    seqs = [m["seq"] for m in events]
    assert len(seqs) == len(set(seqs)), "an event was sent twice"
    live_seqs = [m["seq"] for m in events if not m.get("replay")]
    assert live_seqs == sorted(live_seqs)
    # The replayed events are the same events the first client saw, byte for byte.
    first_seen = {key_of(m): m for m in watcher.events()}
    for msg in events:
        assert {k: v for k, v in msg.items() if k != "replay"} == first_seen[key_of(msg)]


GARBAGE: list[tuple[str, bytes]] = [
    ("not JSON", b"this is not json at all"),
    ("binary", bytes(range(256))),
    ("truncated", b'{"deduplicationId": "x", "deviceInfo": {"tenantName": "acme", "devEui": "01'),
    ("array", b"[1, 2, 3]"),
    ("wrong shape", b'{"deviceInfo": "nope", "object": 5}'),
    ("empty", b""),
    ("non-UTF-8", b'{"deviceInfo": {"deviceName": "\xff\xfe"}}'),
    ("number", b"42"),
]


def test_garbage_between_good_uplinks_is_reported_and_nothing_dies(
    gateway: Callable[..., Stack], publisher: Publisher, clients: list[Collector]
) -> None:
    stack = gateway(decoders=2)
    client = StrictCollector(stack.ws_url)
    clients.append(client)
    good = uplinks(devices(6), per_device=8)  # 48
    topic = good[0].topic
    mixed: list[Uplink | tuple[str, bytes]] = []
    for index, item in enumerate(good):
        mixed.append(item)
        if index % 3 == 1:
            mixed.append((topic, GARBAGE[(index // 3) % len(GARBAGE)][1]))
    garbage = len(mixed) - len(good)
    publish(publisher, mixed)

    wait_for(
        lambda: len(client.events()) >= len(good) + garbage,
        30,
        f"{len(good)} uplinks and {garbage} error events (have {len(client.events())})",
    )
    events = client.events()
    ups = [m for m in events if m["event"] == "up"]
    errors = [m for m in events if m["event"] == "error"]
    expected = by_device_fcnt(good)
    assert {key_of(m) for m in ups} == set(expected) and len(ups) == len(good)
    for msg in ups:
        assert_intact(msg, expected[key_of(msg)])
    assert len(errors) == garbage
    for msg in errors:
        assert isinstance(msg["error"]["reason"], str) and msg["error"]["reason"]
        assert msg["error"].get("topic") in (None, topic)
    assert not client.rejected, f"frames a browser cannot parse: {client.rejected[:3]}"

    # Every service is still up and still works.
    assert all(p.running for p in stack.all_procs()), stack.logs()
    after = uplinks(devices(6), per_device=1, first_f_cnt=100)
    publish(publisher, after)
    wait_for(
        lambda: len([m for m in client.events() if m["event"] == "up"]) >= len(good) + len(after),
        20,
        "uplinks after the garbage",
    )
    assert "Traceback" not in stack.logs()


def test_oversized_payloads_are_refused_unparsed_and_the_stream_goes_on(
    gateway: Callable[..., Stack], publisher: Publisher, clients: list[Collector]
) -> None:
    """RELIABILITY.md B4 through the whole pipeline (limit 256 KiB, DECODE_MAX_PAYLOAD).
    Over the limit but within a raw frame's room: decode refuses it unparsed, an ``_error``
    event of reason ``size``. Over what a decoder takes at all (ZMQ_RAW_MAX_MESSAGE, ~321
    KiB): ingest drops it before ZeroMQ would cut the link, and logs and counts it."""
    stack = gateway()
    client = StrictCollector(stack.ws_url)
    clients.append(client)
    good = uplinks(devices(2), per_device=3)
    topic = good[0].topic
    over_limit = b'{"pad": "' + b"x" * (300 * 1024) + b'"}'
    huge = b'{"pad": "' + b"x" * (1024 * 1024) + b'"}'
    publish(publisher, [good[0], (topic, over_limit), good[1], (topic, huge), *good[2:]])

    wait_for(lambda: len(client.events()) >= len(good) + 1, 30, "the uplinks and one error event")
    wait_for(lambda: "dropped: its frame is" in stack.logs(), 10, "ingest's log line")
    after = uplinks(devices(1), per_device=1, first_f_cnt=50)  # arrives after both were handled
    publish(publisher, after)
    wait_for(lambda: len(client.events()) >= len(good) + 2, 20, "the uplink sent after them")
    events = client.events()
    errors = [m for m in events if m["event"] == "error"]
    assert [m["error"]["reason"] for m in errors] == ["size"], errors
    assert str(len(over_limit)) in errors[0]["error"]["detail"]
    ups = [m for m in events if m["event"] == "up"]
    # Every good uplink, the ones right after each refused payload too.
    assert sorted(key_of(m) for m in ups) == sorted(by_device_fcnt([*good, *after]))
    assert stack.logs().count("dropped: its frame is") == 1  # the 1 MB one, in ingest
    assert all(p.running for p in stack.all_procs()), stack.logs()
    assert "Traceback" not in stack.logs()
