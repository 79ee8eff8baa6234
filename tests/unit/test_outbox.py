"""Coalesced, bounded writes, with a recording transport and a manual loop."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from piewire.transport.outbox import Flusher, Outbox


class ManualLoop:
    """Collects ``call_soon`` callbacks; ``turn()`` runs the ones queued so far."""

    def __init__(self) -> None:
        self.soon: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []

    def call_soon(self, callback: Callable[..., Any], *args: Any) -> None:
        self.soon.append((callback, args))

    def turn(self) -> None:
        ready, self.soon = self.soon, []
        for callback, args in ready:
            callback(*args)


class FakeTransport:
    """Records writes; ``buffered`` is what it reports as not yet sent."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.buffered = 0
        self.closing = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def is_closing(self) -> bool:
        return self.closing


class Setup:
    def __init__(self, limit: int = 1000) -> None:
        self.loop = ManualLoop()
        self.flusher = Flusher(self.loop)  # type: ignore[arg-type]
        self.overflows = 0
        self.transport = FakeTransport()
        self.outbox = self.make(self.transport, limit)

    def make(self, transport: FakeTransport, limit: int = 1000) -> Outbox:
        return Outbox(transport, self.flusher, limit, self.overflow)  # type: ignore[arg-type]

    def overflow(self) -> None:
        self.overflows += 1


def test_frames_of_one_turn_go_out_in_one_write_in_order() -> None:
    s = Setup()
    s.outbox.push(b"a")
    s.outbox.push(b"bb")
    s.outbox.push(b"ccc")
    assert s.transport.writes == []
    s.loop.turn()
    assert s.transport.writes == [b"abbccc"]
    assert len(s.loop.soon) == 0


def test_a_single_frame_is_written_as_is() -> None:
    s = Setup()
    frame = b"x" * 10
    s.outbox.push(frame)
    s.loop.turn()
    assert s.transport.writes == [frame]
    assert s.transport.writes[0] is frame


def test_one_callback_per_turn_serves_every_outbox() -> None:
    s = Setup()
    other_transport = FakeTransport()
    other = s.make(other_transport)
    for n in range(10):
        s.outbox.push(b"%d" % n)
        other.push(b"%d" % n)
    assert len(s.loop.soon) == 1
    s.loop.turn()
    assert s.transport.writes == [b"0123456789"]
    assert other_transport.writes == [b"0123456789"]


def test_the_next_turn_writes_again() -> None:
    s = Setup()
    s.outbox.push(b"1")
    s.loop.turn()
    s.outbox.push(b"2")
    s.loop.turn()
    assert s.transport.writes == [b"1", b"2"]


def test_flush_writes_everything_pending_at_once() -> None:
    s = Setup()
    s.outbox.push(b"a")
    s.outbox.push(b"b")
    s.outbox.flush()
    assert s.transport.writes == [b"ab"]
    s.loop.turn()
    assert s.transport.writes == [b"ab"]


def test_up_to_the_limit_is_fine() -> None:
    s = Setup(limit=100)
    s.outbox.push(b"x" * 60)
    s.outbox.push(b"x" * 40)
    s.loop.turn()
    assert s.overflows == 0
    assert s.transport.writes == [b"x" * 100]


def test_over_the_limit_in_one_turn_is_a_slow_consumer() -> None:
    s = Setup(limit=100)
    s.outbox.push(b"x" * 60)
    s.outbox.push(b"x" * 41)
    assert s.overflows == 1
    assert s.outbox.closed
    s.loop.turn()
    assert s.transport.writes == []
    s.outbox.push(b"more")
    s.outbox.flush()
    s.loop.turn()
    assert s.transport.writes == []
    assert s.overflows == 1


def test_bytes_still_in_the_transport_count_against_the_limit() -> None:
    s = Setup(limit=100)
    s.transport.buffered = 90
    s.outbox.push(b"x" * 50)
    s.loop.turn()
    assert s.overflows == 0
    s.outbox.push(b"x" * 10)
    assert s.overflows == 0
    s.outbox.push(b"x")
    assert s.overflows == 1
    assert s.outbox.closed


def test_a_transport_buffer_over_the_limit_after_a_write_overflows() -> None:
    s = Setup(limit=100)
    s.outbox.push(b"x" * 50)
    s.transport.buffered = 101
    s.loop.turn()
    assert s.transport.writes == [b"x" * 50]
    assert s.overflows == 1
    assert s.outbox.closed


def test_a_closing_transport_gets_no_more_writes() -> None:
    s = Setup()
    s.outbox.push(b"a")
    s.transport.closing = True
    s.loop.turn()
    assert s.transport.writes == []
    assert s.outbox.closed
    assert s.overflows == 0


def test_seal_drops_what_is_pending() -> None:
    s = Setup()
    s.outbox.push(b"a")
    s.outbox.seal()
    s.loop.turn()
    s.outbox.push(b"b")
    s.loop.turn()
    assert s.transport.writes == []
    assert s.overflows == 0


def test_an_overflow_elsewhere_during_a_flush_does_not_stop_the_others() -> None:
    s = Setup(limit=100)
    slow_transport = FakeTransport()
    slow = s.make(slow_transport, limit=100)
    fast_transport = FakeTransport()
    fast = s.make(fast_transport, limit=100)
    slow.push(b"x" * 10)
    fast.push(b"y" * 10)
    slow_transport.buffered = 200
    s.loop.turn()
    assert s.overflows == 1
    assert slow.closed
    assert fast_transport.writes == [b"y" * 10]


def test_room_is_measured_again_before_calling_an_overflow() -> None:
    s = Setup(limit=100)
    s.transport.buffered = 90
    s.outbox.push(b"x" * 5)
    s.loop.turn()
    # The transport drained after the flush: 20 bytes fit again.
    s.transport.buffered = 0
    s.outbox.push(b"y" * 20)
    assert s.overflows == 0
    s.transport.buffered = 95
    s.loop.turn()
    assert s.overflows == 0
    s.outbox.push(b"z" * 20)
    assert s.overflows == 1
