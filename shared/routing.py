"""Routing keys for events: ``{tenant}/{application}/{device}/{event}``.

Decode builds them, fan-out (and any SUB socket) filters on their prefixes. Names are the
network server's names; ``%`` and ``/`` in a name are percent-escaped so that one name is
always exactly one path segment and a prefix like ``"acme/"`` can never match a tenant
called ``"acme/evil"``.
"""

from __future__ import annotations

GATEWAY_PREFIX = "_gateway"
ERROR_PREFIX = "_error"


def escape(name: str) -> str:
    return name.replace("%", "%25").replace("/", "%2F")


def unescape(segment: str) -> str:
    return segment.replace("%2F", "/").replace("%25", "%")


def device_key(tenant: str, application: str, device: str, event: str) -> str:
    return "/".join(escape(part) for part in (tenant, application, device, event))


def gateway_key(gateway_id: str, event: str) -> str:
    return f"{GATEWAY_PREFIX}/{escape(gateway_id)}/{escape(event)}"


def error_key(reason: str) -> str:
    return f"{ERROR_PREFIX}/{escape(reason)}"


def split(key: str) -> list[str]:
    """The unescaped segments of a routing key."""
    return [unescape(part) for part in key.split("/")]
