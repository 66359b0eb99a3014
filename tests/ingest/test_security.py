"""The broker connection's security: TLS with a test CA, and credentials (RELIABILITY.md M1-M2)."""

from __future__ import annotations

import datetime
import re
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.ingest.conftest import SUBSCRIBED, StartIngest, count_lines, wait_for_lines
from tests.ingest.helpers import FrameCollector, Pki, make_pki, numbered
from tests.support.broker import Broker
from tests.support.mqtt import Publisher
from tests.support.ports import free_port
from tests.support.timing import wait_for

MOSQUITTO_PASSWD = "/usr/bin/mosquitto_passwd"

MakeBroker = Callable[..., Broker]


@pytest.fixture
def make_broker(tmp_path: Path) -> Iterator[MakeBroker]:
    started: list[Broker] = []

    def make(name: str, extra: str = "", listener_extra: str = "") -> Broker:
        b = Broker(tmp_path / name, extra=extra, listener_extra=listener_extra).start()
        started.append(b)
        return b

    yield make
    for b in started:
        b.stop()


def tls_listener(server: Pki, client_ca: Path | None = None) -> str:
    lines = [f"cafile {client_ca or server.ca}", f"certfile {server.cert}", f"keyfile {server.key}"]
    if client_ca:
        lines.append("require_certificate true")
    return "\n".join(lines)


def test_tls_with_the_right_ca_connects_and_delivers(
    tmp_path: Path,
    make_broker: MakeBroker,
    start_ingest: StartIngest,
    collect: Callable[..., FrameCollector],
) -> None:
    server = make_pki(tmp_path / "pki", "server", dns=("localhost",), ips=("127.0.0.1",))
    plain_port = free_port()  # the test publisher speaks plain MQTT on a second listener
    tls_broker = make_broker(
        "tls", listener_extra=tls_listener(server), extra=f"listener {plain_port} 127.0.0.1"
    )
    ingest = start_ingest(MQTT_PORT=str(tls_broker.port), MQTT_TLS_CA=str(server.ca))
    assert "over TLS" in ingest.log_text()
    frames_out = collect()
    pub = Publisher(tls_broker.host, plain_port)
    pub.publish_all(numbered(20))
    frames_out.wait_numbers(range(20))
    # Larger than a TLS record (16 KiB) and than one read (64 KiB): many reads, one message.
    big = bytes(range(256)) * 800
    pub.publish_all([("application/app-1/device/big/event/up", big)])
    pub.close()
    wait_for(lambda: len(frames_out.frames) >= 21, 20, "the large message")
    assert frames_out.frames[20].payload == big
    assert ingest.stop() == 0


def test_tls_client_certificate_with_an_encrypted_key(
    tmp_path: Path, make_broker: MakeBroker, start_ingest: StartIngest
) -> None:
    server = make_pki(tmp_path / "server", "server")
    client = make_pki(tmp_path / "client", "client", client=True, key_password=b"open-sesame")
    tls_broker = make_broker("mtls", listener_extra=tls_listener(server, client_ca=client.ca))
    start_ingest(
        MQTT_PORT=str(tls_broker.port),
        MQTT_TLS_CA=str(server.ca),
        MQTT_TLS_CERT=str(client.cert),
        MQTT_TLS_KEY=str(client.key),
        MQTT_TLS_KEY_PASSWORD="open-sesame",
    )


def test_tls_with_the_wrong_ca_is_explained_and_retried(
    tmp_path: Path, make_broker: MakeBroker, start_ingest: StartIngest
) -> None:
    server = make_pki(tmp_path / "server", "server")
    stranger = make_pki(tmp_path / "stranger", "stranger")
    tls_broker = make_broker("tls", listener_extra=tls_listener(server))
    ingest = start_ingest(wait=False, MQTT_PORT=str(tls_broker.port), MQTT_TLS_CA=str(stranger.ca))
    wait_for_lines(
        ingest,
        r"ERROR - ❌ Cannot connect to .*certificate is not trusted.*MQTT_TLS_CA.*retrying in",
        2,
    )
    assert count_lines(ingest, SUBSCRIBED) == 0


def test_tls_host_name_mismatch_is_explained(
    tmp_path: Path, make_broker: MakeBroker, start_ingest: StartIngest
) -> None:
    server = make_pki(tmp_path / "server", "server", dns=("broker.example",), ips=())
    tls_broker = make_broker("tls", listener_extra=tls_listener(server))
    ingest = start_ingest(wait=False, MQTT_PORT=str(tls_broker.port), MQTT_TLS_CA=str(server.ca))
    wait_for_lines(ingest, r"not valid for '127\.0\.0\.1'.*MQTT_BROKER must be a name", 2)
    assert count_lines(ingest, SUBSCRIBED) == 0


def test_tls_insecure_skips_only_the_host_name_check(
    tmp_path: Path, make_broker: MakeBroker, start_ingest: StartIngest
) -> None:
    server = make_pki(tmp_path / "server", "server", dns=("broker.example",), ips=())
    tls_broker = make_broker("tls", listener_extra=tls_listener(server))
    ingest = start_ingest(
        MQTT_PORT=str(tls_broker.port), MQTT_TLS_CA=str(server.ca), MQTT_TLS_INSECURE="true"
    )
    assert "MQTT_TLS_INSECURE=true" in ingest.log_text()  # loudly


def test_bad_credentials_are_explained_with_backoff(
    tmp_path: Path,
    make_broker: MakeBroker,
    start_ingest: StartIngest,
    collect: Callable[..., FrameCollector],
) -> None:
    passwords = tmp_path / "passwd"
    subprocess.run(
        [MOSQUITTO_PASSWD, "-b", "-c", str(passwords), "gateway", "right-horse-battery"], check=True
    )
    secure = make_broker("auth", extra=f"password_file {passwords}")
    env = {"MQTT_PORT": str(secure.port), "MQTT_USERNAME": "gateway"}

    wrong = start_ingest(wait=False, MQTT_PASSWORD="wrong-staple", **env)
    wait_for_lines(
        wrong,
        r"❌ Cannot connect to .*(Bad user name or password \(0x86\)|Not authorized \(0x87\))"
        r".*MQTT_PASSWORD.*retrying in",
        3,
    )
    attempts = [int(a) for a in re.findall(r"\(attempt (\d+)\)", wrong.log_text())]
    assert attempts[:3] == [1, 2, 3]  # one line per attempt, each after a back-off
    # Each attempt waited at least the delay the previous line announced: no hot loop.
    lines = re.findall(
        r"^(\S+ \S+) .*retrying in ([\d.]+) s \(attempt", wrong.log_text(), re.MULTILINE
    )
    assert len(lines) >= 3, lines
    at = [datetime.datetime.strptime(t, "%Y-%m-%d %H:%M:%S,%f").timestamp() for t, _ in lines]
    for (before, (_, delay)), after in zip(zip(at, lines, strict=False), at[1:], strict=False):
        assert after - before >= float(delay) - 0.06, (lines, at)  # logged as %.1f
    assert wrong.stop() == 0
    assert "wrong-staple" not in wrong.log_text()

    (tmp_path / "pw").write_text("right-horse-battery\n")
    right = start_ingest(MQTT_PASSWORD_FILE=str(tmp_path / "pw"), **env)
    frames_out = collect()
    pub = Publisher(secure.host, secure.port, username="gateway", password="right-horse-battery")
    pub.publish_all(numbered(10))
    pub.close()
    frames_out.wait_numbers(range(10))
    assert "right-horse-battery" not in right.log_text()
