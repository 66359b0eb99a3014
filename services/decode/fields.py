"""Typed reads from parsed JSON, each naming the field when the type is wrong.

Network servers built on Protobuf (ChirpStack v4, The Things Stack) leave out fields that
hold their default value (0, false, "", the first enum value), so "missing" means
"default" for those and the getters take the default to use.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

from services.decode.errors import DecodeError, schema, type_name
from services.decode.limits import MAX_INT, MIN_INT, Limits

_EUI = re.compile(r"[0-9a-fA-F]{16}")
_HEX = re.compile(r"(?:[0-9a-fA-F]{2})*")
_INT = re.compile(r"-?[0-9]{1,20}")


def obj(doc: dict[str, Any], key: str, path: str) -> dict[str, Any]:
    """A JSON object that must be there."""
    value = doc.get(key)
    if not isinstance(value, dict):
        if value is None:
            raise schema(_join(path, key), "is missing")
        raise schema(_join(path, key), f"must be an object, got {type_name(value)}")
    return value


def opt_obj(doc: dict[str, Any], key: str, path: str) -> dict[str, Any] | None:
    value = doc.get(key)
    if value is None or isinstance(value, dict):
        return value
    raise schema(_join(path, key), f"must be an object, got {type_name(value)}")


def opt_list(doc: dict[str, Any], key: str, path: str) -> list[Any]:
    value = doc.get(key)
    if value is None:
        return []
    if isinstance(value, list):
        return value
    raise schema(_join(path, key), f"must be an array, got {type_name(value)}")


def text(doc: dict[str, Any], key: str, path: str) -> str:
    value = doc.get(key)
    if isinstance(value, str):
        return value
    if value is None:
        raise schema(_join(path, key), "is missing")
    raise schema(_join(path, key), f"must be a string, got {type_name(value)}")


def opt_text(doc: dict[str, Any], key: str, path: str, default: str | None = None) -> str | None:
    value = doc.get(key)
    if value is None:
        return default
    if isinstance(value, str):
        return value
    raise schema(_join(path, key), f"must be a string, got {type_name(value)}")


def name(
    doc: dict[str, Any], key: str, path: str, limits: Limits, default: str | None = None
) -> str:
    """A name that becomes a routing-key segment: a string of bounded length."""
    value = opt_text(doc, key, path, default)
    if value is None:
        raise schema(_join(path, key), "is missing")
    if len(value) > limits.max_name:
        raise schema(
            _join(path, key), f"is {len(value)} characters long, the limit is {limits.max_name}"
        )
    return value


def integer(doc: dict[str, Any], key: str, path: str, default: int | None = 0) -> int | None:
    value = doc.get(key)
    if value is None:
        return default
    if type(value) is int:
        return value
    if isinstance(value, str) and _INT.fullmatch(value):
        number = int(value)  # Protobuf JSON writes 64-bit integers as strings
        if MIN_INT <= number <= MAX_INT:
            return number
        raise DecodeError("number", f"{_join(path, key)} is an integer beyond 64 bits")
    raise schema(_join(path, key), f"must be an integer, got {type_name(value)}")


def number(
    doc: dict[str, Any], key: str, path: str, default: float | None = 0
) -> float | int | None:
    value = doc.get(key)
    if value is None:
        return default
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value
    raise schema(_join(path, key), f"must be a number, got {type_name(value)}")


def flag(doc: dict[str, Any], key: str, path: str, default: bool = False) -> bool:
    value = doc.get(key)
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    raise schema(_join(path, key), f"must be true or false, got {type_name(value)}")


def tags(doc: dict[str, Any], key: str, path: str) -> dict[str, str]:
    value = doc.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise schema(_join(path, key), f"must be an object, got {type_name(value)}")
    for tag, tag_value in value.items():
        if not isinstance(tag_value, str):
            raise schema(
                f"{_join(path, key)}.{tag}", f"must be a string, got {type_name(tag_value)}"
            )
    return value


def is_eui(value: str) -> bool:
    return _EUI.fullmatch(value) is not None


def hex_eui(value: object, path: str) -> str:
    """A 64-bit EUI as 16 lowercase hex digits (ChirpStack v4's form)."""
    if not isinstance(value, str):
        if value is None:
            raise schema(path, "is missing")
        raise schema(path, f"must be a string, got {type_name(value)}")
    if not _EUI.fullmatch(value):
        raise schema(path, f"is not 16 hex digits: {value[:40]!r}")
    return value.lower()


def eui_from_base64_or_hex(value: object, path: str) -> str:
    """ChirpStack v3 base64-encodes EUIs (``AgICAgICAgI=``); accept hex as well."""
    if isinstance(value, str) and _EUI.fullmatch(value):
        return value.lower()
    raw = base64_bytes(value, path)
    if len(raw) != 8:
        raise schema(path, f"must decode to 8 bytes, got {len(raw)}")
    return raw.hex()


def hex_from_base64_or_hex(value: object, path: str) -> str:
    """DevAddr and similar ids: base64 in ChirpStack v3, hex in v4."""
    # A base64 DevAddr (4 bytes) is 8 characters ending in "==", never valid hex.
    if isinstance(value, str) and len(value) in (8, 16) and _HEX.fullmatch(value):
        return value.lower()
    return base64_bytes(value, path).hex()


def base64_bytes(value: object, path: str) -> bytes:
    if not isinstance(value, str):
        if value is None:
            raise schema(path, "is missing")
        raise schema(path, f"must be a base64 string, got {type_name(value)}")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise DecodeError("schema", f"{path} is not valid base64") from None


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key
