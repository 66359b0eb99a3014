"""Waiting for a stop request on the thread whose signal handler makes it.

A Python signal handler runs on the main thread between two bytecodes, possibly while that
thread is inside ``threading.Event.wait()`` holding the Event's own (non-reentrant) lock:
an ``Event.set()`` in the handler then waits for that lock forever. It happened: a
simulator ignored Ctrl-C until it was killed. So the main thread never calls ``wait()`` on
an Event its handler sets; it sleeps in short slices and reads the flag, which takes no
lock.
"""

from __future__ import annotations

import threading
import time

SLICE_S = 0.05  # how late a stop can be noticed


def sleep_unless_stopped(stop: threading.Event, seconds: float) -> bool:
    """Like ``stop.wait(seconds)`` (True once ``stop`` is set), safe on the thread whose
    signal handler sets ``stop``."""
    deadline = time.monotonic() + seconds
    while not stop.is_set():
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        time.sleep(min(left, SLICE_S))
    return True
