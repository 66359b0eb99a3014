"""The raw link's control messages (shared.rawlink): what decode sends, ingest reads back,
and anything else is malformed (ignored and logged by ingest), never an exception."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared import rawlink
from shared.rawlink import CREDIT, MAX_CREDIT, STOP, Control, credit_message, parse_control


@given(st.integers(1, MAX_CREDIT - 1), st.integers(0, MAX_CREDIT - 1))
def test_a_grant_reads_back_as_sent(n: int, max_frame: int) -> None:
    assert parse_control(credit_message(n, max_frame)) == Control(CREDIT, n, max_frame)


def test_a_grant_without_a_limit_is_what_older_decoders_send() -> None:
    assert credit_message(5) == [b"credit", b"5"]
    assert parse_control([b"credit", b"5"]) == Control(CREDIT, 5, 0)
    assert parse_control(rawlink.STOP_MESSAGE) == Control(STOP)


@pytest.mark.parametrize(
    "parts",
    [
        [b"credit"],
        [b"credit", b"0"],
        [b"credit", b"-1"],
        [b"credit", b"1.5"],
        [b"credit", str(MAX_CREDIT).encode()],
        [b"credit", b"1" * 11],
        [b"credit", b"5", b"0"],
        [b"credit", b"5", b"x"],
        [b"credit", b"5", str(MAX_CREDIT).encode()],
        [b"credit", b"5", b"100", b"extra"],
        [b"stop", b"now"],
        [b"CREDIT", b"5"],
        [],
    ],
)
def test_malformed_control_messages_are_none(parts: list[bytes]) -> None:
    assert parse_control(parts) is None


@given(st.lists(st.binary(max_size=12), max_size=4))
def test_any_parts_parse_or_are_none(parts: list[bytes]) -> None:
    msg = parse_control(parts)
    assert msg is None or msg.kind in (CREDIT, STOP)


@pytest.mark.parametrize(("n", "max_frame"), [(0, 0), (MAX_CREDIT, 0), (1, -1), (1, MAX_CREDIT)])
def test_a_grant_out_of_range_is_refused_when_made(n: int, max_frame: int) -> None:
    with pytest.raises(ValueError, match="must be in"):
        credit_message(n, max_frame)
