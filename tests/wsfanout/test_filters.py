"""Client filters (URL and subscribe), filter changes mid-stream, and the client's ops and errors.

These tests share one fan-out; each works in tenants, applications, devices and measurement
types of its own so the others' events cannot interfere.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from typing import Any

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from tests.support.timing import wait_for
from tests.support.ws import Collector
from tests.wsfanout.helpers import collector, device_event, eui_of, value_of

_ids = itertools.count(1)


@dataclass(frozen=True)
class Spec:
    tenant: str
    application: str
    device: str
    type: str
    event: str
    value: int


def mix(tenant: str) -> list[Spec]:
    """Two tenants, two applications (named alike in both), devices, types and events."""
    other = tenant + "-other"
    app1, app2 = tenant + "-app-1", tenant + "-app-2"
    volt, amp = "voltage-" + tenant, "current-" + tenant
    rows = [
        (tenant, app1, "m1", volt, "up"),
        (tenant, app1, "m2", amp, "up"),
        (tenant, app2, "m3", volt, "up"),
        (tenant, app2, "m3", volt, "status"),
        (tenant, app2, "m4", amp, "join"),
        (other, app1, "m5", volt, "up"),
        (other, app2, "m6", amp, "status"),
    ]
    return [Spec(t, a, f"{tenant}-{d}", ty, ev, i) for i, (t, a, d, ty, ev) in enumerate(rows * 2)]


def publish(feed: Any, specs: list[Spec]) -> None:
    feed.send(
        *(
            device_event(s.tenant, s.application, s.device, s.value, type=s.type, event=s.event)
            for s in specs
        )
    )


def sync(client: Collector) -> None:
    """Ping and wait for the pong: events dispatched before it have arrived by then."""
    n = next(_ids)
    client.send({"op": "ping", "id": n})
    wait_for(
        lambda: any(m.get("type") == "pong" and m.get("id") == n for m in client.snapshot()),
        10,
        "pong",
    )


def received(client: Collector, tenants: set[str]) -> list[int]:
    return [value_of(m) for m in client.events() if m["device"]["tenant"] in tenants]


def expect(specs: list[Spec], keep: Any) -> list[int]:
    return [s.value for s in specs if keep(s)]


FIELD_CASES = {
    "tenant": (lambda t: {"tenant": t}, lambda t, s: s.tenant == t),
    "application": (
        lambda t: {"application": t + "-app-1"},
        lambda t, s: s.application == t + "-app-1",
    ),
    "device": (lambda t: {"device": t + "-m3"}, lambda t, s: s.device == t + "-m3"),
    "devEui": (lambda t: {"devEui": eui_of(t + "-m4").upper()}, lambda t, s: s.device == t + "-m4"),
    "type": (lambda t: {"type": "current-" + t}, lambda t, s: s.type == "current-" + t),
    "event": (lambda t: {"event": "status"}, lambda t, s: s.event == "status"),
    "tenant+type": (
        lambda t: {"tenant": t, "type": "voltage-" + t},
        lambda t, s: s.tenant == t and s.type == "voltage-" + t,
    ),
    "lists": (
        lambda t: {"tenant": f"{t},{t}-other", "event": "join,status"},
        lambda t, s: s.event in ("join", "status"),
    ),
    "device+event": (
        lambda t: {"device": t + "-m3", "event": "up"},
        lambda t, s: s.device == t + "-m3" and s.event == "up",
    ),
}


@pytest.mark.parametrize("case", FIELD_CASES)
def test_url_filter_applies_to_live_and_replay(shared_fanout, tenant, case):
    fanout, feed = shared_fanout
    params, keep = FIELD_CASES[case]
    specs = mix(tenant)
    mine = {tenant, tenant + "-other"}
    live = collector(fanout.url(**params(tenant)))
    publish(feed, specs)
    wanted = expect(specs, lambda s: keep(tenant, s))
    assert wanted, "the case must select something"
    wait_for(lambda: len(received(live, mine)) >= len(wanted), 10, f"{len(wanted)} events")
    late = collector(fanout.url(**params(tenant)))  # gets the same through replay
    wait_for(lambda: len(received(late, mine)) >= len(wanted), 10, "replay")
    for client in (live, late):
        sync(client)
        assert received(client, mine) == wanted
        for m in client.events():  # whatever else a shared fan-out holds must match too
            if case == "event":
                assert m["event"] == "status"
            if case == "type":
                assert m["object"]["type"] == "current-" + tenant
        client.close()
    assert all(m.get("replay") for m in late.events())
    assert not any(m.get("replay") for m in live.events() if m["device"]["tenant"] in mine)


def test_subscribe_message_filters_like_the_url_and_replies_with_the_filter(shared_fanout, tenant):
    fanout, feed = shared_fanout
    specs = mix(tenant)
    live = collector(fanout.url(tenant=tenant))
    publish(feed, specs)
    # Subscribe only once the fan-out holds every event, so all of them come by replay.
    mine = expect(specs, lambda s: s.tenant == tenant)
    wait_for(lambda: len(live.events()) >= len(mine), 10, "the events reach the fan-out")
    live.close()
    client = collector(fanout.url(tenant=tenant + "-nothing-yet"))
    client.send(
        {
            "op": "subscribe",
            "id": "s1",
            "filter": {"tenant": [tenant], "type": "voltage-" + tenant, "devEui": None},
        }
    )
    wanted = expect(specs, lambda s: s.tenant == tenant and s.type == "voltage-" + tenant)
    wait_for(lambda: len(client.events()) >= len(wanted), 10, "replay after subscribe")
    sync(client)
    messages = client.snapshot()
    assert messages[0] == {
        "type": "subscribed",
        "id": "s1",
        "filter": {"tenant": [tenant], "type": ["voltage-" + tenant]},
    }
    assert [value_of(m) for m in client.events()] == wanted
    assert all(m["replay"] is True for m in client.events())
    client.close()


def test_changing_the_filter_mid_stream(shared_fanout, tenant):
    fanout, feed = shared_fanout
    other = tenant + "-other"
    client = collector(fanout.url(tenant=tenant))
    probe = collector(fanout.url(tenant=other))  # tells when the other tenant's events are held
    feed.send(*(device_event(tenant, "a", "m1", i) for i in range(3)))
    feed.send(*(device_event(other, "a", "m9", 100 + i) for i in range(2)))
    wait_for(lambda: len(client.events()) >= 3, 10, "first tenant's events")
    probe.wait_events(2)
    probe.close()

    client.send({"op": "subscribe", "filter": {"tenant": other}})
    wait_for(
        lambda: any(m.get("type") == "subscribed" for m in client.snapshot()), 10, "subscribed"
    )
    feed.send(device_event(tenant, "a", "m1", 3), device_event(other, "a", "m9", 102))
    wait_for(
        lambda: 102 in [value_of(m) for m in client.events()], 10, "the new tenant's live event"
    )
    sync(client)

    messages = client.snapshot()
    cut = next(i for i, m in enumerate(messages) if m.get("type") == "subscribed")
    before = [value_of(m) for m in messages[:cut] if "type" not in m]
    after = [m for m in messages[cut + 1 :] if "type" not in m]
    assert before == [0, 1, 2]
    assert all(m["device"]["tenant"] == other for m in after)  # no old-filter event after the reply
    assert [(value_of(m), m.get("replay", False)) for m in after] == [
        (100, True),
        (101, True),
        (102, False),
    ]
    client.close()


BAD_MESSAGES = [
    ("{not json", "invalid JSON"),
    ("[1, 2]", "expected a JSON object"),
    ('{"op": "dance"}', "unknown op 'dance'"),
    ('{"filter": {}}', 'missing "op"'),
    (
        '{"op": "subscribe", "filter": {"tenant": 5}}',
        "filter.tenant: expected a string or a list of strings",
    ),
    ('{"op": "subscribe", "filter": {"tennant": "a"}}', "unknown field 'tennant'"),
    ('{"op": "subscribe", "filter": {"type": []}}', "filter.type: empty list"),
    ('{"op": "subscribe", "filter": "acme"}', "filter: expected an object"),
    ('{"op": "subscribe", "filtre": {}}', "unknown key 'filtre'"),
]


def test_invalid_client_messages_get_an_error_naming_the_problem_and_the_connection_stays(
    shared_fanout, tenant
):
    fanout, feed = shared_fanout
    client = collector(fanout.url(tenant=tenant))
    for raw, problem in BAD_MESSAGES:
        before = len(client.snapshot())
        client.send(raw)
        wait_for(lambda b=before: len(client.snapshot()) > b, 10, f"a reply to {raw}")
        reply = client.snapshot()[-1]
        assert reply["type"] == "error" and problem in reply["error"], (raw, reply)
    client.conn.send(b"\x00binary")
    wait_for(lambda: "binary" in client.snapshot()[-1].get("error", ""), 10, "binary refused")
    # still subscribed with the URL filter, still answering
    feed.send(device_event(tenant, "a", "m1", 7))
    assert value_of(client.wait_events(1)[0]) == 7
    sync(client)
    assert client.closed is None
    client.close()


def test_a_bad_filter_on_the_url_is_refused_with_400(shared_fanout):
    fanout, _ = shared_fanout
    with pytest.raises(InvalidStatus) as info:
        connect(fanout.url(tenant="x" * 300), open_timeout=10)
    assert info.value.response.status_code == 400
    assert b"tenant: value longer than" in info.value.response.body


def test_resume_position_and_filter_together_on_the_url(shared_fanout, tenant):
    fanout, feed = shared_fanout
    feed.send(*(device_event(tenant, "a", "m1", i) for i in range(5)))
    first = collector(fanout.url(tenant=tenant))
    events = first.wait_events(5)
    first.close()
    last = events[2]
    client = collector(fanout.url(tenant=tenant, epoch=last["epoch"], seq=last["seq"]))
    wait_for(lambda: len(client.events()) >= 2, 10, "missed events")
    sync(client)
    resume = client.snapshot()[0]
    assert resume["type"] == "resume" and resume["status"] == "ok"
    assert [value_of(m) for m in client.events()] == [3, 4]
    client.close()


def test_ping_is_answered_with_pong(shared_fanout):
    fanout, _ = shared_fanout
    with connect(fanout.url(tenant="nobody")) as ws:
        ws.send(json.dumps({"op": "ping"}))
        reply = json.loads(ws.recv(timeout=10))
    assert reply["type"] == "pong" and isinstance(reply["seq"], int) and reply["epoch"]
