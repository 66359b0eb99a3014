"""The uplink the load generator publishes: a ChirpStack v4 ``up`` event of ~800 bytes.

Each message carries a marker ``"bench":"<run>:<pub>:<seq>:<t_ns>"`` inside ``object``.
Every system under test passes ``object`` through unchanged (the gateway keeps it exactly
as published; the peers forward the whole payload), so clients find the marker with one
byte search instead of parsing JSON. ``t_ns`` is CLOCK_MONOTONIC (system-wide on Linux),
the moment the publisher handed the message to the kernel, so publisher and clients in
different processes share one clock.

``deduplicationId`` and ``fCnt`` change with every message: the gateway drops repeated
deduplication ids, as it should for a network server's retransmissions.
"""

from __future__ import annotations

import json
import zlib

MARKER_KEY = b'"bench":"'
APPLICATION_ID = "17c82e96-be03-4f38-aef3-f83d48582d97"
TOPIC_FILTER = "application/+/device/+/event/+"


def device_eui(index: int) -> str:
    return f"70b3d57ed0{index:06x}"


def topic(index: int) -> str:
    return f"application/{APPLICATION_ID}/device/{device_eui(index)}/event/up"


def _event(index: int, values: int) -> dict[str, object]:
    eui = device_eui(index)
    return {
        "deduplicationId": "@DEDUP@",
        "time": "2023-07-31T12:00:00.000000000+00:00",
        "deviceInfo": {
            "tenantId": "52f14cd4-c6f1-4fbd-8f87-4025e1d49242",
            "tenantName": "bench-tenant",
            "applicationId": APPLICATION_ID,
            "applicationName": "bench-application",
            "deviceProfileId": "14855bf7-d10d-4aee-b618-ebfcb64dc7ad",
            "deviceProfileName": "voltage-meter",
            "deviceName": f"meter-{index}",
            "devEui": eui,
            "tags": {"site": "bench"},
        },
        "devAddr": f"0{index:07x}",
        "dr": 5,
        "fCnt": "@FCNT@",
        "fPort": 2,
        "data": "AQIDBAUGBwg=",
        "object": {
            "type": "voltage",
            "values": [
                {
                    "time": 1690804800000 + i * 1000,
                    "time_iso": f"2023-07-31T12:00:{i:02d}.000Z",
                    "value": 230.1 + i / 10,
                }
                for i in range(values)
            ],
            "bench": "@MARKER@",
        },
        "rxInfo": [
            {
                "gatewayId": "0016c001f153a14c",
                "rssi": -57,
                "snr": 9.5,
            }
        ],
        "txInfo": {
            "frequency": 867100000,
            "modulation": {"lora": {"bandwidth": 125000, "spreadingFactor": 7}},
        },
    }


class Uplinks:
    """Per-device byte templates: building one message is a single ``%`` format."""

    def __init__(self, devices: list[int]) -> None:
        self.templates: list[bytes] = []
        self.topics: list[bytes] = []
        for index in devices:
            text = json.dumps(_event(index, values=1), separators=(",", ":"))
            text = text.replace("%", "%%")
            text = (
                text.replace('"@DEDUP@"', '"%s"')
                .replace('"@FCNT@"', "%s")
                .replace('"@MARKER@"', '"%s"')
            )
            self.templates.append(text.encode())
            self.topics.append(topic(index).encode())

    def build(self, slot: int, run: bytes, pub: int, seq: int, t_ns: int) -> bytes:
        dedup = b"%08x-%04x-4000-8000-%012x" % (zlib.crc32(run), pub, seq)
        marker = b"%s:%d:%d:%d" % (run, pub, seq, t_ns)
        return self.templates[slot] % (dedup, b"%d" % (seq & 0xFFFFFFFF), marker)


def parse_marker(marker: bytes) -> tuple[bytes, int, int, int]:
    run, pub, seq, t_ns = marker.split(b":")
    return run, int(pub), int(seq), int(t_ns)
