"""The dashboard page in a real (headless) Chromium against a running gateway."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from simulators import payloads
from tests.e2e.helpers import StrictCollector, Uplink, devices, publish, uplinks
from tests.support.mqtt import Publisher
from tests.support.procs import run_cli
from tests.support.stack import Stack
from tests.support.timing import seconds, wait_for
from tests.support.ws import Collector

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Where to keep a screenshot for people to look at (the test always writes one in tmp_path).
SCREENSHOT = os.environ.get("DASHBOARD_SCREENSHOT")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    # expect() keeps its own 5 s default, which the page's default timeout does not change.
    expect.set_options(timeout=seconds(20) * 1000)
    with sync_playwright() as pw:
        # Playwright's own browser download does not work here: use the system Chromium.
        chromium = pw.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        yield chromium
        chromium.close()


class Watched:
    """A page plus every WebSocket frame it received and every script error it had."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.frames: list[str] = []
        self.errors: list[str] = []  # uncaught exceptions in the page
        self.console_errors: list[str] = []
        page.on("websocket", lambda ws: ws.on("framereceived", self._frame))
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        page.on(
            "console",
            lambda msg: self.console_errors.append(msg.text) if msg.type == "error" else None,
        )
        page.set_default_timeout(seconds(20) * 1000)

    def _frame(self, payload: str | bytes) -> None:
        self.frames.append(
            payload if isinstance(payload, str) else payload.decode("utf-8", "replace")
        )

    def unparsable_frames(self) -> list[str]:
        """The frames the browser's own JSON.parse rejects."""
        return self.page.evaluate(
            "frames => frames.filter(f => {"
            "  try { JSON.parse(f); return false; } catch (e) { return true; }"
            "})",
            self.frames,
        )

    def stats(self) -> dict[str, Any]:
        return self.page.evaluate("() => ({...window.gatewayDashboard})")


@pytest.fixture
def watched(browser: Browser) -> Iterator[Watched]:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    yield Watched(context.new_page())
    context.close()


def row(page: Page, dev_eui: str) -> Any:
    return page.locator(f'tr[data-dev-eui="{dev_eui}"]')


def shown_value(item: Uplink) -> str:
    return f"{item.event['object']['type']} {item.event['object']['values'][0]['value']}"


def hostile(device: payloads.Device, raw_value: str, f_cnt: int) -> tuple[str, bytes]:
    """An uplink whose value is written as raw JSON text (numbers Python would not write)."""
    event = uplinks([device], per_device=1, first_f_cnt=f_cnt)[0].event
    marker = json.dumps(event["object"]["values"][0]["value"])
    text = json.dumps(event).replace(f'"value": {marker}', f'"value": {raw_value}')
    assert raw_value in text
    return payloads.uplink_topic(device), text.encode()


def test_dashboard_shows_replayed_and_live_devices_and_survives_odd_numbers(
    gateway: Callable[..., Stack],
    publisher: Publisher,
    clients: list[Collector],
    watched: Watched,
    tmp_path: Path,
) -> None:
    stack = gateway(decoders=1)
    devs = devices(6)
    # A device whose name is markup: the page must show it as text, never run it.
    devs.append(
        payloads.Device(
            "acme", "substation-1", '<img src=x onerror="window.__pwned=1">', "feedfacecafebeef"
        )
    )
    history = uplinks(devs, per_device=3)
    watcher = StrictCollector(stack.ws_url)
    clients.append(watcher)
    publish(publisher, history)
    watcher.wait_events(len(history))

    page = watched.page
    page.goto(stack.http_url + "/")
    expect(page.locator("#status")).to_have_attribute("data-state", "connected")
    for device in devs:  # replayed: the latest uplink of each device, marked as replay
        last = [u for u in history if u.dev_eui == device.dev_eui][-1]
        expect(row(page, device.dev_eui)).to_contain_text(device.name)
        expect(row(page, device.dev_eui)).to_contain_text(shown_value(last))
        expect(row(page, device.dev_eui)).to_contain_text("replay")
    expect(row(page, devs[0].dev_eui)).to_contain_text(devs[0].tenant)
    expect(row(page, devs[0].dev_eui)).to_contain_text(devs[0].application)

    live = uplinks(devs, per_device=1, first_f_cnt=4)
    publish(publisher, live)
    for item in live:
        cells = row(page, item.dev_eui).locator("td")
        expect(row(page, item.dev_eui)).to_contain_text(shown_value(item))
        expect(row(page, item.dev_eui)).to_contain_text("live")
        expect(cells.nth(6)).to_have_text(str(item.event["rxInfo"][0]["rssi"]))
        expect(cells.nth(8)).to_have_text("4")  # 3 replayed + 1 live
    assert page.evaluate("() => window.__pwned") is None

    # Numbers that strain JSON: the gateway must send only what JSON.parse accepts,
    # and the page must keep working after them.
    odd = devs[1]
    for n, raw in enumerate(
        ["1e999", "-1e999", "123456789012345678901234567890", "NaN", "Infinity", "1e-400"]
    ):
        publish(publisher, [hostile(odd, raw, 10 + n)])
    final = uplinks([odd], per_device=1, first_f_cnt=20)[0]
    publish(publisher, [final])
    expect(row(page, odd.dev_eui)).to_contain_text(shown_value(final))
    assert watched.unparsable_frames() == []
    stats = watched.stats()
    assert stats["parseErrors"] == 0 and stats["state"] == "connected"
    assert stats["events"] >= len(history) + len(live) + 1
    assert watched.errors == [] and watched.console_errors == []

    page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
    if SCREENSHOT:
        shutil.copy(tmp_path / "dashboard.png", SCREENSHOT)


def publish_until_through(
    publisher: Publisher, probe: Collector, devs: list[payloads.Device], clients: list[Collector]
) -> list[Uplink]:
    """Publish a round of uplinks until one reaches a fresh fan-out: its decoders' ZeroMQ
    connections come back on their own reconnect timer, not when the fan-out logs ready."""
    clients.append(probe)
    for f_cnt in range(9, 30):
        batch = uplinks(devs, per_device=1, first_f_cnt=f_cnt)
        publish(publisher, batch)
        try:
            wait_for(
                lambda n=f_cnt: any(m.get("rx", {}).get("fCnt") == n for m in probe.events()),
                3,
                "a round",
            )
        except AssertionError:
            continue
        return batch
    raise AssertionError("no uplink reached the restarted fan-out")


def make_token(path: Path, *scope: str) -> str:
    """``python -m services.wsfanout token add ...``: the token is the last line printed."""
    done = run_cli("wsfanout", ["token", "add", *scope, "--file", str(path)])
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


def test_dashboard_with_a_tenant_token_filters_and_reconnects(
    gateway: Callable[..., Stack],
    publisher: Publisher,
    clients: list[Collector],
    watched: Watched,
    tmp_path: Path,
) -> None:
    tokens = tmp_path / "tokens.json"
    admin = make_token(tokens, "--admin")
    globex_token = make_token(tokens, "--tenant", "globex")
    stack = gateway(decoders=1, env={"WEBSOCKET_TOKENS_FILE": str(tokens)})
    bearer = {"additional_headers": {"Authorization": f"Bearer {admin}"}}
    devs = devices(
        4
    )  # acme/substation-1, globex/substation-1, acme/substation-2, globex/substation-2
    acme = [d for d in devs if d.tenant == "acme"]
    globex_1, globex_2 = [d for d in devs if d.tenant == "globex"]
    history = uplinks(devs, per_device=2)
    watcher = StrictCollector(stack.ws_url, **bearer)
    clients.append(watcher)
    publish(publisher, history)
    watcher.wait_events(len(history))

    page = watched.page
    page.goto(stack.http_url + "/")  # no token: refused at the handshake, nothing shown
    expect(page.locator("#status")).to_contain_text("refused")
    expect(page.locator("#devices tr")).to_have_count(0)

    # The token rides in a subprotocol entry; the page sees its tenant only.
    page.goto(f"{stack.http_url}/?token={globex_token}")
    expect(page.locator("#status")).to_have_attribute("data-state", "connected")
    expect(row(page, globex_1.dev_eui)).to_be_visible()
    expect(row(page, globex_2.dev_eui)).to_be_visible()
    expect(page.locator("#devices tr")).to_have_count(2)

    # Filter by application: the server answers with the replay for it, then live events.
    page.fill('input[name="application"]', "substation-1")
    page.click('button[type="submit"]')
    expect(page.locator("#applied")).to_contain_text("substation-1")
    expect(page.locator("#devices tr")).to_have_count(1)
    publish(publisher, uplinks(devs, per_device=1, first_f_cnt=3))
    expect(row(page, globex_1.dev_eui).locator("td").nth(8)).to_have_text("3")
    expect(page.locator("#devices tr")).to_have_count(1)
    assert "application=substation-1" in page.url and globex_token in page.url
    page.click('button[type="reset"]')
    expect(row(page, globex_2.dev_eui)).to_be_visible()
    expect(page.locator("#devices tr")).to_have_count(2)

    # The fan-out restarts: the page reconnects by itself, with its token, and carries on.
    assert stack.procs["wsfanout"][0].stop() == 0
    expect(page.locator("#status")).not_to_have_attribute("data-state", "connected")
    stack.start_service("wsfanout")
    expect(page.locator("#status")).to_have_attribute(
        "data-state", "connected", timeout=seconds(30) * 1000
    )
    probe = StrictCollector(stack.ws_url, **bearer)
    after = publish_until_through(publisher, probe, devs, clients)
    for item in after:
        if item.event["deviceInfo"]["tenantName"] == "globex":
            expect(row(page, item.dev_eui)).to_contain_text(shown_value(item))
    for device in acme:
        expect(row(page, device.dev_eui)).to_have_count(0)
    assert watched.unparsable_frames() == []
    assert watched.errors == []
