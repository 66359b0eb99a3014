"""A TCP forwarder on a free loopback port that can cut the line, for network faults
(RELIABILITY.md §9.1 F17, F18): :meth:`TcpProxy.blackhole` stops moving bytes in both
directions while every connection stays open, as in a partition or a stalled link; no
FIN or RST reaches either end, so only the endpoints' own liveness checks can notice.
:meth:`TcpProxy.heal` lets the held bytes and everything after them through again.

Two threads per connection (one per direction) keep it simple: each reads, waits while
the line is cut, then writes. Connections accepted during a blackhole are connected
onward only once it heals, like a SYN that gets through after the partition."""

from __future__ import annotations

import contextlib
import socket
import threading

from tests.support.ports import free_port

CHUNK = 65536


class TcpProxy:
    def __init__(self, target_host: str, target_port: int, buffer: int = 0) -> None:
        """``buffer`` > 0 bounds the kernel buffers of the proxy's own sockets, so a stalled
        line holds little: loopback autotunes them to megabytes."""
        self.target = (target_host, target_port)
        self.host = "127.0.0.1"
        self.port = free_port()
        self._flowing = threading.Event()
        self._flowing.set()
        self._closed = False
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self.buffer = buffer
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._size_buffers(self._listener)  # accepted sockets inherit the buffer sizes
        self._listener.bind((self.host, self.port))
        self._listener.listen()

    def _size_buffers(self, sock: socket.socket) -> None:
        if self.buffer > 0:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.buffer)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.buffer)

    @property
    def endpoint(self) -> str:
        return f"tcp://{self.host}:{self.port}"

    def start(self) -> TcpProxy:
        threading.Thread(target=self._accept_loop, name="proxy-accept", daemon=True).start()
        return self

    def blackhole(self) -> None:
        self._flowing.clear()

    def heal(self) -> None:
        self._flowing.set()

    def close(self) -> None:
        self._closed = True
        self._flowing.set()  # lets the waiting threads run into the closed sockets
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _track(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self._track(client)
            threading.Thread(target=self._connect, args=(client,), daemon=True).start()

    def _connect(self, client: socket.socket) -> None:
        self._flowing.wait()
        upstream = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._size_buffers(upstream)
        try:
            upstream.settimeout(5)
            upstream.connect(self.target)
        except OSError:
            upstream.close()
            client.close()
            return
        upstream.settimeout(None)
        self._track(upstream)
        for sock in (client, upstream):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=self._pipe, args=(client, upstream), daemon=True).start()
        threading.Thread(target=self._pipe, args=(upstream, client), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while not self._closed:
                self._flowing.wait()
                data = src.recv(CHUNK)
                self._flowing.wait()  # read before the cut: held until it heals
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        # One side ended: end both, as a real connection's FIN or RST would.
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
