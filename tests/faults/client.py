"""WebSocket clients for the fault cases: record every message with its arrival time, and
(for fan-out restarts) reconnect and resume from the last ``epoch``/``seq`` seen.

Self-contained rather than built on ``tests.support.ws.Collector`` because the cases need
arrival times, close codes and reconnects; ``legacy=True`` is websockets 17's way to get a
plain connection object without a ``with`` block.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from typing import Any
from urllib.parse import urlencode

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.support.timing import seconds, wait_for


class Session:
    """One WebSocket connection, read on a background thread."""

    def __init__(self, url: str, sink: StreamClient) -> None:
        self.url = url
        self.conn: ClientConnection = connect(
            url, open_timeout=seconds(10), legacy=True, max_size=None
        )
        self.opened_at = time.monotonic()
        self.close_code: int | None = None
        self.closed_at: float | None = None
        self._sink = sink
        self._thread = threading.Thread(target=self._run, name="ws-session", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for text in self.conn:  # ends quietly on a normal close (1000, 1001)
                self._sink.add(json.loads(text))
        except ConnectionClosed:
            pass  # an abnormal close: the code says which
        finally:
            self.close_code = self.conn.close_code
            self.closed_at = time.monotonic()

    @property
    def open(self) -> bool:
        return self.closed_at is None

    def close(self) -> None:
        with contextlib.suppress(Exception):  # already gone: nothing to release
            self.conn.close()
        self._thread.join(timeout=5)


class StreamClient:
    """Everything received over one or more sessions, in arrival order, stamped."""

    def __init__(self, url: str) -> None:
        self.base_url = url
        self._lock = threading.Lock()
        self.messages: list[dict[str, Any]] = []
        self.stamps: list[tuple[float, dict[str, Any]]] = []
        # Distinct numbers per run, kept as messages arrive, so waiting on a 50,000-event
        # stream does not rescan it 50 times a second: (live only, live + replayed).
        self._live: dict[str, set[int]] = {}
        self._any: dict[str, set[int]] = {}
        self.sessions: list[Session] = [Session(url, self)]

    def add(self, msg: dict[str, Any]) -> None:
        now = time.monotonic()
        obj = msg.get("object") if "type" not in msg else None
        with self._lock:
            self.messages.append(msg)
            self.stamps.append((now, msg))
            if isinstance(obj, dict) and "run" in obj and "n" in obj:
                self._any.setdefault(obj["run"], set()).add(obj["n"])
                if not msg.get("replay"):
                    self._live.setdefault(obj["run"], set()).add(obj["n"])

    def distinct(self, run_id: str, replay: bool = False) -> int:
        """How many different numbers of run ``run_id`` arrived (replayed ones if asked)."""
        with self._lock:
            return len((self._any if replay else self._live).get(run_id, ()))

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.messages)

    def events(self) -> list[dict[str, Any]]:
        return [m for m in self.snapshot() if "type" not in m]

    def controls(self) -> list[dict[str, Any]]:
        return [m for m in self.snapshot() if "type" in m]

    @property
    def session(self) -> Session:
        return self.sessions[-1]

    def last_position(self) -> tuple[str, int] | None:
        """``(epoch, seq)`` of the last event received: where a client resumes from."""
        for msg in reversed(self.events()):
            if "epoch" in msg and "seq" in msg:
                return str(msg["epoch"]), int(msg["seq"])
        return None

    def reconnect(self, timeout: float = 30.0, resume: bool = True) -> float:
        """Reconnect (with ``?epoch=&seq=`` when ``resume``), retrying while the server is
        down, as a dashboard would; returns seconds from the old session's close."""
        position = self.last_position() if resume else None
        url = self.base_url
        if position is not None:
            url += ("&" if "?" in url else "?") + urlencode(
                {"epoch": position[0], "seq": position[1]}
            )
        closed_at = self.session.closed_at or time.monotonic()

        def attempt() -> Session | None:
            try:
                return Session(url, self)
            except OSError:
                time.sleep(0.05)  # a retry delay, as a real client's back-off
                return None

        session = wait_for(attempt, timeout, f"reconnecting to {self.base_url}")
        assert session is not None
        self.sessions.append(session)
        return self.session.opened_at - closed_at

    def close(self) -> None:
        for s in self.sessions:
            s.close()
