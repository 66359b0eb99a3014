"""F19 (RELIABILITY.md §9.1): a burst of 50,000 QoS 1 uplinks from several publishers at
once. Nothing lost, nothing twice, and every process's memory stays bounded: ingest holds
at most its Receive Maximum, decode a few HWMs, the fan-out 10 events per device."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.faults.checks import assert_accounted, settled_counters
from tests.faults.conftest import GatewayFactory
from tests.faults.harness import peak_rss_kib
from tests.faults.scenario import run_stream
from tests.faults.wsreader import ProcessClient
from tests.support.broker import Broker

BURST = 50_000
DEVICES = 200
# Generous: a service that buffered the burst instead of applying backpressure would hold
# 50,000 x ~1 KiB payloads plus Python objects, several hundred MiB.
RSS_LIMIT_KIB = {"ingest": 160 * 1024, "decode": 160 * 1024, "wsfanout": 200 * 1024}


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_f19_burst_of_50000_loses_nothing_and_memory_stays_bounded(
    gateway: GatewayFactory, broker: Broker, resources: list[Any], figures: dict[str, object]
) -> None:
    gw = gateway(decoders=2)
    client = ProcessClient(gw.ws_url)
    resources.append(client)
    started = time.monotonic()
    out = run_stream(
        gw,
        resources,
        collector=client,
        count=BURST,
        rate=None,
        lanes=4,
        devices=DEVICES,
        timeout=180,
        arrive_timeout=120,
    )
    elapsed = time.monotonic() - started
    counters = settled_counters(gw)
    rss = {
        "ingest": peak_rss_kib(gw.ingest.proc.pid),  # type: ignore[union-attr]
        "decode": max(peak_rss_kib(gw.decoder(i).proc.pid) for i in range(2)),  # type: ignore[union-attr]
        "wsfanout": peak_rss_kib(gw.fanout.proc.pid),  # type: ignore[union-attr]
    }
    broker_rss = peak_rss_kib(broker.proc.pid)  # type: ignore[union-attr]
    figures.update(
        lost=len(out.report.lost),
        dup=out.report.duplicates,
        reordered_per_device=out.report.reordered,
        seconds=round(elapsed, 1),
        msgs_per_s=round(BURST / elapsed),
        peak_rss_mib={k: round(v / 1024, 1) for k, v in rss.items()}
        | {"mosquitto": round(broker_rss / 1024, 1)},
        fanout=counters.as_dict(),
    )
    assert out.report.expected == BURST
    assert out.report.lost == [], out.report.summary()
    assert out.report.duplicates == 0
    assert counters.frames_lost == 0 and counters.dropped_slow == 0
    assert_accounted(counters, out.report.distinct)
    for name, limit in RSS_LIMIT_KIB.items():
        assert rss[name] < limit, f"{name} peak RSS {rss[name] // 1024} MiB >= {limit // 1024} MiB"
