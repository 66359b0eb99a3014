"""ingest's settings: environment variables (DESIGN.md names), flags override them."""

from __future__ import annotations

import os
import secrets
import socket
import ssl
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from services.ingest import tls
from shared import config as cfg
from shared.config import ConfigError, Setting

# What the network servers publish, with no filter overlapping another (an overlap would
# deliver a message twice):
#   ChirpStack v4 and v3 device events   application/<app>/device/<devEUI>/event/<up|join|...>
#   ChirpStack v4 gateway bridge events  <region prefix>/gateway/<id>/event/<up|stats|ack|...>
#   ...and its state (retained)          <region prefix>/gateway/<id>/state/<conn|...>
#   ChirpStack v3 / unprefixed gateways  gateway/<id>/event/<...>, gateway/<id>/state/<...>
#   The Things Stack v3 device events    v3/<app>@<tenant>/devices/<device>/<up|join|down/...>
DEFAULT_TOPICS = (
    "application/+/device/+/event/+",
    "+/gateway/+/event/+",
    "gateway/+/event/+",
    "+/gateway/+/state/+",
    "gateway/+/state/+",
    "v3/+/devices/#",
)

MAX_RECEIVE_MAXIMUM = 65535  # MQTT v5: a two-byte integer


def topic_filters(raw: str) -> tuple[str, ...]:
    filters = cfg.csv(raw)
    if not filters:
        raise ValueError("needs at least one topic filter")
    for f in filters:
        levels = f.split("/")
        for i, level in enumerate(levels):
            if "#" in level and (level != "#" or i != len(levels) - 1):
                raise ValueError(f"{f!r}: '#' must be a whole level and the last one")
            if "+" in level and level != "+":
                raise ValueError(f"{f!r}: '+' must be a whole level")
    return filters


def qos(raw: str) -> int:
    value = raw.strip()
    if value not in ("0", "1"):
        # paho keeps QoS 2 state only in memory: a PUBREL after a restart is never
        # completed (paho#382), and QoS 1 plus the gateway's duplicate handling is enough.
        raise ValueError("expected 0 or 1 (QoS 2 is not supported)")
    return int(value)


def share_group(raw: str) -> str:
    group = raw.strip()
    if any(c in group for c in "/+#"):
        raise ValueError("must not contain '/', '+' or '#'")
    return group


def optional_bool(raw: str) -> bool | None:
    return None if not raw.strip() else cfg.boolean(raw)


def optional_int(low: int, high: int) -> Callable[[str], int | None]:
    parse = cfg.integer(low, high)
    return lambda raw: None if not raw.strip() else parse(raw)


SETTINGS = (
    Setting("MQTT_BROKER", "localhost", cfg.non_empty, "MQTT broker host name or IP"),
    Setting(
        "MQTT_PORT", "1883", cfg.integer(1, 65535), "MQTT broker port (TLS brokers: usually 8883)"
    ),
    Setting(
        "MQTT_PROTOCOL", "5", cfg.choice("5", "3.1.1"), "MQTT version; 3.1.1 for brokers without v5"
    ),
    Setting(
        "MQTT_CLIENT_ID",
        "lorawan-gateway-ingest",
        cfg.non_empty,
        "client id; must be stable (it names the persistent session) and unique per ingest",
    ),
    Setting(
        "MQTT_TOPICS",
        ",".join(DEFAULT_TOPICS),
        topic_filters,
        "comma-separated topic filters (default: ChirpStack v4/v3 device and gateway events, "
        "The Things Stack v3 up and join)",
    ),
    Setting(
        "MQTT_QOS",
        "1",
        qos,
        "subscription QoS; 1 lets the broker keep messages for us",
    ),
    Setting(
        "MQTT_SHARE_GROUP",
        "",
        share_group,
        "MQTT v5 shared subscription group ($share/<group>/<filter>); empty = off",
    ),
    Setting(
        "MQTT_SESSION_EXPIRY",
        "3600",
        cfg.integer(0, 0xFFFFFFFF),
        "seconds the broker keeps our session (and queues messages) while ingest is away; "
        "0 = no persistent session",
    ),
    Setting(
        "MQTT_RECEIVE_MAXIMUM",
        "",
        optional_int(1, MAX_RECEIVE_MAXIMUM),
        "unacknowledged messages the broker may send us at once (empty = ZMQ_RAW_SNDHWM)",
    ),
    Setting("MQTT_KEEPALIVE", "60", cfg.integer(5, 65535), "keepalive in seconds"),
    Setting("MQTT_CONNECT_TIMEOUT", "10", cfg.number(0.1), "seconds for TCP, TLS and CONNACK"),
    Setting("MQTT_RECONNECT_MIN", "1", cfg.number(0.01), "first reconnect delay in seconds"),
    Setting("MQTT_RECONNECT_MAX", "60", cfg.number(0.01), "longest reconnect delay in seconds"),
    Setting("MQTT_USERNAME", "", cfg.text, "broker user name (empty = anonymous)"),
    Setting("MQTT_PASSWORD", "", cfg.text, "broker password", secret=True),
    Setting("MQTT_PASSWORD_FILE", "", cfg.optional_file, "file holding the broker password"),
    Setting(
        "MQTT_TLS",
        "",
        optional_bool,
        "use TLS (empty = on when MQTT_TLS_CA or MQTT_TLS_CERT is set)",
    ),
    Setting(
        "MQTT_TLS_CA",
        "",
        cfg.optional_file,
        "CA certificate(s) for the broker (empty = system CAs)",
    ),
    Setting("MQTT_TLS_CERT", "", cfg.optional_file, "client certificate (PEM)"),
    Setting("MQTT_TLS_KEY", "", cfg.optional_file, "client private key (PEM)"),
    Setting(
        "MQTT_TLS_KEY_PASSWORD", "", cfg.text, "password of an encrypted MQTT_TLS_KEY", secret=True
    ),
    Setting(
        "MQTT_TLS_INSECURE",
        "false",
        cfg.boolean,
        "skip the broker host name check (the chain is still verified); unsafe",
    ),
    Setting(
        "MQTT_FAST_RECEIVE",
        "true",
        cfg.boolean,
        "read MQTT through ingest's faster paho receive path (paho-mqtt 2.1-2.2 only; "
        "other versions use stock paho); false = always stock paho",
    ),
    Setting(
        "MQTT_COALESCE_MS",
        "3",
        cfg.number(0, 100),
        "while messages keep coming, read the broker at most once per this many ms and hand "
        "on together what came (fewer wake-ups in every service, up to this much latency; "
        "twice this while each read brings 8 or more); 0 = each at once",
    ),
    Setting(
        "MQTT_DRAIN_TIMEOUT",
        "5",
        cfg.number(0),
        "seconds to forward and acknowledge what is held on SIGTERM",
    ),
    Setting(
        "ZMQ_RAW_BIND",
        "tcp://127.0.0.1:5557",
        cfg.endpoint,
        "where the ROUTER socket for raw frames binds",
    ),
    Setting(
        "ZMQ_RAW_SNDHWM",
        "1000",
        cfg.integer(1),
        "raw frames queued per connected decoder before ingest waits",
    ),
    Setting(
        "ZMQ_RAW_SNDBUF",
        "65536",
        cfg.integer(0),
        "kernel send buffer in bytes per decoder connection (0 = OS default)",
    ),
    Setting(
        "ZMQ_RAW_CONFIRM_TIMEOUT",
        "1",
        cfg.number(0.01),
        "seconds a message waits for its decoder's confirmation before it is acknowledged "
        "anyway (a frozen decoder must not hold every later ack back)",
    ),
    Setting(
        "ZMQ_RAW_SRC",
        "",
        cfg.text,
        "the src stamped on raw frames (empty = <hostname>-<pid>-<random>)",
    ),
    Setting("METRICS_HOST", "127.0.0.1", cfg.non_empty, "address for /metrics and /healthz"),
    Setting("METRICS_PORT", "9101", cfg.port, "port for /metrics and /healthz (0 = off)"),
    cfg.LOG_LEVEL,
    cfg.CPU_SCHEDULING_POLICY,
)


@dataclass(frozen=True)
class Config:
    mqtt_broker: str
    mqtt_port: int
    mqtt_protocol: str
    mqtt_client_id: str
    mqtt_topics: tuple[str, ...]
    mqtt_qos: int
    mqtt_share_group: str
    mqtt_session_expiry: int
    mqtt_receive_maximum: int
    mqtt_keepalive: int
    mqtt_connect_timeout: float
    mqtt_reconnect_min: float
    mqtt_reconnect_max: float
    mqtt_username: str
    mqtt_password: str = field(repr=False)
    mqtt_tls_ca: str | None
    mqtt_tls_cert: str | None
    mqtt_tls_key: str | None
    mqtt_tls_insecure: bool
    mqtt_fast_receive: bool
    mqtt_coalesce_ms: float
    mqtt_drain_timeout: float
    zmq_raw_bind: str
    zmq_raw_sndhwm: int
    zmq_raw_sndbuf: int
    zmq_raw_confirm_timeout: float
    zmq_raw_src: str
    metrics_host: str
    metrics_port: int
    log_level: str
    cpu_scheduling_policy: str
    tls_context: ssl.SSLContext | None = field(default=None, repr=False, compare=False)

    @property
    def subscriptions(self) -> tuple[str, ...]:
        """The filters as sent to the broker: with ``$share/<group>/`` when sharing."""
        if not self.mqtt_share_group:
            return self.mqtt_topics
        return tuple(
            t if t.startswith("$share/") else f"$share/{self.mqtt_share_group}/{t}"
            for t in self.mqtt_topics
        )

    @property
    def broker_address(self) -> str:
        return f"{self.mqtt_broker}:{self.mqtt_port}"


def _read_password_file(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            # One trailing newline is how every editor and `echo` writes the file.
            return f.read().rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"MQTT_PASSWORD_FILE={path}: {exc}") from None


def default_src() -> str:
    # The pid alone repeats in containers (always 1), and fan-out must see every process
    # start as a new source whose seq begins at 1.
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


def load(environ: Mapping[str, str], argv: Sequence[str] | None) -> Config:
    v = cfg.load(
        SETTINGS,
        environ,
        argv,
        prog="python -m services.ingest",
        description="Subscribe to the MQTT broker and send every message as a raw frame to decode.",
    )
    if v["mqtt_reconnect_max"] < v["mqtt_reconnect_min"]:
        raise ConfigError(
            f"MQTT_RECONNECT_MAX={v['mqtt_reconnect_max']:g} is below "
            f"MQTT_RECONNECT_MIN={v['mqtt_reconnect_min']:g}"
        )

    password_file = v.pop("mqtt_password_file")
    if password_file:
        if v["mqtt_password"]:
            raise ConfigError(
                "MQTT_PASSWORD_FILE: set either MQTT_PASSWORD or MQTT_PASSWORD_FILE, not both"
            )
        v["mqtt_password"] = _read_password_file(password_file)
    if v["mqtt_password"] and not v["mqtt_username"]:
        raise ConfigError(
            "MQTT_PASSWORD needs MQTT_USERNAME (MQTT sends no password without a user name)"
        )

    if v["mqtt_share_group"] and v["mqtt_protocol"] != "5":
        raise ConfigError("MQTT_SHARE_GROUP: shared subscriptions need MQTT_PROTOCOL=5")

    if v["mqtt_receive_maximum"] is None:
        v["mqtt_receive_maximum"] = min(v["zmq_raw_sndhwm"], MAX_RECEIVE_MAXIMUM)

    if not v["zmq_raw_src"].strip():
        v["zmq_raw_src"] = default_src()

    use_tls = v.pop("mqtt_tls")
    key_password = v.pop("mqtt_tls_key_password")
    if v["mqtt_tls_key"] and not v["mqtt_tls_cert"]:
        raise ConfigError("MQTT_TLS_KEY is set but MQTT_TLS_CERT is not")
    wants_tls = bool(v["mqtt_tls_ca"] or v["mqtt_tls_cert"])
    if use_tls is False and wants_tls:
        raise ConfigError("MQTT_TLS=false but MQTT_TLS_CA or MQTT_TLS_CERT is set")
    if use_tls is None:
        use_tls = wants_tls
    if v["mqtt_tls_insecure"] and not use_tls:
        raise ConfigError("MQTT_TLS_INSECURE needs TLS (MQTT_TLS=true or MQTT_TLS_CA)")
    context = None
    if use_tls:
        context = tls.build_context(
            v["mqtt_tls_ca"],
            v["mqtt_tls_cert"],
            v["mqtt_tls_key"],
            key_password,
            v["mqtt_tls_insecure"],
        )
    return Config(**v, tls_context=context)
