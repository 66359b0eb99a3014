"""The raw link's flow control: credit-based ROUTER (ingest) / DEALER (decode).

zguide ch. 3 (load balancing) and ch. 4 (credit-based flow control). ingest binds a
ROUTER on ``ZMQ_RAW_BIND``; every decode worker connects one DEALER per endpoint in
``ZMQ_RAW_CONNECT``, so credit is kept per link. ingest sends a frame only to a peer that
has credit for it, so a decoder never has more than the credit it granted in flight
(a SIGKILLed decoder loses at most that plus what it held), and a stopping decoder can
stop the inflow without losing what is already on its way.

Messages (ZeroMQ multipart; the ROUTER's peer identity part is not shown):

decode → ingest
    ``[b"credit", b"<n>"]``  send me ``n`` more frames (n > 0, ASCII decimal).
    ``[b"credit", b"<n>", b"<max>"]``  the same, and send me no frame over ``max`` bytes:
                             ZeroMQ would drop the link for it (ZMQ_MAXMSGSIZE), and with it
                             every frame in flight. decode says it with every grant, so
                             ingest keeps it only while it holds that peer's credit; it
                             drops (acks and counts) a bigger message instead.
    ``[b"stop"]``            send me no more frames; answer with ``stopped``.

ingest → decode
    ``[<raw frame>]``        one part: one raw frame (:func:`shared.frames.pack_raw`).
    ``[b"ctl", b"stopped"]`` the answer to ``stop``: ZeroMQ keeps each pipe in order, so
                             every frame ingest sent before it has arrived when decode
                             reads it. ingest forgets the peer's credit and ignores any
                             later credit from it.

A decoder grants its initial credit (``ZMQ_RAW_CREDIT``) each time its link connects,
and grants one credit back per frame from that link once the frame's event has been
handed to the events socket (so a full fan-out link holds back the credit, and with it
ingest). Grants go back in lumps of 50 frames (half the window, if smaller) while frames flow
and in full once the link is quiet, so a busy link does not carry one control message per
frame and acknowledgements are not held back by a large window.
Credit that comes back is also ingest's confirmation: the link is in order, so ``n``
credits from a decoder after its first grant mean its ``n`` oldest frames were handed on,
and only then are their messages acknowledged to the broker.
Anything malformed is ignored by the receiver (and counted/logged there).
"""

from __future__ import annotations

from typing import NamedTuple

CREDIT = b"credit"
STOP = b"stop"
CTL = b"ctl"
STOPPED = b"stopped"

STOP_MESSAGE: list[bytes] = [STOP]
STOPPED_MESSAGE: list[bytes] = [CTL, STOPPED]
MAX_CREDIT = 1 << 31  # larger grants are malformed


class Control(NamedTuple):
    """A decode → ingest message: ``kind`` CREDIT (``n`` frames; ``max_frame`` bytes at
    most per frame, 0 = not said) or STOP."""

    kind: bytes
    n: int = 0
    max_frame: int = 0


def credit_message(n: int, max_frame: int = 0) -> list[bytes]:
    """The parts that grant ``n`` (> 0) more frames, of at most ``max_frame`` bytes each
    if that is > 0."""
    if not 0 < n < MAX_CREDIT:
        raise ValueError(f"credit must be in 1..{MAX_CREDIT - 1}, not {n}")
    if not 0 <= max_frame < MAX_CREDIT:
        raise ValueError(f"max_frame must be in 0..{MAX_CREDIT - 1}, not {max_frame}")
    parts = [CREDIT, str(n).encode()]
    return [*parts, str(max_frame).encode()] if max_frame else parts


def _number(part: bytes) -> int | None:
    """A positive ASCII decimal below MAX_CREDIT, else None."""
    n = int(part) if part.isdigit() and len(part) <= 10 else 0
    return n if 0 < n < MAX_CREDIT else None


def parse_control(parts: list[bytes]) -> Control | None:
    """A decode → ingest message; None if malformed."""
    if len(parts) == 1 and parts[0] == STOP:
        return Control(STOP)
    if len(parts) in (2, 3) and parts[0] == CREDIT:
        n = _number(parts[1])
        max_frame = _number(parts[2]) if len(parts) == 3 else 0
        if n is not None and max_frame is not None:
            return Control(CREDIT, n, max_frame)
    return None


def is_stopped(parts: list[bytes]) -> bool:
    """True for ingest's answer to a ``stop``."""
    return len(parts) == 2 and parts[0] == CTL and parts[1] == STOPPED
