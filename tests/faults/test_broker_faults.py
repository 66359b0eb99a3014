"""Broker faults (RELIABILITY.md §9.1 F1, F2, F3, F17): the broker restarts or is killed
mid-stream, is not there when ingest starts, or the network between them goes silent.
Nothing the broker acknowledged may be lost, except what a killed broker had not saved."""

from __future__ import annotations

import signal
import time
from typing import Any

import pytest

from tests.faults.checks import FanoutCounters, assert_accounted, ingest_value, settled_counters
from tests.faults.conftest import GatewayFactory
from tests.faults.gateway import FaultStack
from tests.faults.harness import http_status
from tests.faults.scenario import Outcome, run_stream
from tests.support.broker import Broker
from tests.support.proxy import TcpProxy
from tests.support.timing import wait_for


def restart_until_resubscribed(broker: Broker, gw: FaultStack, sig: int) -> float:
    """Stop the broker with ``sig``, start it again; seconds until ingest re-subscribed."""
    broker.restart(sig)
    up = time.monotonic()
    wait_for(
        lambda: gw.ingest.log_text().count("📥 Subscribed to") >= 2, 30, "ingest to re-subscribe"
    )
    return time.monotonic() - up


def assert_one_reconnect_lost_nothing(
    gw: FaultStack, out: Outcome, counters: FanoutCounters, published: int
) -> None:
    """A broker-side fault ingest rode out: every acknowledged message arrived once, ingest
    reconnected once and found its session, nothing was lost inside the gateway, and what
    reached it twice (a re-send, a redelivery) was dropped by its deduplicationId and
    counted."""
    assert out.report.expected == published, "the broker did not acknowledge every message"
    assert out.report.lost == [], out.report.summary()
    assert out.report.duplicates == 0, out.report.summary()
    log = gw.ingest.log_text()
    assert log.count("session present: yes") == 1, log[-2000:]  # the first connect made it
    assert ingest_value(gw, "gateway_mqtt_session_lost_total") == 0
    assert ingest_value(gw, "gateway_mqtt_connects_total") == 2
    assert counters.frames_lost == 0 and counters.late == 0
    assert_accounted(counters, out.report.distinct)


@pytest.mark.timeout(120)
def test_f1_broker_restart_mid_stream_loses_nothing(
    gateway: GatewayFactory, broker: Broker, resources: list[Any], figures: dict[str, object]
) -> None:
    gw = gateway(decoders=2)

    def restart_broker() -> float:
        # SIGTERM: Mosquitto writes its persistence file, then starts again.
        return restart_until_resubscribed(broker, gw, signal.SIGTERM)

    out = run_stream(gw, resources, count=2000, rate=250, fault=restart_broker)
    counters = settled_counters(gw)
    figures.update(
        out.report.__dict__ | {"lost": len(out.report.lost)},
        reconnect_s=round(out.notes["fault"], 2),
        longest_silence_s=round(out.gap_seconds, 2),
        fanout=counters.as_dict(),
    )

    # The session survived the restart (persistence + user root), so nothing had to be
    # re-queued from scratch, and ingest re-subscribed anyway (RELIABILITY.md §0.5). A
    # publisher re-send after the restart reaches the gateway twice.
    assert_one_reconnect_lost_nothing(gw, out, counters, 2000)


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


@pytest.mark.timeout(120)
def test_f17_partition_between_broker_and_ingest_is_detected_within_the_keepalive(
    gateway: GatewayFactory, broker: Broker, resources: list[Any], figures: dict[str, object]
) -> None:
    keepalive = 5  # the smallest MQTT_KEEPALIVE allowed
    proxy = TcpProxy(broker.host, broker.port).start()
    resources.append(proxy)
    gw = gateway(
        decoders=1,
        service_env={"ingest": {"MQTT_PORT": str(proxy.port), "MQTT_KEEPALIVE": str(keepalive)}},
    )

    def partition() -> dict[str, float]:
        # Both directions go silent and neither end gets a FIN or RST: only the keepalive
        # can tell. The cut lasts two keepalives, as RELIABILITY.md §9.1 F17 has it.
        proxy.blackhole()
        cut = time.monotonic()
        gw.ingest.wait_for_log("🔌 Disconnected from", timeout=2 * keepalive)
        detected = time.monotonic() - cut
        time.sleep(max(0.0, 2 * keepalive - detected))
        proxy.heal()
        healed = time.monotonic()
        wait_for(
            lambda: gw.ingest.log_text().count("📥 Subscribed to") >= 2,
            30,
            "ingest to re-subscribe after the partition",
        )
        return {"detected_s": detected, "resubscribed_s": time.monotonic() - healed}

    out = run_stream(gw, resources, count=1500, rate=250, fault=partition)
    counters = settled_counters(gw)
    times = out.notes["fault"]
    figures.update(
        out.report.__dict__ | {"lost": len(out.report.lost)},
        keepalive_s=keepalive,
        detected_s=round(times["detected_s"], 2),
        detected_per_keepalive=round(times["detected_s"] / keepalive, 2),
        resubscribed_after_heal_s=round(times["resubscribed_s"], 2),
        fanout=counters.as_dict(),
    )

    # Detected by ingest itself, within 1.5 keepalives (paho alone takes up to two: a ping
    # after one keepalive of silence, and another keepalive for its answer).
    assert times["detected_s"] <= 1.5 * keepalive, times
    log = gw.ingest.log_text()
    assert "no answer to a ping" in log, log[-2000:]
    # Everything the broker acknowledged while ingest was cut off waited in its session;
    # what was read before the cut but acked into it comes again.
    assert_one_reconnect_lost_nothing(gw, out, counters, 1500)


@pytest.mark.timeout(120)
def test_f2_broker_sigkill_mid_stream_the_gateway_loses_nothing_it_received(
    gateway: GatewayFactory, broker: Broker, resources: list[Any], figures: dict[str, object]
) -> None:
    rate = 250
    gw = gateway(decoders=2)

    def kill_broker() -> float:
        # No chance to save: what the broker took in since its last autosave (every second
        # here, tests/support/broker.py) and had not passed on yet is gone with it.
        return restart_until_resubscribed(broker, gw, signal.SIGKILL)

    out = run_stream(gw, resources, count=2000, rate=rate, fault=kill_broker)
    counters = settled_counters(gw)
    received = ingest_value(gw, "gateway_mqtt_messages_received_total") - 1  # minus warm-up
    forwarded = ingest_value(gw, "gateway_ingest_frames_forwarded_total") - 1
    figures.update(
        out.report.__dict__ | {"lost": len(out.report.lost)},
        lost_numbers=out.report.lost[:20],
        sent_at_kill=out.sent_at_fault,
        autosave_interval_s=1,
        reconnect_s=round(out.notes["fault"], 2),
        ingest_received=received,
        fanout=counters.as_dict(),
    )

    assert out.report.expected == 2000, "the publisher did not get every message acknowledged"
    # The broker's loss is bounded by its autosave interval: only messages it acknowledged
    # within about a second before the kill (at most one interval's worth) can be missing.
    assert len(out.report.lost) <= rate, out.report.summary()
    assert all(n >= out.sent_at_fault - 2 * rate for n in out.report.lost), out.report.lost
    # The gateway lost nothing it received: every message ingest took from the broker
    # (before the kill, and again after it when the restored session redelivered it) was
    # handed to a decoder, reached the fan-out, and is a distinct event at the client or
    # a counted duplicate.
    assert forwarded == received, (forwarded, received)
    assert counters.received == forwarded, (counters, forwarded)
    assert counters.frames_lost == 0 and counters.late == 0
    assert out.report.duplicates == 0, out.report.summary()
    assert_accounted(counters, out.report.distinct)
    # The session was in the broker's last save, so ingest found it again.
    assert gw.ingest.log_text().count("session present: yes") == 1
