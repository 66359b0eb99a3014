"""Start-up, HTTP on the WebSocket port, TLS, and shutdown."""

from __future__ import annotations

import datetime
import ipaddress
import json
import signal
import socket
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from websockets.sync.client import connect

from tests.support.procs import run_cli
from tests.support.timing import wait_for
from tests.wsfanout.helpers import close_code, collector, device_event, raw_upgrade, value_of


def test_help_lists_the_settings_and_the_token_command():
    result = run_cli("wsfanout", ["--help"])
    assert result.returncode == 0
    for name in (
        "WEBSOCKET_PORT",
        "WEBSOCKET_REPLAY_SIZE",
        "WEBSOCKET_TOKENS_FILE",
        "ZMQ_EVENTS_BIND",
        "token",
    ):
        assert name in result.stdout
    token_help = run_cli("wsfanout", ["token", "add", "--help"])
    assert token_help.returncode == 0 and "--tenant" in token_help.stdout


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"WEBSOCKET_PORT": "abc"}, "WEBSOCKET_PORT"),
        ({"WEBSOCKET_REPLAY_SIZE": "-1"}, "WEBSOCKET_REPLAY_SIZE"),
        ({"WEBSOCKET_TOKENS_FILE": "/nonexistent/tokens.json"}, "WEBSOCKET_TOKENS_FILE"),
        ({"WEBSOCKET_TOKENS": "{not json"}, "WEBSOCKET_TOKENS"),
        ({"WEBSOCKET_ORIGINS": "dash.example.com"}, "WEBSOCKET_ORIGINS"),
        ({"WEBSOCKET_TLS_CERT": __file__}, "WEBSOCKET_TLS_KEY"),
        ({"ZMQ_EVENTS_BIND": "localhost:5558"}, "ZMQ_EVENTS_BIND"),
        ({"WEBSOCKET_SLOW_CLIENT_TIMEOUT": "soon"}, "WEBSOCKET_SLOW_CLIENT_TIMEOUT"),
    ],
)
def test_bad_config_stops_at_start_with_one_line_naming_the_variable(env, named):
    result = run_cli("wsfanout", [], env=env)
    assert result.returncode == 3
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Bad config" in lines[0] and named in lines[0], result.stderr


def test_a_tokens_file_with_bad_content_is_bad_config(tmp_path):
    path = tmp_path / "tokens.json"
    path.write_text('{"tokens": [{"sha256": "abc", "tenants": ["a"]}]}')
    result = run_cli("wsfanout", [], env={"WEBSOCKET_TOKENS_FILE": str(path)})
    assert (
        result.returncode == 3
        and "WEBSOCKET_TOKENS_FILE" in result.stderr
        and "sha256" in result.stderr
    )


def test_a_port_in_use_is_one_clear_line_and_exit_3(start_fanout):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        fanout = start_fanout({"WEBSOCKET_PORT": str(port)}, wait=False)
        assert fanout.proc.proc is not None
        assert fanout.proc.proc.wait(timeout=20) == 3
    assert "Cannot start" in fanout.log()


def test_http_on_the_websocket_port(start_fanout, open_feed):
    fanout = start_fanout()
    open_feed(fanout).send(device_event(value=1))
    fanout.wait_metric("gateway_wsfanout_events_accepted_total", 1)

    status, headers, body = fanout.get("/healthz")
    assert status == 200 and headers["content-type"] == "application/json"
    health = json.loads(body)
    assert health["status"] == "ok" and health["seq"] == 1 and health["buffered_events"] == 1
    assert health["clients"] == 0 and health["auth"] is False and health["epoch"]

    status, headers, body = fanout.get("/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    for name in (
        "gateway_wsfanout_events_received_total",
        "gateway_wsfanout_messages_sent_total",
        "gateway_wsfanout_clients",
        "gateway_wsfanout_frames_lost_total",
        "gateway_wsfanout_handshakes_rejected_total",
    ):
        assert name.encode() in body

    status, headers, body = fanout.get("/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert b"<html" in body.lower() or b"<!doctype html" in body.lower()
    assert fanout.get("/nope")[0] == 404
    # any path upgrades to a WebSocket
    client = collector(fanout.url("/some/path"))
    assert value_of(client.wait_events(1)[0]) == 1
    client.close()


def test_sigterm_closes_clients_with_1001_saves_state_and_exits_0(
    start_fanout, open_feed, tmp_path
):
    state = tmp_path / "state.json"
    fanout = start_fanout(
        {
            "WEBSOCKET_STATE_FILE": str(state),
            "WEBSOCKET_CLOSE_TIMEOUT": "1",
            "WEBSOCKET_SHUTDOWN_TIMEOUT": "2",
        }
    )
    feed = open_feed(fanout)
    clients = [collector(fanout.url()) for _ in range(3)]
    feed.send(device_event(value=1))
    for client in clients:
        client.wait_events(1)
    # and one that completed the handshake but never answers anything (closed by the with
    # even if an assert below fails: a plain socket left to the collector would raise its
    # ResourceWarning in whichever test runs next)
    with socket.create_connection(("127.0.0.1", fanout.port)) as mute:
        mute.sendall(
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        assert mute.recv(4096).startswith(b"HTTP/1.1 101")
        wait_for(lambda: fanout.health()["clients"] == 4, 10, "4 clients")

        assert fanout.stop() == 0
        for client in clients:
            wait_for(lambda c=client: close_code(c) is not None, 10, "closed")
            assert close_code(client) == 1001
    log = fanout.log()
    assert "SIGTERM received" in log and "Saved 1 buffered events" in log and "Stopped" in log
    assert (
        json.loads(state.read_text())["entries"][0]["message"]["object"]["values"][0]["value"] == 1
    )


def test_a_connection_still_in_its_handshake_does_not_hold_the_stop(start_fanout):
    """A port scanner or a half-sent request is not a client: at SIGTERM it is dropped at
    once instead of holding the stop for the open timeout, and it is not counted as a
    refused handshake."""
    fanout = start_fanout({"WEBSOCKET_OPEN_TIMEOUT": "60", "WEBSOCKET_SHUTDOWN_TIMEOUT": "60"})
    client = collector(fanout.url())
    with (
        socket.create_connection(("127.0.0.1", fanout.port)) as silent,
        socket.create_connection(("127.0.0.1", fanout.port)) as partial,
    ):
        partial.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        wait_for(lambda: fanout.metric("gateway_wsfanout_clients") == 1, 10, "the client")
        assert fanout.stop(timeout=30) == 0
        for sock in (silent, partial):
            assert sock.recv(1024) == b""  # dropped without a response
    log = fanout.log()
    assert "did not close in time" not in log and "Refused" not in log, log[-2000:]
    wait_for(lambda: close_code(client) == 1001, 10, "the client closed with 1001 as usual")


def test_sigint_stops_cleanly_too(start_fanout):
    fanout = start_fanout()
    client = collector(fanout.url())
    fanout.signal(signal.SIGINT)
    assert fanout.proc.proc is not None and fanout.proc.proc.wait(timeout=15) == 0
    wait_for(lambda: close_code(client) == 1001, 10, "closed with 1001")


def _certificate(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_wss_with_a_test_certificate(start_fanout, open_feed, tmp_path):
    cert, key = _certificate(tmp_path)
    fanout = start_fanout({"WEBSOCKET_TLS_CERT": str(cert), "WEBSOCKET_TLS_KEY": str(key)})
    assert "listening on wss://127.0.0.1" in fanout.log()
    trust = ssl.create_default_context(cafile=str(cert))
    client = collector(fanout.url(), ssl=trust)
    open_feed(fanout).send(device_event(value=1))
    assert value_of(client.wait_events(1)[0]) == 1
    client.close()
    assert fanout.get("/healthz")[0] == 200  # HTTPS too
    with pytest.raises(Exception):  # noqa: B017 (plain ws:// to a TLS port: any handshake error)
        connect(f"ws://127.0.0.1:{fanout.port}/", open_timeout=5).close()
    with pytest.raises(ssl.SSLError):  # and a client that does not trust it
        connect(fanout.url(), ssl=ssl.create_default_context(), open_timeout=5).close()
    assert fanout.health()["status"] == "ok"


def test_a_token_protocol_alone_still_connects_without_echo(start_fanout):
    """Non-browser clients may offer only the token entry: accepted, nothing echoed."""
    fanout = start_fanout()
    reply = raw_upgrade(fanout.port, "/", {"Sec-WebSocket-Protocol": "token.abc"})
    assert reply.startswith(b"HTTP/1.1 101") and b"token.abc" not in reply


def test_compression_offered_by_a_client_is_declined(start_fanout, open_feed):
    """permessage-deflate stays off (RELIABILITY.md W10: memory per idle client, CRIME-like
    leaks): a browser offering it gets a plain connection and uncompressed frames."""
    fanout = start_fanout()
    offer = {"Sec-WebSocket-Extensions": "permessage-deflate; client_max_window_bits"}
    reply = raw_upgrade(fanout.port, "/", offer)
    assert reply.startswith(b"HTTP/1.1 101"), reply[:200]
    assert b"sec-websocket-extensions" not in reply.lower(), reply
    client = collector(fanout.url(), compression="deflate")  # what a library client offers
    feed = open_feed(fanout)
    feed.send(device_event(device="m1", value=7))
    assert [value_of(m) for m in client.wait_events(1)] == [7]
    assert client.conn.protocol.extensions == []
    client.close()
