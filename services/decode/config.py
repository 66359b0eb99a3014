"""decode's settings: environment variables, each overridable by its ``--flag``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from services.decode import codecs
from services.decode.decoders.common import Options
from services.decode.limits import KIB, Limits
from shared import config as c

# Room for what a raw frame carries besides the payload: an MQTT topic (at most 64 KiB)
# and msgpack framing. ZMQ_MAXMSGSIZE is the payload limit plus this.
FRAME_OVERHEAD = 64 * KIB + 1 * KIB

SETTINGS = (
    c.Setting(
        "ZMQ_RAW_CONNECT",
        "tcp://127.0.0.1:5557",
        c.endpoints,
        "ingest endpoints to take raw frames from, one DEALER each (comma-separated)",
    ),
    c.Setting(
        "ZMQ_EVENTS_CONNECT",
        "tcp://127.0.0.1:5558",
        c.endpoints,
        "fan-out endpoints to PUBlish events to (comma-separated)",
    ),
    c.Setting(
        "ZMQ_RAW_CREDIT",
        "1000",
        c.integer(1, 1_000_000),
        "raw frames each ingest may send this worker before it grants more (the most a "
        "killed worker loses per ingest)",
    ),
    c.Setting(
        "ZMQ_RAW_RCVHWM",
        "1000",
        c.integer(1, 1_000_000),
        "raw frames queued per ingest link inside ZeroMQ (ZMQ_RAW_CREDIT bounds what is sent)",
    ),
    c.Setting(
        "ZMQ_EVENTS_SNDHWM",
        "10000",
        c.integer(1, 10_000_000),
        "events queued per fan-out link; when full the worker holds its events and takes "
        "no new frames",
    ),
    c.Setting(
        "ZMQ_EVENTS_SNDBUF",
        "65536",
        c.integer(0, 64 * 1024 * 1024),
        "kernel send buffer of each events link in bytes (0 = OS default: megabytes on "
        "loopback, taken by a stalled link before ZMQ_EVENTS_SNDHWM counts)",
    ),
    c.Setting(
        "ZMQ_RAW_RCVBUF",
        "65536",
        c.integer(0, 64 * 1024 * 1024),
        "kernel receive buffer of each raw DEALER socket in bytes (0 = OS default)",
    ),
    c.Setting(
        "ZMQ_RAW_MAX_MESSAGE",
        "0",
        c.integer(0, 1 << 31),
        "largest raw frame accepted; bigger drops the link (0 = DECODE_MAX_PAYLOAD + 65 KiB)",
    ),
    c.Setting(
        "METRICS_HOST", "127.0.0.1", c.non_empty, "address of the /metrics and /healthz endpoint"
    ),
    c.Setting(
        "METRICS_PORT", "9102", c.port, "port of the /metrics and /healthz endpoint (0 = off)"
    ),
    c.Setting(
        "DECODE_MAX_PAYLOAD",
        str(256 * KIB),
        c.integer(1, 64 * 1024 * 1024),
        "largest payload decoded, in bytes; bigger is an error, checked before parsing",
    ),
    c.Setting("DECODE_MAX_DEPTH", "32", c.integer(1, 200), "deepest JSON nesting accepted"),
    c.Setting(
        "DECODE_MAX_NAME",
        "256",
        c.integer(1, 65536),
        "longest tenant/application/device/gateway name accepted",
    ),
    c.Setting(
        "DECODE_TIME_TOLERANCE",
        "86400",
        c.integer(0, 10 * 365 * 86400),
        "seconds into the future a timestamp may be before it is absurd",
    ),
    c.Setting(
        "DECODE_RAW_CODEC",
        "auto",
        c.choice(*codecs.RAW_CODECS),
        "codec for uplinks with data but no object: "
        "auto (Cayenne LPP when it parses), cayenne_lpp, none",
    ),
    c.Setting(
        "DECODE_CODECS",
        "",
        c.text,
        "codec rules, comma-separated: application:NAME=CODEC, profile:NAME=CODEC, "
        "fport:N=CODEC (CODEC: cayenne_lpp, none or module:function)",
    ),
    c.Setting(
        "DECODE_DEFAULT_TENANT",
        "default",
        c.non_empty,
        "tenant for events without one (ChirpStack v3)",
    ),
    c.LOG_LEVEL,
    c.CPU_SCHEDULING_POLICY,
)


@dataclass(frozen=True)
class DecodeConfig:
    zmq_raw_connect: tuple[str, ...]
    zmq_events_connect: tuple[str, ...]
    zmq_raw_credit: int
    zmq_raw_rcvhwm: int
    zmq_events_sndhwm: int
    zmq_events_sndbuf: int
    zmq_raw_rcvbuf: int
    zmq_raw_max_message: int
    metrics_host: str
    metrics_port: int
    options: Options
    log_level: str
    cpu_scheduling_policy: str


def load(environ: Mapping[str, str], argv: Sequence[str] | None) -> DecodeConfig:
    values = c.load(
        SETTINGS,
        environ,
        argv,
        prog="python -m services.decode",
        description="Decode raw LoRaWAN frames from ingest into events for the fan-out.",
    )
    default = codecs.builtin(values["decode_raw_codec"])
    try:
        rules = codecs.parse_rules(values["decode_codecs"], default)
    except ValueError as exc:
        raise c.ConfigError(f"DECODE_CODECS={values['decode_codecs']!r}: {exc}") from None
    limits = Limits(
        max_payload=values["decode_max_payload"],
        max_depth=values["decode_max_depth"],
        max_name=values["decode_max_name"],
        time_tolerance_s=values["decode_time_tolerance"],
    )
    return DecodeConfig(
        zmq_raw_connect=values["zmq_raw_connect"],
        zmq_events_connect=values["zmq_events_connect"],
        zmq_raw_credit=values["zmq_raw_credit"],
        zmq_raw_rcvhwm=values["zmq_raw_rcvhwm"],
        zmq_events_sndhwm=values["zmq_events_sndhwm"],
        zmq_events_sndbuf=values["zmq_events_sndbuf"],
        zmq_raw_rcvbuf=values["zmq_raw_rcvbuf"],
        zmq_raw_max_message=values["zmq_raw_max_message"] or limits.max_payload + FRAME_OVERHEAD,
        metrics_host=values["metrics_host"],
        metrics_port=values["metrics_port"],
        options=Options(
            limits=limits, codecs=rules, default_tenant=values["decode_default_tenant"]
        ),
        log_level=values["log_level"],
        cpu_scheduling_policy=values["cpu_scheduling_policy"],
    )
