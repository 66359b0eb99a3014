"""The HTTP side of the port: plain routes, and the checks every WebSocket handshake passes.

``process_request`` runs before the upgrade. Plain GETs get ``/`` (the dashboard),
``/healthz``, ``/metrics`` or 404. An upgrade request (any path) is checked in this order:
shutting down or too many clients (503), ``Origin`` not on the allow-list (403), missing or
unknown token when auth is on (401, with nothing else sent), too many connections for that
token (429), a bad filter or resume position on the URL (400). What passed is attached to the
connection for the handler.

Tokens are read from ``Authorization: Bearer``, a ``Sec-WebSocket-Protocol`` entry
``token.<token>`` (browsers cannot set headers; the server then selects and echoes one of
the *other* offered protocols, never the token), or ``?token=`` (redacted in our logs).
"""

from __future__ import annotations

import http
import logging
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from urllib.parse import parse_qs

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from services.wsfanout.config import Config
from services.wsfanout.fanout import Admission, Fanout, parse_resume
from services.wsfanout.filters import UNLIMITED, FilterError, parse_query
from services.wsfanout.metrics import Metrics
from shared.log import RateLimitedLog

logger = logging.getLogger(__name__)

DASHBOARD = Path(__file__).resolve().parent / "static" / "index.html"
PROTOCOL = "lorawan-gateway"  # the non-secret subprotocol browsers offer beside their token
TOKEN_PROTOCOL_PREFIX = "token."
MAX_QUERY_FIELDS = 50

_PLACEHOLDER = b"""<!doctype html><meta charset="utf-8"><title>LoRaWAN gateway</title>
<h1>LoRaWAN WebSocket gateway</h1><p>The dashboard is not installed. Connect a WebSocket
client to this address; see <a href="/healthz">/healthz</a> and <a href="/metrics">/metrics</a>.</p>
"""
_TOKEN_IN_QUERY = re.compile(r"([?&]token=)[^&#]*", re.IGNORECASE)


def redact(path: str) -> str:
    """A request path fit for a log line: ``?token=...`` replaced."""
    return _TOKEN_IN_QUERY.sub(r"\1<redacted>", path)


def select_subprotocol(
    conn: ServerConnection, offered: Sequence[Subprotocol]
) -> Subprotocol | None:
    """Echo a non-secret protocol the client offered (ours first), never a ``token.`` entry."""
    safe = [p for p in offered if not p.startswith(TOKEN_PROTOCOL_PREFIX)]
    if PROTOCOL in safe:
        return Subprotocol(PROTOCOL)
    return safe[0] if safe else None


def _response(
    status: int, body: bytes, content_type: str, extra: Iterable[tuple[str, str]] = ()
) -> Response:
    headers = Headers(
        [
            ("Content-Type", content_type),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-store"),
            ("X-Content-Type-Options", "nosniff"),
            ("Connection", "close"),
            *extra,
        ]
    )
    return Response(status, http.HTTPStatus(status).phrase, headers, body)


def _text(status: int, text: str, extra: Iterable[tuple[str, str]] = ()) -> Response:
    return _response(status, (text + "\n").encode(), "text/plain; charset=utf-8", extra)


def _token(headers: Headers, params: dict[str, list[str]]) -> str | None:
    for value in headers.get_all("Authorization"):
        scheme, _, credentials = value.strip().partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            return credentials.strip()
    for value in headers.get_all("Sec-WebSocket-Protocol"):
        for proto in value.split(","):
            proto = proto.strip()
            if proto.startswith(TOKEN_PROTOCOL_PREFIX) and len(proto) > len(TOKEN_PROTOCOL_PREFIX):
                return proto[len(TOKEN_PROTOCOL_PREFIX) :]
    values = params.get("token")
    return values[0] if values and values[0] else None


def _peer(conn: ServerConnection) -> str:
    address = conn.remote_address
    if isinstance(address, tuple) and len(address) >= 2:
        host = address[0]
        return f"[{host}]:{address[1]}" if ":" in str(host) else f"{host}:{address[1]}"
    return str(address)


class Gate:
    def __init__(
        self, config: Config, fanout: Fanout, metrics: Metrics, dashboard: Path = DASHBOARD
    ) -> None:
        self.config = config
        self.fanout = fanout
        self.metrics = metrics
        self.dashboard = dashboard
        self.origins = frozenset(config.websocket_origins)
        self._log = RateLimitedLog(logger)

    def process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        path, _, query = request.path.partition("?")
        if not any("websocket" in v.lower() for v in request.headers.get_all("Upgrade")):
            return self._http(path)
        peer = _peer(conn)
        shown = redact(request.path)
        if self.fanout.stopping:
            return self._refuse(503, "server is shutting down", peer, shown, quiet=True)
        if len(self.fanout.index) >= self.config.websocket_max_clients:
            return self._refuse(503, "too many clients", peer, shown)
        origins = request.headers.get_all("Origin")
        if len(origins) > 1:
            return self._refuse(400, "more than one Origin header", peer, shown)
        origin = origins[0] if origins else None
        # No Origin: not a browser (browsers always send it), so not a CSWSH vector.
        if self.origins and origin is not None and origin not in self.origins:
            return self._refuse(403, f"origin {origin[:100]!r} not allowed", peer, shown)
        try:
            params = parse_qs(query, keep_blank_values=True, max_num_fields=MAX_QUERY_FIELDS)
        except ValueError:
            return self._refuse(400, "too many query parameters", peer, shown)
        token = _token(request.headers, params)
        record = None
        scope = UNLIMITED
        tokens = self.fanout.tokens
        if tokens.enabled:
            record = tokens.check(token)
            if record is None:
                why = "missing token" if token is None else "invalid token"
                return self._refuse(
                    401, why, peer, shown, extra=[("WWW-Authenticate", 'Bearer realm="gateway"')]
                )
            scope = record.scope
            per_token = self.config.websocket_max_clients_per_token
            if per_token and self.fanout.per_token[record.sha256] >= per_token:
                return self._refuse(429, f"too many connections for token {record.id}", peer, shown)
        try:
            flt = parse_query(params)
        except FilterError as exc:
            return self._refuse(400, str(exc), peer, shown)
        resume = parse_resume(_first(params, "epoch"), _first(params, "seq"))
        conn.gateway_admission = Admission(  # type: ignore[attr-defined]
            peer=peer,
            scope=scope,
            token=record,
            filter=flt,
            resume=resume,
            origin=origin,
            path=shown,
        )
        return None

    def _refuse(
        self,
        status: int,
        why: str,
        peer: str,
        path: str,
        extra: Iterable[tuple[str, str]] = (),
        quiet: bool = False,
    ) -> Response:
        self.metrics.rejected(status)
        if not quiet:
            self._log.warning(
                f"refuse-{status}",
                "🚫 Refused %s with HTTP %d: %s (path %s)",
                peer,
                status,
                why,
                path,
            )
        return _text(status, f"{http.HTTPStatus(status).phrase}: {why}", extra)

    def refused_early(self, label: str, why: str, conn: ServerConnection) -> None:
        """A handshake websockets refused before :meth:`process_request` (handshakes.py)."""
        self.metrics.rejected(label)
        peer = _peer(conn)
        self._log.warning(f"refuse-{label}", "🚫 Refused %s: %s (%s)", peer, why, label)

    def _http(self, path: str) -> Response:
        if path in ("/", "/index.html"):
            try:
                body = self.dashboard.read_bytes()
            except OSError:
                body = _PLACEHOLDER
            return _response(200, body, "text/html; charset=utf-8")
        if path == "/healthz":
            status = self.fanout.status()
            code = 503 if self.fanout.stopping else 200
            return _response(code, orjson.dumps(status) + b"\n", "application/json")
        if path == "/metrics":
            return _response(200, generate_latest(self.metrics.registry), CONTENT_TYPE_LATEST)
        return _text(404, "Not Found")


def _first(params: dict[str, list[str]], key: str) -> str | None:
    values = params.get(key)
    return values[0] if values else None
