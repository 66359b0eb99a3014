"""Events in, JSON out: message shape, replay, the replay/live seam, gap and repeat accounting."""

from __future__ import annotations

import re
import threading
import time
from typing import Any

import msgpack

from shared.frames import Event, event_parts
from tests.support.timing import wait_for
from tests.wsfanout.helpers import (
    collector,
    device_event,
    device_of,
    error_event,
    gateway_event,
    value_of,
)

ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def test_one_json_message_per_event_in_the_design_shape(start_fanout, open_feed):
    fanout = start_fanout()
    feed = open_feed(fanout)
    client = collector(fanout.url())
    ts = 1690804800012_345678  # 2023-07-31T12:00:00.012Z in ns
    obj = {
        "type": "voltage",
        "values": [{"time": 1690804800000, "time_iso": "2023-07-31T12:00:00.000Z", "value": 3.7}],
    }
    feed.send(
        device_event(
            "acme", "substation-7", "meter-12", eui="0004a30b001c0530", ts=ts, obj=obj, dedup="d-1"
        )
    )
    feed.send(gateway_event("0016c001f153a14c", "stats"), error_event("json"))
    up, stats, error = client.wait_events(3)[:3]

    assert up["event"] == "up"
    assert up["received_at"] == "2023-07-31T12:00:00.012Z"
    assert up["object"] == obj  # exactly as the network server's codec produced it
    assert up["device"] == {
        "tenant": "acme",
        "application": "substation-7",
        "name": "meter-12",
        "devEui": "0004a30b001c0530",
        "tags": {"site": "north"},
    }
    assert up["rx"]["rssi"] == -57 and up["time"] == "2023-07-31T12:00:00.000Z"
    for msg in (up, stats, error):
        # the gateway's bookkeeping stays inside; events never carry a "type" key
        assert not {"src", "ts", "ts_decode", "v", "dedup", "type", "replay"} & msg.keys(), msg
        assert ISO_MS.match(msg["received_at"])
        assert msg["epoch"] == up["epoch"]
    assert [m["seq"] for m in (up, stats, error)] == [1, 2, 3]
    assert stats["event"] == "stats" and stats["gateway"] == {"id": "0016c001f153a14c"}
    assert error["event"] == "error" and error["error"]["reason"] == "json"
    assert list(up)[:4] == ["event", "seq", "epoch", "received_at"]
    client.close()


def test_large_events_arrive_intact(start_fanout, open_feed):
    fanout = start_fanout()
    feed = open_feed(fanout)
    client = collector(fanout.url())
    sizes = [10, 200, 70_000, 300_000]  # the three WebSocket frame-length encodings
    for n in sizes:
        obj = {"type": "blob", "values": [{"time": 1, "value": n}], "data": "x" * n}
        feed.send(device_event(device=f"big-{n}", obj=obj))
    events = client.wait_events(len(sizes))
    assert [len(m["object"]["data"]) for m in events] == sizes
    late = collector(fanout.url())  # and through replay
    assert [len(m["object"]["data"]) for m in late.wait_events(len(sizes))] == sizes
    client.close()
    late.close()


def test_late_client_gets_exactly_the_latest_n_per_device_oldest_first_then_live(
    start_fanout, open_feed
):
    fanout = start_fanout({"WEBSOCKET_REPLAY_SIZE": "10"})
    feed = open_feed(fanout)
    devices = ["meter-a", "meter-b", "meter-c"]
    for i in range(25):
        for d in devices:
            feed.send(device_event(device=d, value=i))
    fanout.wait_metric("gateway_wsfanout_events_accepted_total", 75)

    client = collector(fanout.url())
    replay = client.wait_events(30)
    assert len(replay) == 30 and all(m["replay"] is True for m in replay)
    seqs = [m["seq"] for m in replay]
    assert seqs == sorted(seqs)  # fan-out (ingest) order across devices, oldest first
    for d in devices:
        assert [value_of(m) for m in replay if device_of(m) == d] == list(range(15, 25))

    for d in devices:
        feed.send(device_event(device=d, value=25))
    live = client.wait_events(33)[30:]
    assert [value_of(m) for m in live] == [25, 25, 25]
    assert all("replay" not in m for m in live)
    assert [m["seq"] for m in live] == [76, 77, 78]
    client.close()


def test_replay_and_live_meet_without_loss_or_repeat_while_events_stream(start_fanout, open_feed):
    """Clients join mid-stream: per device each sees a contiguous run, replay then live."""
    fanout = start_fanout({"WEBSOCKET_REPLAY_SIZE": "10"})
    devices = [f"seam-{i}" for i in range(4)]
    per_device = 400
    errors: list[BaseException] = []

    def publish() -> None:
        try:
            feed = open_feed(fanout)  # a socket belongs to the thread that uses it
            for i in range(per_device):
                for d in devices:
                    feed.send(device_event(device=d, value=i))
                time.sleep(0.002)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    publisher = threading.Thread(target=publish)
    publisher.start()
    clients = []
    for _ in range(6):
        clients.append(collector(fanout.url()))
        time.sleep(0.08)
    publisher.join()
    assert not errors
    for client in clients:
        wait_for(
            lambda c=client: (
                {value_of(m) for m in c.events() if device_of(m) == devices[-1]} >= {per_device - 1}
            ),
            20,
            "the last event",
        )
    for client in clients:
        events = client.events()
        seqs = [m["seq"] for m in events]
        assert len(seqs) == len(set(seqs)), "an event was sent twice"
        assert seqs == sorted(seqs)
        first_live = next((i for i, m in enumerate(events) if "replay" not in m), len(events))
        assert all("replay" in m for m in events[:first_live])
        assert not any("replay" in m for m in events[first_live:])
        for d in devices:
            values = [value_of(m) for m in events if device_of(m) == d]
            assert values == list(range(values[0], per_device)), f"{d}: gap or repeat at the seam"
        client.close()


def test_gaps_reorders_repeats_and_restarts_are_counted(start_fanout, open_feed):
    fanout = start_fanout({"ZMQ_EVENTS_REORDER_TIMEOUT": "0.3"})
    feed = open_feed(fanout)
    client = collector(fanout.url())
    t0 = time.time_ns()

    def ev(seq: int, ts_offset: int = 0, dedup: str | None = None) -> Event:
        return device_event(src="ing-A", seq=seq, value=seq, ts=t0 + seq + ts_offset, dedup=dedup)

    # 4 never comes (lost); 8 comes after 9 (reordered, not lost); 9 twice (repeat dropped)
    for seq in (1, 2, 3, 5, 6, 7, 9, 8, 9):
        feed.send(ev(seq))
    # the same uplink twice under a new seq (deduplicationId), then ingest restarted at 1
    feed.send(ev(10, dedup="up-42"), ev(11, dedup="up-42"), ev(1, ts_offset=10**9))
    fanout.wait_metric("gateway_wsfanout_frames_lost_total", 1)
    fanout.wait_metric("gateway_wsfanout_events_received_total", 12)

    assert fanout.metric("gateway_wsfanout_frames_lost_total") == 1
    assert fanout.metric("gateway_wsfanout_reordered_total") == 1
    assert fanout.metric("gateway_wsfanout_duplicates_total", kind="seq") == 1
    assert fanout.metric("gateway_wsfanout_duplicates_total", kind="dedup") == 1
    assert fanout.metric("gateway_wsfanout_source_restarts_total") == 1
    assert fanout.metric("gateway_wsfanout_dropped_total", reason="duplicate") == 2
    assert fanout.metric("gateway_wsfanout_frames_pending") == 0
    events = client.wait_events(10)
    assert [value_of(m) for m in events] == [1, 2, 3, 5, 6, 7, 9, 8, 10, 1]
    assert [m["seq"] for m in events] == list(range(1, 11))
    client.close()
    # The same accounting closes the log, for operators who read logs rather than metrics.
    assert fanout.stop() == 0
    assert "1 frames lost, 2 duplicates dropped, 1 reordered" in fanout.proc.log_text()


def test_bad_frames_are_counted_by_reason_and_the_stream_goes_on(start_fanout, open_feed):
    fanout = start_fanout()
    feed = open_feed(fanout)
    client = collector(fanout.url())
    good = event_parts(device_event(value=1))
    feed.send_parts([b"only-one-part"])
    feed.send_parts([good[0], b"\xc1\xc1 not msgpack"])
    feed.send_parts([good[0], msgpack.packb({"v": 99, "event": "up"})])
    feed.send_parts([b"\xff\xfe", good[1]])
    feed.send_parts([good[0], msgpack.packb([1, 2, 3])])
    feed.send_parts(good)
    assert value_of(client.wait_events(1)[0]) == 1
    fanout.wait_metric("gateway_wsfanout_dropped_total", 5, reason="bad_frame")
    for reason in ("parts", "msgpack", "version", "key", "shape"):
        assert fanout.metric("gateway_wsfanout_bad_frames_total", reason=reason) == 1, reason
    assert "Bad event frame dropped" in fanout.log()
    client.close()


def test_an_event_that_cannot_be_serialized_is_dropped_and_counted(start_fanout, open_feed):
    fanout = start_fanout()
    feed = open_feed(fanout)
    client = collector(fanout.url())
    deep: Any = 1
    for _ in range(300):  # orjson writes at most 254 levels (RELIABILITY.md §0.9)
        deep = [deep]
    feed.send(
        device_event(value=1),
        device_event(obj={"type": "deep", "values": deep}),
        device_event(value=2),
    )
    events = client.wait_events(2)
    fanout.wait_metric("gateway_wsfanout_dropped_total", 1, reason="serializer")
    assert [value_of(m) for m in events] == [1, 2]
    assert [m["seq"] for m in events] == [1, 2]  # no seq spent on the dropped one
    client.close()


def test_clients_that_disconnect_are_cleaned_up(start_fanout, open_feed):
    fanout = start_fanout()
    clients = [collector(fanout.url()) for _ in range(5)]
    wait_for(lambda: fanout.health()["clients"] == 5, 10, "5 clients")
    for c in clients:
        c.close()
    wait_for(lambda: fanout.health()["clients"] == 0, 10, "no clients")
    assert fanout.metric("gateway_wsfanout_clients") == 0
    assert fanout.metric("gateway_wsfanout_clients_closed_total", reason="normal") == 5
