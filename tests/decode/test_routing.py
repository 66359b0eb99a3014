"""Routing keys built from hostile names (B12): one name is always one key segment, so a
prefix filter on a tenant never matches another tenant."""

from __future__ import annotations

import pytest

from shared.routing import split
from tests.decode.helpers import GATEWAY, V4, decode, v4_up

NAMES = [
    "acme/evil",
    "a+b",
    "#",
    "+",
    "a/+/#",
    "100%",
    "%2F",
    "Zürich ☃ 東京",
    "x" * 256,
    "",
    " spaced ",
    "a\x00b",
]


def up_with(tenant: str, application: str, name: str):
    doc = v4_up()
    doc["deviceInfo"].update(tenantName=tenant, applicationName=application, deviceName=name)
    return decode(V4.format("up"), doc)


@pytest.mark.parametrize("name", NAMES)
def test_names_round_trip_through_the_key(name: str) -> None:
    event = up_with(name, name, name)
    assert event.body["event"] == "up", event.body
    assert split(event.key) == [name, name, name, "up"]
    assert event.key.count("/") == 3
    assert event.body["device"]["tenant"] == name  # the body keeps the name as published


def test_a_tenant_prefix_cannot_match_another_tenant() -> None:
    evil = up_with("acme/evil", "app", "dev").key
    acme = up_with("acme", "app", "dev").key
    assert acme.startswith("acme/")
    assert not evil.startswith("acme/")
    assert evil.startswith("acme%2Fevil/")


def test_application_and_device_segments_are_escaped_too() -> None:
    key = up_with("t", "a/b", "c/d").key
    assert key == "t/a%2Fb/c%2Fd/up"


def test_ten_thousand_character_names_are_refused_not_routed() -> None:
    event = up_with("t", "a", "d" * 10_000)
    assert event.key == "_error/schema"
    assert len(event.key) < 20


def test_gateway_ids_are_escaped() -> None:
    event = decode(
        GATEWAY.format("state/conn"), {"gatewayId": "gw/with/slashes", "state": "ONLINE"}
    )
    assert event.key == "_gateway/gw%2Fwith%2Fslashes/conn"


def test_gateway_id_from_the_topic_when_the_payload_has_none() -> None:
    event = decode("eu868/gateway/abc+def/state/conn", {"state": "ONLINE"})
    assert event.key == "_gateway/abc+def/conn"
    assert event.body["gateway"] == {"id": "abc+def"}


def test_dev_eui_is_lowercased() -> None:
    doc = v4_up()
    doc["deviceInfo"]["devEui"] = "ABCDEF0123456789"
    assert decode(V4.format("up"), doc).body["device"]["devEui"] == "abcdef0123456789"
