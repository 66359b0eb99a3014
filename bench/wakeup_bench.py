"""What one wake-up costs on this machine: the floor under every message at a steady rate.

    python -m bench.wakeup_bench [--rate 1000] [--count 5000]

A parent process sends one byte at a time over a socket pair, paced at ``--rate``; a
child process waits for each byte and reads it. The child's CPU time per byte is the
price of being woken once: the system call, the scheduler, cold caches. Each variant is
a way the gateway's services wait:

- ``recv``: a blocking ``recv()`` (the least there is);
- ``select``: ``select()`` then ``recv()`` (paho's own loop);
- ``epoll``: ``epoll`` then ``recv()`` (asyncio's selector: wsfanout);
- ``zmq_poll``: ``zmq_poll`` on a ZeroMQ socket and the pair, with a ZeroMQ context
  (and its I/O thread) in the process (ingest's loop, decode's poller).

At 1,000 msg/s a message wakes about seven threads on its way through the gateway
(bench/FINDINGS.md), so this figure times seven is what the gateway pays per message
before doing any work; Node-RED is woken once.
"""

from __future__ import annotations

import argparse
import os
import select
import socket
import statistics
import time

import zmq

VARIANTS = ("recv", "select", "epoll", "zmq_poll")


def _wait_loop(sock: socket.socket, variant: str, count: int) -> float:
    """In the child: wait for ``count`` bytes one wake-up at a time; CPU µs per byte."""
    ctx = zmq.Context() if variant == "zmq_poll" else None
    router = ctx.socket(zmq.ROUTER) if ctx is not None else None
    if router is not None:
        router.bind("tcp://127.0.0.1:*")
    poller = select.epoll()
    poller.register(sock.fileno(), select.EPOLLIN)
    got = 0
    started = time.process_time()
    while got < count:
        if variant == "select":
            select.select([sock], [], [], 1.0)
        elif variant == "epoll":
            poller.poll(1.0)
        elif router is not None:
            zmq.zmq_poll([(router, zmq.POLLIN), (sock, zmq.POLLIN)], 1000)
        got += len(sock.recv(4096))
    cpu = time.process_time() - started
    if router is not None and ctx is not None:
        router.close(linger=0)
        ctx.term()
    return cpu / count * 1e6


def measure(variant: str, rate: float, count: int) -> float:
    parent, child = socket.socketpair()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the waiting side
        parent.close()
        os.close(read_end)
        try:
            per_wake = _wait_loop(child, variant, count)
            os.write(write_end, f"{per_wake}".encode())
        finally:
            os._exit(0)
    child.close()
    os.close(write_end)
    interval = 1.0 / rate
    next_at = time.monotonic()
    for _ in range(count):
        parent.send(b"x")
        next_at += interval
        time.sleep(max(0.0, next_at - time.monotonic()))
    os.waitpid(pid, 0)
    result = float(os.read(read_end, 64).decode())
    os.close(read_end)
    parent.close()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=1000.0, help="wake-ups per second")
    parser.add_argument("--count", type=int, default=5000, help="wake-ups per round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"{args.count:,} wake-ups per round at {args.rate:,.0f}/s, {args.rounds} rounds")
    print("| variant | CPU µs per wake-up, median | best |")
    print("|---|---|---|")
    for variant in VARIANTS:
        runs = [measure(variant, args.rate, args.count) for _ in range(args.rounds)]
        print(f"| {variant} | {statistics.median(runs):.1f} | {min(runs):.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
