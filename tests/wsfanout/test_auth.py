"""Tokens, scopes and tenant isolation; Origin allow-list; revocation on SIGHUP."""

from __future__ import annotations

import hashlib
import json
import signal
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from tests.support.procs import run_cli
from tests.support.timing import wait_for
from tests.wsfanout.helpers import (
    collector,
    device_event,
    error_event,
    eui_of,
    gateway_event,
    raw_upgrade,
    token_add,
    value_of,
)


def test_token_add_prints_the_token_last_and_stores_only_its_hash(tmp_path):
    path = tmp_path / "tokens.json"
    token = token_add(
        path, "--tenant", "acme", "--tenant", "beta", "--application", "a1", "--note", "north"
    )
    admin = token_add(path, "--admin")
    text = path.read_text()
    assert token not in text and admin not in text
    doc = json.loads(text)
    assert [t["sha256"] for t in doc["tokens"]] == [
        hashlib.sha256(token.encode()).hexdigest(),
        hashlib.sha256(admin.encode()).hexdigest(),
    ]
    assert doc["tokens"][0]["tenants"] == ["acme", "beta"] and doc["tokens"][0]["applications"] == [
        "a1"
    ]
    assert doc["tokens"][1]["admin"] is True
    assert path.stat().st_mode & 0o077 == 0

    listing = run_cli("wsfanout", ["token", "list", "--file", str(path)])
    assert listing.returncode == 0 and token not in listing.stdout
    token_id = doc["tokens"][0]["id"]
    assert token_id in listing.stdout and "north" in listing.stdout
    revoked = run_cli("wsfanout", ["token", "revoke", token_id, "--file", str(path)])
    assert revoked.returncode == 0
    assert [t["admin"] for t in json.loads(path.read_text())["tokens"]] == [True]
    assert run_cli("wsfanout", ["token", "revoke", "nope", "--file", str(path)]).returncode == 1
    usage = run_cli("wsfanout", ["token", "add", "--file", str(path)])  # no scope given
    assert usage.returncode == 2 and "--tenant" in usage.stderr


@pytest.fixture
def secured(start_fanout: Any, open_feed: Any, tmp_path: Path) -> Any:
    path = tmp_path / "tokens.json"
    tokens = {
        "a": token_add(path, "--tenant", "tenant-a"),
        "b": token_add(path, "--tenant", "tenant-b"),
        "a1": token_add(path, "--tenant", "tenant-a", "--application", "app-1"),
        "admin": token_add(path, "--admin"),
    }
    fanout = start_fanout({"WEBSOCKET_TOKENS_FILE": str(path)})
    return fanout, open_feed(fanout), tokens, path


def test_missing_or_wrong_token_gets_401_and_not_one_frame(secured):
    fanout, feed, tokens, _ = secured
    feed.send(device_event("tenant-a", "app-1", "m1", 1))
    fanout.wait_metric("gateway_wsfanout_events_accepted_total", 1)
    for path, headers in [
        ("/", {}),
        ("/?token=lgw_wrong", {}),
        ("/", {"Authorization": "Bearer lgw_wrong"}),
        ("/", {"Authorization": f"Basic {tokens['a']}"}),  # only Bearer counts
        ("/", {"Sec-WebSocket-Protocol": "lorawan-gateway, token.lgw_wrong"}),
    ]:
        reply = raw_upgrade(fanout.port, path, headers)
        head, _, body = reply.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 401"), reply[:200]
        assert b"www-authenticate: bearer" in head.lower()
        length = int(
            next(h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")).split(
                b":"
            )[1]
        )
        assert len(body) == length  # the plain-text reason, then the server closed: no frame
        assert b"tenant-a" not in reply
    assert fanout.metric("gateway_wsfanout_handshakes_rejected_total", status="401") == 5
    assert fanout.health()["clients"] == 0


def test_token_by_query_bearer_or_subprotocol_and_never_in_a_log_line(secured):
    fanout, feed, tokens, _ = secured
    token = tokens["a"]
    by_query = collector(fanout.url(token=token))
    by_header = collector(fanout.url(), additional_headers={"Authorization": f"Bearer {token}"})
    by_protocol = collector(fanout.url(), subprotocols=["lorawan-gateway", f"token.{token}"])
    assert by_protocol.conn.subprotocol == "lorawan-gateway"
    echoed = by_protocol.conn.response.headers.get_all("Sec-WebSocket-Protocol")
    assert echoed == ["lorawan-gateway"]  # the token offered as a protocol is never echoed
    feed.send(device_event("tenant-a", "app-1", "m1", 1))
    for client in (by_query, by_header, by_protocol):
        assert client.wait_events(1)[0]["device"]["tenant"] == "tenant-a"
        client.close()
    wait_for(lambda: fanout.log().count("disconnected") >= 3, 10, "disconnect lines")
    with pytest.raises(InvalidStatus):
        connect(fanout.url(token=token + "x"), open_timeout=10)
    log = fanout.log()
    assert "token=<redacted>" in log
    for secret in tokens.values():
        assert secret not in log and secret[4:] not in log


def leaks(client: Any, allowed: set[str]) -> list[dict[str, Any]]:
    """Events outside the allowed tenants (gateway and error events have no tenant)."""
    return [m for m in client.events() if m.get("device", {}).get("tenant") not in allowed]


# Names a hostile or careless network server could give a tenant, each one byte or one
# character away from "tenant-a" or starting with it (RELIABILITY.md B12).
LOOKALIKES = [
    "tenant-a/evil",
    "tenant-a%2Fevil",
    "tenant-a\u2215evil",  # DIVISION SLASH
    "tenant-a+",
    "tenant-a#",
    "tenant-a ",
    "TENANT-A",
    "tenant-a" + "x" * 5000,
]


def test_names_that_only_look_like_a_tenant_never_reach_its_token(secured):
    fanout, feed, tokens, _ = secured
    live = collector(fanout.url(token=tokens["a"]))
    wildcard = collector(fanout.url(token=tokens["a"], tenant="tenant-a"))
    for n, name in enumerate(LOOKALIKES):
        feed.send(device_event(name, "app-1", f"m{n}", n))
    feed.send(device_event("tenant-a", "app-1", "a-m1", 99))  # the only one a may see
    fanout.wait_metric("gateway_wsfanout_events_accepted_total", len(LOOKALIKES) + 1)
    late = collector(fanout.url(token=tokens["a"]))  # through replay
    admin = collector(fanout.url(token=tokens["admin"]))
    # Everything arrived, names intact, so the test looked at the hostile names.
    assert {m["device"]["tenant"] for m in admin.wait_events(len(LOOKALIKES) + 1)} == {
        *LOOKALIKES,
        "tenant-a",
    }
    for client in (live, wildcard, late):
        # 99 was sent last: a leaked event would have arrived before it.
        wait_for(lambda c=client: 99 in [value_of(m) for m in c.events()], 10, "tenant-a's event")
        assert leaks(client, {"tenant-a"}) == []
        assert [value_of(m) for m in client.events()] == [99]
        client.close()
    admin.close()


def test_a_tenant_token_never_sees_another_tenant_live_or_in_replay_whatever_it_asks(secured):
    fanout, feed, tokens, _ = secured

    def burst(start: int) -> None:
        for i in range(start, start + 5):
            feed.send(
                device_event("tenant-a", "app-1", "a-m1", i),
                device_event("tenant-a", "app-2", "a-m2", i),
                device_event("tenant-b", "app-1", "b-m1", i),
                gateway_event(event="stats"),
                error_event("json"),
            )

    burst(0)  # in the replay buffer before anyone connects
    fanout.wait_metric("gateway_wsfanout_events_accepted_total", 25)
    a = tokens["a"]
    asking = {
        "nothing": collector(fanout.url(token=a)),
        "tenant-b on the URL": collector(fanout.url(token=a, tenant="tenant-b")),
        "both tenants": collector(fanout.url(token=a, tenant="tenant-a,tenant-b")),
        "b's devEui": collector(fanout.url(token=a, devEui=eui_of("b-m1"))),
        "gateway events": collector(fanout.url(token=a, event="stats,error")),
        "subscribe to b": collector(fanout.url(token=a)),
        "subscribe to everything": collector(fanout.url(token=a, tenant="tenant-a")),
    }
    asking["subscribe to b"].send(
        {"op": "subscribe", "filter": {"tenant": ["tenant-b"], "device": "b-m1"}}
    )
    asking["subscribe to everything"].send({"op": "subscribe", "filter": None})
    scoped_app = collector(fanout.url(token=tokens["a1"]))
    admin = collector(fanout.url(token=tokens["admin"]))
    for name in ("subscribe to b", "subscribe to everything"):
        wait_for(
            lambda c=asking[name]: any(m.get("type") == "subscribed" for m in c.snapshot()),
            10,
            "subscribed",
        )
    burst(5)  # live
    fanout.wait_metric("gateway_wsfanout_events_accepted_total", 50)

    admin_events = admin.wait_events(50)
    assert {m["event"] for m in admin_events} >= {"up", "stats", "error"}  # admin sees it all
    everything_a = 20  # 2 devices x 10 values
    assert len(asking["nothing"].wait_events(everything_a)) == everything_a
    assert len(asking["both tenants"].wait_events(everything_a)) == everything_a
    # its connect-time replay (10), the replay after its subscribe (10 again), then live (10)
    assert len(asking["subscribe to everything"].wait_events(30)) == 30
    assert [m["device"]["application"] for m in scoped_app.wait_events(10)] == ["app-1"] * 10
    for client in [*asking.values(), scoped_app]:  # sync: a pong comes after what was dispatched
        client.send({"op": "ping"})
        wait_for(lambda c=client: any(m.get("type") == "pong" for m in c.snapshot()), 10, "pong")
    leaked = {name: leaks(c, {"tenant-a"}) for name, c in asking.items()}
    leaked["application scope"] = [
        m for m in scoped_app.events() if m["device"]["application"] != "app-1"
    ]
    assert sum(len(v) for v in leaked.values()) == 0, leaked  # hard: not one event leaks
    narrowed = next(m for m in asking["subscribe to b"].snapshot() if m.get("type") == "subscribed")
    assert narrowed["filter"] == {"tenant": [], "device": ["b-m1"]}
    wide = next(
        m for m in asking["subscribe to everything"].snapshot() if m.get("type") == "subscribed"
    )
    assert wide["filter"] == {"tenant": ["tenant-a"]}
    for client in [*asking.values(), scoped_app, admin]:
        client.close()


def test_origin_allow_list(start_fanout):
    fanout = start_fanout({"WEBSOCKET_ORIGINS": "https://dash.example.com,http://localhost:3000"})
    with pytest.raises(InvalidStatus) as info:
        connect(fanout.url(), origin="https://evil.example.com", open_timeout=10)
    assert info.value.response.status_code == 403
    with pytest.raises(InvalidStatus):
        connect(
            fanout.url(), origin="https://dash.example.com.evil.net", open_timeout=10
        )  # exact match only
    collector(fanout.url(), origin="https://dash.example.com").close()
    collector(fanout.url()).close()  # no Origin: not a browser
    assert fanout.metric("gateway_wsfanout_handshakes_rejected_total", status="403") == 2


def test_revoked_token_is_closed_with_1008_on_sighup_and_refused_after(secured):
    fanout, feed, tokens, path = secured
    keep = collector(fanout.url(token=tokens["a"]))
    gone = collector(fanout.url(token=tokens["b"]))
    listing = json.loads(path.read_text())["tokens"]
    b_id = next(t["id"] for t in listing if t["tenants"] == ["tenant-b"])
    assert run_cli("wsfanout", ["token", "revoke", b_id, "--file", str(path)]).returncode == 0
    fanout.signal(signal.SIGHUP)
    wait_for(lambda: gone.closed is not None, 10, "the revoked client to be closed")
    assert gone.closed.rcvd is not None and gone.closed.rcvd.code == 1008
    assert "token revoked" in gone.closed.rcvd.reason
    with pytest.raises(InvalidStatus) as info:
        connect(fanout.url(token=tokens["b"]), open_timeout=10)
    assert info.value.response.status_code == 401
    feed.send(device_event("tenant-a", "app-1", "m1", 1))
    assert keep.wait_events(1)[0]["device"]["tenant"] == "tenant-a"  # others unaffected
    assert "Reloaded 3 tokens" in fanout.log()
    keep.close()


def test_tokens_from_the_environment(start_fanout, tmp_path):
    path = tmp_path / "tokens.json"
    token = token_add(path, "--tenant", "tenant-a")
    fanout = start_fanout({"WEBSOCKET_TOKENS": path.read_text()})
    collector(fanout.url(token=token)).close()
    with pytest.raises(InvalidStatus):
        connect(fanout.url(), open_timeout=10)
    assert path.read_text() not in fanout.log()


def test_running_open_on_all_interfaces_logs_a_warning(start_fanout):
    fanout = start_fanout({"WEBSOCKET_HOST": "0.0.0.0"})
    assert "No tokens configured and listening on 0.0.0.0" in fanout.log()
    local = start_fanout()
    assert "No tokens configured" not in local.log()
