"""The channel-id rule shared by WebSocket connects and REST publishes."""

from __future__ import annotations

import pytest

from piewire.core.channels import (
    MAX_NUMERIC_ID,
    channel_id_error,
    channel_key,
    is_presence,
    is_private,
)


@pytest.mark.parametrize(
    "channel_id",
    [
        "abc",
        "a",
        "A" * 30,
        "room_1",
        "room-1",
        "-",
        "_",
        "Room",
        "1",
        "7",
        "1998",
        str(MAX_NUMERIC_ID),
        "0a",
        "007a",
        "private-room",
        "presence-room",
    ],
)
def test_valid_ids(channel_id: str) -> None:
    assert channel_id_error(channel_id) is None


@pytest.mark.parametrize(
    "channel_id",
    [
        "",
        "a" * 31,
        "café",
        "a/b",
        "a%2Fb",
        "room\x00",
        "room\n",
        "room ",
        " room",
        "a.b",
        "a+b",
        "0",
        "00",
        "007",
        str(MAX_NUMERIC_ID + 1),
        "99999999999999999999",
        "١٢",  # Arabic-Indic digits are digits, but not ASCII
        "²",
        "\uff52\uff4f\uff4f\uff4d",  # fullwidth letters
    ],
)
def test_invalid_ids(channel_id: str) -> None:
    error = channel_id_error(channel_id)
    assert error is not None
    assert error.startswith("invalid channel id")


def test_ids_are_case_sensitive_and_keys_are_per_api_key() -> None:
    assert channel_key("K", "room") != channel_key("K", "Room")
    assert channel_key("K1", "room") != channel_key("K2", "room")
    assert channel_key("K", "room") == channel_key("K", "room")


def test_a_long_bad_id_gives_a_short_reason() -> None:
    error = channel_id_error("!" * 100_000)
    assert error is not None
    assert len(error) < 200


def test_prefixes() -> None:
    assert is_private("private-x")
    assert not is_private("Private-x")
    assert not is_private("x-private-")
    assert is_presence("presence-x")
    assert not is_presence("presence")
    assert not is_private("presence-x")
