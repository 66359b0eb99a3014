"""A message larger than the decoders take (they say it with their credit) is dropped in
ingest, counted and acknowledged: sent on, ZeroMQ would drop the decoder's link for it
(ZMQ_MAXMSGSIZE) and, with the link, every frame in flight on it."""

from __future__ import annotations

from collections.abc import Callable

from tests.ingest.conftest import StartIngest
from tests.ingest.helpers import FrameCollector, numbered, numbers, scrape
from tests.support.broker import Broker
from tests.support.mqtt import Publisher
from tests.support.ports import free_port
from tests.support.timing import wait_for

LIMIT = 8192  # the stand-in decoder's largest frame: its ZMQ_MAXMSGSIZE too


def test_a_message_too_large_for_the_decoders_is_dropped_counted_and_acked_not_the_link(
    broker: Broker, start_ingest: StartIngest, collect: Callable[..., FrameCollector]
) -> None:
    port = free_port()
    ingest = start_ingest(METRICS_PORT=str(port))
    frames_out = collect(max_frame=LIMIT)
    wait_for(lambda: frames_out.connects == 1, 10, "the decoder's link")
    messages = numbered(40)
    topic, _ = messages[20]
    huge = (topic, b"1000" + b" " * (2 * LIMIT))  # a number too: it would show if it came
    just_fits = (topic, b"1001" + b" " * (LIMIT - 1024))  # room for topic and framing
    pub = Publisher(broker.host, broker.port)
    pub.publish_all([*messages[:20], huge, just_fits, *messages[20:]], qos=1)
    pub.close()
    frames = frames_out.wait_numbers(range(40))
    assert numbers(frames) == [*range(20), int(just_fits[1]), *range(20, 40)]
    assert (frames_out.connects, frames_out.disconnects) == (1, 0)  # never dropped
    m = scrape(port)
    assert m["gateway_ingest_dropped_total{reason=too_large}"] == 1
    wait_for(lambda: scrape(port)["gateway_mqtt_acks_total"] == 42, 10, "every ack")
    assert "dropped: its frame is" in ingest.log_text()
    assert f"over the {LIMIT} a decoder takes" in ingest.log_text()
    assert ingest.stop() == 0
