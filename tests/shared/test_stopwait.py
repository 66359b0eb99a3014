"""shared/stopwait.py: the main thread's wait for a stop that its own signal handler sets.

A child process delivers the signal at every bytecode of the wait in turn (a trace
function sends it at the k-th opcode, k = 1, 2, ...), so the window where
``threading.Event.wait`` holds its lock is hit for sure, not by luck."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.timing import seconds

ROOT = Path(__file__).resolve().parents[2]

CHILD = """
import os, signal, sys, threading
from shared.stopwait import sleep_unless_stopped

wait = (lambda stop, s: stop.wait(s)) if sys.argv[1] == "event" else sleep_unless_stopped
current = {}
signal.signal(signal.SIGUSR1, lambda *_: current["stop"].set())
for k in range(1, 1000):
    stop = current["stop"] = threading.Event()
    n = 0

    def local(frame, event, arg):
        global n
        if event == "opcode":
            n += 1
            if n == k:
                os.kill(os.getpid(), signal.SIGUSR1)
        return local

    def tracer(frame, event, arg):
        frame.f_trace_opcodes = True
        return local

    sys.settrace(tracer)
    wait(stop, 0.002)
    sys.settrace(None)
    if n < k:
        break  # every opcode of the wait has had its signal
    while not stop.is_set():  # a signal that came after the wait returned still sets it
        pass
print("signalled at", k - 1, "points")
"""


def run_child(kind: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", CHILD, kind],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_a_signal_at_any_point_of_the_wait_stops_it() -> None:
    done = run_child("helper", seconds(60))
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.split()[2]) > 20  # the wait really was traced through


def test_the_harness_catches_event_wait_deadlocking_in_its_own_handler() -> None:
    """The control: plain ``Event.wait`` hangs under the same signals, so the test above
    would fail if the helper went back to it."""
    with pytest.raises(subprocess.TimeoutExpired):
        run_child("event", 5)
