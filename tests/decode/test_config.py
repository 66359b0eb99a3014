"""decode's config: defaults from DESIGN, environment, flags over environment, one clear
error naming the variable. Plain dicts, no processes."""

from __future__ import annotations

import msgpack
import pytest

from services.decode.config import FRAME_OVERHEAD, load
from services.decode.worker import recover_ids
from shared.config import ConfigError
from shared.frames import FrameError, RawFrame, pack_raw, unpack_raw


def test_defaults() -> None:
    config = load({}, [])
    assert config.zmq_raw_connect == ("tcp://127.0.0.1:5557",)
    assert config.zmq_events_connect == ("tcp://127.0.0.1:5558",)
    assert (config.zmq_raw_rcvhwm, config.zmq_events_sndhwm, config.zmq_raw_rcvbuf) == (
        1000,
        10000,
        65536,
    )
    assert config.zmq_raw_credit == 1000
    assert config.metrics_port == 9102 and config.metrics_host == "127.0.0.1"
    limits = config.options.limits
    assert (limits.max_payload, limits.max_depth, limits.max_name) == (262144, 32, 256)
    assert config.zmq_raw_max_message == 262144 + FRAME_OVERHEAD
    assert config.options.codecs.default.kind == "auto"
    assert config.options.default_tenant == "default"
    assert config.log_level == "info"


def test_environment_and_flags() -> None:
    env = {
        "ZMQ_RAW_CONNECT": "tcp://10.0.0.1:5557, tcp://10.0.0.2:5557",
        "DECODE_MAX_PAYLOAD": "1000",
        "DECODE_RAW_CODEC": "none",
        "DECODE_CODECS": "fport:8=cayenne_lpp, application:meters=tests.decode.plugins:meter",
    }
    config = load(env, ["--decode-max-payload", "2000", "--metrics-port", "0"])
    assert config.zmq_raw_connect == ("tcp://10.0.0.1:5557", "tcp://10.0.0.2:5557")
    assert config.options.limits.max_payload == 2000  # the flag wins
    assert config.zmq_raw_max_message == 2000 + FRAME_OVERHEAD
    assert config.metrics_port == 0
    codecs = config.options.codecs
    assert codecs.default.kind == "none"
    assert codecs.by_fport[8].kind == "cayenne_lpp"
    assert codecs.by_application["meters"].kind == "plugin"


def test_explicit_max_msg_size() -> None:
    assert load({"ZMQ_RAW_MAX_MESSAGE": "5000000"}, []).zmq_raw_max_message == 5_000_000


@pytest.mark.parametrize(
    "env, variable",
    [
        ({"DECODE_MAX_DEPTH": "0"}, "DECODE_MAX_DEPTH"),
        ({"DECODE_MAX_DEPTH": "201"}, "DECODE_MAX_DEPTH"),  # orjson writes at most 254 levels
        ({"DECODE_RAW_CODEC": "json"}, "DECODE_RAW_CODEC"),
        ({"DECODE_CODECS": "fport:x=cayenne_lpp"}, "DECODE_CODECS"),
        ({"ZMQ_EVENTS_CONNECT": ""}, "ZMQ_EVENTS_CONNECT"),
        ({"ZMQ_RAW_RCVHWM": "0"}, "ZMQ_RAW_RCVHWM"),
        ({"ZMQ_RAW_CREDIT": "0"}, "ZMQ_RAW_CREDIT"),
        ({"DECODE_DEFAULT_TENANT": " "}, "DECODE_DEFAULT_TENANT"),
        ({"LOG_LEVEL": "loud"}, "LOG_LEVEL"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        load(env, [])


# B11 at the function level (the worker test sends the same frames over real sockets).


def test_unknown_frame_version_is_a_frame_error_with_recoverable_ids() -> None:
    data = msgpack.packb(
        {"v": 2, "src": "ingest-a", "seq": 41, "ts": 5, "topic": "t", "payload": b"{}"}
    )
    with pytest.raises(FrameError) as caught:
        unpack_raw(data)
    assert caught.value.reason == "version"
    assert recover_ids(data) == ("ingest-a", 41, 5, "t")


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00not msgpack",
        b"\xdd\xff\xff\xff\xff",  # array header claiming 4 billion elements
        b"\xdf\xff\xff\xff\xff",  # map header claiming 4 billion entries
        msgpack.packb([1, 2, 3]),
        msgpack.packb({"src": 1, "seq": 2}),
        msgpack.packb({"src": "a", "seq": True}),
        msgpack.packb({"src": "a", "seq": "1"}),
    ],
)
def test_frames_without_ids_cannot_be_recovered(data: bytes) -> None:
    assert recover_ids(data) is None


def test_unhashable_map_keys_do_not_crash() -> None:
    data = b"\x81\x91\x01\x01"  # {[1]: 1}
    with pytest.raises(FrameError):
        unpack_raw(data)
    assert recover_ids(data) is None


def test_a_good_frame_round_trips() -> None:
    frame = RawFrame(src="s", seq=1, ts=2, topic="t", payload=b"{}", qos=1, retain=True)
    assert unpack_raw(pack_raw(frame)) == frame
