"""Pure builders for what the simulators publish: ChirpStack v4 events and their topics.

No clock, no randomness, no I/O: the caller passes times, ids and values in, so tests can
compare the output field by field with the public samples in ``../shared/fixtures/``.
The shapes follow ChirpStack v4's JSON integration (``UplinkEvent``, ``GatewayStats``,
``ConnState``); the decoded ``object`` is the one the original gateway's codecs produce::

    {"type": "voltage", "values": [{"time": <ms>, "time_iso": "...Z", "value": 3.7}]}
"""

from __future__ import annotations

import base64
import hashlib
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

# Cayenne LPP types in ChirpStack's table: voltage 0.01 V and current 0.001 A, 2 bytes,
# unsigned. The raw `data` matches `object`, so codec decoding can be tried on it.
LPP_TYPES = {"voltage": (116, 100), "current": (117, 1000)}

MEASUREMENTS = ("voltage", "current")


@dataclass(frozen=True)
class Device:
    """A simulated end device, identified like ChirpStack identifies one."""

    tenant: str
    application: str
    name: str
    dev_eui: str
    profile: str = "simulated"
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def tenant_id(self) -> str:
        return stable_uuid("tenant", self.tenant)

    @property
    def application_id(self) -> str:
        return stable_uuid("application", self.tenant, self.application)

    @property
    def profile_id(self) -> str:
        return stable_uuid("device-profile", self.tenant, self.profile)


@dataclass(frozen=True)
class Radio:
    """How one uplink was heard: the gateway and the signal."""

    gateway_id: str
    rssi: int
    snr: float
    frequency: int = 868100000
    spreading_factor: int = 7
    uplink_id: int = 0


def stable_uuid(*parts: str) -> str:
    """The same UUID for the same names every run, so topics stay put across restarts."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "lorawan-simulator:" + "/".join(parts)))


def dev_eui_for(*parts: str) -> str:
    """A stable 64-bit EUI (16 lowercase hex digits) derived from names."""
    return hashlib.sha1("/".join(parts).encode()).hexdigest()[:16]


def gateway_id_for(index: int) -> str:
    return f"0016c001f1{index:06x}"


def make_devices(kind: str, count: int, tenant: str, application: str) -> list[Device]:
    """``count`` devices named ``{kind}-sensor-001`` ... with EUIs unique per tenant/app."""
    return [
        Device(
            tenant=tenant,
            application=application,
            name=f"{kind}-sensor-{i:03d}",
            dev_eui=dev_eui_for(tenant, application, kind, str(i)),
            profile=f"simulated-{kind}",
            tags={"simulator": kind},
        )
        for i in range(1, count + 1)
    ]


def iso_ms(time_ms: int) -> str:
    """``2023-07-31T12:00:00.000Z``: the form of ``time_iso`` in the codec output."""
    moment = datetime.fromtimestamp(time_ms / 1000, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{time_ms % 1000:03d}Z"


def iso_event_time(time_ns: int) -> str:
    """ChirpStack's event ``time``: RFC 3339 with a numeric offset."""
    moment = datetime.fromtimestamp(time_ns // 1_000_000_000, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{time_ns % 1_000_000_000:09d}+00:00"


def measurement_object(kind: str, value: float, time_ms: int) -> dict[str, Any]:
    return {
        "type": kind,
        "values": [{"time": time_ms, "time_iso": iso_ms(time_ms), "value": value}],
    }


def lpp_bytes(kind: str, value: float, channel: int = 1) -> bytes:
    type_id, scale = LPP_TYPES[kind]
    raw = max(0, min(0xFFFF, round(value * scale)))
    return bytes([channel, type_id]) + raw.to_bytes(2, "big")


def uplink_topic(device: Device) -> str:
    return f"application/{device.application_id}/device/{device.dev_eui}/event/up"


def uplink(
    device: Device,
    *,
    kind: str,
    value: float,
    time_ns: int,
    f_cnt: int,
    radio: Radio,
    dedup_id: str,
    f_port: int = 2,
    with_object: bool = True,
) -> dict[str, Any]:
    """A ChirpStack v4 ``up`` event; ``with_object=False`` leaves decoding to the gateway."""
    event: dict[str, Any] = {
        "deduplicationId": dedup_id,
        "time": iso_event_time(time_ns),
        "deviceInfo": {
            "tenantId": device.tenant_id,
            "tenantName": device.tenant,
            "applicationId": device.application_id,
            "applicationName": device.application,
            "deviceProfileId": device.profile_id,
            "deviceProfileName": device.profile,
            "deviceName": device.name,
            "devEui": device.dev_eui,
            "tags": dict(device.tags),
        },
        "devAddr": device.dev_eui[-8:],
        "adr": True,
        "dr": 12 - radio.spreading_factor,
        "fCnt": f_cnt,
        "fPort": f_port,
        "confirmed": False,
        "data": base64.b64encode(lpp_bytes(kind, value)).decode("ascii"),
        "rxInfo": [
            {
                "gatewayId": radio.gateway_id,
                "uplinkId": radio.uplink_id,
                "gwTime": iso_event_time(time_ns),
                "nsTime": iso_event_time(time_ns),
                "rssi": radio.rssi,
                "snr": radio.snr,
                "channel": 0,
                "context": base64.b64encode(radio.uplink_id.to_bytes(4, "big")).decode("ascii"),
                "metadata": {"region_config_id": "eu868", "region_common_name": "EU868"},
                "crcStatus": "CRC_OK",
            }
        ],
        "txInfo": {
            "frequency": radio.frequency,
            "modulation": {
                "lora": {
                    "bandwidth": 125000,
                    "spreadingFactor": radio.spreading_factor,
                    "codeRate": "CR_4_5",
                }
            },
        },
    }
    if with_object:
        event["object"] = measurement_object(kind, value, time_ns // 1_000_000)
    return event


# Gateway events (ChirpStack MQTT forwarder / gateway bridge topics).


def _gateway_prefix(region: str, gateway_id: str) -> str:
    # The region prefix is optional (ChirpStack's topic_prefix setting).
    return f"{region}/gateway/{gateway_id}" if region else f"gateway/{gateway_id}"


def gateway_stats_topic(region: str, gateway_id: str) -> str:
    return _gateway_prefix(region, gateway_id) + "/event/stats"


def gateway_conn_topic(region: str, gateway_id: str) -> str:
    return _gateway_prefix(region, gateway_id) + "/state/conn"


def gateway_stats(
    gateway_id: str, *, time_ns: int, rx: int, rx_ok: int, tx: int, frequency: int = 868100000
) -> dict[str, Any]:
    """A ``GatewayStats`` event in its protobuf JSON form (as in the fixture)."""
    lora = {"bandwidth": 125000, "spreadingFactor": 7, "codeRate": "CR_4_5"}
    return {
        "gatewayId": gateway_id,
        "time": datetime.fromtimestamp(time_ns // 1_000_000_000, tz=UTC).strftime(
            "%Y-%m-%dT%H:%M:%SZ"
        ),
        "rxPacketsReceived": rx,
        "rxPacketsReceivedOk": rx_ok,
        "txPacketsReceived": tx,
        "txPacketsEmitted": tx,
        "rxPacketsPerFrequency": {str(frequency): rx_ok} if rx_ok else {},
        "txPacketsPerFrequency": {str(frequency): tx} if tx else {},
        "rxPacketsPerModulation": [{"modulation": {"lora": lora}, "count": rx_ok}] if rx_ok else [],
        "txPacketsPerModulation": (
            [{"modulation": {"lora": {**lora, "polarizationInversion": True}}, "count": tx}]
            if tx
            else []
        ),
        "txPacketsPerStatus": {"OK": tx} if tx else {},
        "metadata": {"simulator": "gateway"},
    }


def gateway_conn(gateway_id: str, online: bool) -> dict[str, Any]:
    """A ``ConnState`` message (published retained, like the forwarder does)."""
    return {"gatewayId": gateway_id, "state": "ONLINE" if online else "OFFLINE"}


def gateway_protobuf(message: str, event: dict[str, Any]) -> bytes:
    """The same event in ChirpStack's binary form (its gateway tools' default), built with
    ChirpStack's own published API package. ``message`` is ``stats`` or ``conn``."""
    from chirpstack_api import gw  # heavy (grpc); only the --format protobuf path needs it
    from google.protobuf import json_format  # type: ignore[import-untyped]

    proto = {"stats": gw.GatewayStats, "conn": gw.ConnState}[message]()
    return bytes(json_format.ParseDict(event, proto).SerializeToString())
