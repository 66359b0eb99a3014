"""SIGTERM stops every service of the stack cleanly, even with traffic flowing."""

from __future__ import annotations

import threading
from collections.abc import Callable

from tests.e2e.helpers import StrictCollector, devices, publish, uplinks
from tests.support.mqtt import Publisher
from tests.support.stack import Stack
from tests.support.timing import wait_for
from tests.support.ws import Collector


def test_sigterm_stops_every_service_with_exit_0_under_load(
    gateway: Callable[..., Stack], publisher: Publisher, clients: list[Collector]
) -> None:
    stack = gateway(decoders=2)
    client = StrictCollector(stack.ws_url)
    clients.append(client)
    publish(publisher, uplinks(devices(10), per_device=5))
    client.wait_events(50)

    # Keep publishing while the stack shuts down: ingest, then decode, then fan-out.
    stop = threading.Event()
    more = uplinks(devices(10), per_device=100, first_f_cnt=10)

    def feed() -> None:
        for item in more:
            if stop.is_set():
                return
            publisher.publish(item.topic, item.payload)
            stop.wait(0.002)

    feeder = threading.Thread(target=feed)
    feeder.start()
    try:
        wait_for(lambda: len(client.events()) >= 60, 20, "traffic during shutdown")
        codes = stack.stop()
    finally:
        stop.set()
        feeder.join()

    assert codes == {"ingest": [0], "decode": [0, 0], "wsfanout": [0]}, stack.logs()
    # Clients are told the server is going away (close frame 1001), not just cut off.
    wait_for(lambda: client.conn.close_code is not None, 10, "the server to close the WebSocket")
    assert client.conn.close_code == 1001
    assert "Traceback" not in stack.logs()
