"""decode faults (RELIABILITY.md §9.1 F11-F14, F18): a replica killed, frozen or stopped,
all of them gone for a while, the line from ingest to one of them silent, or the link from
decode to the fan-out stalled.

The raw link is credit-based (ROUTER/DEALER, shared/rawlink.py): ingest sends a decoder
at most the credit it granted. What a killed decoder held is gone; the gateway's promise
there is that the loss is bounded by its credit (ZMQ_RAW_CREDIT) and counted exactly by
the fan-out's per-source seq tracking (``frames_lost``). Everything else here, a SIGTERM
included (stop/stopped handshake), must lose nothing.
"""

from __future__ import annotations

import contextlib
import signal
import time
from typing import Any

import pytest

from tests.faults.checks import (
    assert_accounted,
    assert_late_not_lost,
    fanout_counters,
    ingest_value,
    settled_counters,
)
from tests.faults.client import StreamClient
from tests.faults.conftest import GatewayFactory
from tests.faults.harness import (
    StreamPublisher,
    analyse,
    metric,
    new_stream,
    numbers,
    peak_rss_kib,
    wait_received,
)
from tests.faults.scenario import run_stream
from tests.faults.wsreader import ProcessClient
from tests.support.proxy import TcpProxy
from tests.support.timing import wait_for

# F18: ingest's counters, a stream the stall cannot outlast, how long it is held once
# ingest stopped reading
RECEIVED = "gateway_mqtt_messages_received_total"
PAUSED = "gateway_ingest_read_paused_seconds_total"
COUNT, HOLD_S = 20000, 2.5
UNCONFIRMED = "gateway_mqtt_acks_unconfirmed_total"

# Small queues for the kill cases, so "bounded by the credit" is a tight, checkable number.
INGEST_SNDHWM, INGEST_SNDBUF = 100, 16384
DECODE_CREDIT, DECODE_RCVHWM, DECODE_RCVBUF = 40, 50, 16384
SMALL_QUEUES = {
    "ingest": {"ZMQ_RAW_SNDHWM": str(INGEST_SNDHWM), "ZMQ_RAW_SNDBUF": str(INGEST_SNDBUF)},
    "decode": {
        "ZMQ_RAW_CREDIT": str(DECODE_CREDIT),
        "ZMQ_RAW_RCVHWM": str(DECODE_RCVHWM),
        "ZMQ_RAW_RCVBUF": str(DECODE_RCVBUF),
    },
}


def loss_bound() -> int:
    """Most frames one decoder can take with it: the credit it granted ingest (the frames
    it holds in hand or in queues are part of it: credit comes back only once handed on)."""
    return DECODE_CREDIT


@pytest.mark.timeout(120)
@pytest.mark.parametrize("victim_state", ["flowing", "backlogged"])
def test_f11_one_of_three_decoders_sigkilled_loss_is_bounded_and_counted_exactly(
    victim_state: str, gateway: GatewayFactory, resources: list[Any], figures: dict[str, object]
) -> None:
    """``flowing``: killed while the stream runs. ``backlogged``: frozen first until its
    queues are full, then killed: the worst case, which must lose something (or the case
    proves nothing) and no more than the bound."""
    gw = gateway(decoders=3, service_env=SMALL_QUEUES)
    bound = loss_bound()
    seen: dict[str, Any] = {}

    def kill_one() -> None:
        victim = gw.decoder(1)
        if victim_state == "backlogged":
            victim.send_signal(signal.SIGSTOP)
            # Round-robin gives it a third of the stream until its credit is used up, then
            # skips it: once 3 x bound more frames have gone through, it holds all it can.
            forwarded = ingest_value(gw, "gateway_ingest_frames_forwarded_total")
            wait_for(
                lambda: (
                    ingest_value(gw, "gateway_ingest_frames_forwarded_total")
                    >= forwarded + 3 * bound
                ),
                30,
                "the frozen decoder's queues to fill",
            )
        victim.kill()  # SIGKILL (also ends a SIGSTOP)
        seen["killed_at"] = time.monotonic()

    out = run_stream(
        gw, resources, count=3000, rate=500, fault=kill_one, fault_at=0.25, expect_all=False
    )
    counters = settled_counters(gw)
    lost = len(out.report.lost)
    after_kill = [
        t for t, ev in out.collector.stamps if t > seen["killed_at"] and numbers(out.stream, [ev])
    ]
    figures.update(
        victim=victim_state,
        lost_harness=lost,
        frames_lost_gateway=counters.frames_lost,
        bound=bound,
        dup=out.report.duplicates,
        first_event_after_kill_s=round(after_kill[0] - seen["killed_at"], 3)
        if after_kill
        else None,
        longest_silence_s=round(out.gap_seconds, 2),
        fanout=counters.as_dict(),
    )
    assert out.report.expected == 3000
    # Exactly what the client missed is what the gateway says it lost.
    assert counters.frames_lost == lost, out.report.summary()
    assert lost <= bound, f"lost {lost} > bound {bound}: {out.report.summary()}"
    if victim_state == "backlogged":
        # Frozen, it held its credit (less what it had handled but not granted back yet).
        assert lost > 0, "the frozen decoder held nothing: the case proved nothing"
    assert out.report.duplicates == 0
    assert counters.late == 0
    assert_accounted(counters, out.report.distinct)
    # The stream went on through the two others: everything after the kill arrived.
    assert max(out.report.lost, default=0) < out.stream.count - 100


@pytest.mark.timeout(120)
def test_f12_frozen_decoder_resumed_its_frames_are_reordered_not_lost(
    gateway: GatewayFactory, resources: list[Any], figures: dict[str, object]
) -> None:
    """SIGSTOP one of three until the fan-out is visibly waiting for its frames, SIGCONT:
    they arrive late, within the reorder window (30 s here), so reordered, not gaps."""
    # The frozen decoder holds at most its credit: give it room for well over the 100
    # awaited seqs (the default credit, 100, would be the threshold itself).
    gw = gateway(
        decoders=3,
        env={"ZMQ_EVENTS_REORDER_TIMEOUT": "30"},
        service_env={"decode": {"ZMQ_RAW_CREDIT": "300"}},
    )
    seen: dict[str, Any] = {}

    def freeze_and_thaw() -> None:
        victim = gw.decoder(2)
        victim.send_signal(signal.SIGSTOP)
        t0 = time.monotonic()
        try:
            seen["pending_peak"] = wait_for(
                lambda: (p := fanout_counters(gw).pending) >= 100 and p,
                30,
                "frames held by the frozen decoder",
            )
        finally:
            victim.send_signal(signal.SIGCONT)
        seen["frozen_s"] = time.monotonic() - t0

    out = run_stream(gw, resources, count=2000, rate=250, fault=freeze_and_thaw)
    counters = settled_counters(gw)
    figures.update(
        lost=len(out.report.lost),
        reordered_harness_per_device=out.report.reordered,
        reordered_gateway=counters.reordered,
        pending_peak=seen["pending_peak"],
        frozen_s=round(seen["frozen_s"], 2),
        longest_silence_s=round(out.gap_seconds, 2),
        fanout=counters.as_dict(),
    )
    assert_late_not_lost(out.report, counters, seen["pending_peak"])


@pytest.mark.timeout(120)
def test_f13_all_decoders_down_ingest_waits_and_nothing_is_lost(
    gateway: GatewayFactory, resources: list[Any], figures: dict[str, object]
) -> None:
    gw = gateway(decoders=2)
    seen: dict[str, Any] = {}

    def all_down_then_back() -> None:
        publisher = resources[-1]  # the one run_stream started
        seen["exit_codes"] = [gw.stop_slot("decode", i) for i in range(2)]
        # ingest notices it cannot hand frames on and waits; the broker holds the rest.
        gw.ingest.wait_for_log("No decoder is taking frames", timeout=20)
        sent = publisher.sent
        wait_for(
            lambda: publisher.sent >= sent + 300, 30, "300 more published while no decoder runs"
        )
        seen["held_in_ingest"] = ingest_value(gw, "gateway_ingest_queue_depth")
        seen["forwarded_while_down"] = ingest_value(gw, "gateway_ingest_frames_forwarded_total")
        for i in range(2):
            gw.start_slot("decode", i)

    out = run_stream(gw, resources, count=3000, rate=250, fault=all_down_then_back, fault_at=0.2)
    counters = settled_counters(gw)
    receive_maximum = 1000  # ingest's default: its ZMQ_RAW_SNDHWM
    figures.update(
        lost=len(out.report.lost),
        dup=out.report.duplicates,
        decoder_exit_codes=seen["exit_codes"],
        held_in_ingest_while_blocked=seen["held_in_ingest"],
        ingest_peak_rss_kib=peak(gw, "ingest"),
        longest_silence_s=round(out.gap_seconds, 2),
        fanout=counters.as_dict(),
    )
    assert seen["exit_codes"] == [0, 0]
    # What ingest holds while blocked is bounded by its Receive Maximum: the broker keeps
    # the rest (QoS 1 flow control), so ingest's memory does not grow with the outage.
    assert 0 < seen["held_in_ingest"] <= receive_maximum
    assert out.report.duplicates == 0
    assert counters.late == 0
    assert_accounted(counters, out.report.distinct)
    assert counters.frames_lost == len(out.report.lost), out.report.summary()
    assert out.report.lost == [], out.report.summary()


def peak(gw: Any, name: str, index: int = 0) -> int:
    from tests.faults.harness import peak_rss_kib

    proc = gw.proc(name, index).proc
    assert proc is not None
    return peak_rss_kib(proc.pid)


@pytest.mark.timeout(120)
def test_f14_decoder_sigterm_mid_stream_exits_0_and_loses_nothing(
    gateway: GatewayFactory, resources: list[Any], figures: dict[str, object]
) -> None:
    gw = gateway(decoders=2)
    seen: dict[str, Any] = {}

    def stop_one() -> None:
        t0 = time.monotonic()
        seen["exit"] = gw.stop_slot("decode", 0, sig=signal.SIGTERM)
        seen["exit_s"] = time.monotonic() - t0
        seen["log"] = gw.decoder(0).log_text()

    out = run_stream(gw, resources, count=2000, rate=250, fault=stop_one)
    counters = settled_counters(gw)
    figures.update(
        lost=len(out.report.lost),
        dup=out.report.duplicates,
        exit_code=seen["exit"],
        exit_s=round(seen["exit_s"], 2),
        longest_silence_s=round(out.gap_seconds, 2),
        fanout=counters.as_dict(),
    )
    assert seen["exit"] == 0, seen["log"][-2000:]
    assert "🛑 Stopped" in seen["log"]
    assert out.report.duplicates == 0
    assert counters.late == 0
    assert_accounted(counters, out.report.distinct)
    assert counters.frames_lost == len(out.report.lost), out.report.summary()
    assert out.report.lost == [], out.report.summary()


@pytest.mark.timeout(90)
def test_f13_decoder_starting_while_ingest_holds_a_backlog_loses_nothing(
    gateway: GatewayFactory, resources: list[Any], figures: dict[str, object]
) -> None:
    """No decoder running (stopped while idle, so nothing was in flight) while 600
    uplinks wait: ingest holds its Receive Maximum, the broker the rest. The decoder that
    comes back gets the whole backlog at once; every one of them must reach the client."""
    gw = gateway(decoders=1)
    assert gw.stop_slot("decode", 0) == 0
    client = StreamClient(gw.ws_url)
    resources.append(client)
    stream = new_stream(600)
    pub = StreamPublisher(gw.broker.host, gw.broker.port, stream, rate=None)
    resources.append(pub)
    pub.start().wait_done()
    gw.ingest.wait_for_log("No decoder is taking frames", timeout=20)
    held = ingest_value(gw, "gateway_ingest_queue_depth")

    gw.start_slot("decode", 0)
    with contextlib.suppress(AssertionError):  # the report below names what is missing
        wait_received(client, stream, stream.count, 30)
    report = analyse(stream, client.snapshot(), pub.acked())
    counters = settled_counters(gw)
    figures.update(
        held_in_ingest=held,
        lost=len(report.lost),
        first_lost=report.lost[:5],
        frames_lost_gateway=counters.frames_lost,
    )
    assert report.expected == stream.count
    assert report.duplicates == 0 and report.reordered == 0
    assert counters.frames_lost == len(report.lost), report.summary()
    assert report.lost == [], report.summary()


@pytest.mark.timeout(90)
def test_decoder_up_before_the_fanout_while_ingest_holds_a_backlog_loses_nothing(
    gateway: GatewayFactory, resources: list[Any], figures: dict[str, object]
) -> None:
    """Start order is not guaranteed (supervisord, compose, a restart of everything after an
    outage): ingest and a decoder are up, the broker holds a backlog, the fan-out comes
    last. A decoder must not take frames it cannot hand on (a PUB with no subscriber
    drops them, and a fan-out that was not there cannot count them)."""
    gw = gateway(decoders=1, start=False)
    gw.start_slot("ingest")
    stream = new_stream(300)
    pub = StreamPublisher(gw.broker.host, gw.broker.port, stream, rate=None)
    resources.append(pub)
    pub.start().wait_done()
    decoder = gw.start_slot("decode", 0, wait=False)
    # With no fan-out subscribed the decoder takes no frame: it says it waits, ingest waits
    # for a decoder, and the backlog stays with ingest and the broker.
    decoder.wait_for_log(r"Waiting for a fan-out to subscribe", timeout=20)
    gw.ingest.wait_for_log("No decoder is taking frames", timeout=20)
    taken_early = metric(gw.metrics("decode", 0), "gateway_decode_frames_total")
    assert taken_early == 0
    gw.start_slot("wsfanout")
    decoder.wait_for_log(r"Decoder ready", timeout=20)
    # Every held uplink reaches the fan-out once it is there (a client connecting now only
    # gets the replay of the last 10 per device, so count at the fan-out itself).
    wait_for(
        lambda: fanout_counters(gw).accepted >= stream.count, 30, "every held uplink at the fan-out"
    )
    counters = settled_counters(gw)
    figures.update(
        decoded_before_fanout_was_up=taken_early,
        accepted=counters.accepted,
        frames_lost_gateway=counters.frames_lost,
    )
    assert counters.accepted == stream.count
    assert counters.frames_lost == 0
    assert counters.dup_seq == 0


@pytest.mark.timeout(120)
def test_f18_stalled_link_to_the_fanout_pushes_back_to_the_broker_and_loses_nothing(
    gateway: GatewayFactory, resources: list[Any], figures: dict[str, object]
) -> None:
    gw = gateway(decoders=1, start=False)
    # The decoder reaches the fan-out through a line that can go silent without a FIN.
    proxy = TcpProxy("127.0.0.1", int(gw.events.rsplit(":", 1)[1]), buffer=16384).start()
    resources.append(proxy)
    gw.service_env["decode"] = {"ZMQ_EVENTS_CONNECT": proxy.endpoint, "ZMQ_EVENTS_SNDHWM": "100"}
    gw.start()
    times: dict[str, float] = {}
    client = ProcessClient(gw.ws_url)  # its own process: the catch-up must not outrun it
    resources.append(client)

    def stall() -> None:
        proxy.blackhole()
        cut = time.monotonic()
        reached_fanout = fanout_counters(gw).received
        gw.decoder(0).wait_for_log("⏸️ The fan-out is not taking events", timeout=20)
        times["pushback_after_s"] = time.monotonic() - cut
        # Frames the decoder took that never reached the fan-out: its batch, ZeroMQ's queue
        # (ZMQ_EVENTS_SNDHWM) and the kernel's buffers (ZMQ_EVENTS_SNDBUF, the proxy's).
        taken = metric(gw.metrics("decode"), "gateway_decode_frames_total")
        times["in_flight_when_held"] = taken - 1 - reached_fanout  # minus the warm-up
        at_pushback = ingest_value(gw, RECEIVED)
        # Held: the decoder takes no frames and grants no credit; ingest fills what it may
        # hold and stops reading, and from then on the broker holds the stream.
        wait_for(lambda: ingest_value(gw, PAUSED) > 0, 20, "ingest to stop reading")
        settled = ingest_value(gw, RECEIVED)
        time.sleep(HOLD_S)
        times["taken_late_in_hold"] = ingest_value(gw, RECEIVED) - settled
        times["taken_while_held"] = settled - at_pushback
        proxy.heal()
        times["stalled_s"] = time.monotonic() - cut

    out = run_stream(
        gw, resources, collector=client, count=COUNT, rate=2000, fault=stall, fault_at=0.04
    )
    counters = settled_counters(gw)
    paused = ingest_value(gw, PAUSED)
    rss_mib = {
        name: round(peak_rss_kib(proc.proc.pid) / 1024, 1)  # type: ignore[union-attr]
        for name, proc in (("decode", gw.decoder(0)), ("wsfanout", gw.fanout))
    }
    figures.update(
        out.report.__dict__ | {"lost": len(out.report.lost)},
        pushback_after_s=round(times["pushback_after_s"], 2),
        stalled_s=round(times["stalled_s"], 2),
        decoder_in_flight_when_held=times["in_flight_when_held"],
        ingest_took_while_held=times["taken_while_held"],
        ingest_took_late_in_hold=times["taken_late_in_hold"],
        ingest_read_paused_s=round(paused, 2),
        peak_rss_mib=rss_mib,
        fanout=counters.as_dict(),
    )

    # The decoder's queue to the fan-out filled; it held what it had and took no more, its
    # credit ran out, and ingest stopped reading: the broker held the rest.
    assert "▶️ The fan-out takes events again" in gw.decoder(0).log_text()
    assert paused >= HOLD_S, paused
    assert times["taken_late_in_hold"] == 0, times
    # It held after about its HWM plus 64 KiB of kernel buffer (~100 events each), not the
    # megabytes (thousands of events) an autotuned loopback buffer takes first.
    assert times["in_flight_when_held"] < 1000, times
    assert out.report.expected == COUNT
    assert out.report.lost == [], out.report.summary()
    assert out.report.duplicates == 0, out.report.summary()
    assert out.report.reordered == 0  # one decoder: per-device order kept through the stall
    assert counters.frames_lost == 0 and counters.late == 0
    assert_accounted(counters, out.report.distinct)
    # Memory stays bounded by the credit window and the queues, not by the stall's length.
    assert rss_mib["decode"] < 160 and rss_mib["wsfanout"] < 200, rss_mib


@pytest.mark.timeout(120)
def test_silent_link_to_one_decoder_delays_only_what_it_was_sent_and_loses_nothing(
    gateway: GatewayFactory, resources: list[Any], figures: dict[str, object]
) -> None:
    """One of two decoders reaches ingest through a line that goes silent (no FIN: a cable,
    a firewall, a frozen host) for longer than the confirm timeout, then heals. ZeroMQ
    sees no disconnect, so ingest keeps that decoder's turns until the credit it granted
    is spent; the other decoder carries the rest. After healing the held frames arrive
    late: counted as reordered (within ZMQ_EVENTS_REORDER_TIMEOUT), none lost."""
    credit = 200
    gw = gateway(
        decoders=1,
        env={"ZMQ_EVENTS_REORDER_TIMEOUT": "30"},
        service_env={"decode": {"ZMQ_RAW_CREDIT": str(credit)}},
    )
    proxy = TcpProxy("127.0.0.1", int(gw.raw.rsplit(":", 1)[1])).start()
    resources.append(proxy)
    gw.service_env["decode"]["ZMQ_RAW_CONNECT"] = proxy.endpoint
    gw.start_slot("decode", 1)
    seen: dict[str, Any] = {}

    def partition() -> None:
        proxy.blackhole()
        cut = time.monotonic()
        before = fanout_counters(gw).accepted
        try:
            # Longer than ZMQ_RAW_CONFIRM_TIMEOUT (1 s): ingest acks what is stuck anyway.
            wait_for(
                lambda: ingest_value(gw, UNCONFIRMED) > 0,
                20,
                "ingest to ack the frames stuck on the silent line",
            )
            time.sleep(2)
            seen["carried_during_cut"] = fanout_counters(gw).accepted - before
            seen["pending_peak"] = fanout_counters(gw).pending
        finally:
            proxy.heal()
        seen["cut_s"] = time.monotonic() - cut

    out = run_stream(gw, resources, count=2000, rate=250, fault=partition)
    counters = settled_counters(gw)
    figures.update(
        lost=len(out.report.lost),
        duplicates=out.report.duplicates,
        reordered_harness_per_device=out.report.reordered,
        reordered_gateway=counters.reordered,
        cut_s=round(seen["cut_s"], 2),
        carried_by_the_other_decoder_during_cut=seen["carried_during_cut"],
        awaited_at_heal=seen["pending_peak"],
        acks_unconfirmed=ingest_value(gw, UNCONFIRMED),
        fanout=counters.as_dict(),
    )
    # The healthy decoder kept the stream going while the line was silent ...
    assert seen["carried_during_cut"] >= 250, seen
    # ... the silent one was sent no more than its credit, and all of it arrived late.
    assert 0 < seen["pending_peak"] <= credit, seen
    assert_late_not_lost(out.report, counters, seen["pending_peak"])
    # Ingest acked them to the broker after the confirm timeout: from then on the gateway's
    # own queues carried them (a line that never heals loses them, counted in frames_lost).
    assert ingest_value(gw, UNCONFIRMED) >= seen["pending_peak"]
