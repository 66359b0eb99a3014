"""MQTT_COALESCE_MS: while messages keep coming, ingest reads the broker at most once per
window and hands on together what came; a message after a quiet spell is read at once.
Each frame's ``ts`` is the moment ingest read its message, so the frames show the reads."""

from __future__ import annotations

import time
from collections.abc import Callable

from services.ingest.mqtt_link import BUSY_PASS
from shared.frames import RawFrame
from tests.ingest.conftest import StartIngest
from tests.ingest.helpers import FrameCollector, numbered, numbers
from tests.support.broker import Broker
from tests.support.mqtt import Publisher

WINDOW_MS = 100  # the largest allowed: far above the spacing of the messages below
SPACING_S = 0.02
SAME_READ_MS = SPACING_S * 1000 / 2  # frames of one read are microseconds apart


def test_messages_that_keep_coming_are_read_once_per_window_and_all_arrive_in_order(
    broker: Broker, start_ingest: StartIngest, collect: Callable[..., FrameCollector]
) -> None:
    start_ingest(MQTT_COALESCE_MS=str(WINDOW_MS))
    frames_out = collect()
    pub = Publisher(broker.host, broker.port)
    total = 40
    start = time.monotonic()
    for i, (topic, payload) in enumerate(numbered(total)):  # one every 20 ms: ~800 ms
        pub.publish(topic, payload)
        time.sleep(max(0.0, start + (i + 1) * SPACING_S - time.monotonic()))
    frames = frames_out.wait_numbers(range(total))
    pub.close()
    assert numbers(frames) == list(range(total))
    # Consecutive frames were read in the same pass (microseconds apart) or in passes at
    # least a window apart; read one by one they would be ~20 ms apart.
    gaps_ms = [(b.ts - a.ts) / 1e6 for a, b in zip(frames, frames[1:], strict=False)]
    between_reads = [g for g in gaps_ms if g >= SAME_READ_MS]
    # One stray gap is allowed for a pass the machine preempted; one-by-one reads make ~39.
    assert sum(1 for g in between_reads if g < WINDOW_MS * 0.95) <= 1, gaps_ms
    assert len(between_reads) < total // 4, gaps_ms  # several messages per read


def test_a_message_after_a_quiet_spell_is_read_at_once(
    broker: Broker, start_ingest: StartIngest, collect: Callable[..., FrameCollector]
) -> None:
    start_ingest(MQTT_COALESCE_MS=str(WINDOW_MS))
    frames_out = collect()
    pub = Publisher(broker.host, broker.port)
    messages = numbered(4)
    pub.publish_all(messages[:1])
    frames_out.wait_numbers([0])
    delays_ms = []
    for n in range(1, 4):  # three probes: a window delays every one, machine noise only some
        time.sleep(3 * WINDOW_MS / 1000)  # quiet: the window after the last read is over
        published = time.time_ns()
        pub.publish_all(messages[n : n + 1])
        frames = frames_out.wait_numbers([n])
        read = dict(zip(numbers(frames), frames, strict=True))[n]
        delays_ms.append((read.ts - published) / 1e6)
    pub.close()
    # Read without waiting for a window (a window would put it >= 100 ms after publish).
    assert min(delays_ms) < WINDOW_MS / 2, delays_ms


def reads(frames: list[RawFrame], same_read_ms: float) -> list[list[RawFrame]]:
    """The frames grouped by the pass that read them: consecutive frames less than
    ``same_read_ms`` apart."""
    groups = [[frames[0]]]
    for a, b in zip(frames, frames[1:], strict=False):
        if (b.ts - a.ts) / 1e6 < same_read_ms:
            groups[-1].append(b)
        else:
            groups.append([b])
    return groups


def test_the_window_doubles_after_a_busy_read_and_not_after_a_light_one(
    broker: Broker, start_ingest: StartIngest, collect: Callable[..., FrameCollector]
) -> None:
    window_ms = 40
    start_ingest(MQTT_COALESCE_MS=str(window_ms))
    frames_out = collect()
    pub = Publisher(broker.host, broker.port)
    total = 240
    for i, (topic, payload) in enumerate(numbered(total)):
        pub.publish(topic, payload)
        # 160 messages ~2.5 ms apart (16 per window: busy reads), then 80 ~12 ms apart
        # (3 or 4 per window: light reads).
        time.sleep(0.0025 if i < 160 else 0.012)
    frames = frames_out.wait_numbers(range(total))
    pub.close()
    assert numbers(frames) == list(range(total))
    # Reads are at least a window apart, so frames closer than half a window came in the
    # same read (even if the thread was preempted for a while in the middle of it).
    groups = reads(frames, same_read_ms=window_ms / 2)
    gaps = [
        (len(prev), (nxt[0].ts - prev[0].ts) / 1e6)
        for prev, nxt in zip(groups, groups[1:], strict=False)
    ]
    after_busy = [gap for size, gap in gaps if size >= BUSY_PASS]
    after_light = [gap for size, gap in gaps if size < BUSY_PASS]
    assert len(after_busy) >= 3 and len(after_light) >= 3, gaps
    # A read starts no sooner than one window after the last (two after a busy one).
    assert all(gap >= 2 * window_ms * 0.95 for gap in after_busy), gaps
    assert all(gap >= window_ms * 0.95 for gap in after_light), gaps
    # Once the stream is light again the window is back to one: reads ~40 ms apart
    # (a doubled window would put every light read >= 76 ms after the one before).
    assert min(after_light) < 2 * window_ms * 0.95, gaps
