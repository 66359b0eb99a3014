"""Test helpers for ingest: a real DEALER socket collecting raw frames in a thread, numbered
publishing, /metrics and /healthz readers, and a throw-away TLS CA."""

from __future__ import annotations

import datetime
import ipaddress
import threading
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import zmq
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from prometheus_client.parser import text_string_to_metric_families

from shared.frames import RawFrame, unpack_raw
from tests.support.rawlink import CreditDealer
from tests.support.timing import seconds, wait_for

UP_TOPIC = "application/app-1/device/{dev}/event/up"


def numbered(count: int, start: int = 0, devices: int = 5) -> list[tuple[str, bytes]]:
    """``count`` messages on ChirpStack v4 device topics; the payload is the number."""
    return [
        (UP_TOPIC.format(dev=f"dev-{i % devices}"), str(i).encode())
        for i in range(start, start + count)
    ]


def numbers(frames: Iterable[RawFrame]) -> list[int]:
    return [int(f.payload) for f in frames]


class FrameCollector:
    """A decoder stand-in on ingest's endpoint: a DEALER that grants ``credit`` on every
    connect and one more per frame received; a thread keeps receiving frames."""

    def __init__(
        self, endpoint: str, credit: int = 1000, rcvhwm: int = 1000, max_frame: int = 0
    ) -> None:
        self._ctx = zmq.Context()
        self._dealer = CreditDealer(self._ctx, endpoint, credit, rcvhwm=rcvhwm, max_frame=max_frame)
        self._frames: list[RawFrame] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            got = self._dealer.service(50)
            if got:
                frames = [unpack_raw(data) for data in got]
                with self._lock:
                    self._frames.extend(frames)
                self._dealer.grant(len(got))
        self._dealer.close()

    @property
    def connects(self) -> int:
        """How often its link connected."""
        return self._dealer.connects

    @property
    def disconnects(self) -> int:
        """How often its link was lost (ZeroMQ drops it for a frame over ``max_frame``
        and does not connect it again)."""
        return self._dealer.disconnects

    @property
    def frames(self) -> list[RawFrame]:
        with self._lock:
            return list(self._frames)

    def wait_numbers(self, expected: Iterable[int], timeout: float = 30.0) -> list[RawFrame]:
        """Wait until every number in ``expected`` has arrived; return all frames."""
        want = set(expected)

        def done() -> bool:
            return want <= set(numbers(self.frames))

        try:
            wait_for(done, timeout, f"{len(want)} numbered frames")
        except AssertionError:
            missing = sorted(want - set(numbers(self.frames)))
            raise AssertionError(
                f"{len(missing)} frames never arrived, first {missing[:10]}"
            ) from None
        return self.frames

    def close(self) -> None:
        self._stop.set()
        self._thread.join(seconds(5))
        self._ctx.term()


def scrape(port: int) -> dict[str, float]:
    """``{sample name with labels: value}`` from ingest's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=seconds(5)) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = float(s.value)
    return out


# --------------------------------------------------------------------------- TLS


@dataclass
class Pki:
    ca: Path
    cert: Path
    key: Path


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey, password: bytes | None = None) -> None:
    encryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    )


def make_pki(
    directory: Path,
    name: str,
    dns: tuple[str, ...] = ("localhost",),
    ips: tuple[str, ...] = ("127.0.0.1",),
    key_password: bytes | None = None,
    client: bool = False,
) -> Pki:
    """A CA and one certificate it signed (server, or client with ``client=True``)."""
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=1)
    ca_key = _key()
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name(f"{name} test CA"))
        .issuer_name(_name(f"{name} test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    leaf_key = _key()
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(f"{name} {'client' if client else 'server'}"))
        .issuer_name(ca_cert.subject)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    leaf = builder.sign(ca_key, hashes.SHA256())
    pki = Pki(
        ca=directory / f"{name}-ca.pem",
        cert=directory / f"{name}-cert.pem",
        key=directory / f"{name}-key.pem",
    )
    pki.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    pki.cert.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    _write_key(pki.key, leaf_key, key_password)
    return pki
