"""What the e2e tests publish (built with the simulators' pure payload builders) and a
WebSocket client as strict about JSON as a browser."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from simulators import payloads
from tests.support.mqtt import Publisher
from tests.support.ws import Collector

BASE_NS = 1_690_804_800_000_000_000  # 2023-07-31T12:00:00Z; event times are fixed, not "now"
GATEWAY = "0016c001f153a14c"
INTERNAL = {"v", "src", "ts", "ts_decode", "dedup"}


@dataclass(frozen=True)
class Uplink:
    topic: str
    payload: bytes
    event: dict[str, Any]

    @property
    def dev_eui(self) -> str:
        return str(self.event["deviceInfo"]["devEui"])

    @property
    def f_cnt(self) -> int:
        return int(self.event["fCnt"])


def devices(count: int, tenants: Sequence[str] = ("acme", "globex")) -> list[payloads.Device]:
    """``count`` devices spread over ``tenants`` (and two applications each)."""
    return [
        payloads.Device(
            tenant=tenants[i % len(tenants)],
            application=f"substation-{i // len(tenants) % 2 + 1}",
            name=f"meter-{i + 1:03d}",
            dev_eui=payloads.dev_eui_for("e2e", str(i)),
            tags={"site": "north" if i % 3 else "south"},
        )
        for i in range(count)
    ]


def uplinks(devs: Sequence[payloads.Device], per_device: int, first_f_cnt: int = 1) -> list[Uplink]:
    """Round-robin over ``devs``: every device sends ``per_device`` uplinks, alternating
    voltage and current, with consecutive frame counters from ``first_f_cnt``."""
    out = []
    for n in range(per_device):
        f_cnt = first_f_cnt + n
        for d_index, device in enumerate(devs):
            kind = payloads.MEASUREMENTS[f_cnt % 2]
            value = (
                round(3.0 + ((f_cnt * 7 + d_index) % 120) / 100, 2)
                if kind == "voltage"
                else round(0.1 + ((f_cnt * 13 + d_index) % 900) / 1000, 3)
            )
            event = payloads.uplink(
                device,
                kind=kind,
                value=value,
                time_ns=BASE_NS + f_cnt * 1_000_000_000 + d_index * 1_000_000,
                f_cnt=f_cnt,
                radio=payloads.Radio(
                    GATEWAY,
                    rssi=-40 - d_index % 70,
                    snr=round(-5 + (f_cnt % 20) / 2, 1),
                    uplink_id=f_cnt * 1000 + d_index,
                ),
                dedup_id=payloads.stable_uuid("dedup", device.dev_eui, str(f_cnt)),
            )
            out.append(Uplink(payloads.uplink_topic(device), json.dumps(event).encode(), event))
    return out


def publish(publisher: Publisher, items: Sequence[Uplink | tuple[str, bytes]]) -> None:
    publisher.publish_all((i.topic, i.payload) if isinstance(i, Uplink) else i for i in items)


def strict_json(text: str | bytes) -> Any:
    """Parse like a browser's JSON.parse: NaN / Infinity are errors, big integers are not."""

    def reject(token: str) -> None:
        raise ValueError(f"{token} is not JSON")

    return json.loads(text, parse_constant=reject)


class StrictCollector(Collector):
    """A :class:`Collector` that keeps the frames a browser would reject instead of
    quietly accepting them as Python's json does."""

    def _run(self) -> None:
        self.rejected: list[str] = []
        from websockets.exceptions import ConnectionClosed

        try:
            for text in self.conn:
                try:
                    msg = strict_json(text)
                except ValueError:
                    self.rejected.append(text if isinstance(text, str) else repr(text))
                    continue
                with self._lock:
                    self.messages.append(msg)
        except ConnectionClosed as exc:
            self.closed = exc
