"""Broker faults (RELIABILITY.md §9.1 F1, F3): the broker restarts mid-stream, or is not
there when ingest starts. Nothing the broker acknowledged may be lost."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.faults.checks import assert_accounted, ingest_value, settled_counters
from tests.faults.conftest import GatewayFactory
from tests.faults.harness import http_status
from tests.faults.scenario import run_stream
from tests.support.broker import Broker
from tests.support.timing import wait_for


@pytest.mark.timeout(120)
def test_f1_broker_restart_mid_stream_loses_nothing(
    gateway: GatewayFactory, broker: Broker, resources: list[Any], figures: dict[str, object]
) -> None:
    gw = gateway(decoders=2)

    def restart_broker() -> float:
        broker.restart()  # SIGTERM: Mosquitto writes its persistence file, then starts again
        up = time.monotonic()
        wait_for(
            lambda: gw.ingest.log_text().count("📥 Subscribed to") >= 2,
            30,
            "ingest to re-subscribe",
        )
        return time.monotonic() - up

    out = run_stream(gw, resources, count=2000, rate=250, fault=restart_broker)
    counters = settled_counters(gw)
    figures.update(
        out.report.__dict__ | {"lost": len(out.report.lost)},
        reconnect_s=round(out.notes["fault"], 2),
        longest_silence_s=round(out.gap_seconds, 2),
        fanout=counters.as_dict(),
    )

    assert out.report.expected == 2000, "the broker did not acknowledge every message"
    assert out.report.lost == [], out.report.summary()
    assert out.report.duplicates == 0, out.report.summary()
    log = gw.ingest.log_text()
    # The session survived the restart (persistence + user root), so nothing had to be
    # re-queued from scratch, and ingest re-subscribed anyway (RELIABILITY.md §0.5).
    assert "session present: yes" in log, log[-2000:]
    assert ingest_value(gw, "gateway_mqtt_session_lost_total") == 0
    assert ingest_value(gw, "gateway_mqtt_connects_total") == 2
    assert counters.frames_lost == 0 and counters.late == 0
    # A publisher re-send after the restart reaches the gateway twice: dropped by its
    # deduplicationId, and counted.
    assert_accounted(counters, out.report.distinct)


@pytest.mark.timeout(120)
def test_f3_broker_down_at_startup_ingest_waits_then_loses_nothing(
    gateway: GatewayFactory, broker: Broker, resources: list[Any], figures: dict[str, object]
) -> None:
    broker.stop()
    gw = gateway(decoders=1, start=False)
    gw.start_slot("wsfanout")
    gw.start_slot("decode", 0)
    ingest = gw.start_slot("ingest", wait=False)

    # Not ready while the broker is away, and it keeps trying (one log line per attempt).
    wait_for(
        lambda: http_status(gw.healthz_url("ingest")) == 503, 20, "ingest /healthz to answer 503"
    )
    ingest.wait_for_log(r"(?s)(Cannot connect to.*){3}", timeout=30)
    assert ingest.running
    assert http_status(gw.healthz_url("ingest")) == 503
    lines = ingest.log_text().count("Cannot connect to")
    failures = ingest_value(gw, "gateway_mqtt_connect_failures_total", reason="network")
    assert lines <= failures <= lines + 1, (lines, failures)  # the counter may be one ahead

    broker.start()
    up = time.monotonic()
    ingest.wait_for_log("📥 Subscribed to", timeout=30)
    connect_s = time.monotonic() - up
    wait_for(
        lambda: http_status(gw.healthz_url("ingest")) == 200, 10, "ingest /healthz to answer 200"
    )
    gw.warm_up()

    out = run_stream(gw, resources, count=1000, rate=250)
    counters = settled_counters(gw)
    figures.update(
        attempts_before_broker=int(failures),
        connect_after_broker_up_s=round(connect_s, 2),
        lost=len(out.report.lost),
        dup=out.report.duplicates,
        reordered=out.report.reordered,
    )
    assert out.report.expected == 1000
    assert out.report.lost == [], out.report.summary()
    assert out.report.duplicates == 0
    assert out.report.reordered == 0  # one decoder: per-device order is kept end to end
    assert counters.frames_lost == 0
    assert_accounted(counters, out.report.distinct)
