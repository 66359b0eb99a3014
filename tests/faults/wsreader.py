"""A WebSocket client in a process of its own, for the burst case: reading 50,000 events
must not compete for the test process's GIL with the publisher threads (if it falls
behind, the fan-out rightly drops the oldest events for it as a slow client).

The child keeps only what the analysis needs, ``(run, n, replay)`` per event, counts the
distinct live numbers in shared memory for :func:`tests.faults.harness.wait_received`, and
hands the list back when asked to stop."""

from __future__ import annotations

import multiprocessing as mp
import multiprocessing.connection
import threading
from typing import Any

from tests.support.timing import seconds


def _read(url: str, results: mp.connection.Connection, distinct: Any, ready: Any) -> None:
    import orjson
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    seen: list[tuple[str, int, bool]] = []
    live: set[tuple[str, int]] = set()
    conn = connect(url, open_timeout=10, legacy=True, max_size=None)
    ready.set()

    def stop_when_asked() -> None:
        results.recv()  # any message means "stop"
        conn.close()

    threading.Thread(target=stop_when_asked, daemon=True).start()
    try:
        for text in conn:
            msg = orjson.loads(text)
            obj = msg.get("object") if "type" not in msg else None
            if isinstance(obj, dict) and "run" in obj:
                replay = bool(msg.get("replay"))
                seen.append((obj["run"], obj["n"], replay))
                if not replay:
                    live.add((obj["run"], obj["n"]))
                    distinct.value = len(live)
    except ConnectionClosed:
        pass
    results.send(seen)


class ProcessClient:
    """The parts of :class:`tests.faults.client.StreamClient` that ``run_stream`` needs
    (no arrival stamps, so no silences measured around a fault)."""

    def __init__(self, url: str) -> None:
        ctx = mp.get_context("spawn")  # never fork a process that runs paho threads
        self._parent, child = ctx.Pipe()
        self._distinct = ctx.Value("l", 0)
        ready = ctx.Event()
        self._proc = ctx.Process(
            target=_read, args=(url, child, self._distinct, ready), daemon=True
        )
        self._proc.start()
        if not ready.wait(seconds(20)):
            raise AssertionError("the WebSocket reader process did not connect")
        self._events: list[dict[str, Any]] | None = None
        self.stamps: list[tuple[float, dict[str, Any]]] = []

    def distinct(self, run_id: str, replay: bool = False) -> int:
        return int(self._distinct.value)  # one run per case: every live number is of it

    def snapshot(self) -> list[dict[str, Any]]:
        """Stops the reader (once) and returns what it got, in arrival order."""
        if self._events is None:
            self._parent.send("stop")
            if not self._parent.poll(seconds(30)):
                raise AssertionError("the WebSocket reader process did not report")
            got = self._parent.recv()
            self._events = [
                {"object": {"run": run, "n": n}, **({"replay": True} if replay else {})}
                for run, n, replay in got
            ]
        return list(self._events)

    def close(self) -> None:
        if self._events is None and self._proc.is_alive():
            self._proc.terminate()
        self._proc.join(timeout=5)
