"""wsfanout settings: environment variables (DESIGN names), each overridable by a flag."""

from __future__ import annotations

import ipaddress
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from services.wsfanout.tokens import TokenError, TokenStore
from shared import config as c
from shared.config import ConfigError, Setting

DESCRIPTION = """\
Fan-out: receives decoded events on a ZeroMQ SUB socket and streams them to WebSocket
clients (replay of the latest events per device, filters, resume, tokens), with plain HTTP
on the same port: GET / (dashboard), /healthz, /metrics.

Token management:  python -m services.wsfanout token {add,list,revoke} --help"""


def _origins(raw: str) -> tuple[str, ...]:
    items = c.csv(raw)
    for item in items:
        if "://" not in item or item.endswith("/"):
            raise ValueError(f"{item!r} is not an origin like https://dashboard.example.com")
    return items


SETTINGS: tuple[Setting, ...] = (
    Setting("WEBSOCKET_HOST", "0.0.0.0", c.non_empty, "address to serve WebSocket and HTTP on"),
    Setting("WEBSOCKET_PORT", "8765", c.port, "port to serve WebSocket and HTTP on"),
    Setting(
        "ZMQ_EVENTS_BIND",
        "tcp://127.0.0.1:5558",
        c.endpoint,
        "ZeroMQ SUB endpoint decoders connect to",
    ),
    Setting("ZMQ_EVENTS_RCVHWM", "10000", c.integer(1), "SUB receive high-water mark (events)"),
    Setting(
        "ZMQ_EVENTS_RCVBUF",
        "65536",
        c.integer(0, 64 * 1024 * 1024),
        "kernel receive buffer per decoder link in bytes (0 = OS default: megabytes on "
        "loopback, lost with the process if it is killed)",
    ),
    Setting(
        "ZMQ_EVENTS_MAX_MESSAGE", "1048576", c.integer(1024), "largest event frame accepted (bytes)"
    ),
    Setting(
        "ZMQ_EVENTS_REORDER_WINDOW",
        "10000",
        c.integer(1),
        "missing seqs per source awaited before counting them lost",
    ),
    Setting(
        "ZMQ_EVENTS_REORDER_TIMEOUT",
        "30",
        c.number(0.01),
        "seconds a missing seq is awaited before counting it lost",
    ),
    Setting(
        "WEBSOCKET_REPLAY_SIZE",
        "10",
        c.integer(0, 100_000),
        "events kept and replayed per device (0 = no replay)",
    ),
    Setting(
        "WEBSOCKET_REPLAY_DEVICES",
        "100000",
        c.integer(1),
        "devices kept in the replay buffer (least recently active dropped)",
    ),
    Setting(
        "WEBSOCKET_DEDUP_SIZE",
        "10000",
        c.integer(0),
        "recent deduplicationIds remembered to drop repeats (0 = off)",
    ),
    Setting(
        "WEBSOCKET_STATE_FILE",
        "",
        c.text,
        "file the replay buffer is saved to on stop and loaded from at start (empty = off)",
    ),
    Setting(
        "WEBSOCKET_PING_INTERVAL", "20", c.number(0), "seconds between keepalive pings (0 = off)"
    ),
    Setting(
        "WEBSOCKET_PING_TIMEOUT",
        "20",
        c.number(0),
        "seconds to wait for a pong before closing (0 = wait forever)",
    ),
    Setting(
        "WEBSOCKET_OPEN_TIMEOUT",
        "10",
        c.number(0.1),
        "seconds a client has to complete the handshake",
    ),
    Setting(
        "WEBSOCKET_CLOSE_TIMEOUT", "5", c.number(0.1), "seconds to wait for a client's close frame"
    ),
    Setting(
        "WEBSOCKET_MAX_MESSAGE",
        "65536",
        c.integer(128),
        "largest client message (bytes; larger closes with 1009)",
    ),
    Setting(
        "WEBSOCKET_RATE_LIMIT",
        "120",
        c.number(1),
        "client messages allowed per minute (more: error, then close 1008)",
    ),
    Setting("WEBSOCKET_RATE_BURST", "30", c.integer(1), "client messages allowed in a burst"),
    Setting(
        "WEBSOCKET_CLIENT_QUEUE_MESSAGES",
        "1000",
        c.integer(1),
        "events queued per client before the oldest are dropped",
    ),
    Setting(
        "WEBSOCKET_CLIENT_QUEUE_BYTES",
        "1048576",
        c.integer(1024),
        "bytes queued per client before the oldest are dropped",
    ),
    Setting(
        "WEBSOCKET_SLOW_CLIENT_TIMEOUT",
        "10",
        c.number(0.1),
        "seconds a client may stay behind before it is closed with 1013",
    ),
    Setting(
        "WEBSOCKET_COALESCE_MS",
        "5",
        c.number(0),
        "an event for WEBSOCKET_COALESCE_MIN_CLIENTS or more clients waits up to this long "
        "for the next ones, so each client gets them in one write (0 = write each at once)",
    ),
    Setting(
        "WEBSOCKET_COALESCE_MIN_CLIENTS",
        "100",
        c.integer(1),
        "clients an event must go to before its writes wait WEBSOCKET_COALESCE_MS "
        "(fewer are written to at once)",
    ),
    Setting(
        "WEBSOCKET_SEND_BUFFER",
        "262144",
        c.integer(0),
        "kernel send buffer per client (SO_SNDBUF bytes; 0 = OS autotuning: MiBs per stalled one)",
    ),
    Setting(
        "WEBSOCKET_MAX_CLIENTS",
        "20000",
        c.integer(1),
        "connections accepted at once (more get HTTP 503)",
    ),
    Setting(
        "WEBSOCKET_MAX_CLIENTS_PER_TOKEN",
        "0",
        c.integer(0),
        "connections per token (more get HTTP 429; 0 = no limit)",
    ),
    Setting(
        "WEBSOCKET_TOKENS_FILE",
        "",
        c.optional_file,
        "tokens file (hashed; see `token add`); set = auth on, reloaded on SIGHUP",
    ),
    Setting(
        "WEBSOCKET_TOKENS",
        "",
        c.text,
        "tokens document (same JSON as the file); set = auth on",
        secret=True,
    ),
    Setting(
        "WEBSOCKET_ORIGINS",
        "",
        _origins,
        "allowed browser Origins, comma-separated (empty = any; others get 403)",
    ),
    Setting(
        "WEBSOCKET_TLS_CERT",
        "",
        c.optional_file,
        "TLS certificate chain (PEM); with WEBSOCKET_TLS_KEY serves wss://",
    ),
    Setting("WEBSOCKET_TLS_KEY", "", c.optional_file, "TLS private key (PEM)"),
    Setting(
        "WEBSOCKET_SHUTDOWN_TIMEOUT",
        "5",
        c.number(0.1),
        "seconds to close clients on SIGTERM before dropping them",
    ),
    c.LOG_LEVEL,
    c.CPU_SCHEDULING_POLICY,
)


@dataclass(frozen=True)
class Config:
    websocket_host: str
    websocket_port: int
    zmq_events_bind: str
    zmq_events_rcvhwm: int
    zmq_events_rcvbuf: int
    zmq_events_max_message: int
    zmq_events_reorder_window: int
    zmq_events_reorder_timeout: float
    websocket_replay_size: int
    websocket_replay_devices: int
    websocket_dedup_size: int
    websocket_state_file: str
    websocket_ping_interval: float
    websocket_ping_timeout: float
    websocket_open_timeout: float
    websocket_close_timeout: float
    websocket_max_message: int
    websocket_rate_limit: float
    websocket_rate_burst: int
    websocket_client_queue_messages: int
    websocket_client_queue_bytes: int
    websocket_slow_client_timeout: float
    websocket_coalesce_ms: float
    websocket_coalesce_min_clients: int
    websocket_send_buffer: int
    websocket_max_clients: int
    websocket_max_clients_per_token: int
    websocket_tokens_file: str | None
    websocket_tokens: str
    websocket_origins: tuple[str, ...]
    websocket_tls_cert: str | None
    websocket_tls_key: str | None
    websocket_shutdown_timeout: float
    log_level: str
    cpu_scheduling_policy: str

    @property
    def tls(self) -> bool:
        return self.websocket_tls_cert is not None

    @property
    def scheme(self) -> str:
        return "wss" if self.tls else "ws"

    @property
    def loopback_only(self) -> bool:
        host = self.websocket_host
        if host == "localhost":
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False

    def ssl_context(self) -> ssl.SSLContext | None:
        if self.websocket_tls_cert is None or self.websocket_tls_key is None:
            return None
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.websocket_tls_cert, self.websocket_tls_key)
        return ctx

    def token_store(self) -> TokenStore:
        return TokenStore(self.websocket_tokens_file, self.websocket_tokens)


SECRET_FIELDS = frozenset({"websocket_tokens"})


def load(environ: Mapping[str, str], argv: Sequence[str] | None) -> Config:
    values = c.load(
        SETTINGS, environ, argv, prog="python -m services.wsfanout", description=DESCRIPTION
    )
    values["websocket_state_file"] = values["websocket_state_file"].strip()
    config = Config(**values)
    if (config.websocket_tls_cert is None) != (config.websocket_tls_key is None):
        missing = "WEBSOCKET_TLS_KEY" if config.websocket_tls_key is None else "WEBSOCKET_TLS_CERT"
        raise ConfigError(f"{missing}: needed too when the other TLS setting is given")
    try:
        config.ssl_context()
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"WEBSOCKET_TLS_CERT/WEBSOCKET_TLS_KEY: cannot load: {exc}") from None
    try:
        config.token_store()
    except TokenError as exc:
        text = str(exc)
        raise ConfigError(
            text if text.startswith("WEBSOCKET_TOKENS:") else f"WEBSOCKET_TOKENS_FILE={text}"
        ) from None
    return config
