"""Routing keys: one name is always one segment, so a prefix filter cannot cross tenants."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from shared import routing


def test_device_key_has_four_segments_in_order():
    assert (
        routing.device_key("acme", "substation-7", "meter-12", "up")
        == "acme/substation-7/meter-12/up"
    )


def test_slash_in_a_name_cannot_fake_another_tenant():
    evil = routing.device_key("acme/evil", "app", "dev", "up")
    assert not evil.startswith("acme/app")
    assert not evil.startswith("acme/")
    assert routing.split(evil) == ["acme/evil", "app", "dev", "up"]


def test_gateway_and_error_keys_have_their_own_prefixes():
    assert routing.gateway_key("0016c001f153a14c", "stats") == "_gateway/0016c001f153a14c/stats"
    assert routing.error_key("json") == "_error/json"


@given(st.lists(st.text(), min_size=4, max_size=4))
def test_escape_round_trips_and_keeps_segments(names):
    key = routing.device_key(*names)
    assert routing.split(key) == names
    assert key.count("/") == 3
