"""ingest's config: pure loads from plain dicts, and the command line a user meets first."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.ingest.config import DEFAULT_TOPICS, SETTINGS, load
from shared.config import EXIT_CONFIG, ConfigError
from tests.ingest.helpers import make_pki
from tests.support.procs import run_cli


def test_defaults_give_a_persistent_qos1_session_on_loopback() -> None:
    c = load({}, [])
    assert (c.mqtt_broker, c.mqtt_port, c.mqtt_protocol) == ("localhost", 1883, "5")
    assert c.mqtt_client_id == "lorawan-gateway-ingest"
    assert c.mqtt_topics == DEFAULT_TOPICS
    assert "application/+/device/+/event/+" in c.mqtt_topics
    assert c.mqtt_qos == 1 and c.mqtt_session_expiry == 3600
    assert c.mqtt_receive_maximum == c.zmq_raw_sndhwm == 1000
    assert c.zmq_raw_bind == "tcp://127.0.0.1:5557"
    assert c.metrics_port == 9101 and c.metrics_host == "127.0.0.1"
    assert c.tls_context is None and c.subscriptions == DEFAULT_TOPICS


def test_every_process_start_is_a_new_frame_source() -> None:
    # fan-out tracks seq per src: a restarted ingest (seq from 1 again) must not reuse one
    assert load({}, []).zmq_raw_src != load({}, []).zmq_raw_src
    assert load({"ZMQ_RAW_SRC": "ingest-a"}, []).zmq_raw_src == "ingest-a"


def test_flags_override_environment() -> None:
    c = load({"MQTT_PORT": "1884", "MQTT_TOPICS": "a/#"}, ["--mqtt-port", "1885"])
    assert c.mqtt_port == 1885 and c.mqtt_topics == ("a/#",)


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"MQTT_PORT": "abc"}, "MQTT_PORT"),
        ({"MQTT_PORT": "70000"}, "MQTT_PORT"),
        ({"MQTT_PROTOCOL": "4"}, "MQTT_PROTOCOL"),
        ({"MQTT_QOS": "2"}, "MQTT_QOS"),
        ({"MQTT_TOPICS": " , "}, "MQTT_TOPICS"),
        ({"MQTT_TOPICS": "a/#/b"}, "MQTT_TOPICS"),
        ({"MQTT_TOPICS": "a/b+/c"}, "MQTT_TOPICS"),
        ({"MQTT_SHARE_GROUP": "a/b"}, "MQTT_SHARE_GROUP"),
        ({"MQTT_SHARE_GROUP": "g", "MQTT_PROTOCOL": "3.1.1"}, "MQTT_SHARE_GROUP"),
        ({"MQTT_RECONNECT_MIN": "5", "MQTT_RECONNECT_MAX": "1"}, "MQTT_RECONNECT_MAX"),
        ({"MQTT_RECEIVE_MAXIMUM": "70000"}, "MQTT_RECEIVE_MAXIMUM"),
        ({"MQTT_PASSWORD": "secret"}, "MQTT_USERNAME"),
        ({"MQTT_PASSWORD_FILE": "/nonexistent/pw"}, "MQTT_PASSWORD_FILE"),
        ({"MQTT_TLS_CA": "/nonexistent/ca.pem"}, "MQTT_TLS_CA"),
        ({"MQTT_TLS_INSECURE": "true"}, "MQTT_TLS_INSECURE"),
        ({"ZMQ_RAW_BIND": "127.0.0.1:5557"}, "ZMQ_RAW_BIND"),
        ({"ZMQ_RAW_SNDHWM": "0"}, "ZMQ_RAW_SNDHWM"),
        ({"METRICS_PORT": "-1"}, "METRICS_PORT"),
    ],
)
def test_bad_values_name_their_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        load(env, [])


def test_secret_values_never_appear_in_errors() -> None:
    with pytest.raises(ConfigError) as err:
        load({"MQTT_PASSWORD": "hunter2-secret"}, [])
    assert "hunter2-secret" not in str(err.value)


def test_shared_subscription_prefixes_every_filter() -> None:
    c = load(
        {"MQTT_SHARE_GROUP": "gw", "MQTT_TOPICS": "application/+/device/+/event/+,$share/x/t/#"}, []
    )
    assert c.subscriptions == ("$share/gw/application/+/device/+/event/+", "$share/x/t/#")


def test_receive_maximum_follows_the_push_hwm_unless_set() -> None:
    assert load({"ZMQ_RAW_SNDHWM": "100"}, []).mqtt_receive_maximum == 100
    assert load({"ZMQ_RAW_SNDHWM": "100000"}, []).mqtt_receive_maximum == 65535
    both = {"ZMQ_RAW_SNDHWM": "100", "MQTT_RECEIVE_MAXIMUM": "20"}
    assert load(both, []).mqtt_receive_maximum == 20


def test_password_file_is_read_without_its_newline(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("s3cret\n")
    c = load({"MQTT_USERNAME": "gw", "MQTT_PASSWORD_FILE": str(tmp_path / "pw")}, [])
    assert c.mqtt_password == "s3cret"
    assert "s3cret" not in repr(c)
    with pytest.raises(ConfigError, match="not both"):
        load(
            {
                "MQTT_USERNAME": "gw",
                "MQTT_PASSWORD": "x",
                "MQTT_PASSWORD_FILE": str(tmp_path / "pw"),
            },
            [],
        )


def test_tls_is_implied_by_a_ca_and_checks_host_names(tmp_path: Path) -> None:
    pki = make_pki(tmp_path, "cfg")
    c = load({"MQTT_TLS_CA": str(pki.ca)}, [])
    assert c.tls_context is not None and c.tls_context.check_hostname
    insecure = load({"MQTT_TLS_CA": str(pki.ca), "MQTT_TLS_INSECURE": "1"}, [])
    assert insecure.tls_context is not None and not insecure.tls_context.check_hostname
    assert load({"MQTT_TLS": "true"}, []).tls_context is not None  # system CAs
    with pytest.raises(ConfigError, match="MQTT_TLS=false"):
        load({"MQTT_TLS": "false", "MQTT_TLS_CA": str(pki.ca)}, [])
    with pytest.raises(ConfigError, match="MQTT_TLS_CA"):
        load({"MQTT_TLS_CA": str(pki.key)}, [])  # a key is not a CA certificate


def test_client_key_problems_fail_at_load_time(tmp_path: Path) -> None:
    plain = make_pki(tmp_path / "plain", "plain", client=True)
    locked = make_pki(tmp_path / "locked", "locked", client=True, key_password=b"open-sesame")
    ok = load(
        {
            "MQTT_TLS_CERT": str(locked.cert),
            "MQTT_TLS_KEY": str(locked.key),
            "MQTT_TLS_KEY_PASSWORD": "open-sesame",
        },
        [],
    )
    assert ok.tls_context is not None
    with pytest.raises(ConfigError, match="MQTT_TLS_KEY=.*encrypted.*MQTT_TLS_KEY_PASSWORD"):
        load({"MQTT_TLS_CERT": str(locked.cert), "MQTT_TLS_KEY": str(locked.key)}, [])
    with pytest.raises(ConfigError, match="MQTT_TLS_KEY_PASSWORD does not decrypt"):
        load(
            {
                "MQTT_TLS_CERT": str(locked.cert),
                "MQTT_TLS_KEY": str(locked.key),
                "MQTT_TLS_KEY_PASSWORD": "wrong",
            },
            [],
        )
    with pytest.raises(ConfigError, match="MQTT_TLS_CERT"):
        load({"MQTT_TLS_CERT": str(locked.cert), "MQTT_TLS_KEY": str(plain.key)}, [])  # not its key
    with pytest.raises(ConfigError, match="MQTT_TLS_CERT is not"):
        load({"MQTT_TLS_KEY": str(plain.key)}, [])


# --------------------------------------------------------------------------- command line


def test_help_lists_every_variable() -> None:
    result = run_cli("ingest", ["--help"])
    assert result.returncode == 0, result.stderr
    for setting in SETTINGS:
        assert setting.env in result.stdout


def test_bad_config_exits_3_with_one_line_naming_the_variable() -> None:
    result = run_cli("ingest", [], env={"MQTT_PORT": "abc"})
    assert result.returncode == EXIT_CONFIG
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "MQTT_PORT" in lines[0] and "Bad config" in lines[0], result.stderr


def test_encrypted_key_without_password_fails_at_startup(tmp_path: Path) -> None:
    # RELIABILITY.md M3: OpenSSL would otherwise prompt on a terminal and hang the service.
    pki = make_pki(tmp_path, "m3", client=True, key_password=b"pw")
    result = run_cli(
        "ingest", [], env={"MQTT_TLS_CERT": str(pki.cert), "MQTT_TLS_KEY": str(pki.key)}, timeout=30
    )
    assert result.returncode == EXIT_CONFIG
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "MQTT_TLS_KEY_PASSWORD" in lines[0], result.stderr
