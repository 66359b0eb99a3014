"""Every thread of every service runs under the policy CPU_SCHEDULING_POLICY names:
SCHED_BATCH by default (less CPU per message under load, bench/FINDINGS.md), the kernel's
default with ``other``; anything else stops the service at start-up. Where the platform
refuses the policy, the service says so and runs on."""

from __future__ import annotations

import os
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from services.decode.config import load as load_decode
from services.ingest.config import load as load_ingest
from services.wsfanout.config import load as load_wsfanout
from shared.config import ConfigError
from tests.support.ports import free_endpoint, free_port
from tests.support.procs import ServiceProcess
from tests.support.stack import READY, Stack


def thread_policies(pid: int) -> dict[str, int]:
    """``{"<thread name>/<tid>": policy}`` for every thread of ``pid``."""
    policies = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        name = (task / "comm").read_text().strip()
        policies[f"{name}/{task.name}"] = os.sched_getscheduler(int(task.name))
    return policies


@pytest.mark.parametrize(
    ("env", "policy"),
    [({}, os.SCHED_BATCH), ({"CPU_SCHEDULING_POLICY": "other"}, os.SCHED_OTHER)],
    ids=["default-batch", "other"],
)
def test_every_thread_of_every_service_runs_under_the_configured_policy(
    gateway: Callable[..., Stack], env: dict[str, str], policy: int
) -> None:
    stack = gateway(env=env)
    for name, procs in stack.procs.items():
        assert procs[0].proc is not None
        threads = thread_policies(procs[0].proc.pid)
        # ZeroMQ's I/O thread is started by the service itself: it must inherit the policy.
        assert any(t.startswith("ZMQbg/IO") for t in threads), (name, threads)
        assert set(threads.values()) == {policy}, (name, threads)


@pytest.mark.parametrize("load", [load_ingest, load_decode, load_wsfanout])
def test_an_unknown_policy_is_a_config_error_naming_the_variable(
    load: Callable[[Mapping[str, str], Sequence[str] | None], Any],
) -> None:
    with pytest.raises(ConfigError, match="CPU_SCHEDULING_POLICY"):
        load({"CPU_SCHEDULING_POLICY": "fifo"}, [])


# Started under SCHED_IDLE, without CAP_SYS_NICE and with RLIMIT_NICE 0, a thread may not
# leave SCHED_IDLE: the kernel refuses the switch, as a locked-down container can.
REFUSED = ["chrt", "--idle", "0", "setpriv", "--bounding-set=-sys_nice", "prlimit", "--nice=0"]


def test_a_refused_policy_is_logged_and_the_service_runs_on_under_the_one_it_had(
    tmp_path: Path,
) -> None:
    port = free_port()
    proc = ServiceProcess(
        "wsfanout",
        {
            "WEBSOCKET_HOST": "127.0.0.1",
            "WEBSOCKET_PORT": str(port),
            "ZMQ_EVENTS_BIND": free_endpoint(),
        },
        tmp_path,
        prefix=REFUSED,
    ).start()
    try:
        # SCHED_IDLE runs only where nothing else wants the CPU: fine between tests, slow
        # beside other work, hence the long bound.
        proc.wait_for_log(READY["wsfanout"], timeout=60)
        log = proc.log_text()
        assert "Cannot set the CPU scheduling policy to batch" in log, log
        assert "Operation not permitted" in log, log
        assert proc.proc is not None
        assert set(thread_policies(proc.proc.pid).values()) == {os.SCHED_IDLE}
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=60) as resp:
            assert resp.status == 200
        assert proc.stop(timeout=60) == 0
    finally:
        proc.kill()
