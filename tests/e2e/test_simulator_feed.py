"""The simulators, run as users run them, feed a running gateway end to end."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from tests.e2e.helpers import StrictCollector
from tests.simulators.helpers import broker_env, run_simulator
from tests.support.stack import Stack
from tests.support.ws import Collector


def test_every_simulator_reaches_websocket_clients(
    gateway: Callable[..., Stack], clients: list[Collector]
) -> None:
    # One decode worker (the default): events keep the broker's order, which the conn
    # states below rely on (several workers may swap two events of one gateway, README).
    stack = gateway()
    client = StrictCollector(stack.ws_url)
    clients.append(client)
    env = broker_env(stack.broker)
    runs = [
        ("dual", "--devices", "5", "--count", "20", "--rate", "0", "--tenant", "acme"),
        ("current", "--devices", "3", "--count", "3", "--rate", "0", "--raw"),  # data only
        ("gateway", "--gateways", "1", "--count", "2", "--rate", "0", "--format", "protobuf"),
    ]
    for name, *args in runs:
        done = run_simulator(name, *args, env=env)
        assert done.returncode == 0, done.stderr

    events = client.wait_events(20 + 3 + 2 + 2, timeout=30)
    assert not client.rejected
    kinds = Counter((m["event"], (m.get("object") or {}).get("type")) for m in events)
    # dual: voltage + current per device; current --raw: decoded by the gateway's codec.
    assert kinds[("up", "voltage")] == 10 and kinds[("up", "current")] == 10 + 3
    assert {m["device"]["tenant"] for m in events if m["event"] == "up"} == {"acme", "demo-tenant"}
    stats = [m for m in events if m["event"] == "stats"]
    conn = [m["conn"]["state"] for m in events if m["event"] == "conn"]
    assert len(stats) == 2 and stats[0]["stats"]["rxPacketsReceived"] >= 0
    assert conn == ["ONLINE", "OFFLINE"]
    assert not [m for m in events if m["event"] == "error"]
