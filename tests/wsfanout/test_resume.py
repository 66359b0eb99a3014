"""Resume after a reconnect (epoch + seq) and history that survives a restart."""

from __future__ import annotations

from typing import Any

from tests.support.timing import wait_for
from tests.support.ws import Collector
from tests.wsfanout.helpers import collector, device_event, device_of, value_of


def first_run(fanout: Any, feed: Any, n: int, device: str = "m1") -> dict[str, Any]:
    """A client that saw ``n`` events of ``device`` and left: its last event."""
    client = collector(fanout.url())
    feed.send(*(device_event(device=device, value=i) for i in range(n)))
    last = client.wait_events(n)[-1]
    client.close()
    return last


def notice_and_events(
    client: Collector, events: int
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    wait_for(lambda: len(client.events()) >= events and client.snapshot(), 10, f"{events} events")
    messages = client.snapshot()
    return messages[0], [m for m in messages if "type" not in m]


def test_resume_inside_the_buffer_sends_exactly_what_was_missed(start_fanout, open_feed):
    fanout = start_fanout({"WEBSOCKET_REPLAY_SIZE": "10"})
    feed = open_feed(fanout)
    last = first_run(fanout, feed, 4)
    feed.send(*(device_event(device="m1", value=i) for i in range(4, 7)))  # missed while away
    fanout.wait_metric("gateway_wsfanout_events_accepted_total", 7)

    client = collector(fanout.url(epoch=last["epoch"], seq=last["seq"]))
    notice, events = notice_and_events(client, 3)
    assert notice == {
        "type": "resume",
        "status": "ok",
        "epoch": last["epoch"],
        "seq": 7,
        "from": last["seq"],
        "replay": "missed",
    }
    assert [value_of(m) for m in events] == [4, 5, 6]
    assert all(m["replay"] is True for m in events)
    feed.send(device_event(device="m1", value=7))  # then the live stream
    assert [value_of(m) for m in client.wait_events(4)] == [4, 5, 6, 7]
    assert "replay" not in client.events()[-1]
    client.close()

    # resuming from the latest seq: told ok, nothing replayed
    latest = collector(fanout.url(epoch=last["epoch"], seq=8))
    wait_for(lambda: latest.snapshot(), 10, "notice")
    feed.send(device_event(device="m1", value=8))
    events = latest.wait_events(1)
    assert latest.snapshot()[0]["status"] == "ok"
    assert [value_of(m) for m in events] == [8] and "replay" not in events[0]
    latest.close()


def test_resume_in_the_first_subscribe_message(start_fanout, open_feed):
    fanout = start_fanout()
    feed = open_feed(fanout)
    last = first_run(fanout, feed, 3)
    feed.send(device_event(device="m1", value=3))
    fanout.wait_metric("gateway_wsfanout_events_accepted_total", 4)
    client = collector(fanout.url(device="nothing"))  # connect-time replay: nothing
    client.send(
        {"op": "subscribe", "filter": {"device": "m1"}, "epoch": last["epoch"], "seq": last["seq"]}
    )
    wait_for(lambda: len(client.events()) >= 1, 10, "missed event")
    subscribed, resume, event = client.snapshot()[:3]
    assert (
        subscribed["type"] == "subscribed"
        and resume["type"] == "resume"
        and resume["status"] == "ok"
    )
    assert value_of(event) == 3 and event["replay"] is True


def test_a_gap_larger_than_the_buffer_is_said_plainly_with_the_full_replay(start_fanout, open_feed):
    fanout = start_fanout({"WEBSOCKET_REPLAY_SIZE": "3"})
    feed = open_feed(fanout)
    last = first_run(fanout, feed, 2)
    feed.send(*(device_event(device="m1", value=i) for i in range(2, 10)))  # 8 > 3 missed
    feed.send(device_event(device="quiet", value=100))
    fanout.wait_metric("gateway_wsfanout_events_accepted_total", 11)

    client = collector(fanout.url(epoch=last["epoch"], seq=last["seq"]))
    notice, events = notice_and_events(client, 4)
    assert (
        notice["status"] == "gap" and notice["replay"] == "full" and notice["from"] == last["seq"]
    )
    assert "no longer" in notice["error"]
    assert [(device_of(m), value_of(m)) for m in events] == [
        ("m1", 7),
        ("m1", 8),
        ("m1", 9),
        ("quiet", 100),
    ]
    client.close()

    # the same position is complete for a client that only wants the quiet device
    quiet = collector(fanout.url(device="quiet", epoch=last["epoch"], seq=last["seq"]))
    notice, events = notice_and_events(quiet, 1)
    assert notice["status"] == "ok" and [value_of(m) for m in events] == [100]
    quiet.close()


def test_another_epoch_or_a_bad_position_gets_a_notice_and_the_full_replay(start_fanout, open_feed):
    fanout = start_fanout()
    feed = open_feed(fanout)
    last = first_run(fanout, feed, 3)
    cases = [
        ({"epoch": "19990101T000000Z-000000", "seq": 2}, "epoch_mismatch"),
        ({"epoch": last["epoch"], "seq": 99}, "invalid"),  # from the future
        ({"epoch": last["epoch"], "seq": "abc"}, "invalid"),
        ({"epoch": last["epoch"]}, "invalid"),  # seq missing
    ]
    for params, status in cases:
        client = collector(fanout.url(**params))
        notice, events = notice_and_events(client, 3)
        assert notice["type"] == "resume" and notice["status"] == status, (params, notice)
        assert notice["epoch"] == last["epoch"] and notice["replay"] == "full" and notice["error"]
        assert [value_of(m) for m in events] == [0, 1, 2]
        client.close()
    # no position at all: no notice, just the replay
    client = collector(fanout.url())
    assert [value_of(m) for m in client.wait_events(3)] == [0, 1, 2]
    assert all("type" not in m for m in client.snapshot())
    client.close()


def test_history_survives_a_restart_and_resume_continues_across_it(
    start_fanout, open_feed, tmp_path
):
    state = tmp_path / "state" / "wsfanout-state.json"
    env = {"WEBSOCKET_STATE_FILE": str(state), "WEBSOCKET_REPLAY_SIZE": "5"}
    fanout = start_fanout(env)
    feed = open_feed(fanout)
    client = collector(fanout.url())
    feed.send(*(device_event(device=d, value=i) for i in range(8) for d in ("m1", "m2")))
    before = client.wait_events(16)
    client.close()
    old_epoch = before[-1]["epoch"]
    assert fanout.stop() == 0
    assert "Saved 10 buffered events" in fanout.log() and state.exists()

    again = start_fanout(env)
    assert "Restored 10 buffered events (2 devices)" in again.log()
    fresh = collector(again.url())  # a new dashboard: the saved history, in a new epoch
    after = fresh.wait_events(10)
    strip = lambda m: {k: v for k, v in m.items() if k not in ("seq", "epoch", "replay")}  # noqa: E731
    assert [strip(m) for m in after] == [strip(m) for m in before[6:]]  # last 5 per device
    assert [m["seq"] for m in after] == list(range(1, 11))
    new_epoch = after[0]["epoch"]
    assert new_epoch != old_epoch and {m["epoch"] for m in after} == {new_epoch}
    fresh.close()

    # Resuming from the last event seen before the restart: nothing again, then live.
    caught_up = collector(again.url(epoch=old_epoch, seq=16))
    wait_for(lambda: caught_up.snapshot(), 10, "the resume notice")
    open_feed(again).send(device_event(device="m1", value=8))
    live = caught_up.wait_events(1)
    notice = caught_up.snapshot()[0]
    assert notice["status"] == "ok" and notice["restarted"] is True and notice["epoch"] == new_epoch
    assert [(m["seq"], value_of(m)) for m in live] == [(11, 8)] and "replay" not in live[0]
    caught_up.close()

    # From further back, still inside what was kept: exactly the missed ones, no repeats.
    behind = collector(again.url(epoch=old_epoch, seq=12))
    notice, events = notice_and_events(behind, 5)
    assert notice["status"] == "ok" and notice["restarted"] is True
    assert [(device_of(m), value_of(m)) for m in events] == [
        ("m1", 6),
        ("m2", 6),
        ("m1", 7),
        ("m2", 7),
        ("m1", 8),
    ]
    behind.close()

    # From before what the old process still held: a plain gap and the full replay.
    lost = collector(again.url(epoch=old_epoch, seq=4))
    notice, events = notice_and_events(lost, 10)
    assert notice["status"] == "gap" and notice["replay"] == "full"
    assert [m["seq"] for m in events] == list(range(2, 12))  # 5 per device, all of it
    lost.close()


def test_a_restart_still_counts_the_frames_lost_while_it_was_down(
    start_fanout, open_feed, tmp_path
):
    env = {
        "WEBSOCKET_STATE_FILE": str(tmp_path / "state.json"),
        "ZMQ_EVENTS_REORDER_TIMEOUT": "0.3",
    }
    fanout = start_fanout(env)
    open_feed(fanout).send(*(device_event(src="ing-R", seq=n, ts=n) for n in (1, 2, 3)))
    fanout.wait_metric("gateway_wsfanout_events_accepted_total", 3)
    assert fanout.stop() == 0
    again = start_fanout(env)
    assert "1 source positions" in again.log()
    feed = open_feed(again)
    feed.send(device_event(src="ing-R", seq=6, ts=6), device_event(src="ing-R", seq=3, ts=3))
    again.wait_metric("gateway_wsfanout_frames_lost_total", 2)  # 4 and 5 never came
    assert again.metric("gateway_wsfanout_duplicates_total", kind="seq") == 1  # 3 was seen before
