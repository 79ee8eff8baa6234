"""WebSocket framing from a client that breaks the rules on purpose.

Cases W1 (invalid UTF-8), W2 (fragments) and W3 (close codes): each bad
connection is closed with the standard code, nothing of it is relayed, the
other members of its channel notice nothing, and the server's connection
count returns to what it was.
"""

from __future__ import annotations

import contextlib
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.members import connection_count, fresh_channel, join, wait_for_count
from tests.rawws import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONTINUATION,
    OP_PONG,
    OP_TEXT,
    Frame,
    RawWebSocket,
    close_payload,
)
from tests.support import Key, Server, running_server, scaled

MIB = 1024 * 1024

# Codes a peer must never put on the wire (RFC 6455 7.4.1).
LOCAL_ONLY_CODES = {1005, 1006, 1015}

INVALID_UTF8 = [
    pytest.param(bytes.fromhex("CEBAE1BDB9CF83CEBCCEB5EDA080"), id="surrogate-at-end"),
    pytest.param(b"\xff", id="ff"),
]


@pytest.fixture(scope="module")
def framing_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp_path: Path = tmp_path_factory.mktemp("framing")
    with running_server(tmp_path) as server:
        yield server


@pytest.fixture
def fkey(framing_server: Server) -> Key:
    assert framing_server.key is not None
    return framing_server.key


class Pair:
    """A member that misbehaves, and a witness in the same channel."""

    def __init__(self, server: Server, key: Key, prefix: str) -> None:
        self.server = server
        self.key = key
        self.channel = fresh_channel(prefix)
        self.start = connection_count(server, key)
        self.witness = join(server, key, self.channel)
        self.baseline = connection_count(server, key)
        self.bad = join(server, key, self.channel)

    def close(self) -> None:
        self.bad.close()
        self.witness.close()
        wait_for_count(self.server, self.key, self.start)

    def server_closes(self, code: int | None, *, answer: bool = False) -> Frame:
        """The server closes the bad member with ``code``, ends TCP, uncounts it.

        ``answer``: the server started the closing handshake, so the client
        answers with a close frame of its own before waiting for the end.
        """
        frame = self.bad.recv_close()
        assert frame.close_code not in LOCAL_ONLY_CODES
        assert frame.close_code == code, frame
        if answer:
            # The server may fail the connection without waiting for this.
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self.bad.send_close(code)
        self.bad.expect_end()
        wait_for_count(self.server, self.key, self.baseline)
        return frame

    def witness_unaffected(self) -> None:
        """The witness got nothing so far, and the channel still works both ways."""
        third = join(self.server, self.key, self.channel)
        with third:
            third.send_text("after")
            frame = self.witness.recv_data()
            assert (frame.opcode, frame.payload) == (OP_TEXT, b"after")
            self.witness.send_binary(b"\x00back")
            frame = third.recv_data()
            assert (frame.opcode, frame.payload) == (OP_BINARY, b"\x00back")


@pytest.fixture
def pair(
    framing_server: Server, fkey: Key, request: pytest.FixtureRequest
) -> Iterator[Pair]:
    members = Pair(framing_server, fkey, request.node.originalname[5:25])
    try:
        yield members
    finally:
        members.close()


def relayed(pair: Pair, opcode: int, payload: bytes) -> None:
    """The witness receives exactly this message next, and only once."""
    frame = pair.witness.recv_data()
    assert (frame.opcode, frame.payload) == (opcode, payload)
    assert frame.fin
    pair.bad.send_text("marker")
    frame = pair.witness.recv_data()
    assert (frame.opcode, frame.payload) == (OP_TEXT, b"marker")


def numbered(seq: int) -> bytes:
    return struct.pack("!Q", seq) + b"\x5a" * (64 * 1024 - 8)


def numbers_read(ws: RawWebSocket, count: int) -> list[int]:
    frames = [ws.recv_data() for _ in range(count)]
    return [struct.unpack_from("!Q", frame.payload)[0] for frame in frames]


# -- W1: invalid UTF-8 -------------------------------------------------------


@pytest.mark.parametrize("data", INVALID_UTF8)
def test_invalid_utf8_text_closes_1007(pair: Pair, data: bytes) -> None:
    pair.bad.send_text(data)
    pair.server_closes(1007, answer=True)
    pair.witness_unaffected()


@pytest.mark.parametrize("data", INVALID_UTF8)
def test_invalid_utf8_split_across_fragments_closes_1007(
    pair: Pair, data: bytes
) -> None:
    pair.bad.send_fragments(OP_TEXT, [b"ok ", data[:1], data[1:]])
    pair.server_closes(1007, answer=True)
    pair.witness_unaffected()


def test_truncated_utf8_at_message_end_closes_1007(pair: Pair) -> None:
    pair.bad.send_fragments(OP_TEXT, [b"caf", b"\xc3"])
    pair.server_closes(1007, answer=True)
    pair.witness_unaffected()


@pytest.mark.parametrize("data", INVALID_UTF8)
def test_same_bytes_in_binary_frame_are_relayed(pair: Pair, data: bytes) -> None:
    pair.bad.send_binary(data)
    relayed(pair, OP_BINARY, data)


@pytest.mark.parametrize("data", INVALID_UTF8)
def test_nothing_follows_the_1007_close(pair: Pair, data: bytes) -> None:
    # The bad member does not answer the close at once; meanwhile the
    # channel is busy.  The server's close frame is the last frame it sends.
    pair.bad.send_text(data)
    frame = pair.bad.recv_close()
    assert frame.close_code == 1007
    for number in range(20):
        pair.witness.send_text(f"busy {number}")
    pair.bad.send_close(1007)
    pair.bad.expect_end()
    wait_for_count(pair.server, pair.key, pair.baseline)


# -- W2: fragments -----------------------------------------------------------


def test_ping_between_fragments_is_answered(pair: Pair) -> None:
    pair.bad.send_frame(OP_TEXT, b"hello", fin=False)
    pair.bad.send_ping(b"mid-message")
    pong = pair.bad.recv_frame()
    assert (pong.opcode, pong.payload) == (OP_PONG, b"mid-message")
    pair.bad.send_frame(OP_CONTINUATION, b"world", fin=True)
    relayed(pair, OP_TEXT, b"helloworld")


def test_utf8_character_split_across_fragments_is_relayed(pair: Pair) -> None:
    pair.bad.send_fragments(OP_TEXT, [b"\xce", b"\xba"])
    relayed(pair, OP_TEXT, "κ".encode())


def test_binary_message_in_many_fragments_is_relayed(pair: Pair) -> None:
    payload = bytes(range(256)) * 4
    pair.bad.send_fragments(
        OP_BINARY, [payload[i : i + 10] for i in range(0, len(payload), 10)]
    )
    relayed(pair, OP_BINARY, payload)


@pytest.mark.parametrize("opcode", [OP_TEXT, OP_BINARY])
@pytest.mark.parametrize("fin", [True, False])
def test_new_message_inside_fragmented_message_closes_1002(
    pair: Pair, opcode: int, fin: bool
) -> None:
    pair.bad.send_frame(OP_TEXT, b"hello", fin=False)
    pair.bad.send_frame(opcode, b"again", fin=fin)
    pair.server_closes(1002, answer=True)
    pair.witness_unaffected()


@pytest.mark.parametrize("fin", [True, False])
def test_stray_continuation_closes_1002(pair: Pair, fin: bool) -> None:
    pair.bad.send_frame(OP_CONTINUATION, b"orphan", fin=fin)
    pair.server_closes(1002, answer=True)
    pair.witness_unaffected()


def test_stray_continuation_after_complete_message_closes_1002(pair: Pair) -> None:
    pair.bad.send_fragments(OP_TEXT, [b"one", b"two"])
    relayed_frame = pair.witness.recv_data()
    assert relayed_frame.payload == b"onetwo"
    pair.bad.send_frame(OP_CONTINUATION, b"three", fin=True)
    pair.server_closes(1002, answer=True)
    pair.witness_unaffected()


def test_fragmented_control_frame_closes_1002(pair: Pair) -> None:
    pair.bad.send_frame(0x9, b"ping", fin=False)
    pair.server_closes(1002, answer=True)
    pair.witness_unaffected()


@pytest.mark.parametrize("opcode", [0x3, 0x7, 0xB, 0xF])
def test_reserved_opcode_closes_1002(pair: Pair, opcode: int) -> None:
    pair.bad.send_frame(opcode, b"x")
    pair.server_closes(1002, answer=True)
    pair.witness_unaffected()


def test_reserved_bits_close_1002(pair: Pair) -> None:
    pair.bad.send_frame(OP_TEXT, b"x", rsv=0b010)
    pair.server_closes(1002, answer=True)
    pair.witness_unaffected()


# -- W3: close codes ---------------------------------------------------------


def test_empty_close_is_answered_with_empty_close(pair: Pair) -> None:
    pair.bad.send_close(None)
    frame = pair.server_closes(None)
    assert frame.payload == b""
    pair.witness_unaffected()


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (1000, "bye"),
        (1000, ""),
        (1001, "away"),
        (3000, "registered"),
        (4000, "app"),
        (4100, ""),
        (4567, "κ reason"),
        (4999, "last"),
        (1000, "r" * 123),
    ],
)
def test_valid_close_is_echoed(pair: Pair, code: int, reason: str) -> None:
    pair.bad.send_close(code, reason)
    frame = pair.server_closes(code)
    assert frame.payload == close_payload(code, reason)
    pair.witness_unaffected()


@pytest.mark.parametrize(
    "code", [0, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000, 65535]
)
def test_invalid_close_code_gets_1002(pair: Pair, code: int) -> None:
    pair.bad.send_close(code, "x")
    pair.server_closes(1002)
    pair.witness_unaffected()


def test_close_reason_over_123_bytes_gets_1002(pair: Pair) -> None:
    pair.bad.send_close(1000, "r" * 124)
    pair.server_closes(1002)
    pair.witness_unaffected()


def test_one_byte_close_body_gets_1002(pair: Pair) -> None:
    pair.bad.send_frame(OP_CLOSE, b"\x03")
    pair.server_closes(1002)
    pair.witness_unaffected()


def test_close_reason_not_utf8_gets_1007(pair: Pair) -> None:
    pair.bad.send_close(1000, b"\xff\xfe")
    pair.server_closes(1007)
    pair.witness_unaffected()


def test_close_between_fragments_is_echoed(pair: Pair) -> None:
    pair.bad.send_frame(OP_TEXT, b"never finished", fin=False)
    pair.bad.send_close(1000, "bye")
    frame = pair.server_closes(1000)
    assert frame.close_reason == "bye"
    pair.witness_unaffected()


def test_every_close_in_a_row_restores_the_count(
    framing_server: Server, fkey: Key
) -> None:
    channel = fresh_channel("row")
    before = connection_count(framing_server, fkey)
    members = [join(framing_server, fkey, channel) for _ in range(5)]
    closes: list[int | None] = [None, 1000, 4000, 1006, 5000]
    for member, code in zip(members, closes, strict=True):
        with member:
            member.send_close(code)
            frame = member.recv_close(scaled(5))
            assert frame.close_code not in LOCAL_ONLY_CODES
            member.expect_end()
    wait_for_count(framing_server, fkey, before)


def test_no_frame_follows_a_close_sent_behind_a_backlog(tmp_path: Path) -> None:
    """A member that reads nothing has megabytes queued when it breaks the
    framing: the close frame goes out behind that backlog, and nothing the
    channel publishes afterwards goes out behind the close frame.
    """
    backlog = 256  # 16 MiB, far more than the kernel takes for a stalled socket
    with running_server(tmp_path, "--outbound-buffer", str(64 * MIB)) as server:
        assert server.key is not None
        key = server.key
        channel = fresh_channel("backlog")
        stalled = join(server, key, channel, rcvbuf=4096)
        witness = join(server, key, channel)
        publisher = join(server, key, channel)
        with stalled, witness, publisher:
            for seq in range(backlog):
                publisher.send_binary(numbered(seq))
            assert numbers_read(witness, backlog) == list(range(backlog))

            stalled.send_frame(OP_CONTINUATION, b"stray")
            # Give the server a moment to read the stray frame first; were it
            # slower, what follows would be queued before the close instead.
            time.sleep(scaled(0.2))
            for seq in range(backlog, backlog + 4):
                publisher.send_binary(numbered(seq))
            assert numbers_read(witness, 4) == list(range(backlog, backlog + 4))

            frames = stalled.frames_until_end(scaled(10))
            closes = [index for index, frame in enumerate(frames) if frame.is_close]
            assert len(closes) == 1, [frames[i] for i in closes]
            assert closes[0] == len(frames) - 1, "frames after the close frame"
            assert frames[-1].close_code == 1002
            data = [struct.unpack_from("!Q", frame.payload)[0] for frame in frames[:-1]]
            assert data == list(range(len(data)))
