"""The decode worker as a real process between real ZeroMQ peers: a credit-keeping ROUTER
playing ingest and a SUB playing the fan-out, both bound on free ports, like the real
topology."""

from __future__ import annotations

import re
import signal
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import msgpack
import orjson
import pytest
import zmq

from shared.frames import LEAVING, Event, RawFrame, pack_raw, parse_event
from tests.decode.helpers import NOW_MS, V4, fixture_bytes, v4_up
from tests.support.ports import free_port
from tests.support.procs import ServiceProcess, run_cli
from tests.support.rawlink import CreditRouter
from tests.support.timing import seconds, wait_for

UP = V4.format("up")


class Peers:
    """ingest's ROUTER (sending only against credit) and the fan-out's SUB, bound on free
    loopback ports."""

    def __init__(self) -> None:
        self.ctx = zmq.Context()
        self.router = CreditRouter(self.ctx)
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.LINGER, 0)
        self.sub.setsockopt(zmq.RCVHWM, 0)
        self.sub.subscribe(b"")
        self.sub.bind("tcp://127.0.0.1:0")
        self.probes = 0

    @property
    def raw_endpoint(self) -> str:
        return self.router.endpoint

    @property
    def events_endpoint(self) -> str:
        return self.sub.getsockopt_string(zmq.LAST_ENDPOINT)

    def send_raw(self, data: bytes | list[bytes]) -> bytes:
        return self.router.send(data, seconds(10))

    def send(self, topic: str, payload: bytes, seq: int, src: str = "ingest-test") -> None:
        self.send_raw(
            pack_raw(
                RawFrame(
                    src=src, seq=seq, ts=NOW_MS * 1_000_000, topic=topic, payload=payload, qos=1
                )
            )
        )

    def outstanding(self) -> int:
        """Credit the decoder has granted and the router has not used yet."""
        self.router.pump()
        return sum(self.router.credit.values())

    def grants_for_a_flow(self, window: int, frames: int) -> int:
        """Send ``frames`` good uplinks (each waits for credit), check their events arrive
        in order, wait until the whole ``window`` is back: the credit messages it took."""
        wait_for(lambda: self.outstanding() == window, 10, "the probes' credit back")
        grants_before = self.router.grants
        for seq in range(1, frames + 1):
            self.send(UP, good(seq), seq)
        seqs = []
        for _ in range(frames):
            event = self.recv()
            assert event is not None
            seqs.append(event.body["seq"])
        assert seqs == list(range(1, frames + 1))
        wait_for(lambda: self.outstanding() == window, 10, "all credit back once quiet")
        return self.router.grants - grants_before

    def recv(self, timeout: float = 10.0) -> Event | None:
        if self.sub.poll(int(seconds(timeout) * 1000)):
            return parse_event(self.sub.recv_multipart())
        return None

    def connected(self) -> None:
        """Past the slow joiner: probe until one event comes back, then drain the probes."""

        def probe() -> bool:
            self.probes += 1
            self.send(UP, fixture_bytes("chirpstack_v4_up.json"), self.probes, src="probe")
            return self.recv(0.1) is not None

        wait_for(probe, 20, "a probe event through the decoder")
        while self.recv(0.3) is not None:
            pass

    def close(self) -> None:
        self.router.close()
        self.sub.close(0)
        self.ctx.term()


@pytest.fixture
def peers() -> Iterator[Peers]:
    p = Peers()
    yield p
    p.close()


def start_decoder(
    services: list[ServiceProcess], tmp_path: Path, peers: Peers, **env: str
) -> ServiceProcess:
    proc = ServiceProcess(
        "decode",
        {
            "ZMQ_RAW_CONNECT": peers.raw_endpoint,
            "ZMQ_EVENTS_CONNECT": peers.events_endpoint,
            "METRICS_PORT": "0",
            **env,
        },
        tmp_path,
    ).start()
    services.append(proc)

    def ready() -> bool:
        # A bound SUB attaches a new connection (and sends its SUBSCRIBE) only when its
        # own thread touches it; the worker waits for that subscription before it is ready.
        peers.sub.poll(20)
        return "🔧 Decoder ready" in proc.log_text()

    wait_for(ready, 20, "the decoder to be ready")
    peers.connected()
    return proc


def wait_exit(proc: ServiceProcess, timeout: float = 10.0) -> int:
    """The exit code of a process already signalled (a second SIGINT would skip the drain)."""
    assert proc.proc is not None
    return proc.proc.wait(timeout=seconds(timeout))


def metrics(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=seconds(5)) as r:
        text = r.read().decode()
    return {m[1]: float(m[2]) for m in re.finditer(r"^(gateway_decode_\S+) (\S+)$", text, re.M)}


def good(n: int) -> bytes:
    doc = v4_up(fCnt=n, deduplicationId=f"dedup-{n}")
    return orjson.dumps(doc)


GARBAGE_PAYLOADS = [
    (b"garbage", "json"),
    (b"\xff\xfe binary", "encoding"),
    (b"", "json"),
    (b'{"a": NaN}', "number"),
    (b"[" * 5000 + b"]" * 5000, "depth"),
    (b"x" * (300 * 1024), "size"),  # over DECODE_MAX_PAYLOAD, under ZMQ_MAXMSGSIZE
    (orjson.dumps({**v4_up(), "object": [1]}), "schema"),
    (b'{"deviceInfo": {}}', "unknown_event"),  # sent on an unknown event topic below
]


def test_good_and_garbage_interleaved(
    services: list[ServiceProcess], tmp_path: Path, peers: Peers
) -> None:
    port = free_port()
    proc = start_decoder(
        services,
        tmp_path,
        peers,
        METRICS_PORT=str(port),
        DECODE_CODECS="fport:9=tests.decode.plugins:raises",
    )
    seq = 0
    expected_errors: list[str] = []
    good_seqs = []
    for i in range(60):
        seq += 1
        peers.send(UP, good(i), seq)
        good_seqs.append(seq)
        payload, reason = GARBAGE_PAYLOADS[i % len(GARBAGE_PAYLOADS)]
        seq += 1
        peers.send(V4.format("bogus") if reason == "unknown_event" else UP, payload, seq)
        expected_errors.append(reason)
        if i % 10 == 0:  # a plug-in that raises
            seq += 1
            peers.send(UP, orjson.dumps({**v4_up(fPort=9, data="AQI="), "object": None}), seq)
            expected_errors.append("codec")
    # Broken frames: unrecoverable ones are only counted; a readable map with an unknown
    # version still says src/seq, so an _error/frame event keeps the gap count exact.
    peers.send_raw(b"\x00\x01 not msgpack")
    peers.send_raw(b"\xdd\xff\xff\xff\xff")  # a 4-billion-element array header
    peers.send_raw(msgpack.packb({1: 2, "src": "x"}))
    peers.send_raw([b"two", b"parts"])
    seq += 1
    peers.send_raw(
        msgpack.packb(
            {"v": 99, "src": "ingest-test", "seq": seq, "ts": 0, "topic": UP, "payload": b"{}"}
        )
    )
    expected_errors.append("frame")
    seq += 1
    peers.send(UP, good(999), seq)
    good_seqs.append(seq)

    events: list[Event] = []
    while len(events) < len(good_seqs) + len(expected_errors):
        event = peers.recv()
        assert event is not None, f"only {len(events)} events arrived:\n{proc.log_text()[-2000:]}"
        events.append(event)
    assert [e.body["seq"] for e in events if e.body["event"] == "up"] == good_seqs
    assert all(
        e.key == "ChirpStack/Test application/Test device/up"
        for e in events
        if e.body["event"] == "up"
    )
    errors = [e for e in events if e.body["event"] == "error"]
    assert [e.body["error"]["reason"] for e in errors] == expected_errors
    assert all(e.key == "_error/" + e.body["error"]["reason"] for e in errors)
    assert sorted(e.body["seq"] for e in events) == list(range(1, seq + 1))  # no gap, no duplicate
    assert proc.running

    counts = wait_for(
        lambda: (m := metrics(port))["gateway_decode_frames_total"] >= peers.probes + seq + 4 and m,
        10,
    )
    assert counts["gateway_decode_frames_total"] == peers.probes + seq + 4
    assert counts['gateway_decode_events_total{event="up"}'] == peers.probes + len(good_seqs)
    assert counts['gateway_decode_events_total{event="error"}'] == len(expected_errors)
    assert counts['gateway_decode_errors_total{reason="codec"}'] == 6
    assert counts['gateway_decode_errors_total{reason="frame"}'] == 1
    assert counts['gateway_decode_dropped_frames_total{reason="msgpack"}'] == 3
    assert counts['gateway_decode_dropped_frames_total{reason="parts"}'] == 1
    assert counts['gateway_decode_dropped_frames_total{reason="version"}'] == 1
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=seconds(5)) as r:
        assert r.status == 200

    assert proc.stop(signal.SIGTERM) == 0
    assert "🛑 Stopped" in proc.log_text()


def test_an_error_flood_is_counted_exactly_but_logged_rarely(
    services: list[ServiceProcess], tmp_path: Path, peers: Peers
) -> None:
    """RELIABILITY.md B14: 5,000 bad payloads with a good uplink after every tenth. Every
    good one comes through in order, every bad one is an _error event and counted, and
    the log gets a line per 10 s per reason, not one per payload."""
    port = free_port()
    proc = start_decoder(services, tmp_path, peers, METRICS_PORT=str(port))
    bad, good_seqs = 0, []
    for seq in range(1, 5501):
        if seq % 11 == 0:
            peers.send(UP, good(seq), seq)
            good_seqs.append(seq)
        else:
            peers.send(UP, b"{broken", seq)
            bad += 1
    ups, reasons = [], []
    while len(ups) + len(reasons) < 5500:
        event = peers.recv()
        assert event is not None, f"{len(ups)} good and {len(reasons)} errors arrived"
        if event.body["event"] == "up":
            ups.append(event.body["seq"])
        else:
            reasons.append(event.body["error"]["reason"])
    assert ups == good_seqs
    assert reasons == ["json"] * bad
    counts = wait_for(
        lambda: (m := metrics(port))['gateway_decode_errors_total{reason="json"}'] >= bad and m,
        10,
    )
    assert counts['gateway_decode_errors_total{reason="json"}'] == bad
    assert counts['gateway_decode_events_total{event="up"}'] == peers.probes + len(good_seqs)
    # RateLimitedLog: one line per 10 s per reason
    assert proc.log_text().count("Could not decode") <= 3
    assert proc.stop() == 0


def test_an_oversized_frame_costs_the_link_not_the_worker(
    services: list[ServiceProcess], tmp_path: Path, peers: Peers
) -> None:
    """ZMQ_MAXMSGSIZE: ZeroMQ drops a link that sends a bigger frame; the worker reconnects."""
    proc = start_decoder(services, tmp_path, peers, ZMQ_RAW_MAX_MESSAGE="100000")
    peers.send(UP, b"x" * 200_000, 1)
    wait_for(
        lambda: peers.send(UP, good(2), 2) or peers.recv(0.2),
        20,
        "a good event after the reconnect",
    )
    assert proc.running
    assert "gave up (a frame over ZMQ_RAW_MAX_MESSAGE?): reconnected" in proc.log_text()
    assert proc.stop() == 0


def test_every_grant_says_how_large_a_frame_may_be(
    services: list[ServiceProcess], tmp_path: Path, peers: Peers
) -> None:
    """ingest drops a message whose frame is over the limit instead of sending it (which
    would cost the link): the first grant and every one after say the limit."""
    proc = start_decoder(services, tmp_path, peers, ZMQ_RAW_MAX_MESSAGE="100000")
    grants = peers.grants_for_a_flow(1000, 200)
    assert grants >= 2
    assert peers.router.limits == [100_000] * len(peers.router.limits)
    assert len(peers.router.limits) > grants  # the first grant too
    assert proc.stop() == 0


def test_credit_bounds_what_is_sent_and_comes_back_once_published(
    services: list[ServiceProcess], tmp_path: Path, peers: Peers
) -> None:
    proc = start_decoder(services, tmp_path, peers, ZMQ_RAW_CREDIT="10")
    router = peers.router
    outstanding = peers.outstanding
    wait_for(lambda: outstanding() == 10, 10, "the probes' credit back")
    proc.send_signal(signal.SIGSTOP)  # it cannot grant more now
    try:
        for seq in range(1, 11):
            peers.send(UP, good(seq), seq)
        assert outstanding() == 0  # the 10 granted are used; an 11th would have to wait
        with pytest.raises(TimeoutError):
            router.send(b"never sent", timeout=0.3)
    finally:
        proc.send_signal(signal.SIGCONT)
    seqs = []
    for _ in range(10):
        event = peers.recv()
        assert event is not None
        seqs.append(event.body["seq"])
    assert seqs == list(range(1, 11))
    wait_for(lambda: outstanding() == 10, 10, "the credit back after publishing")

    # SIGTERM: the worker asks to stop; once answered, it has everything and exits at once.
    proc.send_signal(signal.SIGTERM)
    wait_for(lambda: outstanding() == 0 and router.stops == 1, 10, "the stop request")
    assert wait_exit(proc) == 0
    log = proc.log_text()
    assert "🛑 Stopped" in log and "No 'stopped'" not in log


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_drains_and_exits_0(
    services: list[ServiceProcess], tmp_path: Path, peers: Peers, sig: int
) -> None:
    """F14: what reached the worker before the signal is still published."""
    proc = start_decoder(services, tmp_path, peers)
    for seq in range(1, 51):
        peers.send(UP, good(seq), seq)
    first = peers.recv()
    assert first is not None
    proc.send_signal(sig)
    wait_for(lambda: peers.router.pump() or peers.router.stops == 1, 10, "the stop request")
    assert wait_exit(proc) == 0
    seqs = [first.body["seq"]]
    while (event := peers.recv(1.0)) is not None:
        seqs.append(event.body["seq"])
    assert seqs == list(range(1, 51))
    log = proc.log_text()
    assert "draining" in log and "🛑 Stopped" in log


def test_credit_comes_back_in_lumps_while_frames_flow_and_in_full_when_quiet(
    services: list[ServiceProcess], tmp_path: Path, peers: Peers
) -> None:
    """A credit message per frame would wake both sides' ZeroMQ threads once more per
    frame; credit must still never run out for good, and a quiet link gets all of it back."""
    proc = start_decoder(services, tmp_path, peers, ZMQ_RAW_CREDIT="20")
    grants = peers.grants_for_a_flow(20, 300)  # never more than 20 frames out at once
    assert 0 < grants <= 300 // 5, f"{grants} credit messages for 300 frames"
    assert proc.stop() == 0


def test_a_large_window_still_gives_credit_back_in_small_lumps(
    services: list[ServiceProcess], tmp_path: Path, peers: Peers
) -> None:
    """ingest acknowledges a message to the broker only once its frame's credit is back.
    With the default window (1,000 frames), credit must still come back every ~50 frames
    while they flow, not once the window is half used or the link goes quiet."""
    proc = start_decoder(services, tmp_path, peers)
    grants = peers.grants_for_a_flow(1000, 400)
    # A lump is granted after a batch (up to 64 frames) once 50 are owed: at most 113.
    assert grants >= 400 // 113, f"{grants} credit messages for 400 frames"
    assert proc.stop() == 0


def test_help() -> None:
    result = run_cli("decode", ["--help"])
    assert result.returncode == 0
    for variable in (
        "ZMQ_RAW_CONNECT",
        "ZMQ_EVENTS_CONNECT",
        "METRICS_PORT",
        "DECODE_MAX_PAYLOAD",
        "DECODE_CODECS",
    ):
        assert variable in result.stdout


@pytest.mark.parametrize(
    "env, variable",
    [
        ({"DECODE_MAX_PAYLOAD": "lots"}, "DECODE_MAX_PAYLOAD"),
        ({"DECODE_MAX_DEPTH": "500"}, "DECODE_MAX_DEPTH"),
        ({"DECODE_RAW_CODEC": "protobuf"}, "DECODE_RAW_CODEC"),
        ({"DECODE_CODECS": "fport:1=no_such_module:decode"}, "DECODE_CODECS"),
        ({"ZMQ_RAW_CONNECT": "localhost:5557"}, "ZMQ_RAW_CONNECT"),
        ({"METRICS_PORT": "70000"}, "METRICS_PORT"),
    ],
)
def test_bad_config_exits_3_naming_the_variable(env: dict[str, str], variable: str) -> None:
    result = run_cli("decode", [], env=env)
    assert result.returncode == 3
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "❌ Bad config" in lines[0] and variable in lines[0], result.stderr


def test_flag_overrides_environment() -> None:
    result = run_cli("decode", ["--decode-max-depth", "x"], env={"DECODE_MAX_DEPTH": "10"})
    assert result.returncode == 3 and "--decode-max-depth" in result.stderr


def test_metrics_port_in_use_is_one_line_and_exit_3(tmp_path: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        result = run_cli("decode", [], env={"METRICS_PORT": str(busy.getsockname()[1])})
    assert result.returncode == 3 and "❌ Cannot start" in result.stderr


def test_a_leaving_fanout_gets_a_marker_behind_what_was_sent_and_its_successor_the_rest(
    services: list[ServiceProcess], tmp_path: Path, peers: Peers
) -> None:
    """A fan-out that stops subscribes to LEAVING and closes its socket once the marker
    came: so every event sent before the marker must come before it, and what the worker
    decodes after it must wait for the next fan-out (a socket about to close would lose
    it), then reach that one in order."""
    proc = start_decoder(services, tmp_path, peers)
    for seq in range(1, 21):
        peers.send(UP, good(seq), seq)
    peers.sub.subscribe(LEAVING)
    before: list[int] = []
    while True:
        assert peers.sub.poll(int(seconds(10) * 1000)), f"no marker after {before}"
        parts = peers.sub.recv_multipart()
        if parts[0] == LEAVING:
            break
        before.append(parse_event(parts).body["seq"])
    for seq in range(21, 41):
        peers.send(UP, good(seq), seq)
    wait_for(lambda: "🤝 The fan-out is stopping" in proc.log_text(), 10, "the hold")
    # Held: nothing more reaches the socket that asked (decode's hold lasts 10 s).
    assert peers.sub.poll(500) == 0, "an event was sent to a leaving fan-out"
    endpoint = peers.events_endpoint
    peers.sub.close(0)
    peers.sub = peers.ctx.socket(zmq.SUB)  # the successor, on the same endpoint
    peers.sub.setsockopt(zmq.LINGER, 0)
    peers.sub.subscribe(b"")

    def bound() -> bool:  # the old socket's listener goes away in ZeroMQ's own time
        try:
            peers.sub.bind(endpoint)
        except zmq.ZMQError:
            return False
        return True

    wait_for(bound, 10, "the successor to bind")
    after: list[int] = []
    while len(before) + len(after) < 40:
        event = peers.recv(10.0)  # nudges the new SUB, which then subscribes
        assert event is not None, f"the held events never came: {before} {after}"
        after.append(event.body["seq"])
    assert before + after == list(range(1, 41)), (before, after)
    assert "▶️ Sending events again" in proc.log_text()
    proc.send_signal(signal.SIGTERM)
    wait_for(lambda: peers.router.pump() or peers.router.stops == 1, 10, "the stop request")
    assert wait_exit(proc) == 0
