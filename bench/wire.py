"""The bytes the load generator writes and expects: handshakes, frames, payloads.

Client frames are masked with the all-zero key, which RFC 6455 allows: the
server still unmasks every frame, and the generator spends nothing on XOR.

Every benchmark message has the same fixed layout, so a receiver finds the
sequence number and the send time at fixed offsets without parsing JSON::

    {"event":"bench","data":"S0000000042T0000012345678901234567xxxx...x"}
"""

from __future__ import annotations

import base64
import hashlib
import struct
from urllib.parse import quote

HOST = "127.0.0.1"
WS_KEY = b"dGhlIHNhbXBsZSBub25jZQ=="
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
ACCEPT_HEADER = (
    b"sec-websocket-accept: "
    + base64.b64encode(hashlib.sha1(WS_KEY + _GUID).digest()).lower()
)

OP_CONT = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

MESSAGE_SIZE = 100
_PREFIX = b'{"event":"bench","data":"'
_SUFFIX = b'"}'
SEQ_DIGITS = 10
TS_DIGITS = 19
SEQ_OFFSET = len(_PREFIX) + 1
TS_OFFSET = SEQ_OFFSET + SEQ_DIGITS + 1
_FIELDS = b"S%010dT%019d"
_FIELDS_SIZE = 2 + SEQ_DIGITS + TS_DIGITS


def _padding(size: int, fixed: int) -> bytes:
    if size < fixed:
        raise ValueError(f"a message needs at least {fixed} bytes")
    return b"x" * (size - fixed)


def ws_request(port: int, channel: str, api_key: str, query: str = "") -> bytes:
    """The upgrade request for ``/v3/CHANNEL?api_key=KEY[&QUERY]``."""
    target = f"/v3/{quote(channel, safe='')}?api_key={quote(api_key, safe='')}"
    if query:
        target += "&" + query
    return (
        f"GET {target} HTTP/1.1\r\n"
        f"Host: {HOST}:{port}\r\n"
        "Upgrade: websocket\r\n"
        "Connection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {WS_KEY.decode()}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


def client_frame(payload: bytes, opcode: int = OP_TEXT) -> bytes:
    """One final client frame, masked with the zero key."""
    size = len(payload)
    if size < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | size)
    elif size < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, size)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, size)
    return head + b"\0\0\0\0" + payload


CLOSE_NORMAL = client_frame(struct.pack("!H", 1000), OP_CLOSE)


class MessageMaker:
    """Fixed-size benchmark messages carrying a sequence number and a send time."""

    __slots__ = ("_pad", "size")

    def __init__(self, size: int = MESSAGE_SIZE) -> None:
        self.size = size
        self._pad = _padding(size, len(_PREFIX) + _FIELDS_SIZE + len(_SUFFIX))

    def payload(self, seq: int, ts_ns: int) -> bytes:
        return _PREFIX + _FIELDS % (seq, ts_ns) + self._pad + _SUFFIX

    def frame(self, seq: int, ts_ns: int) -> bytes:
        """A masked client text frame (the frame header is 6 bytes)."""
        size = self.size
        if size < 126:
            return (
                bytes((0x81, 0x80 | size, 0, 0, 0, 0))
                + _PREFIX
                + _FIELDS % (seq, ts_ns)
                + self._pad
                + _SUFFIX
            )
        return client_frame(self.payload(seq, ts_ns))


class RestBodyMaker:
    """REST publish bodies whose ``message`` is a fixed-size plain string.

    The string arrives at subscribers as that exact text, with the sequence
    number and send time at the same offsets as in ``MessageMaker`` payloads.
    """

    __slots__ = ("_head", "_pad", "_tail", "size")

    def __init__(self, api_key: str, secret: str, channel: str, size: int) -> None:
        self.size = size
        self._pad = _padding(size, len(_PREFIX) + _FIELDS_SIZE + len(_SUFFIX))
        self._head = (
            f'{{"key":"{api_key}","secret":"{secret}","channelId":"{channel}",'
            '"message":"'
        ).encode()
        self._tail = b'"}'

    def message(self, seq: int, ts_ns: int) -> bytes:
        """The delivered text: same layout as a WebSocket benchmark message,
        with the JSON braces and quotes replaced by letters."""
        return b"R" * len(_PREFIX) + _FIELDS % (seq, ts_ns) + self._pad + b"RR"

    def request(self, port: int, seq: int, ts_ns: int) -> bytes:
        body = self._head + self.message(seq, ts_ns) + self._tail
        return (
            b"POST /api/publish HTTP/1.1\r\n"
            b"Host: %s:%d\r\n"
            b"Content-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % (HOST.encode(), port, len(body))
        ) + body
