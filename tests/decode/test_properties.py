"""Property tests: whatever bytes or JSON arrive, decode returns an event and never raises;
the body is always JSON a browser can parse and a frame the fan-out can read."""

from __future__ import annotations

import base64
import copy
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.decode.codecs import Codec, parse_rules
from services.decode.decoders import cayenne_lpp
from services.decode.decoders.common import Options
from services.decode.dispatch import Decoder
from services.decode.errors import REASONS
from shared.frames import RawFrame
from tests.decode.helpers import FIXTURE_TOPICS, NOW_NS, check_body, fixture_doc, frame

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

TOPICS = st.sampled_from(
    sorted(set(FIXTURE_TOPICS.values()))
    + [
        "",
        "/",
        "v3/",
        "v3/a@b/devices/c/down/ack",
        "gateway",
        "x/gateway/y/event/up",
        "application/+/#",
    ]
) | st.text(max_size=40)

KNOWN_EVENTS = {
    "up",
    "join",
    "ack",
    "txack",
    "status",
    "log",
    "location",
    "integration",
    "stats",
    "conn",
    "error",
}

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=30,
)

DECODER = Decoder()
STRICT = Decoder(
    Options(
        codecs=parse_rules(
            "fport:3=tests.decode.plugins:meter", Codec("cayenne_lpp", "cayenne_lpp")
        )
    )
)


def assert_event(decoder: Decoder, raw: RawFrame) -> None:
    event = decoder.decode(raw, NOW_NS)
    check_body(event)
    assert event.body["event"] in KNOWN_EVENTS
    assert (event.body["src"], event.body["seq"]) == (raw.src, raw.seq)
    if event.body["event"] == "error":
        assert event.body["error"]["reason"] in REASONS
        assert event.key == "_error/" + event.body["error"]["reason"]


@SETTINGS
@given(topic=TOPICS, payload=st.binary(max_size=300))
def test_random_bytes(topic: str, payload: bytes) -> None:
    assert_event(DECODER, frame(topic, payload))


@SETTINGS
@given(topic=TOPICS, doc=JSON)
def test_random_json(topic: str, doc: Any) -> None:
    try:
        payload = orjson.dumps(doc)
    except TypeError:  # an integer beyond 64 bits: orjson cannot write it, write it as text
        import json

        payload = json.dumps(doc).encode()
    assert_event(DECODER, frame(topic, payload))


def mutate(doc: Any, path: list[Any], value: Any) -> Any:
    """``doc`` with the element at ``path`` (indices into the key lists) replaced."""
    doc = copy.deepcopy(doc)
    target = doc
    for step in path[:-1]:
        if isinstance(target, dict) and target:
            target = target[sorted(target)[step % len(target)]]
        elif isinstance(target, list) and target:
            target = target[step % len(target)]
    if isinstance(target, dict) and target:
        target[sorted(target)[path[-1] % len(target)]] = value
    elif isinstance(target, list) and target:
        target[path[-1] % len(target)] = value
    return doc


SAMPLES = sorted(FIXTURE_TOPICS)


@SETTINGS
@given(
    name=st.sampled_from(SAMPLES),
    path=st.lists(st.integers(min_value=0, max_value=50), min_size=1, max_size=4),
    value=JSON,
    strict=st.booleans(),
)
def test_samples_with_one_field_replaced(
    name: str, path: list[int], value: Any, strict: bool
) -> None:
    """Random JSON in the real shapes: every sample with one field swapped for anything."""
    doc = mutate(fixture_doc(name), path, value)
    import json

    assert_event(
        STRICT if strict else DECODER, frame(FIXTURE_TOPICS[name], json.dumps(doc).encode())
    )


@SETTINGS
@given(
    info=st.fixed_dictionaries(
        {},
        optional={
            "tenantName": st.text(max_size=300) | JSON,
            "applicationName": st.text(max_size=30),
            "deviceName": st.text(max_size=30),
            "devEui": st.from_regex(r"[0-9a-fA-F]{16}", fullmatch=True) | JSON,
            "tags": st.dictionaries(st.text(max_size=5), st.text(max_size=5)) | JSON,
            "deviceProfileName": st.text(max_size=10),
        },
    ),
    top=st.fixed_dictionaries(
        {},
        optional={
            "time": st.datetimes().map(lambda d: d.isoformat() + "Z") | JSON,
            "fPort": st.integers(0, 300) | JSON,
            "fCnt": st.integers(-5, 2**40) | JSON,
            "data": st.binary(max_size=30).map(lambda b: base64.b64encode(b).decode()) | JSON,
            "object": JSON,
            "rxInfo": st.lists(
                st.dictionaries(st.sampled_from(["gatewayId", "rssi", "snr"]), JSON), max_size=3
            )
            | JSON,
            "deduplicationId": JSON,
        },
    ),
    event=st.sampled_from(
        ["up", "status", "join", "ack", "txack", "log", "location", "integration", "nope"]
    ),
    strict=st.booleans(),
)
def test_random_json_in_the_v4_shape(
    info: dict[str, Any], top: dict[str, Any], event: str, strict: bool
) -> None:
    import json

    doc = {"deviceInfo": info, **top}
    payload = json.dumps(doc).encode()
    assert_event(
        STRICT if strict else DECODER, frame(f"application/x/device/y/event/{event}", payload)
    )


@SETTINGS
@given(data=st.binary(max_size=64))
def test_lpp_decodes_or_raises_lpp_error_only(data: bytes) -> None:
    try:
        measurements = cayenne_lpp.decode(data)
    except cayenne_lpp.LppError:
        return
    assert measurements and all(m.type for m in measurements)
    orjson.dumps([m.value for m in measurements])


@SETTINGS
@given(
    channel_values=st.lists(
        st.tuples(
            st.integers(0, 255),
            st.sampled_from(sorted(cayenne_lpp.TYPES)),
            st.binary(min_size=9, max_size=9),
        ),
        min_size=1,
        max_size=8,
    )
)
def test_lpp_well_formed_payloads_always_decode(
    channel_values: list[tuple[int, int, bytes]],
) -> None:
    data = b"".join(
        bytes([ch, t]) + raw[: cayenne_lpp.TYPES[t][1]] for ch, t, raw in channel_values
    )
    got = cayenne_lpp.decode(data)
    assert [(m.channel, m.type_id) for m in got] == [(ch, t) for ch, t, _ in channel_values]
