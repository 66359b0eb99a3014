"""The two wire formats between the services, each one encode/decode pair.

Raw frame (ingest -> decode, one ZeroMQ part, a msgpack map)::

    {"v": 1, "src": str, "seq": int, "ts": int (time_ns), "topic": str,
     "payload": bytes, "qos": int, "retain": bool}

Event (decode -> wsfanout, two ZeroMQ parts)::

    [routing key (UTF-8), msgpack map with "v": 1 and the decoded record]

A fan-out that stops asks each decoder for a goodbye marker before it closes its socket
(:data:`LEAVING`): see services/decode/worker.py and services/wsfanout/handoff.py.

Everything received is untrusted: the unpackers raise :class:`FrameError` with a short
``reason`` (a metrics label) and the caller counts and drops the frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack

RAW_VERSION = 1
EVENT_VERSION = 1

# The fan-out subscribes to this topic when it stops. A decoder answers with one marker
# frame ``[LEAVING, its name]`` behind everything it sent, and holds what follows until a
# fan-out subscribes afresh: so the fan-out can close its socket with nothing in flight.
# No routing key can start with it (0xFF never occurs in UTF-8).
LEAVING = b"\xffleaving"


def leaving_marker(name: str) -> list[bytes]:
    return [LEAVING, name.encode("utf-8")]


# Keys the fan-out strips before a body reaches a WebSocket client: they are the
# gateway's own bookkeeping (DESIGN: "src, seq and the internal timestamps stay inside").
INTERNAL_KEYS = frozenset({"v", "src", "seq", "ts", "ts_decode"})


class FrameError(ValueError):
    """A frame that cannot be used. ``reason`` is a short, stable label for counters."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


# Not frozen: a frozen dataclass's __init__ costs ~3 µs per frame on the hot path.
@dataclass(slots=True)
class RawFrame:
    """One MQTT message as ingest took it from the broker; ``payload`` is untouched."""

    src: str
    seq: int
    ts: int
    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False


@dataclass(frozen=True, slots=True)
class Event:
    """One decoded record with its routing key (see :mod:`shared.routing`)."""

    key: str
    body: dict[str, Any]


_packer = msgpack.Packer(use_bin_type=True)


def pack_raw(frame: RawFrame) -> bytes:
    packed: bytes = _packer.pack(
        {
            "v": RAW_VERSION,
            "src": frame.src,
            "seq": frame.seq,
            "ts": frame.ts,
            "topic": frame.topic,
            "payload": frame.payload,
            "qos": frame.qos,
            "retain": frame.retain,
        }
    )
    return packed


def _unpack_map(data: bytes, max_bytes: int) -> dict[Any, Any]:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise FrameError("type", "frame is not bytes")
    if len(data) > max_bytes:
        raise FrameError("size", f"{len(data)} bytes")
    try:
        # Bounding every container by the frame size stops a crafted header (an array
        # of 2**32 elements in 5 bytes) from making msgpack allocate gigabytes.
        obj = msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            max_bin_len=max_bytes,
            max_str_len=max_bytes,
            max_array_len=len(data),
            max_map_len=len(data),
            max_ext_len=0,
        )
    except Exception as exc:  # msgpack raises ValueError, ExtraData, TypeError, ...
        raise FrameError("msgpack", type(exc).__name__) from None
    if not isinstance(obj, dict):
        raise FrameError("shape", f"top level is {type(obj).__name__}, not a map")
    return obj


def unpack_raw(data: bytes, max_bytes: int = 16 * 1024 * 1024) -> RawFrame:
    obj = _unpack_map(data, max_bytes)
    version = obj.get("v")
    if version != RAW_VERSION:
        raise FrameError("version", f"raw frame v={version!r}")
    try:
        src, seq, ts = obj["src"], obj["seq"], obj["ts"]
        topic, payload = obj["topic"], obj["payload"]
        qos, retain = obj.get("qos", 0), obj.get("retain", False)
    except KeyError as exc:
        raise FrameError("shape", f"missing {exc.args[0]!r}") from None
    if not (
        isinstance(src, str)
        and type(seq) is int
        and type(ts) is int
        and isinstance(topic, str)
        and isinstance(payload, bytes)
        and type(qos) is int
        and isinstance(retain, bool)
    ):
        raise FrameError("shape", "field of the wrong type")
    return RawFrame(src=src, seq=seq, ts=ts, topic=topic, payload=payload, qos=qos, retain=retain)


def event_parts(event: Event) -> list[bytes]:
    """Turn an event into the two ZeroMQ parts; the routing key stays in its own part."""
    body = dict(event.body)
    body["v"] = EVENT_VERSION
    return [event.key.encode("utf-8"), _packer.pack(body)]


def parse_event(parts: list[bytes], max_bytes: int = 16 * 1024 * 1024) -> Event:
    if len(parts) != 2:
        raise FrameError("parts", f"{len(parts)} parts, expected 2")
    try:
        key = bytes(parts[0]).decode("utf-8")
    except UnicodeDecodeError:
        raise FrameError("key", "routing key is not UTF-8") from None
    body = _unpack_map(parts[1], max_bytes)
    version = body.get("v")
    if version != EVENT_VERSION:
        raise FrameError("version", f"event v={version!r}")
    if not isinstance(body.get("event"), str):
        raise FrameError("shape", "event name missing")
    if not all(isinstance(k, str) for k in body):
        raise FrameError("shape", "non-string key")
    return Event(key=key, body=body)
