"""The body of ``POST /api/publish``: what is refused with which status."""

from __future__ import annotations

import json
from typing import Any

import pytest

from piewire.core.publish import content_type_allowed, parse_publish
from piewire.errors import ApiError

LIMIT = 64 * 1024


def body(**fields: Any) -> bytes:
    base: dict[str, Any] = {"key": "K", "secret": "S", "channelId": "room"}
    base.update(fields)
    return json.dumps({k: v for k, v in base.items() if v is not ...}).encode()


def refused(raw: bytes, limit: int = LIMIT) -> ApiError:
    with pytest.raises(ApiError) as caught:
        parse_publish(raw, limit)
    return caught.value


def test_a_string_message_is_delivered_as_its_own_text() -> None:
    parsed = parse_publish(body(message='{"a": 1}'), LIMIT)
    assert parsed.payload == b'{"a": 1}'
    assert (parsed.api_key, parsed.secret, parsed.channel_id) == ("K", "S", "room")


@pytest.mark.parametrize(
    ("message", "payload"),
    [
        ({"event": "x", "data": {"n": 1}}, b'{"event":"x","data":{"n":1}}'),
        ([1, "a", None], b'[1,"a",null]'),
        (42, b"42"),
        (1.5, b"1.5"),
        (False, b"false"),
        ("", b""),
        ("héllo ✓", "héllo ✓".encode()),
        ({"k": "é"}, '{"k":"é"}'.encode()),
    ],
)
def test_other_values_are_delivered_as_their_json_text(
    message: Any, payload: bytes
) -> None:
    parsed = parse_publish(body(message=message), LIMIT)
    assert parsed.payload == payload
    if not isinstance(message, str):
        assert json.loads(parsed.payload) == message


def test_an_object_is_never_encoded_twice() -> None:
    message = {"text": 'a "quoted" word'}
    parsed = parse_publish(body(message=message), LIMIT)
    assert json.loads(parsed.payload) == message
    assert not isinstance(json.loads(parsed.payload), str)


@pytest.mark.parametrize(
    ("fields", "channel"),
    [
        ({"channelId": 7}, "7"),
        ({"channelId": "7"}, "7"),
        ({"channelId": ..., "roomId": "lobby"}, "lobby"),
        ({"channelId": ..., "roomId": 1998}, "1998"),
        ({"channelId": "a", "roomId": "b"}, "a"),
        ({"channelId": "private-room"}, "private-room"),
    ],
)
def test_channel_id_and_room_id(fields: dict[str, Any], channel: str) -> None:
    assert parse_publish(body(message="m", **fields), LIMIT).channel_id == channel


@pytest.mark.parametrize(
    "channel",
    [
        "",
        "a" * 31,
        "café",
        "a/b",
        "room\x00",
        0,
        "0",
        "007",
        100_001,
        "100001",
        True,
        1.0,
        None,
        ["room"],
        {"id": "room"},
    ],
)
def test_invalid_channel_ids_get_400(channel: Any) -> None:
    assert refused(body(message="m", channelId=channel)).status == 400


def test_a_missing_channel_id_gets_400() -> None:
    error = refused(body(message="m", channelId=...))
    assert error.status == 400
    assert "channelId" in error.message


@pytest.mark.parametrize("message", [..., None])
def test_a_missing_message_gets_the_documented_text(message: Any) -> None:
    error = refused(body(message=message))
    assert (error.status, error.message) == (400, "Missing message from payload")


@pytest.mark.parametrize(
    "fields",
    [
        {"key": ...},
        {"secret": ...},
        {"key": ""},
        {"secret": ""},
        {"key": 1},
        {"secret": None},
        {"secret": ["S"]},
    ],
)
def test_missing_or_odd_credentials_get_401(fields: dict[str, Any]) -> None:
    error = refused(body(message="m", **fields))
    assert (error.status, error.message) == (401, "invalid key or secret")


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"   ",
        b"{",
        b"not json",
        b"[]",
        b'["room", "m"]',
        b"null",
        b'"text"',
        b"42",
        b"\xff\xfe{}",
        b'{"key": "K", "secret": "S", "channelId": "room", "message": "\xe9"}',
        b'{"key": "K", "secret": "S", "channelId": "room", "message": NaN}',
        b'{"key": "K", "secret": "S", "channelId": "room", "message": Infinity}',
        b'{"key": "K", "secret": "S", "channelId": "room", "message": -Infinity}',
        b'{"key": "K", "secret": "S", "channelId": "room", "message": 1e400}',
        b'{"key": "K", "secret": "S", "channelId": "room", "message": "\\ud800"}',
        b'{"key": "K", "secret": "S", "channelId": "room", "message": {"\\udfff": 1}}',
    ],
)
def test_bodies_that_are_not_a_json_object_get_400(raw: bytes) -> None:
    assert refused(raw).status == 400


def test_deeply_nested_json_gets_400_not_an_exception() -> None:
    deep = "[" * 100_000 + "]" * 100_000
    raw = b'{"key": "K", "secret": "S", "channelId": "room", "message": %s}' % (
        deep.encode()
    )
    assert refused(raw, 10_000_000).status == 400


def test_message_size_limit_is_in_utf8_bytes() -> None:
    assert len(parse_publish(body(message="x" * LIMIT), LIMIT).payload) == LIMIT
    error = refused(body(message="x" * (LIMIT + 1)))
    assert error.status == 413
    half = LIMIT // 2
    assert len(parse_publish(body(message="é" * half), LIMIT).payload) == LIMIT
    assert refused(body(message="é" * half + "x")).status == 413


def test_size_limit_applies_to_the_json_text_of_non_strings() -> None:
    message = ["x" * 10]  # ["xxxxxxxxxx"] is 14 bytes
    assert parse_publish(body(message=message), 14).payload == b'["xxxxxxxxxx"]'
    assert refused(body(message=message), 13).status == 413


def test_escaped_text_is_delivered_unescaped() -> None:
    raw = body(message='line\n\t"quote" \\ \u0001 ✓')
    assert parse_publish(raw, LIMIT).payload == 'line\n\t"quote" \\ \u0001 ✓'.encode()


@pytest.mark.parametrize(
    ("content_type", "allowed"),
    [
        ("", True),
        ("application/json", True),
        ("application/json; charset=utf-8", True),
        ("Application/JSON", True),
        ("application/json;charset=UTF-8", True),
        (" application/json ", True),
        ("text/plain", True),
        ("text/plain; charset=utf-8", True),
        ("application/vnd.api+json", True),
        ("application/x-www-form-urlencoded", False),
        ("multipart/form-data; boundary=x", False),
        ("text/html", False),
        ("application/xml", False),
    ],
)
def test_content_types(content_type: str, allowed: bool) -> None:
    assert content_type_allowed(content_type) is allowed
