"""Server JSON, and which client text frames carry a reserved event."""

from __future__ import annotations

import json

import pytest

from piewire.core.messages import (
    AUTH_FAILED_TEXT,
    RESERVED_EVENTS,
    carries_error,
    client_frame_refusal,
    dumps,
    error_text,
    event_text,
    reserved_event_of,
    system_error_text,
)


def test_the_documented_auth_text_is_kept_exactly() -> None:
    assert AUTH_FAILED_TEXT == "Authentication failed, provide valid jwt token."


def test_server_json_is_compact_and_keeps_non_ascii() -> None:
    assert dumps({"a": [1, "é"]}) == '{"a":[1,"é"]}'
    assert error_text("bad key") == '{"error":"bad key"}'
    assert event_text("system:boot", {}) == '{"event":"system:boot","data":{}}'
    assert json.loads(system_error_text("no")) == {
        "event": "system:error",
        "data": {"error": "no"},
    }


def test_a_system_error_event_has_no_top_level_error_field() -> None:
    # Every SDK stops reconnecting for good on a top-level "error".
    assert "error" not in json.loads(system_error_text("not relayed"))


def test_reserved_events_are_the_ones_the_server_emits() -> None:
    assert (
        frozenset(
            {
                "system:member_list",
                "system:member_joined",
                "system:member_left",
                "system:boot",
                "system:error",
            }
        )
        == RESERVED_EVENTS
    )


@pytest.mark.parametrize("event", sorted(RESERVED_EVENTS))
def test_each_reserved_event_is_found(event: str) -> None:
    frame = json.dumps({"event": event, "data": {"members": []}}).encode()
    assert reserved_event_of(frame) == event


@pytest.mark.parametrize(
    "frame",
    [
        b"hello",
        b"",
        b"system:member_joined",
        b'"system:member_joined"',
        b'["system:member_joined"]',
        b'[{"event":"system:member_joined"}]',
        b'{"event":"system:portal_broadcaster","data":{}}',
        b'{"event":"system:video_offer","data":{}}',
        b'{"event":"system:stopped_screen"}',
        b'{"event":"chat","data":"system:member_joined"}',
        b'{"data":{"event":"system:member_joined"}}',
        b'{"event":["system:member_joined"]}',
        b'{"event":"system:member_joined ","data":{}}',
        b'{"event":"System:member_joined"}',
        b'{"event":"system:member_joined"',
        b'{"event":"system:member_joined"} trailing',
        b'{"event":"system:member_joined","x":NaN}',
        b'\xef\xbb\xbf{"event":"system:member_joined"}',
        b'{"event":"system:member_joined","event":"chat"}',
    ],
)
def test_frames_that_are_relayed(frame: bytes) -> None:
    assert reserved_event_of(frame) is None


@pytest.mark.parametrize(
    ("frame", "event"),
    [
        (b' \r\n\t{"event" : "system:boot"} \n', "system:boot"),
        (b'{"event":"chat","event":"system:boot"}', "system:boot"),
        # The same name spelled with JSON escapes is the same event to a client.
        (b'{"event":"system\\u003amember_joined"}', "system:member_joined"),
        (b'{"event":"\\u0073ystem:member_left"}', "system:member_left"),
        (b'{"\\u0065vent":"system:error"}', "system:error"),
        (b'{"event":"\\u0073\\u0079\\u0073tem\\u003Aboot"}', "system:boot"),
    ],
)
def test_frames_that_carry_a_reserved_event(frame: bytes, event: str) -> None:
    assert reserved_event_of(frame) == event


def test_a_huge_integer_does_not_hide_the_event() -> None:
    # Past 4,300 digits Python's int() refuses, while JSON.parse reads it.
    frame = b'{"event":"system:member_joined","n":' + b"1" * 20_000 + b"}"
    assert reserved_event_of(frame) == "system:member_joined"
    frame = b'{"n":' + b"9" * 20_000 + b'.5e3,"event":"system:boot"}'
    assert reserved_event_of(frame) == "system:boot"


@pytest.mark.parametrize("depth", [2_000, 30_000])
def test_deep_nesting_neither_hides_the_event_nor_raises(depth: int) -> None:
    deep = b"[" * depth + b"]" * depth
    nested = b'{"a":' * depth + b"1" + b"}" * depth
    before = b'{"event":"system:member_joined","x":' + deep + b"}"
    after = b'{"x":' + deep + b',"y":"]}\\"","event":"system:member_left"}'
    inside = b'{"x":' + nested + b',"event":"system:boot"}'
    assert reserved_event_of(before) == "system:member_joined"
    assert reserved_event_of(after) == "system:member_left"
    assert reserved_event_of(inside) == "system:boot"


@pytest.mark.parametrize("depth", [2_000, 30_000])
def test_deep_frames_without_a_top_level_reserved_event_are_relayed(
    depth: int,
) -> None:
    deep = b"[" * depth + b"]" * depth
    frames = [
        b'{"event":"chat","x":' + deep + b"}",
        b'{"event":"system:boot","x":' + deep + b',"event":"chat"}',
        b'{"x":' + b'{"event":"system:boot","y":' * depth + b"1" + b"}" * (depth + 1),
        b'{"event":"system:boot","x":' + b"[" * depth + b"}",
        b'{"event":"system:boot","x":' + deep + b"} trailing",
        b'{"event":"system:boot" "x":' + deep + b"}",
        b"[" + deep + b',{"event":"system:boot"}]',
    ]
    for frame in frames:
        assert reserved_event_of(frame) is None, frame[:60]


def test_non_utf8_bytes_are_not_an_event() -> None:
    assert reserved_event_of(b'{"event":"system:boot","x":"\xff"}') is None


@pytest.mark.parametrize(
    "frame",
    [
        b'{"error":"stop reconnecting"}',
        b'{"data":1,"error":{"code":1}}',
        b'{"\\u0065rror":"escaped name"}',
        b"{" * 1 + b'"a":' + b"[" * 5000 + b"]" * 5000 + b',"error":"deep"}',
    ],
)
def test_top_level_error_fields_are_refused(frame: bytes) -> None:
    assert carries_error(frame)
    assert client_frame_refusal(frame) == "clients may not send a top-level error field"


@pytest.mark.parametrize(
    "frame",
    [
        b'{"error":""}',
        b'{"error":null}',
        b'{"data":{"error":"nested is fine"}}',
        b'["error"]',
        b"error: plain text",
    ],
)
def test_other_error_mentions_are_relayed(frame: bytes) -> None:
    assert not carries_error(frame)
    assert client_frame_refusal(frame) is None
