"""A tiny HTTP endpoint for services without a web server of their own (ingest, decode):
``GET /metrics`` (Prometheus text) and ``GET /healthz`` (200 ready / 503 not ready).

Runs in a daemon thread; ``METRICS_PORT=0`` turns it off.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

logger = logging.getLogger(__name__)


class StatusServer:
    def __init__(
        self,
        host: str,
        port: int,
        registry: CollectorRegistry,
        ready: Callable[[], tuple[bool, str]],
    ) -> None:
        registry_ = registry
        ready_ = ready

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, CONTENT_TYPE_LATEST, generate_latest(registry_))
                elif path == "/healthz":
                    ok, why = ready_()
                    self._send(200 if ok else 503, "text/plain", (why + "\n").encode())
                else:
                    self._send(404, "text/plain", b"not found\n")

            def _send(self, status: int, ctype: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass  # scrapes every few seconds would drown the log

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="status-http", daemon=True
        )

    def start(self) -> None:
        self._thread.start()
        logger.info(
            "📈 /metrics and /healthz on http://%s:%d", self._server.server_address[0], self.port
        )

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
