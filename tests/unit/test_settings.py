"""Settings: defaults, flag over environment over default, and validation."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from piewire.errors import ConfigError
from piewire.settings import SETTINGS, Settings, env_name, flag_name, load_settings


def test_documented_defaults() -> None:
    s = Settings()
    assert s.max_message_size == 64 * 1024
    assert s.outbound_buffer == 1024 * 1024
    assert s.ping_interval == 25.0
    assert s.ping_timeout == 20.0
    assert s.port == 8080
    assert s.workers == 1
    assert s.redis_url is None
    assert not s.tls


def test_every_setting_has_help_a_flag_and_a_variable() -> None:
    names = {f.name for f in SETTINGS}
    assert {"max_message_size", "body_timeout", "ping_interval"} <= names
    for f in SETTINGS:
        assert f.metadata["help"]
    assert flag_name("max_message_size") == "--max-message-size"
    assert env_name("max_message_size") == "PIEWIRE_MAX_MESSAGE_SIZE"


def test_the_rest_body_limit_follows_the_message_limit() -> None:
    assert Settings().rest_body_limit == 6 * 64 * 1024 + 4096
    small = Settings(max_message_size=1000, outbound_buffer=2000)
    assert small.rest_body_limit == 6 * 1000 + 4096


def test_flag_beats_variable_beats_default() -> None:
    env = {"PIEWIRE_PORT": "9000", "PIEWIRE_BODY_TIMEOUT": "2.5"}
    s = load_settings({"port": "9100", "body_timeout": None}, env)
    assert s.port == 9100
    assert s.body_timeout == 2.5
    assert load_settings({}, {}).port == 8080


def test_values_are_converted_to_their_types() -> None:
    env = {
        "PIEWIRE_DATA_DIR": "/tmp/x",
        "PIEWIRE_PING_INTERVAL": "1.5",
        "PIEWIRE_MAX_MESSAGE_SIZE": "1000",
        "PIEWIRE_REDIS_URL": "redis://127.0.0.1:6379/0",
        "PIEWIRE_TLS_CERT": "/c.pem",
        "PIEWIRE_TLS_KEY": "/k.pem",
    }
    s = load_settings({}, env)
    assert s.data_dir == Path("/tmp/x")
    assert s.ping_interval == 1.5
    assert s.max_message_size == 1000
    assert s.redis_url == "redis://127.0.0.1:6379/0"
    assert s.tls_cert == Path("/c.pem")
    assert s.tls


def test_an_empty_value_means_the_default() -> None:
    s = load_settings({"port": ""}, {"PIEWIRE_MAX_MESSAGE_SIZE": ""})
    assert s.port == 8080
    assert s.max_message_size == 64 * 1024


@pytest.mark.parametrize(
    ("name", "raw"),
    [("port", "abc"), ("port", "80.5"), ("ping_interval", "soon")],
)
def test_unconvertible_values_are_config_errors(name: str, raw: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({name: raw}, {})
    # The message names the flag and the variable a user can actually set.
    assert "--" + name.replace("_", "-") in str(caught.value)
    assert "PIEWIRE_" + name.upper() in str(caught.value)


@pytest.mark.parametrize(
    "values",
    [
        {"port": 0},
        {"port": 65536},
        {"max_message_size": 0},
        {"max_message_size": 1000, "outbound_buffer": 1999},
        {"outbound_buffer": 64 * 1024},
        {"tls_cert": Path("/c.pem")},
        {"tls_key": Path("/k.pem")},
        {"ping_interval": 0},
        {"ping_timeout": -1},
        {"workers": 0},
        {"workers": 2},
        {"log_level": "LOUD"},
    ],
)
def test_invalid_combinations_are_refused(values: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        Settings(**values)


def test_valid_edge_values() -> None:
    Settings(port=1)
    Settings(port=65535)
    Settings(max_message_size=1000, outbound_buffer=2000)
    Settings(workers=2, redis_url="redis://127.0.0.1:6379/0")
    Settings(log_level="debug")


@pytest.mark.parametrize(
    "values",
    [
        {"ping_interval": math.nan},
        {"ping_timeout": math.inf},
        {"body_timeout": -1.0},
        {"key_refresh": 0.0},
        {"shutdown_grace": -0.5},
        {"presence_ttl": 0.0},
        {"presence_rate": 0},
    ],
)
def test_non_finite_or_non_positive_durations_are_refused(
    values: dict[str, Any],
) -> None:
    with pytest.raises(ConfigError):
        Settings(**values)
