"""The first bytes of every TCP connection: a WebSocket upgrade, or HTTP.

A request for ``/v3/...`` that asks for a WebSocket upgrade is answered here
(RFC 6455 4.2) and the connection becomes a ``Connection``.  Anything else is
handed, with the bytes read so far, to aiohttp, which serves the REST API on
the same port.  httptools parses the request head.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

import httptools

from piewire.core.admission import Admission
from piewire.core.connect import ConnectParams, parse_connect
from piewire.errors import ConnectRefused
from piewire.transport.websocket import Connection

if TYPE_CHECKING:
    from piewire.service import Service

log = logging.getLogger("piewire.server")

# The most bytes of request head read before giving up on an upgrade.
MAX_HEAD = 16 * 1024
# Seconds a client may take to send its request head.
HEAD_TIMEOUT = 10.0
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class _Head:
    """What httptools reports of a request head."""

    __slots__ = ("headers", "target")

    def __init__(self) -> None:
        self.target = b""
        self.headers: dict[bytes, bytes] = {}

    def on_url(self, url: bytes) -> None:
        self.target += url

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        previous = self.headers.get(name)
        self.headers[name] = value if previous is None else previous + b"," + value


def _tokens(value: bytes) -> set[bytes]:
    return {part.strip().lower() for part in value.split(b",")}


def accept_key(key: bytes) -> bytes:
    """Sec-WebSocket-Accept for a client's Sec-WebSocket-Key (RFC 6455 4.2.2)."""
    return base64.b64encode(hashlib.sha1(key + _GUID).digest())


def _valid_key(key: bytes) -> bool:
    try:
        return len(base64.b64decode(key, validate=True)) == 16
    except (binascii.Error, ValueError):
        return False


def _response(status: str, body: bytes, extra: bytes = b"") -> bytes:
    return (
        b"HTTP/1.1 " + status.encode() + b"\r\nContent-Type: application/json\r\n"
        b"Content-Length: "
        + str(len(body)).encode()
        + b"\r\n"
        + extra
        + b"Connection: close\r\n\r\n"
        + body
    )


class FrontDoor(asyncio.Protocol):
    """Reads a request head and decides who serves the connection."""

    def __init__(self, service: Service, http: Callable[[], asyncio.Protocol]) -> None:
        self._service = service
        self._http = http
        self._buffer = b""
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio's; they act the same.
        self._transport = cast(asyncio.Transport, transport)
        loop = self._service.loop
        self._timer = loop.call_later(HEAD_TIMEOUT, self._transport.abort)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0 and len(self._buffer) <= MAX_HEAD:
            return
        if end < 0 or end + 4 > MAX_HEAD:
            # Refused here, whatever the path: a head this long is no request
            # piewire serves, and handing it on would let it outlast the timer.
            self._reply("431 Request Header Fields Too Large", b"request head too long")
            return
        if not self._buffer.startswith(b"GET /v3/"):
            self._hand_over()
            return
        head = _Head()
        parser = httptools.HttpRequestParser(head)
        malformed = False
        try:
            parser.feed_data(self._buffer[: end + 4])
        except httptools.HttpParserUpgrade:
            pass
        except httptools.HttpParserError:
            malformed = True
        if malformed or not parser.should_upgrade():
            self._hand_over()
            return
        if b"websocket" not in _tokens(head.headers.get(b"upgrade", b"")):
            self._hand_over()
            return
        if parser.get_http_version() != "1.1":
            self._reply("400 Bad Request", b"a WebSocket upgrade needs HTTP/1.1")
            return
        self._upgrade(head, self._buffer[end + 4 :])

    def _reply(self, status: str, error: bytes, extra: bytes = b"") -> None:
        """Answer with a JSON error and close the connection."""
        transport = self._transport
        assert transport is not None
        if self._timer is not None:
            self._timer.cancel()
        body = b'{"error":"' + error + b'"}'
        transport.write(_response(status, body, extra))
        transport.close()

    def _hand_over(self) -> None:
        """Give the connection, and what it sent so far, to aiohttp."""
        transport = self._transport
        assert transport is not None
        if self._timer is not None:
            self._timer.cancel()
        protocol = self._http()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        protocol.data_received(self._buffer)
        self._buffer = b""

    def _upgrade(self, head: _Head, early: bytes) -> None:
        transport = self._transport
        assert transport is not None
        if self._timer is not None:
            self._timer.cancel()
        headers = head.headers
        key = headers.get(b"sec-websocket-key", b"").strip()
        if headers.get(b"sec-websocket-version", b"").strip() != b"13":
            body = b'{"error":"only WebSocket version 13 is supported"}'
            transport.write(
                _response(
                    "426 Upgrade Required", body, b"Sec-WebSocket-Version: 13\r\n"
                )
            )
            transport.close()
            return
        if not _valid_key(key) or b"upgrade" not in _tokens(
            headers.get(b"connection", b"")
        ):
            body = b'{"error":"bad WebSocket handshake"}'
            transport.write(_response("400 Bad Request", body))
            transport.close()
            return
        service = self._service
        if service.shutting_down:
            body = b'{"error":"server is shutting down"}'
            transport.write(_response("503 Service Unavailable", body))
            transport.close()
            return
        target = head.target.decode("latin-1")
        params: ConnectParams | None = None
        admission: Admission | None = None
        refusal: ConnectRefused | None = None
        try:
            params = parse_connect(target)
            admission = service.admit(
                params, _header(headers, b"origin"), _header(headers, b"jwt")
            )
        except ConnectRefused as exc:
            refusal = exc
        transport.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: "
            + accept_key(key)
            + b"\r\n\r\n"
        )
        conn = Connection(service, transport, params)
        transport.set_protocol(conn)
        # Frames are read once the connection has joined its channel.
        transport.pause_reading()
        service.starting(conn.start(params, admission, refusal, early))


def _header(headers: dict[bytes, bytes], name: bytes) -> str | None:
    value = headers.get(name)
    return None if value is None else value.decode("latin-1")
