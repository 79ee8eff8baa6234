"""Trimming the heap after connection churn: when, and how often."""

from piewire.heap import ENDED_CONNECTIONS, INTERVAL, HeapTrimmer, _load_trim


def test_trims_only_after_enough_ended_connections_and_time() -> None:
    calls: list[int] = []

    def trim(pad: int) -> int:
        calls.append(pad)
        return 1

    heap = HeapTrimmer(trim)
    for _ in range(ENDED_CONNECTIONS - 1):
        heap.connection_ended()
    assert not heap.maybe_trim(100.0)
    heap.connection_ended()
    assert heap.maybe_trim(100.0)
    assert calls == [0]
    for _ in range(ENDED_CONNECTIONS):
        heap.connection_ended()
    assert not heap.maybe_trim(100.0 + INTERVAL / 2)
    assert heap.maybe_trim(100.0 + INTERVAL)
    assert calls == [0, 0]


def test_glibc_malloc_trim_is_found_here() -> None:
    # This machine runs glibc: the real function must load.
    trim = _load_trim()
    assert trim is not None
    assert trim(0) in (0, 1)
