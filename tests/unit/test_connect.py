"""The connect URL: raw path split first, ``%XX`` decoded once, ``+`` kept."""

from __future__ import annotations

import uuid

import pytest

from piewire.closecodes import CloseCode
from piewire.core.connect import (
    MAX_USER_BYTES,
    MAX_UUID_LENGTH,
    channel_from_path,
    decode_piece,
    parse_connect,
    parse_flag,
    parse_query,
)
from piewire.errors import ConnectRefused


def refusal(target: str) -> ConnectRefused:
    with pytest.raises(ConnectRefused) as caught:
        parse_connect(target)
    return caught.value


@pytest.mark.parametrize(
    ("raw_path", "channel"),
    [
        ("/v3/abc", "abc"),
        ("/v3/1", "1"),
        ("/v3/100000", "100000"),
        ("/v3/Room", "Room"),
        ("/v3/" + "a" * 30, "a" * 30),
        ("/v3/1/1998", "1998"),
        ("/v3/cluster/room_1-x", "room_1-x"),
        ("/v3/ab%63", "abc"),
        ("/v3/private-x", "private-x"),
        ("/v3/presence-x", "presence-x"),
    ],
)
def test_valid_channel_paths(raw_path: str, channel: str) -> None:
    assert channel_from_path(raw_path) == channel


@pytest.mark.parametrize(
    "raw_path",
    [
        "/v3/",
        "/v3/" + "a" * 31,
        "/v3/caf%C3%A9",
        "/v3/a%2Fb",
        "/v3/a%252Fb",
        "/v3/room%00",
        "/v3/room%20",
        "/v3/0",
        "/v3/007",
        "/v3/100001",
        "/v3/room/",
        "/v3/a.b",
    ],
)
def test_invalid_channel_ids_are_refused_with_4002(raw_path: str) -> None:
    with pytest.raises(ConnectRefused) as caught:
        channel_from_path(raw_path)
    assert caught.value.code == CloseCode.INVALID_CHANNEL
    assert caught.value.code.final


def test_encoded_slash_is_part_of_the_id_not_a_separator() -> None:
    with pytest.raises(ConnectRefused) as caught:
        channel_from_path("/v3/a%2Fb")
    assert "'a/b'" in caught.value.reason


def test_double_encoding_is_decoded_only_once() -> None:
    with pytest.raises(ConnectRefused) as caught:
        channel_from_path("/v3/a%252Fb")
    assert "'a%2Fb'" in caught.value.reason


@pytest.mark.parametrize(
    "raw_path", ["/v3", "/v2/room", "/room", "/v3/a/b/c", "v3/room", "/V3/room"]
)
def test_other_path_shapes_are_bad_requests(raw_path: str) -> None:
    with pytest.raises(ConnectRefused) as caught:
        channel_from_path(raw_path)
    assert caught.value.code == CloseCode.BAD_REQUEST


def test_a_piece_that_is_not_utf8_once_decoded_is_a_bad_request() -> None:
    with pytest.raises(ConnectRefused) as caught:
        decode_piece("%FF")
    assert caught.value.code == CloseCode.BAD_REQUEST


def test_decode_keeps_plus_and_decodes_once() -> None:
    assert decode_piece("K+x") == "K+x"
    assert decode_piece("K%2Bx") == "K+x"
    assert decode_piece("K%252Bx") == "K%2Bx"
    assert decode_piece("caf%C3%A9") == "café"


@pytest.mark.parametrize(
    ("value", "on"),
    [
        (None, True),
        ("", True),
        ("1", True),
        ("true", True),
        ("TRUE", True),
        ("True", True),
        ("0", False),
        ("false", False),
        ("FALSE", False),
    ],
)
def test_flag_values(value: str | None, on: bool) -> None:
    assert parse_flag("notify_self", value) is on


@pytest.mark.parametrize("value", ["yes", "no", "on", "2", " 1", "1 ", "tru", "-1"])
def test_any_other_flag_value_is_refused(value: str) -> None:
    with pytest.raises(ConnectRefused) as caught:
        parse_flag("notify_self", value)
    assert caught.value.code == CloseCode.BAD_REQUEST
    assert "notify_self" in caught.value.reason


@pytest.mark.parametrize(
    ("query", "on"),
    [
        ("&notify_self", True),
        ("&notify_self=", True),
        ("&notify_self=1", True),
        ("&notify_self=true", True),
        ("&notify_self=0", False),
        ("&notify_self=false", False),
        ("", False),
    ],
)
def test_notify_self_in_a_url(query: str, on: bool) -> None:
    assert parse_connect("/v3/room?api_key=K" + query).notify_self is on


@pytest.mark.parametrize("flag", ["notify_self", "presence", "be"])
def test_every_flag_refuses_unknown_values(flag: str) -> None:
    assert refusal(f"/v3/room?api_key=K&{flag}=yes").code == CloseCode.BAD_REQUEST


def test_presence_and_boot_flags() -> None:
    params = parse_connect("/v3/room?api_key=K&presence=1&be=1")
    assert params.presence
    assert params.boot_event
    params = parse_connect("/v3/room?api_key=K")
    assert not params.presence
    assert not params.boot_event
    assert not params.notify_self


@pytest.mark.parametrize(
    "query",
    [
        "api_key=K&notify_self=0&notify_self=1",
        "api_key=K&notify_self&notify_self",
        "api_key=GOOD&api_key=BAD",
        "api_key=BAD&api_key=GOOD",
        "api_key=K&apiKey=K",
        "api_key=K&user=a&user=b",
        "api_key=K&presence=1&presence=1",
        "api_key=K&api%5Fkey=K",
    ],
)
def test_a_known_parameter_given_twice_is_refused(query: str) -> None:
    refused = refusal("/v3/room?" + query)
    assert refused.code == CloseCode.BAD_REQUEST
    assert "more than once" in refused.reason


def test_api_key_escapes_decode_once_and_plus_stays_plus() -> None:
    assert parse_connect("/v3/room?api_key=K%2Bx").api_key == "K+x"
    assert parse_connect("/v3/room?api_key=K+x").api_key == "K+x"
    assert parse_connect("/v3/room?api_key=K%252Bx").api_key == "K%2Bx"


def test_api_key_spelling_apikey_is_accepted() -> None:
    assert parse_connect("/v3/1/1998?apiKey=K").api_key == "K"


@pytest.mark.parametrize(
    "extra",
    ["&source=js", "&v=5.1.0", "&source", "&", "&&", "&%FF=1", "&x=%FF", "&=1"],
)
def test_unknown_parameters_are_ignored(extra: str) -> None:
    params = parse_connect("/v3/room?api_key=K" + extra)
    assert params.api_key == "K"
    assert params.channel_id == "room"


@pytest.mark.parametrize("query", ["", "?", "?api_key=", "?api_key", "?apikey=K"])
def test_missing_api_key_is_refused_with_4001(query: str) -> None:
    assert refusal("/v3/room" + query).code == CloseCode.INVALID_API_KEY


def test_the_channel_is_checked_before_the_query() -> None:
    assert refusal("/v3/a%2Fb?notify_self=yes").code == CloseCode.INVALID_CHANNEL


def test_user_is_decoded_and_bounded() -> None:
    text = '{"name":"Zoë"}'
    params = parse_connect('/v3/room?api_key=K&user={"name":"Zo%C3%AB"}')
    assert params.user == text
    assert parse_connect("/v3/room?api_key=K").user is None
    long_user = "u" * (MAX_USER_BYTES + 1)
    assert refusal(f"/v3/room?api_key=K&user={long_user}").code == (
        CloseCode.BAD_REQUEST
    )
    assert refusal("/v3/room?api_key=K&user=%FF").code == CloseCode.BAD_REQUEST


def test_uuid_is_kept_or_made() -> None:
    assert parse_connect("/v3/room?api_key=K&uuid=abc").uuid == "abc"
    made = {parse_connect("/v3/room?api_key=K").uuid for _ in range(3)}
    made.add(parse_connect("/v3/room?api_key=K&uuid=").uuid)
    assert len(made) == 4
    for value in made:
        assert uuid.UUID(value).version == 4
    too_long = "u" * (MAX_UUID_LENGTH + 1)
    assert refusal(f"/v3/room?api_key=K&uuid={too_long}").code == (
        CloseCode.BAD_REQUEST
    )


def test_jwt_is_taken_from_the_query() -> None:
    assert parse_connect("/v3/private-x?api_key=K&jwt=a.b.c").jwt == "a.b.c"
    assert parse_connect("/v3/private-x?api_key=K&jwt=").jwt is None
    assert parse_connect("/v3/private-x?api_key=K").jwt is None


def test_parse_query_returns_only_known_parameters_by_canonical_name() -> None:
    found = parse_query("apiKey=K&notify_self&source=x&user=u")
    assert found == {"api_key": "K", "notify_self": None, "user": "u"}
