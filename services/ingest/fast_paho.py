"""A cheaper receive path for paho-mqtt 2.1-2.2: what ingest's MQTT link runs on.

Why (bench/FINDINGS.md, "Where the gateway's time goes"): about 75 % of ingest's CPU per
message was paho's network thread, mostly in two places that do work ingest never needs:

1. Every MQTT v5 PUBLISH gets a fresh ``Properties`` object. Its ``__init__`` builds two
   27-entry tables and its ``unpack()`` calls ``clear()``, which runs ``str.replace`` and
   ``hasattr`` 27 times: ~40 µs per message, even when the packet carries no properties
   at all (ChirpStack's events carry none). :class:`FastProperties` shares the tables
   between instances and returns at once when the properties length is 0; when properties
   are present it runs paho's own decoder, so they decode exactly as stock paho does.
2. paho does a ``select()`` and then a ``recv()`` for the command byte, one per
   remaining-length byte and one for the body: ~5 system calls per packet.
   :class:`FastClient` reads up to 64 KiB per ``recv()`` and serves paho's small reads
   from that, and handles every packet already read before paho's loop goes back to
   ``select()`` (which sees the kernel's buffer, not ours).

3. Even then, paho's reader cost ~50 µs per PUBLISH in Python: a state machine over
   1-byte reads, an ``MQTTMessage``, a ``Properties``, a topic-filter match and two
   locks per message. A client given :attr:`FastClient.on_plain_publish` reads every
   whole PUBLISH at the head of its buffer that paho would deliver as it is (QoS 0, or 1
   when acks are manual as in ingest; a topic; no v5 properties: ChirpStack's uplinks)
   with :func:`plain_publish`, a pure function, and hands topic, payload and flags
   straight to that callback. Anything else (other packet types, properties, QoS 2, a
   packet cut by the read, malformed bytes) goes through paho's own reader as before.

4. paho writes each queued packet with its own ``send()``. ingest acks in lumps (a
   decoder's credit confirms many frames at once), so :class:`FastClient` joins the
   PUBACKs at the head of the queue into one write: one system call and one wake-up of
   the broker instead of one per message.

All four lean on paho internals (``_sock_recv``, ``_sock_close``, ``_packet_read`` and its
``_in_packet`` state, ``_packet_write`` and its packet dicts, where ``decode_publish``
finds ``Properties``), so :func:`client_class`
uses them only on paho versions they were tested with (:data:`TESTED`) and otherwise
returns the stock client, saying so once. The Properties class is swapped process-wide
(paho offers no per-client hook for it): it is a subclass that decodes the same values,
so other paho clients in the process, if any, see no difference except speed.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from types import ModuleType
from typing import Any

import paho.mqtt
import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

logger = logging.getLogger(__name__)

TESTED = ((2, 1), (2, 2))  # paho-mqtt major.minor versions this module was tested with
READ_SIZE = 64 * 1024  # one recv() takes whatever the kernel holds, up to this
# recv() calls per loop_read(): then MqttLink's loop hands frames on, writes our PUBACKs,
# keeps the connection alive and looks at its stop flag, even while the broker never stops
# sending.
READS_PER_LOOP = 4
PUBACK = 0x40  # MQTT packet type, the high nibble of the first byte
# (topic, payload, qos, mid, dup, retain): the topic as the broker sent it (UTF-8 bytes).
PlainPublish = Callable[[bytes, bytes, int, int, bool, bool], None]


def plain_publish(
    buf: bytes, pos: int, v5: bool, qos1: bool = True
) -> tuple[int, bytes, bytes, int, int, bool, bool] | None:
    """The PUBLISH packet at ``buf[pos:]`` as ``(end, topic, payload, qos, mid, dup,
    retain)`` if it is whole in ``buf`` and plain: QoS 0 or (``qos1``) 1, a non-empty topic
    and, in MQTT v5, no properties. None for anything else, which paho's reader then takes
    (and refuses, if malformed)."""
    end = len(buf)
    if pos >= end:
        return None
    header = buf[pos]
    kind = header & 0xF6  # packet type and QoS (DUP and RETAIN masked off)
    if kind != 0x30 and (kind != 0x32 or not qos1):  # PUBLISH at QoS 0, or 1
        return None
    i = pos + 1
    length = 0
    shift = 0
    while True:  # the remaining length: a variable integer of at most 4 bytes
        if i >= end or shift > 21:
            return None
        byte = buf[i]
        i += 1
        length |= (byte & 0x7F) << shift
        if byte < 0x80:
            break
        shift += 7
    stop = i + length
    if stop > end or length < 2:
        return None
    topic_end = i + 2 + ((buf[i] << 8) | buf[i + 1])
    if topic_end == i + 2:  # empty: a v5 topic alias (which has properties) or an error
        return None
    p = topic_end
    qos = (header >> 1) & 3
    mid = 0
    if qos:
        if p + 2 > stop:
            return None
        mid = (buf[p] << 8) | buf[p + 1]
        p += 2
    if v5:
        if p >= stop or buf[p] != 0:  # properties follow: paho decodes them
            return None
        p += 1
    if p > stop:
        return None
    return stop, buf[i + 2 : topic_end], buf[p:stop], qos, mid, bool(header & 8), bool(header & 1)


class FastProperties(Properties):
    """paho's ``Properties`` without the per-instance tables, and with an early return
    for the empty property list every PUBLISH without properties carries."""

    # Identical for every instance and never modified by paho: one shared copy.
    _tables = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    types = _tables.types
    names = _tables.names
    properties = _tables.properties
    del _tables

    def __init__(self, packetType: int) -> None:  # paho's parameter name
        object.__setattr__(self, "packetType", packetType)

    def clear(self) -> None:
        # Besides packetType, an instance's attributes are exactly its property values
        # (paho stores each one under its name without spaces): no need to try all 27.
        for name in [n for n in vars(self) if n != "packetType"]:
            object.__delattr__(self, name)

    def unpack(self, buffer: bytes | bytearray) -> tuple[FastProperties, int]:
        if buffer[:1] == b"\x00":  # properties length 0 (a one-byte variable integer)
            self.clear()
            return self, 1
        result: tuple[FastProperties, int] = super().unpack(buffer)  # type: ignore[no-untyped-call]
        return result


def received_at_attr(client: mqtt.Client) -> str:
    """paho's name for when bytes last came in, for the keepalive (2.2's, or 2.1's)."""
    return "_last_bytes_received" if hasattr(client, "_last_bytes_received") else "_last_msg_in"


class FastClient(mqtt.Client):
    """``mqtt.Client`` reading the socket in large chunks. Works over plain TCP and TLS
    (an ``SSLSocket.recv`` returns at most one TLS record, whatever we ask for; the rest
    stays with the kernel or in OpenSSL, where paho's ``select()``/``pending()`` see it)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._rbuf = b""  # bytes read from the socket and not yet handed to paho
        self._rpos = 0  # how much of _rbuf paho has taken
        self._reads_left = READS_PER_LOOP
        # Where plain PUBLISH packets go, instead of on_message (None: all go to paho).
        self.on_plain_publish: PlainPublish | None = None
        self._received_at = received_at_attr(self)

    def _sock_recv(self, bufsize: int) -> bytes:
        buf = self._rbuf
        if buf:
            pos = self._rpos
            end = pos + bufsize
            if end >= len(buf):
                self._rbuf = b""
                return buf[pos:] if pos else buf
            self._rpos = end
            return buf[pos:end]
        if self._reads_left <= 0:
            # As if the socket had nothing more: paho keeps the partial packet and returns
            # to its loop; select() sees the bytes still in the kernel (or OpenSSL's pending()).
            raise BlockingIOError
        self._reads_left -= 1
        if bufsize >= READ_SIZE:  # the rest of a large packet: no point copying it twice
            data: bytes = super()._sock_recv(bufsize)
            return data
        # paho's own error handling (SSLWantRead -> BlockingIOError etc.) still applies.
        data = super()._sock_recv(READ_SIZE)
        if len(data) > bufsize:
            self._rbuf = data
            self._rpos = bufsize
            return data[:bufsize]
        return data

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        # paho handles one packet per select(). Packets we already read sit in _rbuf, where
        # select() cannot see them: handle them all now, so that we return to select()
        # only with an empty buffer. (paho stops reading a packet when recv() would block,
        # which happens only once _rbuf is empty, on an error, or after 100 reads.)
        self._reads_left = READS_PER_LOOP
        rc: MQTTErrorCode = super().loop_read(max_packets)
        while self._rbuf and rc == MQTTErrorCode.MQTT_ERR_SUCCESS and self._sock is not None:
            rc = super().loop_read(max_packets)
        return rc

    def _packet_read(self) -> MQTTErrorCode:
        # Between packets, plain PUBLISHes are taken here, as many as the buffer holds
        # whole (refilling it while reads are left); the first packet that is not one, or
        # not whole yet, is paho's. paho's loop_read maps AGAIN to success.
        if self.on_plain_publish is None or self._in_packet["command"] != 0:
            return super()._packet_read()
        handled = 0
        while True:
            if self._sock is None:  # closed by a callback
                return MQTTErrorCode.MQTT_ERR_NO_CONN
            if not self._rbuf:
                rc = self._fill()
                if rc is not None:  # nothing more for now, or the connection failed
                    again = rc == MQTTErrorCode.MQTT_ERR_AGAIN
                    return MQTTErrorCode.MQTT_ERR_SUCCESS if handled and again else rc
            taken = self._plain_publishes()
            handled += taken
            if not taken or self._rbuf:
                return super()._packet_read()

    def _fill(self) -> MQTTErrorCode | None:
        """Read the next chunk into the empty buffer; None when it did, else why not (as
        paho's reader reports it)."""
        if self._reads_left <= 0:
            return MQTTErrorCode.MQTT_ERR_AGAIN
        self._reads_left -= 1
        try:
            data: bytes = super()._sock_recv(READ_SIZE)
        except BlockingIOError:
            return MQTTErrorCode.MQTT_ERR_AGAIN
        except OSError as err:
            self._easy_log(mqtt.MQTT_LOG_ERR, "failed to receive on socket: %s", err)
            return MQTTErrorCode.MQTT_ERR_CONN_LOST
        if not data:
            return MQTTErrorCode.MQTT_ERR_CONN_LOST
        self._rbuf = data
        self._rpos = 0
        return None

    def _plain_publishes(self) -> int:
        """Deliver the plain PUBLISH packets whole at the head of the buffer; how many."""
        deliver = self.on_plain_publish
        assert deliver is not None
        buf = self._rbuf
        pos = self._rpos
        end = len(buf)
        v5 = self._protocol == mqtt.MQTTv5
        # Without manual acks paho acks a QoS 1 message itself: leave those to it.
        qos1 = self._manual_ack
        n = 0
        try:
            while pos < end:
                packet = plain_publish(buf, pos, v5, qos1)
                if packet is None:
                    break
                pos = packet[0]
                n += 1
                deliver(packet[1], packet[2], packet[3], packet[4], packet[5], packet[6])
                if self._rbuf is not buf:  # the callback closed the socket: bytes dropped
                    break
        finally:
            if self._rbuf is buf:  # else a callback closed the socket, dropping the buffer
                if pos >= end:
                    self._rbuf = b""
                    self._rpos = 0
                else:
                    self._rpos = pos
            if n:
                with self._msgtime_mutex:
                    setattr(self, self._received_at, mqtt.time_func())
        return n

    def _packet_write(self) -> MQTTErrorCode:
        out = self._out_packet
        if len(out) > 1 and _unsent_puback(out[0]) and _unsent_puback(out[1]):
            parts = []
            while out and _unsent_puback(out[0]):
                parts.append(out.popleft()["packet"])
            data = b"".join(parts)
            # Nothing is done on a PUBACK's completion: one packet dict can carry them all.
            out.appendleft(
                {
                    "command": PUBACK,
                    "mid": 0,
                    "qos": 0,
                    "pos": 0,
                    "to_process": len(data),
                    "packet": data,
                    "info": None,
                }
            )
        rc: MQTTErrorCode = super()._packet_write()
        return rc

    def _sock_close(self) -> None:
        # Bytes of a closed connection must never be read as the next connection's.
        self._rbuf = b""
        self._rpos = 0
        super()._sock_close()


def _properties_home() -> ModuleType:
    """The module whose ``Properties`` global ``decode_publish`` uses: ``_packet`` in paho
    2.2, ``client`` (``Client._handle_publish``) in 2.1."""
    try:
        return importlib.import_module("paho.mqtt._packet")
    except ImportError:
        return mqtt


def unsupported_reason(version: str) -> str | None:
    """Why the fast path must not be used with this paho, or None when it may."""
    try:
        major_minor = tuple(int(part) for part in version.split(".")[:2])
    except ValueError:
        return f"cannot read the paho-mqtt version {version!r}"
    if major_minor not in TESTED:
        tested = ", ".join(f"{a}.{b}.x" for a, b in TESTED)
        return f"paho-mqtt {version} is not a tested version ({tested})"
    home = _properties_home()
    if getattr(home, "Properties", None) not in (Properties, FastProperties):
        return f"{home.__name__}.Properties is not paho's Properties class"
    for name in ("_sock_recv", "_sock_close", "loop_read", "_packet_read", "_packet_write"):
        if not callable(getattr(mqtt.Client, name, None)):
            return f"paho-mqtt {version} has no Client.{name}"
    return None


def client_class(version: str = paho.mqtt.__version__) -> type[mqtt.Client]:
    """:class:`FastClient` (installing :class:`FastProperties`) on a tested paho version,
    else the stock ``mqtt.Client``."""
    reason = unsupported_reason(version)
    if reason is not None:
        logger.info("ℹ️ Using paho's stock MQTT client: %s", reason)
        return mqtt.Client
    _properties_home().Properties = FastProperties  # type: ignore[attr-defined]
    logger.debug("Using the fast receive path for paho-mqtt %s", version)
    return FastClient


def _unsent_puback(packet: Any) -> bool:
    return bool((packet["command"] & 0xF0) == PUBACK and packet["pos"] == 0)
