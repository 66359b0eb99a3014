"""`make run`'s process tree: supervisord.conf as shipped starts every service, data flows
from the broker to a WebSocket client, and one SIGTERM stops it all cleanly.

The conf is used as it is, with three changes so the test runs beside anything else:
its state directory (``.run``) in tmp_path, and free ports for decode's metrics (fixed at
92xx in the conf) and, through the environment the services read, for everything else.
The test's own Mosquitto already listens on MQTT_PORT, so scripts/local-broker.sh takes
its "a broker already listens" path and idles, as it does beside a user's broker.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import load_fixture
from tests.support.broker import Broker
from tests.support.http import healthz
from tests.support.mqtt import Publisher
from tests.support.ports import free_endpoint, free_port
from tests.support.procs import ROOT
from tests.support.timing import seconds, wait_for
from tests.support.ws import Collector

SUPERVISORD = ROOT / ".venv" / "bin" / "supervisord"


def conf_for_test(run_dir: Path, decode_metrics_port: int) -> str:
    text = (ROOT / "supervisord.conf").read_text()
    assert 'METRICS_PORT="92%(process_num)02d"' in text and "%(here)s/.run" in text
    text = text.replace(
        'METRICS_PORT="92%(process_num)02d"', f'METRICS_PORT="{decode_metrics_port}"'
    )
    return text.replace("%(here)s/.run", str(run_dir)).replace("%(here)s", str(ROOT))


class Supervised:
    def __init__(self, broker: Broker, tmp_path: Path) -> None:
        run_dir = tmp_path / "run"
        run_dir.mkdir()
        self.ws_port = free_port()
        self.decode_metrics = free_port()
        self.ingest_metrics = free_port()
        conf = tmp_path / "supervisord.conf"
        conf.write_text(conf_for_test(run_dir, self.decode_metrics))
        raw, events = free_endpoint(), free_endpoint()
        env = {
            **os.environ,
            "MQTT_BROKER": "127.0.0.1",
            "MQTT_PORT": str(broker.port),
            "MQTT_CLIENT_ID": f"supervised-{self.ws_port}",
            "ZMQ_RAW_BIND": raw,
            "ZMQ_RAW_CONNECT": raw,
            "ZMQ_EVENTS_BIND": events,
            "ZMQ_EVENTS_CONNECT": events,
            "WEBSOCKET_HOST": "127.0.0.1",
            "WEBSOCKET_PORT": str(self.ws_port),
            "METRICS_PORT": str(self.ingest_metrics),  # ingest's; decode's is in the conf
        }
        # A pipe, not a file: each program reopens /dev/stdout (the conf's
        # stdout_logfile), and reopened files would write over each other.
        self.proc = subprocess.Popen(
            [str(SUPERVISORD), "-n", "-c", str(conf)],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: nothing outlives the test
        )
        self._lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.append(line.decode(errors="replace"))

    def log(self) -> str:
        return "".join(self._lines)

    def wait_exit(self, timeout: float) -> int:
        """The exit code, once every line it printed has been read."""
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=10)
        return code

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=seconds(30))
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._reader.join(timeout=5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture
def supervised(broker: Broker, tmp_path: Path) -> Iterator[Supervised]:
    s = Supervised(broker, tmp_path)
    yield s
    s.close()


def test_the_shipped_supervisord_conf_runs_the_gateway_and_stops_it_cleanly(
    supervised: Supervised, broker: Broker
) -> None:
    s = supervised
    for port, name in (
        (s.ws_port, "wsfanout"),
        (s.decode_metrics, "decode"),
        (s.ingest_metrics, "ingest"),
    ):
        wait_for(lambda p=port: healthz(p) == 200, 60, f"{name} healthy under supervisord")
    client = Collector(f"ws://127.0.0.1:{s.ws_port}/")
    try:
        event = load_fixture("chirpstack_v4_up.json")  # ChirpStack's own sample uplink
        event["object"] = {"type": "voltage", "values": [{"time": 1700000000000, "value": 230.1}]}
        info = event["deviceInfo"]
        topic = f"application/{info['applicationId']}/device/{info['devEui']}/event/up"
        pub = Publisher(broker.host, broker.port)
        pub.publish_all([(topic, json.dumps(event).encode())])
        pub.close()
        (msg,) = client.wait_events(1, timeout=30)
        assert msg["event"] == "up" and msg["object"] == event["object"]
        assert msg["device"]["devEui"] == info["devEui"]

        s.proc.send_signal(signal.SIGTERM)
        assert s.wait_exit(seconds(40)) == 0, s.log()[-3000:]
        wait_for(lambda: client.conn.close_code is not None, 10, "the WebSocket to close")
        assert client.conn.close_code == 1001
    finally:
        client.close()
    log = s.log()
    assert "broker: a broker already listens" in log, log[-3000:]
    for service in ("ingest", "decode", "wsfanout"):
        assert f"{service} - INFO - 🛑 Stopped" in log, log[-3000:]
    assert "Traceback" not in log and "exit status 1" not in log
