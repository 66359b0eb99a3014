"""ingest faults (RELIABILITY.md §9.1 F4, F5): stopped gracefully or killed mid-stream and
restarted. Its persistent session keeps what is published meanwhile, and what it had taken
but not handed on was never acknowledged, so the broker delivers it again."""

from __future__ import annotations

import signal
import time
from typing import Any

import pytest

from tests.faults.checks import assert_accounted, ingest_value, settled_counters
from tests.faults.client import StreamClient
from tests.faults.conftest import GatewayFactory
from tests.faults.harness import StreamPublisher, analyse, new_stream
from tests.faults.scenario import run_stream
from tests.support.timing import seconds


@pytest.mark.timeout(120)
def test_f4_ingest_sigterm_and_restart_loses_nothing(
    gateway: GatewayFactory, resources: list[Any], figures: dict[str, object]
) -> None:
    gw = gateway(decoders=2)
    seen: dict[str, Any] = {}

    def restart_ingest() -> None:
        old = gw.ingest
        t0 = time.monotonic()
        seen["exit"] = gw.stop_slot("ingest", sig=signal.SIGTERM)
        seen["drain_s"] = time.monotonic() - t0
        seen["old_log"] = old.log_text()
        t1 = time.monotonic()
        gw.start_slot("ingest")
        seen["restart_s"] = time.monotonic() - t1

    out = run_stream(gw, resources, count=2000, rate=250, fault=restart_ingest)
    counters = settled_counters(gw)
    figures.update(
        lost=len(out.report.lost),
        dup=out.report.duplicates,
        exit_code=seen["exit"],
        stop_s=round(seen["drain_s"], 2),
        restart_until_subscribed_s=round(seen["restart_s"], 2),
        longest_silence_s=round(out.gap_seconds, 2),
        fanout=counters.as_dict(),
    )
    assert seen["exit"] == 0, seen["old_log"][-2000:]
    assert "🛑 Stopped" in seen["old_log"]
    assert out.report.expected == 2000
    assert out.report.lost == [], out.report.summary()
    assert out.report.duplicates == 0, out.report.summary()
    assert "session present: yes" in gw.ingest.log_text()
    assert counters.frames_lost == 0 and counters.late == 0
    assert_accounted(counters, out.report.distinct)


@pytest.mark.timeout(120)
def test_f5_ingest_sigkill_and_restart_loses_nothing_and_drops_redeliveries(
    gateway: GatewayFactory, resources: list[Any], figures: dict[str, object]
) -> None:
    """Killed under a fast stream, so ingest holds unacknowledged messages when it dies."""
    gw = gateway(decoders=2)
    seen: dict[str, Any] = {}

    def kill_and_restart() -> None:
        seen["received_before"] = ingest_value(gw, "gateway_mqtt_messages_received_total")
        gw.kill_slot("ingest")
        t1 = time.monotonic()
        gw.start_slot("ingest")
        seen["restart_s"] = time.monotonic() - t1

    out = run_stream(gw, resources, count=4000, rate=1000, fault=kill_and_restart)
    counters = settled_counters(gw)
    redelivered = ingest_value(gw, "gateway_mqtt_messages_redelivered_total")
    figures.update(
        lost=len(out.report.lost),
        dup=out.report.duplicates,
        redelivered_to_new_ingest=redelivered,
        dup_dropped_by_dedup=counters.dup_dedup,
        restart_until_subscribed_s=round(seen["restart_s"], 2),
        longest_silence_s=round(out.gap_seconds, 2),
        fanout=counters.as_dict(),
    )
    assert out.report.expected == 4000
    assert out.report.lost == [], out.report.summary()
    assert out.report.duplicates == 0, out.report.summary()  # redeliveries never reach clients
    assert "session present: yes" in gw.ingest.log_text()
    assert counters.late == 0
    # Frames still queued inside the killed ingest die with it. With two decoders one pipe
    # can lose its tail while the other's next frame arrives, so the old source may show a
    # gap (frames_lost); their messages were never acknowledged, so the broker redelivered
    # them (lost == [] above). Each redelivery either duplicates a frame that arrived (dropped
    # by deduplicationId) or replaces one that did not: never more gaps than that.
    assert counters.frames_lost + counters.dup_dedup <= redelivered, (counters, redelivered)
    assert counters.source_restarts == 0  # a new process is a new source, not a restart of one
    # Whatever the fan-out got twice (a redelivery of a frame the killed ingest had already
    # forwarded) was dropped by its deduplicationId and counted, and that is all it dropped.
    assert_accounted(counters, out.report.distinct)
    # Duplicates are bounded by what the broker may have in flight to ingest.
    assert counters.dup_dedup <= 1000


@pytest.mark.timeout(90)
def test_f7_session_expired_while_offline_loses_the_outage_and_says_so(
    gateway: GatewayFactory, resources: list[Any], figures: dict[str, object]
) -> None:
    """MQTT_SESSION_EXPIRY=2 and ingest away for 5 s: the broker discards the session and
    what it queued. That loss is the broker's, invisible to the gateway's counters, so the
    guarantee ends here and ingest must say so when it comes back; the stream then flows."""
    gw = gateway(decoders=1, service_env={"ingest": {"MQTT_SESSION_EXPIRY": "2"}})
    client = StreamClient(gw.ws_url)
    resources.append(client)
    assert gw.stop_slot("ingest") == 0

    during = new_stream(50)
    pub = StreamPublisher(gw.broker.host, gw.broker.port, during, rate=None)
    resources.append(pub)
    pub.start().wait_done()
    time.sleep(seconds(5))  # the fault itself: stay away longer than the session expiry
    gw.start_slot("ingest")
    log = gw.ingest.log_text()

    after = run_stream(gw, resources, count=300, rate=250, collector=client)
    lost_during = analyse(during, client.snapshot())
    counters = settled_counters(gw)
    figures.update(
        published_while_expired=during.count,
        lost_while_expired=len(lost_during.lost),
        lost_after=len(after.report.lost),
        frames_lost_gateway=counters.frames_lost,
    )
    assert "session present: no" in log, log[-2000:]
    assert "old session expired" in log  # the one line that tells the operator
    assert len(lost_during.lost) == during.count  # queued in the expired session: gone
    assert counters.frames_lost == 0  # ...and nothing the gateway itself could have counted
    assert after.report.lost == [], after.report.summary()  # re-subscribed: the stream flows
