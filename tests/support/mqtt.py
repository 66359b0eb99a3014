"""A publishing MQTT client for tests (paho, v5), waiting for every PUBACK."""

from __future__ import annotations

import itertools
from collections.abc import Iterable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from tests.support.timing import seconds

_ids = itertools.count()


class Publisher:
    def __init__(self, host: str, port: int, **connect_kwargs: object) -> None:
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"test-publisher-{next(_ids)}",
            protocol=mqtt.MQTTv5,
        )
        self.client.max_inflight_messages_set(1000)
        self.client.max_queued_messages_set(0)
        if connect_kwargs.get("username"):
            self.client.username_pw_set(
                str(connect_kwargs["username"]), str(connect_kwargs.get("password", ""))
            )
        self.client.connect(host, port)
        self.client.loop_start()

    def publish(
        self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False
    ) -> mqtt.MQTTMessageInfo:
        return self.client.publish(topic, payload, qos=qos, retain=retain)

    def publish_all(self, items: Iterable[tuple[str, bytes | str]], qos: int = 1) -> int:
        infos = [self.publish(topic, payload, qos) for topic, payload in items]
        for info in infos:
            info.wait_for_publish(timeout=seconds(30))
            if not info.is_published():
                raise AssertionError("publish was not acknowledged by the broker")
        return len(infos)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
