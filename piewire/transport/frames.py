"""Server-to-client WebSocket frames (RFC 6455 5.2), encoded once.

Frames a server sends are never masked, and piewire never compresses the
fan-out path, so a frame is a short header followed by the payload.  A message
for N members is encoded here once and the same bytes are queued N times.
"""

from __future__ import annotations

import struct

OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

_FIN = 0x80
_LEN16 = struct.Struct("!BBH")
_LEN64 = struct.Struct("!BBQ")


def encode_frame(opcode: int, payload: bytes) -> bytes:
    """One final frame carrying ``payload``."""
    first = _FIN | opcode
    size = len(payload)
    if size < 126:
        return bytes((first, size)) + payload
    if size < 65536:
        return _LEN16.pack(first, 126, size) + payload
    return _LEN64.pack(first, 127, size) + payload


def text_frame(text: str) -> bytes:
    return encode_frame(OP_TEXT, text.encode("utf-8"))


def close_frame(code: int | None, reason: str = "") -> bytes:
    """A close frame; ``code=None`` gives the empty one (no status)."""
    if code is None:
        return encode_frame(OP_CLOSE, b"")
    # At most 123 bytes of reason, cut on a character boundary.
    body = reason.encode("utf-8")[:123].decode("utf-8", "ignore").encode("utf-8")
    return encode_frame(OP_CLOSE, struct.pack("!H", code) + body)
