"""Each simulator, run as users run it, against a real Mosquitto."""

from __future__ import annotations

import json
import re
import signal
import subprocess
from collections import Counter, defaultdict

from chirpstack_api import gw

from tests.simulators.helpers import Subscriber, broker_env, run_simulator, simulator_command
from tests.support.broker import Broker
from tests.support.ports import free_port
from tests.support.procs import ROOT
from tests.support.timing import seconds

UP_TOPIC = re.compile(r"application/[0-9a-f-]{36}/device/([0-9a-f]{16})/event/up")


def uplinks(subscriber: Subscriber, count: int) -> list[dict]:
    received = subscriber.wait_count(count)
    assert len(received) == count
    events = []
    for msg in received:
        match = UP_TOPIC.fullmatch(msg.topic)
        assert match, msg.topic
        event = json.loads(msg.payload)
        assert event["deviceInfo"]["devEui"] == match.group(1)
        events.append(event)
    return events


def assert_well_formed(event: dict, kind: str) -> None:
    obj = event["object"]
    assert obj["type"] == kind
    [value] = obj["values"]
    assert isinstance(value["value"], float) and isinstance(value["time"], int)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", value["time_iso"])
    assert event["rxInfo"][0]["gatewayId"] and isinstance(event["rxInfo"][0]["rssi"], int)


def per_device_fcnts(events: list[dict]) -> dict[str, list[int]]:
    counts: dict[str, list[int]] = defaultdict(list)
    for event in events:
        counts[event["deviceInfo"]["devEui"]].append(event["fCnt"])
    return counts


def test_voltage_publishes_exactly_count_uplinks_over_the_devices(
    broker: Broker, subscriber: Subscriber
) -> None:
    done = run_simulator(
        "voltage",
        "--devices",
        "5",
        "--count",
        "25",
        "--rate",
        "0",
        "--tenant",
        "acme",
        "--application",
        "grid",
        env=broker_env(broker),
    )
    assert done.returncode == 0, done.stderr
    assert "25 voltage uplinks from 5 device(s) published" in done.stderr
    assert "25 acknowledged, 0 failed" in done.stderr
    events = uplinks(subscriber, 25)
    for event in events:
        assert_well_formed(event, "voltage")
        assert (event["deviceInfo"]["tenantName"], event["deviceInfo"]["applicationName"]) == (
            "acme",
            "grid",
        )
    assert {dev: fcnts for dev, fcnts in per_device_fcnts(events).items()} == {
        dev: [1, 2, 3, 4, 5] for dev in per_device_fcnts(events)
    }
    assert len(per_device_fcnts(events)) == 5
    assert len({e["deduplicationId"] for e in events}) == 25


def test_current_takes_the_broker_from_flags(broker: Broker, subscriber: Subscriber) -> None:
    done = run_simulator(
        "current",
        "--host",
        broker.host,
        "--port",
        str(broker.port),
        "--devices",
        "3",
        "--count",
        "9",
        "--rate",
        "200",
        "--raw",
    )
    assert done.returncode == 0, done.stderr
    events = uplinks(subscriber, 9)
    assert len(per_device_fcnts(events)) == 3
    for event in events:
        assert "object" not in event and event["data"]  # --raw: undecoded Cayenne LPP only


def test_dual_sends_voltage_and_current_for_every_device(
    broker: Broker, subscriber: Subscriber
) -> None:
    done = run_simulator(
        "dual", "--devices", "4", "--count", "16", "--rate", "0", env=broker_env(broker)
    )
    assert done.returncode == 0, done.stderr
    events = uplinks(subscriber, 16)
    kinds = Counter((e["deviceInfo"]["devEui"], e["object"]["type"]) for e in events)
    assert len({dev for dev, _ in kinds}) == 4
    assert set(kinds.values()) == {2}  # each device: 2 voltage + 2 current
    for event in events:
        assert_well_formed(event, event["object"]["type"])


def test_gateway_publishes_stats_and_retained_conn_state(
    broker: Broker, subscriber: Subscriber
) -> None:
    done = run_simulator(
        "gateway", "--gateways", "2", "--count", "6", "--rate", "0", env=broker_env(broker)
    )
    assert done.returncode == 0, done.stderr
    received = subscriber.wait_count(6 + 4)  # + ONLINE and OFFLINE per gateway
    stats = [m for m in received if m.topic.endswith("/event/stats")]
    conn = [m for m in received if m.topic.endswith("/state/conn")]
    assert len(stats) == 6 and len(conn) == 4
    for msg in stats:
        event = json.loads(msg.payload)
        assert re.fullmatch(r"eu868/gateway/[0-9a-f]{16}/event/stats", msg.topic)
        assert msg.topic.split("/")[2] == event["gatewayId"]
        assert event["rxPacketsReceived"] >= event["rxPacketsReceivedOk"] >= 0
    states = [(m.topic.split("/")[2], json.loads(m.payload)["state"]) for m in conn]
    assert [s for _, s in states] == ["ONLINE", "ONLINE", "OFFLINE", "OFFLINE"]
    late = Subscriber(broker, "+/gateway/+/state/conn")
    try:
        retained = late.wait_count(2)
        assert sorted(json.loads(m.payload)["state"] for m in retained) == ["OFFLINE", "OFFLINE"]
    finally:
        late.close()


def test_gateway_protobuf_format(broker: Broker, subscriber: Subscriber) -> None:
    done = run_simulator(
        "gateway",
        "--format",
        "protobuf",
        "--region",
        "",
        "--count",
        "2",
        "--rate",
        "0",
        env=broker_env(broker),
    )
    assert done.returncode == 0, done.stderr
    received = subscriber.wait_count(2 + 2)
    stats = [
        gw.GatewayStats.FromString(m.payload) for m in received if m.topic.endswith("/event/stats")
    ]
    assert len(stats) == 2 and all(s.gateway_id for s in stats)
    assert all(m.topic.startswith("gateway/") for m in received)


def test_ctrl_c_stops_a_forever_simulator_with_a_summary(
    broker: Broker, subscriber: Subscriber
) -> None:
    proc = subprocess.Popen(
        simulator_command("dual", "--rate", "50", "--count", "0"),
        env=broker_env(broker),
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        subscriber.wait_count(5)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=seconds(15))
    except subprocess.TimeoutExpired:
        proc.kill()
        _, stderr = proc.communicate()
        raise AssertionError(f"still running 15 s after Ctrl-C:\n{stderr}") from None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr
    [summary] = [line for line in stderr.splitlines() if "Interrupted after" in line]
    sent = int(re.search(r"after (\d+) ", summary).group(1))
    assert f"{sent} acknowledged, 0 failed" in summary
    assert len(subscriber.wait_count(sent)) == sent


def test_connection_test_passes_on_a_live_broker(broker: Broker) -> None:
    done = run_simulator("connection_test", "--probes", "2", env=broker_env(broker))
    assert done.returncode == 0, done.stderr
    assert re.search(
        r"✅ Broker 127\.0\.0\.1:\d+ OK: connected in [\d.]+ ms; 2 probe\(s\)", done.stderr
    )


def test_connection_test_fails_with_one_clear_line_on_a_dead_port() -> None:
    done = run_simulator(
        "connection_test", "--host", "127.0.0.1", "--port", str(free_port()), "--timeout", "3"
    )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "Cannot reach MQTT broker 127.0.0.1:" in lines[0] and "refused" in lines[0]


def test_uplink_simulator_fails_clearly_without_a_broker() -> None:
    done = run_simulator("voltage", "--port", str(free_port()), "--count", "1", "--timeout", "3")
    assert done.returncode == 1
    assert len(done.stderr.strip().splitlines()) == 1 and "Cannot reach MQTT broker" in done.stderr
