"""Real peers for the fan-out: the service as a subprocess, a ZeroMQ publisher, event bodies.

The publisher is an XPUB (a PUB that also hears subscriptions): it waits until the fan-out's
SUB has subscribed before anything is sent, so no test depends on a slow-joiner sleep.
"""

from __future__ import annotations

import hashlib
import http.client
import itertools
import json
import re
import socket
import ssl
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import zmq
from websockets.asyncio.client import ClientConnection, connect

from shared import routing
from shared.frames import Event, event_parts
from tests.support.ports import free_endpoint, free_port
from tests.support.procs import ServiceProcess, run_cli
from tests.support.timing import seconds, wait_for
from tests.support.ws import Collector

READY = r"WebSocket server listening on (wss?)://[^:]+:(\d+)/"
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


class Fanout:
    """``python -m services.wsfanout`` on free ports, with helpers to reach it."""

    def __init__(
        self, workdir: Path, env: dict[str, str] | None = None, args: list[str] | None = None
    ) -> None:
        self.port = free_port()
        self.endpoint = free_endpoint()
        self.env = {
            "WEBSOCKET_HOST": "127.0.0.1",
            "WEBSOCKET_PORT": str(self.port),
            "ZMQ_EVENTS_BIND": self.endpoint,
            "WEBSOCKET_STATE_FILE": "",
            **(env or {}),
        }
        self.workdir = workdir
        self.args = args
        self.proc = ServiceProcess("wsfanout", self.env, workdir, args)
        self.tls = bool(self.env.get("WEBSOCKET_TLS_CERT"))

    def start(self, wait: bool = True) -> Fanout:
        self.proc = ServiceProcess("wsfanout", self.env, self.workdir, self.args).start()
        if wait:
            self.proc.wait_for_log(READY, timeout=20)
        return self

    def stop(self, timeout: float = 15.0) -> int:
        return self.proc.stop(timeout=timeout)

    def kill(self) -> None:
        self.proc.kill()

    def signal(self, sig: int) -> None:
        assert self.proc.proc is not None
        self.proc.proc.send_signal(sig)

    @property
    def pid(self) -> int:
        assert self.proc.proc is not None
        return self.proc.proc.pid

    def log(self) -> str:
        return self.proc.log_text()

    def url(self, path: str = "/", **params: Any) -> str:
        scheme = "wss" if self.tls else "ws"
        query = ("?" + urlencode(params)) if params else ""
        return f"{scheme}://127.0.0.1:{self.port}{path}{query}"

    def get(
        self, path: str, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        if self.tls:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                "127.0.0.1", self.port, timeout=seconds(10), context=ctx
            )
        else:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=seconds(10))
        try:
            conn.request("GET", path, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    def metrics(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        status, _, body = self.get("/metrics")
        assert status == 200
        out = {}
        for line in body.decode().splitlines():
            if not line or line.startswith("#"):
                continue
            m = _SAMPLE.match(line)
            if m:
                labels = frozenset(_LABEL.findall(m.group(3) or ""))
                out[(m.group(1), labels)] = float(m.group(4))
        return out

    def metric(self, name: str, **labels: str) -> float:
        return self.metrics().get((name, frozenset(labels.items())), 0.0)

    def wait_metric(
        self, name: str, at_least: float, timeout: float = 20.0, **labels: str
    ) -> float:
        wait_for(
            lambda: self.metric(name, **labels) >= at_least,
            timeout,
            f"{name}{labels} >= {at_least}",
        )
        return self.metric(name, **labels)

    def health(self) -> dict[str, Any]:
        status, _, body = self.get("/healthz")
        assert status == 200, body
        return json.loads(body)


class Feed:
    """An XPUB connected to the fan-out's SUB endpoint, like a decode worker's PUB."""

    def __init__(self, endpoint: str) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.XPUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.XPUB_VERBOSE, 1)
        self.sock.setsockopt(zmq.SNDHWM, 100_000)
        self.sock.connect(endpoint)
        self.wait_subscribed()

    def wait_subscribed(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + seconds(timeout)
        while time.monotonic() < deadline:
            if self.sock.poll(50, zmq.POLLIN) and self.sock.recv().startswith(b"\x01"):
                return
        raise AssertionError("the fan-out never subscribed")

    def send(self, *events: Event) -> None:
        for event in events:
            self.sock.send_multipart(event_parts(event))

    def send_parts(self, parts: list[bytes]) -> None:
        self.sock.send_multipart(parts)

    def close(self) -> None:
        self.sock.close(linger=0)
        self.ctx.term()


class Source:
    """Numbers events like one ingest: ``src`` plus ``seq`` +1 per event."""

    def __init__(self, src: str = "ingest-test") -> None:
        self.src = src
        self._seq = itertools.count(1)

    def next(self) -> int:
        return next(self._seq)


_default_source = Source()


def eui_of(device: str) -> str:
    return hashlib.sha256(device.encode()).hexdigest()[:16]


def device_event(
    tenant: str = "acme",
    application: str = "substation-7",
    device: str = "meter-1",
    value: float = 1.0,
    *,
    eui: str | None = None,
    type: str = "voltage",
    event: str = "up",
    source: Source | None = None,
    seq: int | None = None,
    src: str | None = None,
    dedup: str | None = None,
    ts: int | None = None,
    obj: Any = None,
) -> Event:
    """A decoded device event body shaped like shared/record.py."""
    source = source or _default_source
    now = time.time_ns() if ts is None else ts
    body: dict[str, Any] = {
        "event": event,
        "src": src or source.src,
        "seq": source.next() if seq is None else seq,
        "ts": now,
        "ts_decode": now + 1000,
        "device": {
            "tenant": tenant,
            "application": application,
            "name": device,
            "devEui": eui or eui_of(device),
            "tags": {"site": "north"},
        },
        "object": obj
        if obj is not None
        else {
            "type": type,
            "values": [
                {"time": now // 1_000_000, "time_iso": "2023-07-31T12:00:00.000Z", "value": value}
            ],
        },
        "rx": {"gateway": "0016c001f153a14c", "rssi": -57, "snr": 9.5, "fCnt": 10, "fPort": 2},
        "time": "2023-07-31T12:00:00.000Z",
    }
    if dedup is not None:
        body["dedup"] = dedup
    return Event(key=routing.device_key(tenant, application, device, event), body=body)


def gateway_event(
    gateway: str = "0016c001f153a14c", event: str = "stats", source: Source | None = None
) -> Event:
    source = source or _default_source
    now = time.time_ns()
    body = {
        "event": event,
        "src": source.src,
        "seq": source.next(),
        "ts": now,
        "ts_decode": now,
        "gateway": {"id": gateway},
        "stats": {"rxPacketsReceived": 1},
    }
    return Event(key=routing.gateway_key(gateway, event), body=body)


def error_event(reason: str = "json", source: Source | None = None) -> Event:
    source = source or _default_source
    now = time.time_ns()
    body = {
        "event": "error",
        "src": source.src,
        "seq": source.next(),
        "ts": now,
        "ts_decode": now,
        "error": {"reason": reason, "detail": "bad", "topic": "application/x/device/y/event/up"},
    }
    return Event(key=routing.error_key(reason), body=body)


def value_of(msg: dict[str, Any]) -> Any:
    return msg["object"]["values"][0]["value"]


def device_of(msg: dict[str, Any]) -> str:
    return str(msg["device"]["name"])


async def tiny_buffer_client(url: str, port: int) -> ClientConnection:
    """A WebSocket client with a 4 KiB receive buffer and a one-message queue: unless it
    reads, the server's writes back up within a few events (a slow or stalled client).
    Its socket is closed if the handshake fails."""
    sock = socket.socket()
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", port))
        sock.setblocking(False)
        return await connect(url, sock=sock, max_queue=1, ping_interval=None)
    except BaseException:
        sock.close()
        raise


def collector(url: str, **kwargs: Any) -> Collector:
    """A tests.support.ws.Collector (one place to adapt if its signature changes)."""
    return Collector(url, **kwargs)


def raw_upgrade(port: int, path: str = "/", headers: dict[str, str] | None = None) -> bytes:
    """Send a WebSocket upgrade request on a plain socket; everything the server sent back
    until it closed (for "nothing but the HTTP response was sent" checks), or only the
    response head when it switched protocols."""
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
        *(f"{k}: {v}" for k, v in (headers or {}).items()),
    ]
    with socket.create_connection(("127.0.0.1", port), timeout=seconds(10)) as s:
        s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
            if data.startswith(b"HTTP/1.1 101") and b"\r\n\r\n" in data:
                break
    return data


def token_add(path: Path, *args: str) -> str:
    """``python -m services.wsfanout token add ARGS --file PATH``: the token (last line)."""
    result = run_cli("wsfanout", ["token", "add", *args, "--file", str(path)])
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


def close_code(client: Collector) -> int | None:
    """The close code the server sent (None while open). Collector.closed is only set for
    error codes: iterating a connection ends quietly on 1000 and 1001."""
    rcvd = client.conn.protocol.close_rcvd
    return rcvd.code if rcvd is not None else None
