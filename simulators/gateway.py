"""Simulated LoRaWAN gateways: ChirpStack v4 gateway `stats` events and `conn` state.

Publishes what ChirpStack's MQTT forwarder / gateway bridge publishes for each gateway:
``{region}/gateway/{gatewayId}/state/conn`` (retained ONLINE at start, OFFLINE at exit and
as the MQTT will, so a killed simulator shows offline too) and
``{region}/gateway/{gatewayId}/event/stats`` at ``--rate`` (all gateways together).
JSON by default; ``--format protobuf`` sends the binary form the real tools default to.

    python -m simulators.gateway --gateways 2 --rate 1 --count 10
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from simulators import payloads
from simulators.common import (
    Message,
    add_pacing,
    base_parser,
    dumps,
    main_guard,
    positive_int,
    run_simulator,
)


def encoder(fmt: str, message: str) -> Callable[[dict[str, Any]], bytes]:
    if fmt == "protobuf":
        return lambda event: payloads.gateway_protobuf(message, event)
    return dumps


def conn_message(region: str, gateway_id: str, online: bool, fmt: str) -> Message:
    event = payloads.gateway_conn(gateway_id, online)
    return Message(
        payloads.gateway_conn_topic(region, gateway_id), encoder(fmt, "conn")(event), retain=True
    )


def stats_stream(
    gateway_ids: Sequence[str], region: str, fmt: str, rng: random.Random
) -> Iterator[Message]:
    encode = encoder(fmt, "stats")
    while True:
        for gateway_id in gateway_ids:
            rx = rng.randint(0, 40)
            event = payloads.gateway_stats(
                gateway_id,
                time_ns=time.time_ns(),
                rx=rx,
                rx_ok=rx - rng.randint(0, rx // 10),
                tx=rng.randint(0, 3),
            )
            yield Message(payloads.gateway_stats_topic(region, gateway_id), encode(event))


def main(argv: Sequence[str] | None = None) -> int:
    parser = base_parser("python -m simulators.gateway", __doc__.splitlines()[0])
    gateways = parser.add_argument_group("gateways")
    gateways.add_argument(
        "--gateways", type=positive_int, default=1, help="number of simulated gateways"
    )
    gateways.add_argument(
        "--region", default="eu868", help="topic prefix (ChirpStack region id); '' for none"
    )
    gateways.add_argument(
        "--format", choices=("json", "protobuf"), default="json", help="payload encoding"
    )
    add_pacing(parser, rate=1.0, count=0)
    opts = parser.parse_args(argv)
    region = opts.region.strip("/")
    ids = [payloads.gateway_id_for(i) for i in range(1, opts.gateways + 1)]
    online = [conn_message(region, gid, True, opts.format) for gid in ids]
    offline = [conn_message(region, gid, False, opts.format) for gid in ids]
    what = f"stats from {opts.gateways} gateway(s) ({opts.format})"
    return main_guard(
        lambda: run_simulator(
            "gateway",
            what,
            opts,
            lambda rng: stats_stream(ids, region, opts.format, rng),
            # One will per connection: with several gateways only the first can be
            # marked offline by the broker; the clean exit marks all of them.
            will=offline[0],
            first=online,
            last=offline,
        )
    )


if __name__ == "__main__":
    raise SystemExit(main())
