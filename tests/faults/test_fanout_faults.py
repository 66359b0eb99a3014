"""Fan-out faults (RELIABILITY.md §9.1 F15): wsfanout stopped with SIGTERM mid-stream and
started again. Clients are closed with 1001 (going away), reconnect with the ``epoch`` and
``seq`` of the last event they got, and are told plainly how the resume went; the replay
buffer is saved on stop and loaded at start (WEBSOCKET_STATE_FILE), so history survives."""

from __future__ import annotations

import contextlib
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.faults.checks import settled_counters
from tests.faults.client import StreamClient
from tests.faults.conftest import GatewayFactory
from tests.faults.harness import StreamPublisher, StreamReport, analyse, numbers, wait_received
from tests.faults.scenario import Outcome, run_stream
from tests.support.timing import wait_for

DASHBOARDS = 3


def restart_fanout_mid_stream(
    gateway: GatewayFactory,
    resources: list[Any],
    tmp_path: Path,
    dashboards: int = DASHBOARDS,
    count: int = 1500,
    rate: float = 150,
) -> tuple[Outcome, list[StreamClient], list[StreamReport], dict[str, Any]]:
    """1500 uplinks at 150/s over 50 devices (x 30 buffered, ~10 s: the ~1-2 s outage fits
    in the replay buffer even on a slow machine, so a resuming client can be given
    everything it missed); SIGTERM the fan-out at ~450, start it again, every dashboard
    reconnects with epoch + seq."""
    state = tmp_path / "wsfanout-state.json"
    gw = gateway(
        decoders=2,
        env={"WEBSOCKET_STATE_FILE": str(state), "WEBSOCKET_REPLAY_SIZE": "30"},
    )
    clients = [StreamClient(gw.ws_url) for _ in range(dashboards)]
    resources.extend(clients)
    seen: dict[str, Any] = {"state": state, "gw": gw}

    def restart_fanout() -> None:
        seen["exit"] = gw.stop_slot("wsfanout")
        seen["old_log"] = gw.fanout.log_text()
        wait_for(lambda: all(not c.session.open for c in clients), 10, "clients to see the close")
        seen["close_codes"] = [c.session.close_code for c in clients]
        seen["last_before"] = max(numbers(out_stream(), clients[0].events()))
        gw.start_slot("wsfanout")
        # A dashboard opened right after the restart: its replay is the saved history.
        fresh = StreamClient(gw.ws_url)
        resources.append(fresh)
        seen["fresh"] = fresh
        # Every dashboard reconnects at once, as they do after a restart.
        started = time.monotonic()
        with ThreadPoolExecutor(len(clients)) as pool:
            seen["reconnect_s"] = [round(t, 3) for t in pool.map(StreamClient.reconnect, clients)]
        seen["all_reconnected_s"] = round(time.monotonic() - started, 3)

    def out_stream() -> Any:
        return next(r for r in resources if isinstance(r, StreamPublisher)).stream

    out = run_stream(
        gw,
        resources,
        count=count,
        rate=rate,
        devices=50,
        fault=restart_fanout,
        collector=clients[0],
        replay=True,
    )
    for c in clients[1:]:
        with contextlib.suppress(AssertionError):  # the reports name what is missing
            wait_received(c, out.stream, out.stream.count, 5, replay=True)
    reports = [
        analyse(out.stream, c.snapshot(), out.publisher.acked(), count_replay=True) for c in clients
    ]
    seen["counters"] = settled_counters(gw)
    return out, clients, reports, seen


@pytest.mark.timeout(120)
def test_f15_fanout_sigterm_and_restart_clients_resume_without_loss_or_repeats(
    gateway: GatewayFactory, resources: list[Any], figures: dict[str, object], tmp_path: Path
) -> None:
    out, clients, reports, seen = restart_fanout_mid_stream(gateway, resources, tmp_path)
    notices = [[m for m in c.controls() if m.get("type") == "resume"] for c in clients]
    fresh_replay = numbers(out.stream, seen["fresh"].events(), replay=True)
    figures.update(
        exit_code=seen["exit"],
        close_codes=seen["close_codes"],
        reconnect_s=seen["reconnect_s"],
        resume_status=[n[0].get("status") if n else None for n in notices],
        lost_per_client=[r.lost for r in reports],
        dup_per_client=[r.duplicates for r in reports],
        fresh_client_replayed_from_before_restart=sum(
            1 for n in fresh_replay if n <= seen["last_before"]
        ),
        fanout_after_restart=seen["counters"].as_dict(),
    )
    assert seen["exit"] == 0, seen["old_log"][-2000:]
    assert "💾 Saved" in seen["old_log"] and seen["state"].exists()
    # Both decoders answered the hand-off: nothing they sent was in flight at the close.
    assert "2 of 2 decoders handed off" in seen["old_log"], seen["old_log"][-2000:]
    assert set(seen["close_codes"]) == {1001}, seen["close_codes"]
    for n in notices:
        # One plain resume reply per reconnect, saying how the stream picks up again.
        assert len(n) == 1 and n[0].get("status") == "ok", n
    # History survives: a dashboard opened after the restart is replayed events from before it.
    assert fresh_replay and min(fresh_replay) <= seen["last_before"]
    # Every event reached every dashboard, live or in the replay after the reconnect...
    assert [r.lost for r in reports] == [[]] * len(clients), [r.summary() for r in reports]
    # ...and none twice: the resume skipped what each one already had.
    assert [r.duplicates for r in reports] == [0] * len(clients), [r.summary() for r in reports]
    # The fan-out saved where every source stood, so nothing across the restart is a gap.
    assert seen["counters"].frames_lost == 0


STORM = 40


@pytest.mark.timeout(180)
def test_w3_every_dashboard_reconnecting_at_once_resumes_without_loss_or_repeats(
    gateway: GatewayFactory, resources: list[Any], figures: dict[str, object], tmp_path: Path
) -> None:
    """RELIABILITY.md W3: after a fan-out restart all dashboards come back at the same
    moment, each asking to resume from its own last seq; each is told how the stream
    picks up and gets exactly what it missed."""
    out, clients, reports, seen = restart_fanout_mid_stream(
        gateway, resources, tmp_path, dashboards=STORM, count=600, rate=60
    )
    notices = [[m for m in c.controls() if m.get("type") == "resume"] for c in clients]
    figures.update(
        dashboards=STORM,
        all_reconnected_s=seen["all_reconnected_s"],
        slowest_reconnect_s=max(seen["reconnect_s"]),
        resume_status=sorted({str(n[0].get("status")) if n else "none" for n in notices}),
        lost=sum(len(r.lost) for r in reports),
        duplicates=sum(r.duplicates for r in reports),
        fanout_after_restart=seen["counters"].as_dict(),
    )
    assert set(seen["close_codes"]) == {1001}, seen["close_codes"]
    assert all(len(n) == 1 and n[0].get("status") == "ok" for n in notices), notices
    assert [r.lost for r in reports] == [[]] * STORM, [r.summary() for r in reports if r.lost]
    assert [r.duplicates for r in reports] == [0] * STORM
    assert seen["counters"].frames_lost == 0 and seen["counters"].dropped_slow == 0


@pytest.mark.timeout(120)
def test_f16_fanout_sigkill_loses_only_what_it_held_and_logs_where_it_picked_up(
    gateway: GatewayFactory, resources: list[Any], figures: dict[str, object]
) -> None:
    """SIGKILL saves nothing. decode's PUB (ZMQ_IMMEDIATE off) keeps what it had not sent
    yet for the fan-out that comes back, so the loss is only what the killed process held
    (its SUB queue and kernel buffer). The new process cannot count it; it logs the first
    seq it saw per source, which is where an operator sees the cut."""
    gw = gateway(decoders=2)
    client = StreamClient(gw.ws_url)
    resources.append(client)
    seen: dict[str, Any] = {}

    def kill_and_restart() -> None:
        gw.kill_slot("wsfanout")
        gw.start_slot("wsfanout")
        seen["reconnect_s"] = round(client.reconnect(), 3)

    out = run_stream(
        gw,
        resources,
        count=1500,
        rate=200,
        devices=50,
        fault=kill_and_restart,
        collector=client,
        replay=True,
        arrive_timeout=10,
    )
    first = re.search(r"First event from source \S+ \(seq (\d+)\)", gw.fanout.log_text())
    assert first is not None, gw.fanout.log_text()[-2000:]
    picked_up_at = int(first.group(1))
    # One publisher, one ingest, in order: uplink n is ingest seq n + 2 (seq 1 = warm-up).
    lost_seqs = [n + 2 for n in out.report.lost]
    figures.update(
        lost=len(out.report.lost),
        lost_seqs=lost_seqs[:20],
        new_fanout_first_seq=picked_up_at,
        reconnect_s=seen["reconnect_s"],
        dup=out.report.duplicates,
    )
    assert out.report.duplicates == 0, out.report.summary()
    # Whatever was lost lies before the first seq the new process saw: nothing after it.
    assert all(seq < picked_up_at for seq in lost_seqs), (lost_seqs, picked_up_at)
    # ...and it is the in-flight window of a few frames, not the outage (200/s x ~1 s).
    assert len(out.report.lost) <= 50, out.report.summary()
