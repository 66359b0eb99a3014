"""The fan-out's pure parts, without sockets: sequence accounting, history, filters, tokens."""

from __future__ import annotations

import json

import pytest

from services.wsfanout.config import load
from services.wsfanout.filters import (
    DEVICE,
    ERROR,
    GATEWAY,
    UNLIMITED,
    FilterError,
    Meta,
    Scope,
    parse_filter,
    parse_query,
)
from services.wsfanout.history import Entry, History
from services.wsfanout.messages import client_message, iso_ms, replay_text, serialize
from services.wsfanout.seqtrack import Seen, SeqTracker
from services.wsfanout.tokens import TokenError, TokenStore, hash_token, parse_document


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def tracker(window: int = 100, timeout: float = 5.0) -> tuple[SeqTracker, list[int], Clock]:
    lost: list[int] = []
    clock = Clock()
    return SeqTracker(window, timeout, lost.append, clock), lost, clock


def test_a_reordered_seq_fills_its_gap_and_is_not_lost():
    t, lost, clock = tracker()
    assert t.observe("a", 1, 1) is Seen.FIRST
    assert t.observe("a", 5, 5) is Seen.NEXT  # 2, 3, 4 now awaited
    assert t.pending == 3
    assert t.observe("a", 3, 3) is Seen.REORDERED  # splits the gap in two
    assert t.observe("a", 2, 2) is Seen.REORDERED
    assert t.observe("a", 3, 3) is Seen.DUPLICATE
    clock.now = 10
    t.expire()
    assert lost == [1] and t.pending == 0  # only 4 never came
    assert t.observe("a", 4, 4) is Seen.LATE  # after it was counted: delivered, not a repeat


def test_frames_before_the_first_seen_of_a_source_are_delivered_once():
    # Two decoders: seq 2 of a new source overtakes seq 1. Neither is lost or dropped.
    t, lost, _ = tracker()
    assert t.observe("a", 2, 2000) is Seen.FIRST
    assert t.observe("a", 1, 1000) is Seen.REORDERED
    assert t.observe("a", 1, 1000) is Seen.DUPLICATE  # a real repeat is still caught
    assert t.observe("a", 3, 3000) is Seen.NEXT
    assert t.observe("a", 1, 9000) is Seen.RESTART  # newer ingest time: counting again
    assert lost == [] and t.pending == 0


def test_a_jump_beyond_the_window_counts_the_excess_at_once():
    t, lost, _ = tracker(window=10)
    t.observe("a", 1, 1)
    t.observe("a", 100, 100)
    assert lost == [88] and t.pending == 10
    t.observe("a", 111, 111)  # the window moved on: the old gap is lost too
    assert sum(lost) == 88 + 10 + 0 and t.pending == 10


def test_sources_are_counted_apart_and_a_restart_is_not_a_duplicate():
    t, lost, _ = tracker()
    t.observe("a", 1, 10)
    t.observe("b", 7, 11)
    assert t.observe("a", 2, 12) is Seen.NEXT
    assert t.observe("b", 8, 13) is Seen.NEXT
    assert t.observe("a", 1, 99) is Seen.RESTART  # newer ingest timestamp: it counts again
    assert t.observe("a", 2, 100) is Seen.NEXT
    assert lost == []


def meta(ring: str, tenant: str = "t", kind: str = DEVICE, device: str = "d") -> Meta:
    return Meta(kind=kind, ring=ring, event="up", tenant=tenant, application="a", device=device)


def test_history_keeps_the_latest_n_per_ring_in_fan_out_order():
    h = History(per_ring=2, max_rings=10)
    for seq, ring in enumerate(["x", "y", "x", "x", "y", "z"], start=1):
        h.add(Entry(seq, meta(ring), b"{}"))
    assert [e.seq for e in h.snapshot()] == [2, 3, 4, 5, 6]  # x lost 1; y keeps 2 and 5
    assert [e.seq for e in h.since(4)] == [5, 6]
    everything = parse_filter(None)
    assert not h.complete_since(0, everything, UNLIMITED)  # seq 1 of x was evicted
    assert h.complete_since(1, everything, UNLIMITED)
    only_y = parse_filter({"device": "dy"})
    h2 = History(per_ring=1, max_rings=10)
    h2.add(Entry(1, meta("x", device="dx"), b"{}"))
    h2.add(Entry(2, meta("x", device="dx"), b"{}"))
    h2.add(Entry(3, meta("y", device="dy"), b"{}"))
    assert h2.complete_since(0, only_y, UNLIMITED)  # x's eviction does not concern y
    assert not h2.complete_since(0, parse_filter(None), UNLIMITED)


def test_history_drops_the_least_recently_active_device_past_the_cap():
    h = History(per_ring=5, max_rings=2)
    h.add(Entry(1, meta("x"), b"{}"))
    h.add(Entry(2, meta("y"), b"{}"))
    h.add(Entry(3, meta("x"), b"{}"))
    h.add(Entry(4, meta("z"), b"{}"))  # y is the least recently active
    assert [e.seq for e in h.snapshot()] == [1, 3, 4] and h.rings == 2
    assert not h.complete_since(1, parse_filter(None), UNLIMITED)


def test_filters_match_each_field_and_scopes_narrow_never_widen():
    m = Meta(DEVICE, "eui:ab", "up", "acme", "app", "m1", "ab", "voltage")
    assert parse_filter({"devEui": "AB"}).matches(m)  # case-insensitive
    assert parse_filter({"tenant": ["x", "acme"], "type": "voltage"}).matches(m)
    assert not parse_filter({"tenant": "acme", "event": "join"}).matches(m)
    assert parse_query({"tenant": ["x,acme"], "device": ["m1"]}).matches(m)
    scope = Scope(tenants=frozenset({"acme"}))
    assert scope.narrow(parse_filter({"tenant": "other"})).tenant == frozenset()
    assert scope.narrow(parse_filter(None)).tenant == frozenset({"acme"})
    assert not scope.allows(Meta(GATEWAY, "gateway:g", "stats"))
    assert not scope.allows(Meta(ERROR, "error", "error"))
    assert UNLIMITED.allows(Meta(GATEWAY, "gateway:g", "stats"))
    apps = Scope(tenants=frozenset({"acme"}), applications=frozenset({"other"}))
    assert not apps.allows(m)


@pytest.mark.parametrize(
    "raw",
    [{"tenant": 1}, {"tenant": []}, {"tenant": [""]}, {"x": "y"}, [1], {"type": ["a"] * 101}],
)
def test_bad_filters_are_refused(raw):
    with pytest.raises(FilterError):
        parse_filter(raw)


def test_messages_strip_internal_keys_and_mark_replays_cheaply():
    body = {
        "event": "up",
        "v": 1,
        "src": "i",
        "seq": 9,
        "ts": 1690804800012345678,
        "ts_decode": 1,
        "dedup": "x",
        "type": "confusing",
        "object": {"type": "voltage"},
    }
    text = serialize(client_message(body, 42, "E"))
    msg = json.loads(text)
    assert msg == {
        "event": "up",
        "seq": 42,
        "epoch": "E",
        "received_at": "2023-07-31T12:00:00.012Z",
        "object": {"type": "voltage"},
    }
    assert json.loads(replay_text(text)) == {**msg, "replay": True}
    assert iso_ms("not a time").endswith("Z") and iso_ms(10**30).endswith("Z")


def test_tokens_are_checked_by_hash_and_documents_validated():
    token = "lgw_secret"
    doc = json.dumps({"tokens": [{"sha256": hash_token(token), "tenants": ["acme"]}]})
    store = TokenStore(None, doc)
    record = store.check(token)
    assert record is not None and record.scope == Scope(tenants=frozenset({"acme"}))
    assert store.check("lgw_other") is None and store.check("x" * 10_000) is None
    assert store.check(None) is None
    for bad in (
        '{"tokens": [{"sha256": "zz", "tenants": ["a"]}]}',
        '{"tokens": [{"sha256": "' + "a" * 64 + '"}]}',  # neither tenants nor admin
        '{"tokens": [{"sha256": "' + "a" * 64 + '", "tenants": ["a"], "admin": true}]}',
        '{"tokens": [{"sha256": "' + "a" * 64 + '", "applications": ["x"], "admin": true}]}',
        "[1]",
        "{",
    ):
        with pytest.raises(TokenError):
            parse_document(bad, "test")


def test_the_events_link_is_bound_on_loopback_by_default() -> None:
    """The ZeroMQ links carry no authentication (RELIABILITY.md Z2): by default the
    fan-out takes events only from this host; WebSocket clients are served on all."""
    c = load({}, [])
    assert c.zmq_events_bind == "tcp://127.0.0.1:5558"
    assert (c.websocket_host, c.websocket_port) == ("0.0.0.0", 8765)
