"""Plug-in codecs for the tests (``DECODE_CODECS=fport:9=tests.decode.plugins:meter``)."""

from __future__ import annotations

from typing import Any


def meter(data: bytes, fport: int, device: dict[str, Any]) -> dict[str, Any] | None:
    """Two big-endian 16-bit readings in tenths: voltage, then current."""
    if len(data) == 0:
        return None
    volts = int.from_bytes(data[0:2], "big") / 10
    return {
        "type": "voltage",
        "values": [volts, {"value": int.from_bytes(data[2:4], "big") / 10}],
        "unit": "V",
    }


def raises(data: bytes, fport: int, device: dict[str, Any]) -> Any:
    raise RuntimeError("boom")


def not_a_dict(data: bytes, fport: int, device: dict[str, Any]) -> Any:
    return [1, 2, 3]


def nan(data: bytes, fport: int, device: dict[str, Any]) -> Any:
    return {"type": "voltage", "values": [float("nan")]}


def huge(data: bytes, fport: int, device: dict[str, Any]) -> Any:
    return {"type": "counter", "values": [2**70]}


def string_value(data: bytes, fport: int, device: dict[str, Any]) -> Any:
    return {"type": "voltage", "values": ["3.7"]}


def seconds(data: bytes, fport: int, device: dict[str, Any]) -> Any:
    return {"type": "voltage", "values": [{"value": 1, "time": 1_700_000_000}]}


def not_json(data: bytes, fport: int, device: dict[str, Any]) -> Any:
    return {"type": "voltage", "values": [{"value": object()}]}


def no_values(data: bytes, fport: int, device: dict[str, Any]) -> Any:
    return {"type": "voltage"}


def deep(data: bytes, fport: int, device: dict[str, Any]) -> Any:
    value: Any = 1
    for _ in range(100):
        value = [value]
    return {"type": "voltage", "values": [value]}


def mutates(data: bytes, fport: int, device: dict[str, Any]) -> Any:
    device["name"] = "hijacked"
    return None


NOT_CALLABLE = 42
