"""A real WebSocket client for tests that collects JSON messages on a background thread."""

from __future__ import annotations

import json
import threading
from typing import Any

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.support.timing import wait_for


class Collector:
    def __init__(self, url: str, **connect_kwargs: Any) -> None:
        # legacy=True: a plain connection object, not a context manager (websockets >= 17.1).
        self.conn: ClientConnection = connect(url, open_timeout=10, legacy=True, **connect_kwargs)
        self.messages: list[dict[str, Any]] = []
        self.closed: ConnectionClosed | None = None
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for text in self.conn:
                msg = json.loads(text)
                with self._lock:
                    self.messages.append(msg)
        except ConnectionClosed as exc:
            self.closed = exc

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.messages)

    def events(self) -> list[dict[str, Any]]:
        """Event messages only (control replies carry a "type" key, events do not)."""
        return [m for m in self.snapshot() if "type" not in m]

    def wait_events(self, count: int, timeout: float = 20.0) -> list[dict[str, Any]]:
        wait_for(
            lambda: len(self.events()) >= count,
            timeout,
            f"{count} events (have {len(self.events())})",
        )
        return self.events()

    def send(self, obj: Any) -> None:
        self.conn.send(obj if isinstance(obj, str) else json.dumps(obj))

    def close(self) -> None:
        self.conn.close()
        self._thread.join(timeout=5)
