"""Giving freed memory back to the system after connection churn.

TLS connections allocate large buffers in C.  When many close, every object is
freed, but glibc's allocator keeps the pages, so the process's RSS stays high
long after.  ``malloc_trim`` hands them back; it runs at most every
``INTERVAL`` seconds, and only after enough connections ended.  Where the C
library has no ``malloc_trim`` (musl, macOS), this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from collections.abc import Callable

log = logging.getLogger("piewire.server")

INTERVAL = 10.0
ENDED_CONNECTIONS = 100


def _load_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        trim: Callable[[int], int] = libc.malloc_trim
    except (OSError, AttributeError, TypeError):
        return None
    return trim


class HeapTrimmer:
    def __init__(self, trim: Callable[[int], int] | None = None) -> None:
        self._trim = trim if trim is not None else _load_trim()
        self._ended = 0
        self._last = 0.0

    def connection_ended(self) -> None:
        self._ended += 1

    def maybe_trim(self, now: float) -> bool:
        """Trim if enough connections ended since the last trim; True if it did."""
        if self._trim is None or self._ended < ENDED_CONNECTIONS:
            return False
        if now - self._last < INTERVAL:
            return False
        self._ended = 0
        self._last = now
        self._trim(0)
        log.debug("heap trimmed")
        return True
