"""Config loading: env gives values, flags override, bad values name the variable."""

from __future__ import annotations

import pytest

from shared import config
from shared.config import ConfigError, HelpRequested, Setting

SETTINGS = (
    Setting("MQTT_PORT", "1883", config.port, "broker port"),
    Setting("MQTT_TOPICS", "a/#,b/#", config.csv, "topic filters"),
    Setting("ZMQ_RAW_CONNECT", "tcp://127.0.0.1:5557", config.endpoints, "raw endpoints"),
    Setting("MQTT_PASSWORD", "", config.text, "password", secret=True),
    Setting("WEBSOCKET_TLS", "false", config.boolean, "tls"),
)


def load(environ, argv=()):
    return config.load(SETTINGS, environ, list(argv), prog="svc", description="test")


def test_defaults_apply_when_nothing_is_set():
    values = load({})
    assert values == {
        "mqtt_port": 1883,
        "mqtt_topics": ("a/#", "b/#"),
        "zmq_raw_connect": ("tcp://127.0.0.1:5557",),
        "mqtt_password": "",
        "websocket_tls": False,
    }


def test_flags_override_environment():
    values = load({"MQTT_PORT": "1884", "WEBSOCKET_TLS": "yes"}, ["--mqtt-port", "1885"])
    assert values["mqtt_port"] == 1885
    assert values["websocket_tls"] is True


def test_lists_are_comma_separated():
    values = load({"ZMQ_RAW_CONNECT": "tcp://a:1, tcp://b:2,"})
    assert values["zmq_raw_connect"] == ("tcp://a:1", "tcp://b:2")


@pytest.mark.parametrize(
    ("environ", "argv", "named"),
    [
        ({"MQTT_PORT": "abc"}, [], "MQTT_PORT"),
        ({"MQTT_PORT": "70000"}, [], "MQTT_PORT"),
        ({}, ["--mqtt-port", "-1"], "--mqtt-port"),
        ({"ZMQ_RAW_CONNECT": "localhost:5557"}, [], "ZMQ_RAW_CONNECT"),
        ({"WEBSOCKET_TLS": "maybe"}, [], "WEBSOCKET_TLS"),
        ({}, ["--no-such-option", "1"], "--no-such-option"),
    ],
)
def test_bad_values_raise_one_error_naming_the_variable(environ, argv, named):
    with pytest.raises(ConfigError) as info:
        load(environ, argv)
    assert named in str(info.value)


def test_secret_values_are_not_echoed_in_errors():
    secret = Setting("MQTT_PASSWORD", "", config.integer(), "password", secret=True)
    with pytest.raises(ConfigError) as info:
        config.load((secret,), {"MQTT_PASSWORD": "hunter2"}, [], prog="svc", description="d")
    assert "hunter2" not in str(info.value)
    assert "MQTT_PASSWORD" in str(info.value)


def test_help_lists_every_variable(capsys):
    with pytest.raises(HelpRequested):
        load({}, ["--help"])
    out = capsys.readouterr().out
    for s in SETTINGS:
        assert s.env in out and s.flag in out
