"""The replay buffer on disk, so dashboards are not empty after a fan-out restart.

Saved on a clean stop, loaded at start. The file holds the client messages as they were
sent (in fan-out order) with their kind; on load they are numbered again in the new epoch::

    {"version": 1, "epoch": "...", "seq": 1234, "saved_at": "...",
     "marks": {"eui:0004a30b001c0530": 1200, ...}, "dropped": 0,
     "entries": [{"kind": "device", "message": {"event": "up", "seq": 1, ...}}, ...]}

``marks`` (per ring, the highest seq it had evicted) and ``dropped`` let the next process
tell a client resuming from this epoch whether everything after its seq is still held.
``sources`` (per ingest source: highest seq and timestamp, seqs still awaited) lets it count
the frames lost while no fan-out was listening (RELIABILITY.md §0.8).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from services.wsfanout.filters import DEVICE, ERROR, GATEWAY
from services.wsfanout.history import Entry
from services.wsfanout.tokens import now_iso

VERSION = 1
_KINDS = {DEVICE, ERROR, GATEWAY}


class StateError(ValueError):
    pass


@dataclass
class Restored:
    """What a state file held: the saving process's epoch and last seq, its eviction marks,
    and its buffered messages (kind, message) in its fan-out order."""

    epoch: str
    seq: int
    entries: list[tuple[str, dict[str, Any]]]
    marks: dict[str, int] = field(default_factory=dict)
    dropped: int = 0
    sources: dict[str, Any] = field(default_factory=dict)


def save(
    path: str,
    epoch: str,
    seq: int,
    entries: Iterable[Entry],
    marks: Mapping[str, int] | None = None,
    dropped: int = 0,
    sources: Mapping[str, Any] | None = None,
) -> int:
    """Write atomically (temp file + rename); returns the number of entries."""
    # The messages are already JSON: splice them in rather than parse and re-serialize.
    chunks = [
        b'{"version":1,"epoch":',
        orjson.dumps(epoch),
        b',"seq":',
        str(seq).encode(),
        b',"saved_at":',
        orjson.dumps(now_iso()),
        b',"marks":',
        orjson.dumps(dict(marks or {})),
        b',"dropped":',
        str(dropped).encode(),
        b',"sources":',
        orjson.dumps(dict(sources or {})),
        b',"entries":[',
    ]
    n = 0
    for entry in entries:
        if n:
            chunks.append(b",")
        chunks += (b'{"kind":', orjson.dumps(entry.meta.kind), b',"message":', entry.text, b"}")
        n += 1
    chunks.append(b"]}\n")
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".wsfanout-state-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(b"".join(chunks))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return n


def load(path: str) -> Restored | None:
    """The saved buffer, in fan-out order; None if there is no file."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateError(f"{path}: {exc.strerror}") from None
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise StateError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("version") != VERSION:
        raise StateError(f"{path}: not a version {VERSION} state file")
    items = doc.get("entries")
    if not isinstance(items, list):
        raise StateError(f"{path}: no entries list")
    out = []
    for item in items:
        if (
            isinstance(item, dict)
            and item.get("kind") in _KINDS
            and isinstance(item.get("message"), dict)
            and isinstance(item["message"].get("event"), str)
        ):
            out.append((item["kind"], item["message"]))
    raw_marks = doc.get("marks")
    marks = {
        k: v
        for k, v in (raw_marks.items() if isinstance(raw_marks, dict) else ())
        if isinstance(k, str) and type(v) is int
    }
    seq, dropped = doc.get("seq"), doc.get("dropped")
    return Restored(
        epoch=str(doc.get("epoch", "?")),
        seq=seq if type(seq) is int else 0,
        entries=out,
        marks=marks,
        dropped=dropped if type(dropped) is int else 0,
        sources=doc["sources"] if isinstance(doc.get("sources"), dict) else {},
    )
