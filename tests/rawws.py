"""A raw-socket WebSocket client for tests (RFC 6455).

Unlike a real client library it sends whatever it is told to: any opcode,
FIN and RSV bits, masked or not, fragments, a header that declares a length
the payload does not have, close frames with any code and reason.  It reads
server frames one by one and checks nothing but their layout, so a test sees
exactly what the server put on the wire.
"""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import struct
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_MAX_HEADER = 64 * 1024
_RECV_SIZE = 256 * 1024


class HandshakeError(Exception):
    """The server did not answer the upgrade with ``101 Switching Protocols``."""

    def __init__(self, status: int, head: bytes, body: bytes) -> None:
        super().__init__(f"handshake failed with status {status}: {head[:200]!r}")
        self.status = status
        self.head = head
        self.body = body


class Disconnected(Exception):
    """The TCP connection ended: an orderly end of stream, or a reset."""

    def __init__(self, reset: bool, pending: bytes = b"") -> None:
        what = "reset" if reset else "end of stream"
        super().__init__(f"connection {what} with {len(pending)} bytes unparsed")
        self.reset = reset
        self.pending = pending


class ProtocolViolation(Exception):
    """The server sent something that is not a well-formed server frame."""


@dataclass(frozen=True)
class Frame:
    """One frame as the server sent it (payload unmasked if it was masked)."""

    opcode: int
    payload: bytes
    fin: bool = True
    rsv: int = 0
    masked: bool = False

    @property
    def is_close(self) -> bool:
        return self.opcode == OP_CLOSE

    @property
    def close_code(self) -> int | None:
        """The status code of a close frame; None for an empty one."""
        if self.opcode != OP_CLOSE:
            raise ValueError(f"not a close frame: opcode {self.opcode:#x}")
        if len(self.payload) < 2:
            return None
        return int(struct.unpack("!H", self.payload[:2])[0])

    @property
    def close_reason(self) -> str:
        if self.opcode != OP_CLOSE:
            raise ValueError(f"not a close frame: opcode {self.opcode:#x}")
        return self.payload[2:].decode("utf-8")

    @property
    def text(self) -> str:
        return self.payload.decode("utf-8")


def encode_frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv: int = 0,
    mask: bool = True,
    length: int | None = None,
) -> bytes:
    """A client frame; ``length`` declares a size other than ``len(payload)``."""
    declared = len(payload) if length is None else length
    head = bytearray([(0x80 if fin else 0) | (rsv & 0x7) << 4 | (opcode & 0xF)])
    mask_bit = 0x80 if mask else 0
    if declared < 126:
        head.append(mask_bit | declared)
    elif declared < 1 << 16:
        head.append(mask_bit | 126)
        head += struct.pack("!H", declared)
    else:
        head.append(mask_bit | 127)
        head += struct.pack("!Q", declared)
    if not mask:
        return bytes(head) + payload
    key = os.urandom(4)
    return bytes(head) + key + apply_mask(key, payload)


def apply_mask(key: bytes, data: bytes) -> bytes:
    if not data:
        return b""
    repeated = (key * (len(data) // 4 + 1))[: len(data)]
    as_int = int.from_bytes(data, "big") ^ int.from_bytes(repeated, "big")
    return as_int.to_bytes(len(data), "big")


def close_payload(code: int | None, reason: str | bytes = b"") -> bytes:
    """The body of a close frame; ``code=None`` gives the empty body."""
    if code is None:
        return b""
    raw = reason.encode("utf-8") if isinstance(reason, str) else reason
    return struct.pack("!H", code) + raw


class RawWebSocket:
    """One client connection over a blocking socket.

    Every read has a deadline: ``timeout`` seconds unless a call gives its own.
    A read that runs out of time raises ``TimeoutError``; the end of the TCP
    stream raises ``Disconnected``.
    """

    def __init__(self, sock: socket.socket, timeout: float, leftover: bytes = b""):
        self.sock = sock
        self.timeout = timeout
        self._buffer = bytearray(leftover)
        self.max_payload = 64 * 1024 * 1024

    @classmethod
    def connect(
        cls,
        url: str,
        *,
        timeout: float = 5.0,
        rcvbuf: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> RawWebSocket:
        """Open ``ws://HOST:PORT/PATH?QUERY`` and complete the upgrade.

        ``rcvbuf`` sets ``SO_RCVBUF`` before connecting, so the TCP window the
        server sees is small from the start.
        """
        parts = urlsplit(url)
        if parts.scheme != "ws" or parts.hostname is None or parts.port is None:
            raise ValueError(f"expected ws://HOST:PORT/..., got {url!r}")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            if rcvbuf is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.settimeout(timeout)
            sock.connect((parts.hostname, parts.port))
            target = parts.path + (f"?{parts.query}" if parts.query else "")
            host = f"{parts.hostname}:{parts.port}"
            leftover = _handshake(sock, host, target, headers or {}, timeout)
        except BaseException:
            sock.close()
            raise
        return cls(sock, timeout, leftover)

    # -- sending ---------------------------------------------------------

    def send_raw(self, data: bytes) -> None:
        self.sock.settimeout(self.timeout)
        self.sock.sendall(data)

    def send_frame(
        self,
        opcode: int,
        payload: bytes = b"",
        *,
        fin: bool = True,
        rsv: int = 0,
        mask: bool = True,
        length: int | None = None,
    ) -> None:
        self.send_raw(
            encode_frame(opcode, payload, fin=fin, rsv=rsv, mask=mask, length=length)
        )

    def send_text(self, data: str | bytes) -> None:
        """A text frame; bytes are sent as they are, valid UTF-8 or not."""
        raw = data.encode("utf-8") if isinstance(data, str) else data
        self.send_frame(OP_TEXT, raw)

    def send_binary(self, data: bytes) -> None:
        self.send_frame(OP_BINARY, data)

    def send_fragments(self, opcode: int, pieces: list[bytes]) -> None:
        """One message as ``len(pieces)`` frames, written in one go."""
        frames = [
            encode_frame(
                opcode if index == 0 else OP_CONTINUATION,
                piece,
                fin=index == len(pieces) - 1,
            )
            for index, piece in enumerate(pieces)
        ]
        self.send_raw(b"".join(frames))

    def send_ping(self, payload: bytes = b"") -> None:
        self.send_frame(OP_PING, payload)

    def send_close(self, code: int | None = None, reason: str | bytes = b"") -> None:
        self.send_frame(OP_CLOSE, close_payload(code, reason))

    # -- receiving -------------------------------------------------------

    def recv_frame(self, timeout: float | None = None) -> Frame:
        """The next frame, whatever it is."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        first, second = self._read_exact(2, deadline)
        size = second & 0x7F
        if size == 126:
            size = struct.unpack("!H", self._read_exact(2, deadline))[0]
        elif size == 127:
            size = struct.unpack("!Q", self._read_exact(8, deadline))[0]
        if size > self.max_payload:
            raise ProtocolViolation(f"frame declares {size} bytes")
        masked = bool(second & 0x80)
        key = self._read_exact(4, deadline) if masked else b""
        payload = self._read_exact(size, deadline)
        if masked:
            payload = apply_mask(key, payload)
        return Frame(
            opcode=first & 0x0F,
            payload=payload,
            fin=bool(first & 0x80),
            rsv=(first >> 4) & 0x7,
            masked=masked,
        )

    def recv_data(self, timeout: float | None = None) -> Frame:
        """The next text or binary frame; anything else is an error."""
        frame = self.recv_frame(timeout)
        if frame.opcode not in (OP_TEXT, OP_BINARY):
            detail = frame.payload[:60]
            raise ProtocolViolation(
                f"expected a data frame, got opcode {frame.opcode:#x}: {detail!r}"
            )
        return frame

    def recv_close(self, timeout: float | None = None) -> Frame:
        """The next frame, which must be a close frame."""
        frame = self.recv_frame(timeout)
        if not frame.is_close:
            detail = frame.payload[:60]
            raise ProtocolViolation(
                f"expected a close frame, got opcode {frame.opcode:#x}: {detail!r}"
            )
        return frame

    def frames_until_end(self, timeout: float | None = None) -> list[Frame]:
        """Every frame until the server ends the TCP stream (orderly or reset)."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        frames: list[Frame] = []
        while True:
            try:
                frames.append(self.recv_frame(max(0.0, deadline - time.monotonic())))
            except Disconnected as exc:
                if exc.pending:
                    raise ProtocolViolation(
                        f"stream ended inside a frame: {exc.pending[:60]!r}"
                    ) from exc
                return frames

    def expect_end(self, timeout: float | None = None) -> None:
        """The server ends the TCP stream without sending another frame."""
        frames = self.frames_until_end(timeout)
        if frames:
            raise ProtocolViolation(f"frames after the close: {frames[:3]!r}")

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawWebSocket:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _read_exact(self, count: int, deadline: float) -> bytes:
        while len(self._buffer) < count:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no complete frame within the deadline")
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(_RECV_SIZE)
            except TimeoutError:
                raise TimeoutError("no complete frame within the deadline") from None
            except ConnectionResetError as exc:
                raise Disconnected(True, bytes(self._buffer)) from exc
            if not chunk:
                raise Disconnected(False, bytes(self._buffer))
            self._buffer += chunk
        data = bytes(self._buffer[:count])
        del self._buffer[:count]
        return data


def _handshake(
    sock: socket.socket,
    host: str,
    target: str,
    headers: dict[str, str],
    timeout: float,
) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {target} HTTP/1.1",
        f"Host: {host}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        *(f"{name}: {value}" for name, value in headers.items()),
    ]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))

    deadline = time.monotonic() + timeout
    received = b""
    while b"\r\n\r\n" not in received:
        if len(received) > _MAX_HEADER:
            raise HandshakeError(0, received, b"")
        sock.settimeout(max(0.001, deadline - time.monotonic()))
        chunk = sock.recv(4096)
        if not chunk:
            raise HandshakeError(0, received, b"")
        received += chunk
    head, _, rest = received.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    status = int(status_line.split(" ", 2)[1])
    if status != 101:
        raise HandshakeError(status, head, rest)

    fields: dict[str, str] = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        fields[name.strip().lower()] = value.strip()
    expected = base64.b64encode(hashlib.sha1(key.encode() + _GUID).digest()).decode()
    if fields.get("sec-websocket-accept") != expected:
        raise HandshakeError(status, head, rest)
    return rest
