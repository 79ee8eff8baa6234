"""Size limits on what a client sends (L2) and on what it fails to read (L1)."""

from __future__ import annotations

import contextlib
import itertools
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.members import (
    connection_count,
    fresh_channel,
    holds_socket_of,
    join,
    rss_bytes,
    wait_for_count,
    wait_until_released,
)
from tests.rawws import (
    OP_BINARY,
    OP_CONTINUATION,
    OP_TEXT,
    Disconnected,
    Frame,
    RawWebSocket,
    encode_frame,
)
from tests.support import Key, Server, running_server, scaled

LIMIT = 20_000
MIB = 1024 * 1024


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp_path: Path = tmp_path_factory.mktemp("limits")
    with running_server(tmp_path, "--max-message-size", str(LIMIT)) as server:
        yield server


@pytest.fixture
def lkey(limited: Server) -> Key:
    assert limited.key is not None
    return limited.key


@dataclass
class Room:
    """A sender and a witness in one channel of the limited server."""

    server: Server
    key: Key
    channel: str = field(default_factory=lambda: fresh_channel("limits"))

    def __post_init__(self) -> None:
        self.start = connection_count(self.server, self.key)
        self.witness = join(self.server, self.key, self.channel)
        self.sender = join(self.server, self.key, self.channel)

    def close(self) -> None:
        self.sender.close()
        self.witness.close()
        wait_for_count(self.server, self.key, self.start)

    def too_big(self) -> None:
        """The sender is closed with 1009 and the witness got nothing of it."""
        frame = self.sender.recv_close()
        assert frame.close_code == 1009, frame
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.sender.send_close(1009)
        self.sender.expect_end()
        wait_for_count(self.server, self.key, self.start + 1)
        probe = join(self.server, self.key, self.channel)
        with probe:
            probe.send_text("still open")
            frame = self.witness.recv_data()
            assert (frame.opcode, frame.payload) == (OP_TEXT, b"still open")


@pytest.fixture
def room(limited: Server, lkey: Key) -> Iterator[Room]:
    members = Room(limited, lkey)
    try:
        yield members
    finally:
        members.close()


def text_of_size(size: int) -> bytes:
    """UTF-8 text of ``size`` bytes, mostly two-byte characters."""
    return ("é" * (size // 2) + "x" * (size % 2)).encode()


def pieces(data: bytes, count: int) -> list[bytes]:
    step = len(data) // count
    cuts = [step * index for index in range(count)] + [len(data)]
    return [data[a:b] for a, b in itertools.pairwise(cuts)]


# -- L2: oversized input -----------------------------------------------------


def test_message_of_exactly_the_limit_is_relayed(room: Room) -> None:
    data = text_of_size(LIMIT)
    room.sender.send_text(data)
    frame = room.witness.recv_data()
    assert (frame.opcode, frame.payload) == (OP_TEXT, data)


def test_exactly_the_limit_over_100_fragments_is_relayed(room: Room) -> None:
    data = bytes(range(256)) * (LIMIT // 256) + b"z" * (LIMIT % 256)
    room.sender.send_fragments(OP_BINARY, pieces(data, 100))
    frame = room.witness.recv_data()
    assert (frame.opcode, frame.payload) == (OP_BINARY, data)


@pytest.mark.parametrize("opcode", [OP_TEXT, OP_BINARY])
def test_one_byte_over_the_limit_closes_1009(room: Room, opcode: int) -> None:
    # Counted in bytes: this is fewer characters than the limit.
    data = text_of_size(LIMIT + 1)
    assert len(data.decode()) < LIMIT
    room.sender.send_frame(opcode, data)
    room.too_big()


def test_one_byte_over_the_limit_in_100_fragments_closes_1009(room: Room) -> None:
    room.sender.send_fragments(OP_TEXT, pieces(text_of_size(LIMIT + 1), 100))
    room.too_big()


def test_oversized_header_is_refused_before_its_payload(room: Room) -> None:
    # Only the header is sent: the server must not wait for the payload.
    room.sender.send_raw(encode_frame(OP_TEXT, b"", length=LIMIT + 1))
    room.too_big()


@pytest.mark.parametrize("declared", [2**63 - 1, 2**63, 2**64 - 1, 2**31])
def test_huge_declared_length_closes_1009_without_allocating(
    room: Room, declared: int
) -> None:
    before = rss_bytes(room.server)
    header = bytes([0x80 | OP_BINARY, 0x80 | 127]) + struct.pack("!Q", declared)
    room.sender.send_raw(header + b"\x00\x00\x00\x00" + b"\x00" * 1000)
    room.too_big()
    assert rss_bytes(room.server) - before < 8 * MIB


def test_huge_continuation_closes_1009(room: Room) -> None:
    room.sender.send_frame(OP_TEXT, b"start", fin=False)
    header = bytes([0x80 | OP_CONTINUATION, 0x80 | 127])
    room.sender.send_raw(header + struct.pack("!Q", 2**63 - 1) + b"\x00" * 4)
    room.too_big()


def test_endless_payload_after_huge_header_is_not_buffered(room: Room) -> None:
    """The sender keeps streaming the payload it declared; memory stays flat."""
    before = rss_bytes(room.server)
    header = bytes([0x80 | OP_BINARY, 0x80 | 127]) + struct.pack("!Q", 2**63 - 1)
    room.sender.send_raw(header + b"\x01\x02\x03\x04")
    chunk = b"\xaa" * 65536
    deadline = time.monotonic() + scaled(5)
    sent = 0
    with contextlib.suppress(BrokenPipeError, ConnectionResetError, TimeoutError):
        while sent < 32 * MIB and time.monotonic() < deadline:
            room.sender.send_raw(chunk)
            sent += len(chunk)
    assert rss_bytes(room.server) - before < 8 * MIB
    frame = room.sender.recv_close()
    assert frame.close_code == 1009
    room.sender.expect_end()
    wait_for_count(room.server, room.key, room.start + 1)


# -- L1: slow consumer -------------------------------------------------------
#
# Scaled down from 60 s to 6 s: 600 messages of 64 KiB at 100/s, about
# 39 MiB for every member, against an outbound buffer of 1 MiB.

MESSAGE_SIZE = 64 * 1024
RATE = 100
COUNT = 600
OUTBOUND = MIB
_STAMP = struct.Struct("!Id")


def numbered(seq: int) -> bytes:
    """A message carrying its number and the moment it was sent."""
    filler = b"\x5a" * (MESSAGE_SIZE - _STAMP.size)
    return _STAMP.pack(seq, time.monotonic()) + filler


class Reader(threading.Thread):
    """Reads numbered messages for one member and times each of them."""

    def __init__(self, ws: RawWebSocket) -> None:
        super().__init__(daemon=True)
        self.ws = ws
        self.expected = COUNT
        self.numbers: list[int] = []
        self.latencies: list[float] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        deadline = time.monotonic() + scaled(30)
        try:
            while len(self.numbers) < self.expected:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{len(self.numbers)} messages read")
                try:
                    frame = self.ws.recv_data(0.2)
                except TimeoutError:
                    continue
                seq, sent_at = _STAMP.unpack_from(frame.payload)
                self.latencies.append(time.monotonic() - sent_at)
                self.numbers.append(seq)
                assert len(frame.payload) == MESSAGE_SIZE
        except BaseException as exc:
            self.error = exc


class SlowChannel:
    """A member that reads, one that stopped reading, and a publisher."""

    def __init__(self, server: Server) -> None:
        assert server.key is not None
        self.server = server
        self.key = server.key
        channel = fresh_channel("slow")
        self.fast = join(server, self.key, channel)
        # A small receive window, so the kernel holds little for it.
        self.slow = join(server, self.key, channel, rcvbuf=4096)
        self.publisher = join(server, self.key, channel)
        self.reader = Reader(self.fast)
        self.baseline_rss = rss_bytes(server)
        self.peak_rss = self.baseline_rss
        self.slowest_send = 0.0
        self.slow_gone_at: float | None = None

    def close(self) -> None:
        for ws in (self.fast, self.slow, self.publisher):
            ws.close()

    def publish(self, until: Callable[[], bool] = lambda: False) -> int:
        """Send numbered messages at ``RATE`` until ``until()``; return how many."""
        self.reader.start()
        start = time.monotonic()
        sent = 0
        while sent < COUNT:
            pause = start + sent / RATE - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            began = time.monotonic()
            self.publisher.send_binary(numbered(sent))
            self.slowest_send = max(self.slowest_send, time.monotonic() - began)
            sent += 1
            if sent % 10 == 0:
                self.watch_server(time.monotonic() - start)
                if until():
                    break
        self.reader.expected = sent
        return sent

    def watch_server(self, elapsed: float) -> None:
        self.peak_rss = max(self.peak_rss, rss_bytes(self.server))
        if self.slow_gone_at is None and connection_count(self.server, self.key) == 2:
            self.slow_gone_at = elapsed

    def fast_member_got_everything(self, sent: int) -> None:
        """Every message, in order, each within a bound of its sending."""
        self.reader.join(scaled(30))
        assert not self.reader.is_alive()
        if self.reader.error is not None:
            raise self.reader.error
        assert self.reader.numbers == list(range(sent))
        slowest = max(self.reader.latencies)
        assert slowest < scaled(1.0), f"a message took {slowest:.3f} s"


@pytest.fixture
def slow_channel(tmp_path: Path) -> Iterator[SlowChannel]:
    with running_server(tmp_path, "--outbound-buffer", str(OUTBOUND)) as server:
        channel = SlowChannel(server)
        try:
            yield channel
        finally:
            channel.close()


def read_to_the_end(ws: RawWebSocket) -> tuple[list[int], list[Frame]]:
    """The sequence numbers left for ``ws``, then any other frames.

    The stream may end inside a frame: dropping a connection cuts what the
    kernel still held for it wherever it was.
    """
    numbers: list[int] = []
    others: list[Frame] = []
    with contextlib.suppress(Disconnected):
        while True:
            frame = ws.recv_frame(scaled(10))
            if frame.opcode == OP_BINARY and not others:
                assert len(frame.payload) == MESSAGE_SIZE
                numbers.append(_STAMP.unpack_from(frame.payload)[0])
            else:
                others.append(frame)
    return numbers, others


def test_stalled_member_is_dropped_and_the_broadcast_goes_on(
    slow_channel: SlowChannel,
) -> None:
    sent = slow_channel.publish()
    assert sent == COUNT
    slow_channel.fast_member_got_everything(sent)
    assert slow_channel.slowest_send < scaled(0.5)

    # Dropped while the others were served: the outbox overflows within a
    # second or so, and the close timeout is 2 s.
    gone_at = slow_channel.slow_gone_at
    assert gone_at is not None and gone_at < scaled(4.5), gone_at
    grown = slow_channel.peak_rss - slow_channel.baseline_rss
    assert grown < 16 * MIB, f"server RSS grew by {grown / MIB:.1f} MiB"

    # Still stalled when the close timeout ran out, the member only finds
    # what the kernel held for it, in order, then the end of the stream.
    # The 4100 close frame was queued behind the bytes it never read and
    # went with the connection.
    numbers, others = read_to_the_end(slow_channel.slow)
    assert numbers == list(range(len(numbers)))
    assert len(numbers) < COUNT // 4
    assert others == []


@pytest.mark.parametrize("misbehaves", [False, True], ids=["quiet", "then-bad-frame"])
def test_slow_member_that_reads_again_in_time_gets_4100(
    slow_channel: SlowChannel, misbehaves: bool
) -> None:
    server = slow_channel.server
    sent = slow_channel.publish(until=lambda: "slow consumer closed" in server.log())
    assert sent < COUNT, "the stalled member was never closed"
    slow = slow_channel.slow
    if misbehaves:
        # A protocol error now must not bring a second close frame.
        slow.send_frame(OP_CONTINUATION, b"stray")

    # Reading again within the close timeout, it finds the messages queued
    # before the overflow, in order, then the 4100 close with no error frame,
    # and nothing after it.
    numbers: list[int] = []
    frame = slow.recv_frame()
    while frame.opcode == OP_BINARY:
        numbers.append(_STAMP.unpack_from(frame.payload)[0])
        frame = slow.recv_frame()
    assert frame.is_close, frame
    assert frame.close_code == 4100
    assert numbers == list(range(len(numbers)))
    assert 0 < len(numbers) < sent
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        slow.send_close(4100)
    slow.expect_end()
    wait_for_count(server, slow_channel.key, 2)
    slow_channel.fast_member_got_everything(sent)


def test_member_that_closes_without_reading_its_backlog_is_dropped(
    tmp_path: Path,
) -> None:
    """The closing handshake does not wait forever for a peer that reads nothing.

    Its backlog, and the close frame behind it, get the close timeout (2 s)
    to drain; then the server lets go of the socket.
    """
    with running_server(tmp_path, "--outbound-buffer", str(64 * MIB)) as server:
        assert server.key is not None
        key = server.key
        channel = fresh_channel("backlog")
        publisher = join(server, key, channel)
        witness = join(server, key, channel)
        with publisher, witness:
            for code in (1000, None):
                stalled = join(server, key, channel, rcvbuf=4096)
                with stalled:
                    # 16 MiB: far more than the kernel takes for a stalled socket.
                    for seq in range(256):
                        publisher.send_binary(numbered(seq))
                    for _ in range(256):
                        witness.recv_data()
                    assert holds_socket_of(server, stalled)
                    stalled.send_close(code)
                    wait_for_count(server, key, 2)
                    wait_until_released(server, stalled, within=4)
