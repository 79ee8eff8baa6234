"""Server-to-client frames: the RFC 6455 layout, byte for byte."""

from __future__ import annotations

import struct

import pytest

from piewire.transport.frames import (
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    close_frame,
    encode_frame,
    text_frame,
)


def decode(frame: bytes) -> tuple[int, int, bool, bytes]:
    """(first byte, opcode, masked, payload) of exactly one frame."""
    first, second = frame[0], frame[1]
    masked = bool(second & 0x80)
    size = second & 0x7F
    at = 2
    if size == 126:
        (size,) = struct.unpack("!H", frame[2:4])
        at = 4
    elif size == 127:
        (size,) = struct.unpack("!Q", frame[2:10])
        at = 10
    payload = frame[at:]
    assert len(payload) == size, "length field does not match the payload"
    return first, first & 0x0F, masked, payload


def test_opcodes_are_the_rfc_values() -> None:
    assert (OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG) == (1, 2, 8, 9, 10)


@pytest.mark.parametrize(
    ("size", "header"),
    [
        (0, 2),
        (1, 2),
        (125, 2),
        (126, 4),
        (127, 4),
        (65535, 4),
        (65536, 10),
        (70000, 10),
    ],
)
def test_length_encodings_at_their_boundaries(size: int, header: int) -> None:
    payload = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    frame = encode_frame(OP_BINARY, payload)
    assert len(frame) == header + size
    first, opcode, masked, body = decode(frame)
    assert first == 0x82  # FIN, no RSV bits, binary
    assert opcode == OP_BINARY
    assert not masked
    assert body == payload


def test_the_shortest_length_form_is_used() -> None:
    assert encode_frame(OP_TEXT, b"x" * 125)[1] == 125
    assert encode_frame(OP_TEXT, b"x" * 126)[1:4] == b"\x7e\x00\x7e"
    assert encode_frame(OP_TEXT, b"x" * 65536)[1:10] == b"\x7f" + struct.pack(
        "!Q", 65536
    )


def test_text_frames_carry_utf8() -> None:
    assert text_frame("hi") == b"\x81\x02hi"
    first, _, _, payload = decode(text_frame("κόσμε"))
    assert first == 0x81
    assert payload.decode("utf-8") == "κόσμε"


def test_control_frames() -> None:
    assert encode_frame(OP_PING, b"") == b"\x89\x00"
    assert encode_frame(OP_PONG, b"abc") == b"\x8a\x03abc"


def test_an_empty_close_frame_has_no_status() -> None:
    assert close_frame(None) == b"\x88\x00"


def test_close_frames_carry_code_and_reason() -> None:
    assert close_frame(1000) == b"\x88\x02\x03\xe8"
    assert close_frame(4002, "bad channel") == b"\x88\x0d\x0f\xa2bad channel"
    _, opcode, _, payload = decode(close_frame(4100, "slow consumer"))
    assert opcode == OP_CLOSE
    assert struct.unpack("!H", payload[:2])[0] == 4100
    assert payload[2:] == b"slow consumer"


def test_a_long_reason_is_cut_to_fit_a_control_frame() -> None:
    frame = close_frame(1001, "r" * 500)
    _, _, _, payload = decode(frame)
    assert len(payload) == 125
    assert payload[2:] == b"r" * 123


def test_a_long_reason_is_cut_on_a_character_boundary() -> None:
    frame = close_frame(1000, "é" * 100)
    _, _, _, payload = decode(frame)
    assert payload[2:].decode("utf-8") == "é" * 61
