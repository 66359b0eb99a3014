"""Decode micro-benchmark: uplinks per second per process, against plain ``json``.

    python -m bench.decode_bench [--seconds 0.5] [--repeat 10]

One realistic ~800-byte ChirpStack v4 ``up`` event (deviceInfo with tags, a decoded
voltage ``object``, one gateway in ``rxInfo``, txInfo) is decoded over and over on one
core. The variants run interleaved, ``--repeat`` rounds of ``--seconds`` (of CPU time)
each, and the best round of each counts (as timeit does): on a shared 2-core machine the
other rounds measure the neighbours. GC stays enabled, as in the worker.

- ``baseline``: ``json.loads`` plus the dict accesses a naive decoder does (identity,
  object, best gateway by RSSI, fCnt/fPort) and nothing else: no checks at all;
- ``decode``: ``Decoder.decode(frame, now_ns)``, everything the gateway checks and builds;
- ``worker``: what the worker does per frame besides the socket calls:
  ``unpack_raw`` + ``decode`` + ``event_parts``.

The issue's target is >= 50,000 uplinks/s per process for ``decode``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import orjson

from services.decode.dispatch import Decoder
from shared.frames import RawFrame, event_parts, pack_raw, unpack_raw

TARGET = 50_000

TOPIC = "application/17c82e96-be03-4f38-aef3-f83d48582d97/device/0004a30b001c0530/event/up"


def uplink() -> bytes:
    event = {
        "deduplicationId": "3ac7e3c4-4401-4b8d-9386-a5c902f9202d",
        "time": "2023-07-31T12:00:00.012345678+00:00",
        "deviceInfo": {
            "tenantId": "52f14cd4-c6f1-4fbd-8f87-4025e1d49242",
            "tenantName": "acme",
            "applicationId": "17c82e96-be03-4f38-aef3-f83d48582d97",
            "applicationName": "substation-7",
            "deviceProfileId": "14855bf7-d10d-4aee-b618-ebfcb64dc7ad",
            "deviceProfileName": "voltage-meter",
            "deviceName": "meter-12",
            "devEui": "0004a30b001c0530",
            "tags": {"site": "north"},
        },
        "devAddr": "00189440",
        "adr": True,
        "dr": 5,
        "fCnt": 1842,
        "fPort": 2,
        "data": "AXQBcg==",
        "object": {
            "type": "voltage",
            "values": [
                {"time": 1690804800000, "time_iso": "2023-07-31T12:00:00.000Z", "value": 3.7}
            ],
        },
        "rxInfo": [
            {
                "gatewayId": "0016c001f153a14c",
                "uplinkId": 4217106255,
                "rssi": -57,
                "snr": 9.5,
                "crcStatus": "CRC_OK",
            },
        ],
        "txInfo": {
            "frequency": 867100000,
            "modulation": {
                "lora": {"bandwidth": 125000, "spreadingFactor": 7, "codeRate": "CR_4_5"}
            },
        },
    }
    return json.dumps(event, separators=(",", ":")).encode()


def baseline(payload: bytes) -> Callable[[], object]:
    def run() -> object:
        doc = json.loads(payload)
        info = doc["deviceInfo"]
        best = max(doc["rxInfo"], key=lambda rx: rx["rssi"])
        return (
            info["tenantName"],
            info["applicationName"],
            info["deviceName"],
            info["devEui"],
            info.get("tags"),
            doc.get("object"),
            best["gatewayId"],
            best["rssi"],
            best["snr"],
            doc.get("fCnt"),
            doc.get("fPort"),
        )

    return run


def measure(fn: Callable[[], object], seconds: float) -> float:
    """Calls per CPU-second of ``fn`` over about ``seconds`` of this thread's CPU time.

    CPU time, not wall time: while a neighbour holds the core, this thread is not
    running and the clock does not advance, so the figure is what one process can do."""
    batch = 500
    calls = 0
    start = time.thread_time()
    deadline = start + seconds
    while True:
        for _ in range(batch):
            fn()
        calls += batch
        now = time.thread_time()
        if now >= deadline:
            return calls / (now - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.decode_bench", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--seconds", type=float, default=0.5, help="length of one timed round")
    parser.add_argument(
        "--repeat", type=int, default=10, help="rounds per variant (the best counts)"
    )
    args = parser.parse_args(argv)

    payload = uplink()
    decoder = Decoder()
    now = time.time_ns()
    frame = RawFrame(src="bench", seq=1, ts=now, topic=TOPIC, payload=payload, qos=1)
    raw = pack_raw(frame)
    event = decoder.decode(frame, now)
    assert event.body["event"] == "up", event.body  # the benchmark must measure the happy path
    orjson.dumps(event.body)

    def decode() -> object:
        return decoder.decode(frame, now)

    def worker() -> object:
        return event_parts(decoder.decode(unpack_raw(raw), now))

    print(
        f"payload: {len(payload)} bytes ChirpStack v4 up; "
        f"{args.repeat} rounds of {args.seconds:.2f}s CPU, best counts"
    )
    variants = {
        "baseline (json.loads + dict access)": baseline(payload),
        "decode (Decoder.decode)": decode,
        "worker (unpack_raw + decode + event_parts)": worker,
    }
    rates = dict.fromkeys(variants, 0.0)
    for _ in range(args.repeat):
        for name, fn in variants.items():
            rates[name] = max(rates[name], measure(fn, args.seconds))
    base = rates["baseline (json.loads + dict access)"]
    for name, rate in rates.items():
        print(
            f"{name:44s} {rate:>10,.0f} /s  {1e6 / rate:6.2f} µs"
            f"  ratio vs baseline {rate / base:4.2f}"
        )
    decode_rate = rates["decode (Decoder.decode)"]
    verdict = "meets" if decode_rate >= TARGET else "MISSES"
    print(f"decode {verdict} the target of {TARGET:,} uplinks/s per process")
    return 0 if decode_rate >= TARGET else 1


if __name__ == "__main__":
    raise SystemExit(main())
