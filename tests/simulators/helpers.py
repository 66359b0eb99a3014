"""A subscriber on the test broker, and running a simulator the way users run it."""

from __future__ import annotations

import itertools
import os
import queue
import subprocess
import sys
import threading
from dataclasses import dataclass

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from tests.support.broker import Broker
from tests.support.procs import ROOT
from tests.support.timing import seconds, wait_for

_ids = itertools.count()


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    retain: bool


class Subscriber:
    """Collects every message on ``filters``; ready once the broker granted them."""

    def __init__(self, broker: Broker, *filters: str) -> None:
        self.messages: list[Received] = []
        self._lock = threading.Lock()
        granted: queue.Queue[object] = queue.Queue()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"test-sub-{next(_ids)}", protocol=mqtt.MQTTv5
        )
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda c, u, mid, codes, props: granted.put(codes)
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        self.client.subscribe([(f, 1) for f in filters])
        granted.get(timeout=seconds(10))

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append(Received(msg.topic, msg.payload, bool(msg.retain)))

    def snapshot(self) -> list[Received]:
        with self._lock:
            return list(self.messages)

    def wait_count(self, count: int, timeout: float = 20) -> list[Received]:
        wait_for(
            lambda: len(self.snapshot()) >= count,
            timeout,
            f"{count} messages (have {len(self.snapshot())})",
        )
        return self.snapshot()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def simulator_command(name: str, *args: str) -> list[str]:
    return [sys.executable, "-m", f"simulators.{name}", *args]


def broker_env(broker: Broker) -> dict[str, str]:
    return {
        **os.environ,
        "MQTT_BROKER": broker.host,
        "MQTT_PORT": str(broker.port),
        "PYTHONUNBUFFERED": "1",
    }


def run_simulator(
    name: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        simulator_command(name, *args),
        env=env or dict(os.environ),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=seconds(60),
    )
