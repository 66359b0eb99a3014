"""Plain-words explanations of why a broker connection failed, with what to check."""

from __future__ import annotations

import socket
import ssl

from paho.mqtt.reasoncodes import ReasonCode

from services.ingest import tls
from services.ingest.config import Config

# CONNACK / DISCONNECT reasons worth a hint (MQTT v5 codes; paho maps v3.1.1 ones onto them).
HINTS = {
    0x84: "the broker does not speak this MQTT version; try MQTT_PROTOCOL=3.1.1",
    0x85: "the broker rejects MQTT_CLIENT_ID",
    0x86: "check MQTT_USERNAME and MQTT_PASSWORD (or MQTT_PASSWORD_FILE)",
    # Mosquitto answers a wrong password with 0x87, not 0x86.
    0x87: (
        "check MQTT_USERNAME and MQTT_PASSWORD (or MQTT_PASSWORD_FILE), and that the broker "
        "allows this user and client id"
    ),
    0x88: "the broker is unavailable",
    0x89: "the broker is busy",
    0x8A: "this client is banned by the broker",
    0x8C: "the broker does not accept this authentication method",
    0x8E: (
        "another client connected with the same MQTT_CLIENT_ID; every ingest process "
        "needs its own id (shared-subscription members too), or they keep taking the "
        "session from each other"
    ),
    0x9D: "the broker sent us elsewhere (server moved); update MQTT_BROKER",
}
AUTH_REASONS = {0x86, 0x87, 0x8A, 0x8C}


def describe_reason(reason: ReasonCode) -> str:
    text = f"{reason} (0x{reason.value:02X})"
    hint = HINTS.get(reason.value)
    return f"{text}; {hint}" if hint else text


def describe_connect_error(exc: BaseException, config: Config) -> tuple[str, str]:
    """(metrics label, one line) for an exception raised while opening the connection."""
    host, port = config.mqtt_broker, config.mqtt_port
    if isinstance(exc, ssl.SSLError):
        return "tls", tls.explain(exc, host, ca_given=config.mqtt_tls_ca is not None)
    if isinstance(exc, ConnectionRefusedError):
        return "network", f"connection refused; is the broker running and listening on port {port}?"
    if isinstance(exc, socket.gaierror):
        return "network", f"cannot resolve {host!r} ({exc.strerror})"
    if isinstance(exc, TimeoutError | socket.timeout):
        return "timeout", "timed out opening the connection"
    if isinstance(exc, OSError):
        return "network", exc.strerror or str(exc)
    return "error", f"{type(exc).__name__}: {exc}"
