"""Cayenne Low Power Payload, the full type table including the extended types.

A payload is a sequence of ``channel (1 byte) | type (1 byte) | value (big-endian)``.
The table follows ChirpStack's built-in codec (``chirpstack/src/codec/cayenne_lpp.rs``)
and the ElectronicCats/CayenneLPP extended types. Implementations disagree on the sign of
**voltage (116) and current (117)**; like ChirpStack we read them as *unsigned*
(``FF FE`` is 655.34 V, not -0.02 V). Also unsigned: generic sensor, illuminance,
barometer, frequency, concentration, power, distance, energy, direction, unix time.
Signed: analog input/output, temperature, altitude, accelerometer, gyrometer, GPS.

Unknown types and truncated payloads raise :class:`LppError`: a partial decode would
silently misread every following byte.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


class LppError(ValueError):
    """The bytes are not a Cayenne LPP payload (unknown type or truncated)."""


@dataclass(frozen=True, slots=True)
class Measurement:
    channel: int
    type_id: int
    type: str  # the measurement type name used as ``object.type``
    value: Any  # a number, or an object for multi-axis / GPS / colour readings


def _unsigned(raw: bytes) -> int:
    return int.from_bytes(raw, "big", signed=False)


def _signed(raw: bytes) -> int:
    return int.from_bytes(raw, "big", signed=True)


def _scaled(signed: bool, divisor: int) -> Callable[[bytes], Any]:
    read = _signed if signed else _unsigned
    if divisor == 1:
        return read
    # Division, not multiplication by 0.1: 272 / 10 is exactly 27.2, 272 * 0.1 is not.
    return lambda raw: read(raw) / divisor


def _xyz(divisor: int) -> Callable[[bytes], Any]:
    return lambda raw: {
        "x": _signed(raw[0:2]) / divisor,
        "y": _signed(raw[2:4]) / divisor,
        "z": _signed(raw[4:6]) / divisor,
    }


def _gps(raw: bytes) -> dict[str, float]:
    return {
        "latitude": _signed(raw[0:3]) / 10_000,
        "longitude": _signed(raw[3:6]) / 10_000,
        "altitude": _signed(raw[6:9]) / 100,
    }


def _colour(raw: bytes) -> dict[str, int]:
    return {"r": raw[0], "g": raw[1], "b": raw[2]}


# type id -> (name, size in bytes, reader)
TYPES: dict[int, tuple[str, int, Callable[[bytes], Any]]] = {
    0: ("digital_input", 1, _unsigned),
    1: ("digital_output", 1, _unsigned),
    2: ("analog_input", 2, _scaled(True, 100)),
    3: ("analog_output", 2, _scaled(True, 100)),
    100: ("generic", 4, _unsigned),
    101: ("illuminance", 2, _unsigned),
    102: ("presence", 1, _unsigned),
    103: ("temperature", 2, _scaled(True, 10)),
    104: ("humidity", 1, _scaled(False, 2)),
    113: ("accelerometer", 6, _xyz(1000)),
    115: ("barometer", 2, _scaled(False, 10)),
    116: ("voltage", 2, _scaled(False, 100)),
    117: ("current", 2, _scaled(False, 1000)),
    118: ("frequency", 4, _unsigned),
    120: ("percentage", 1, _unsigned),
    121: ("altitude", 2, _signed),
    125: ("concentration", 2, _unsigned),
    128: ("power", 2, _unsigned),
    130: ("distance", 4, _scaled(False, 1000)),
    131: ("energy", 4, _scaled(False, 1000)),
    132: ("direction", 2, _unsigned),
    133: ("unix_time", 4, _unsigned),
    134: ("gyrometer", 6, _xyz(100)),
    135: ("colour", 3, _colour),
    136: ("gps", 9, _gps),
    142: ("switch", 1, _unsigned),
}


def decode(data: bytes) -> list[Measurement]:
    """Every measurement in ``data``, in payload order. Empty data is an error: there is
    nothing to present, and an empty uplink is more likely not LPP at all."""
    if not data:
        raise LppError("empty payload")
    out: list[Measurement] = []
    i, size = 0, len(data)
    while i < size:
        if i + 2 > size:
            raise LppError(f"truncated header at byte {i}")
        channel, type_id = data[i], data[i + 1]
        entry = TYPES.get(type_id)
        if entry is None:
            raise LppError(f"unknown type {type_id} at byte {i + 1}")
        name, length, read = entry
        start = i + 2
        if start + length > size:
            raise LppError(f"truncated {name} value at byte {start}")
        out.append(Measurement(channel, type_id, name, read(data[start : start + length])))
        i = start + length
    return out
