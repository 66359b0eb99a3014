"""Fixtures for the fan-out tests: the real service as a subprocess and a real ZeroMQ feed."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.wsfanout.helpers import Fanout, Feed


@pytest.fixture
def start_fanout(tmp_path: Path) -> Iterator[Callable[..., Fanout]]:
    """``start_fanout(env={...})`` starts one wsfanout (killed at the end if still running)."""
    started: list[Fanout] = []

    def start(
        env: dict[str, str] | None = None, wait: bool = True, args: list[str] | None = None
    ) -> Fanout:
        f = Fanout(tmp_path, env, args).start(wait=wait)
        started.append(f)
        return f

    yield start
    for f in started:
        f.kill()


@pytest.fixture
def open_feed() -> Iterator[Callable[[Fanout], Feed]]:
    feeds: list[Feed] = []

    def open_(fanout: Fanout) -> Feed:
        feed = Feed(fanout.endpoint)
        feeds.append(feed)
        return feed

    yield open_
    for feed in feeds:
        feed.close()


@pytest.fixture(scope="module")
def shared_fanout(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Fanout, Feed]]:
    """One fan-out for tests that only need their own tenant's events (faster than one each)."""
    fanout = Fanout(tmp_path_factory.mktemp("fanout"), {"WEBSOCKET_RATE_BURST": "200"}).start()
    feed = Feed(fanout.endpoint)
    yield fanout, feed
    feed.close()
    fanout.kill()


@pytest.fixture
def tenant() -> str:
    """A tenant name no other test uses (tests sharing a fan-out stay apart)."""
    return f"tenant-{uuid.uuid4().hex[:8]}"
