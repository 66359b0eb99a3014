"""Test peers that speak the raw link's credit protocol (:mod:`shared.rawlink`).

:class:`CreditDealer` plays a decoder (a DEALER that grants credit, again on every
connect, as decode does), :class:`CreditRouter` plays ingest (a ROUTER that sends a frame
only to a peer with credit for it and answers ``stop`` with ``stopped``). Neither is
thread-safe: use each from one thread.
"""

from __future__ import annotations

import time

import zmq
from zmq.utils.monitor import recv_monitor_message

from shared import rawlink


class CreditDealer:
    """A DEALER connected to ingest's endpoint that grants ``credit`` on every connect.
    With ``max_frame`` it says, as decode does, how large a frame it takes, and ZeroMQ
    drops its link for a larger one (ZMQ_MAXMSGSIZE), as decode's would."""

    def __init__(
        self,
        ctx: zmq.Context,  # type: ignore[type-arg]
        endpoint: str,
        credit: int,
        rcvhwm: int = 1000,
        max_frame: int = 0,
    ) -> None:
        self.credit = credit
        self.max_frame = max_frame
        self.sock: zmq.Socket[bytes] = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.RCVHWM, rcvhwm)
        if max_frame:
            self.sock.setsockopt(zmq.MAXMSGSIZE, max_frame)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.monitor = self.sock.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)
        self.sock.connect(endpoint)
        self.stopped = False
        self.connects = 0
        self.disconnects = 0  # also when ZeroMQ drops the link for a frame over max_frame

    def grant(self, n: int) -> None:
        self.sock.send_multipart(rawlink.credit_message(n, self.max_frame))

    def stop(self) -> None:
        self.sock.send_multipart(rawlink.STOP_MESSAGE)

    def service(self, timeout_ms: int) -> list[bytes]:
        """Wait up to ``timeout_ms`` for frames; return those already queued (the single
        part of each). Grants the initial credit on each connect, notes ``stopped``."""
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        poller.register(self.monitor, zmq.POLLIN)
        ready = dict(poller.poll(timeout_ms))
        if self.monitor in ready:
            while True:
                try:
                    event = recv_monitor_message(self.monitor, zmq.NOBLOCK)
                except zmq.Again:
                    break
                if event["event"] == zmq.EVENT_DISCONNECTED:
                    self.disconnects += 1
                    continue
                self.connects += 1
                self.grant(self.credit)
        frames: list[bytes] = []
        while True:
            try:
                parts = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return frames
            if rawlink.is_stopped(parts):
                self.stopped = True
            else:
                assert len(parts) == 1, parts
                frames.append(parts[0])

    def close(self) -> None:
        self.sock.disable_monitor()
        self.monitor.close(linger=0)
        self.sock.close(linger=0)


class CreditRouter:
    """A bound ROUTER playing ingest: frames go only to peers with credit."""

    def __init__(self, ctx: zmq.Context, endpoint: str = "tcp://127.0.0.1:0") -> None:  # type: ignore[type-arg]
        self.sock: zmq.Socket[bytes] = ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.sock.bind(endpoint)
        self.credit: dict[bytes, int] = {}
        self.stops = 0
        self.grants = 0  # credit messages received
        self.limits: list[int] = []  # the largest frame each grant said it takes (0: none)

    @property
    def endpoint(self) -> str:
        return self.sock.getsockopt_string(zmq.LAST_ENDPOINT)

    def pump(self, timeout_ms: int = 0) -> None:
        """Read the control messages (waiting up to ``timeout_ms`` for the first)."""
        if not self.sock.poll(timeout_ms, zmq.POLLIN):
            return
        while True:
            try:
                peer, *parts = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            msg = rawlink.parse_control(parts)
            assert msg is not None, parts
            if msg.kind == rawlink.CREDIT:
                self.grants += 1
                self.credit[peer] = self.credit.get(peer, 0) + msg.n
                self.limits.append(msg.max_frame)
            else:
                self.stops += 1
                self.credit.pop(peer, None)
                self.sock.send_multipart([peer, *rawlink.STOPPED_MESSAGE])

    def send(self, data: bytes | list[bytes], timeout: float = 10.0) -> bytes:
        """Send one message (a raw frame, or any parts) to a peer with credit, waiting for
        credit up to ``timeout`` seconds; the peer's identity."""
        parts = [data] if isinstance(data, bytes) else data
        deadline = time.monotonic() + timeout
        while True:
            self.pump()
            for peer, credit in list(self.credit.items()):
                if credit <= 0:
                    continue
                try:
                    self.sock.send_multipart([peer, *parts], zmq.NOBLOCK)
                except zmq.ZMQError as exc:
                    if exc.errno not in (zmq.EHOSTUNREACH, zmq.EAGAIN):
                        raise
                    if exc.errno == zmq.EHOSTUNREACH:
                        del self.credit[peer]
                    continue
                self.credit[peer] = credit - 1
                return peer
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no peer granted credit within {timeout} s")
            self.pump(int(min(left, 0.05) * 1000) + 1)

    def close(self) -> None:
        self.sock.close(linger=0)
