"""The WebSocket layer: aiohttp does the handshake and parses client frames;
everything the server sends goes out through the connection's outbox.

This module moves bytes and calls the service.  What a connection may do, and
where its messages go, is decided in the core.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
from typing import TYPE_CHECKING, Any

from aiohttp import WebSocketError, WSCloseCode, WSMsgType, web

from piewire.closecodes import CloseCode, peer_close_code_is_valid
from piewire.core.admission import Admission
from piewire.core.connect import ConnectParams, parse_connect
from piewire.core.messages import error_text
from piewire.core.presence import PresenceMember
from piewire.errors import ConnectRefused
from piewire.transport.frames import (
    OP_BINARY,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    close_frame,
    encode_frame,
    text_frame,
)
from piewire.transport.http import SERVICE
from piewire.transport.outbox import Outbox

if TYPE_CHECKING:
    from piewire.service import Service

log = logging.getLogger("piewire.server")

NODE_ID = secrets.token_hex(4)
_serial = itertools.count(1)

# How long a closing connection waits for the peer's close frame, and for the
# peer to read what is still queued for it, before the socket is dropped.
CLOSE_TIMEOUT = 2.0

# The close reason for each protocol violation aiohttp's parser reports.
_FAILURE_REASONS: dict[int, str] = {
    CloseCode.PROTOCOL_ERROR: "protocol error",
    CloseCode.INVALID_DATA: "invalid UTF-8 text",
    CloseCode.MESSAGE_TOO_BIG: "message too big",
}


class ServerWebSocket(web.WebSocketResponse):
    """aiohttp's WebSocket response, without the close frames it writes itself.

    aiohttp writes a close frame straight to the transport when its parser
    finds a protocol violation and when the handler returns.  That frame would
    skip the outbox: frames still waiting there would follow it on the wire, a
    connection already closed by piewire would get a second close frame, and
    aiohttp would wait, with no bound, for a peer that reads nothing.  Every
    close frame of piewire goes through the outbox instead, so ``close`` here
    only marks the socket closed; ``Connection`` does the rest.
    """

    async def close(
        self, *, code: int = WSCloseCode.OK, message: bytes = b"", drain: bool = True
    ) -> bool:
        if self.closed:
            return False
        self._set_closed()
        return True


class Connection:
    """One client WebSocket: its identity, its outbox, its liveness."""

    __slots__ = (
        "_closer",
        "_expiry",
        "api_key",
        "channel_key",
        "close_code",
        "closing",
        "conn_id",
        "expires_at",
        "last_seen",
        "notify_self",
        "outbox",
        "params",
        "ping_sent",
        "presence",
        "service",
        "transport",
        "user",
        "uuid",
        "ws",
    )

    def __init__(
        self,
        service: Service,
        ws: web.WebSocketResponse,
        transport: asyncio.WriteTransport,
        params: ConnectParams | None,
    ) -> None:
        self.conn_id = f"{NODE_ID}-{next(_serial)}"
        self.service = service
        self.ws = ws
        self.transport = transport
        self.params = params
        self.notify_self = params.notify_self if params else False
        self.uuid = params.uuid if params else ""
        self.user: Any = "anonymous"
        self.api_key = ""
        self.channel_key = ""
        self.expires_at: float | None = None
        self.outbox = Outbox(
            transport,
            service.flusher,
            service.settings.outbound_buffer,
            self._slow_consumer,
        )
        self.presence = False
        self.closing = False
        self.close_code: int | None = None
        self.last_seen = service.loop.time()
        self.ping_sent = False
        self._closer: asyncio.TimerHandle | None = None
        self._expiry: asyncio.TimerHandle | None = None

    def send(self, frame: bytes) -> None:
        self.outbox.push(frame)

    def presence_member(self) -> PresenceMember:
        return PresenceMember.make(self.uuid, self.user, self.conn_id)

    def send_text(self, text: str) -> None:
        self.outbox.push(text_frame(text))

    def close(
        self, code: int | None, reason: str = "", error: str | None = None
    ) -> None:
        """Start the closing handshake: an optional error frame, then a close frame.

        The peer's close frame, or ``CLOSE_TIMEOUT``, ends the connection.
        """
        if self.closing:
            return
        self.closing = True
        self.close_code = code
        if error is not None:
            self.outbox.push(text_frame(error_text(error)))
        self.outbox.push(close_frame(code, reason))
        self.outbox.flush()
        self.outbox.seal()
        self._closer = self.service.loop.call_later(CLOSE_TIMEOUT, self.transport.abort)
        log.debug(
            "connection closing conn=%s channel=%s code=%s",
            self.conn_id,
            self.params.channel_id if self.params else "-",
            code,
        )

    def expire_at(self, delay: float) -> None:
        """End the connection when its token expires, ``delay`` seconds from now."""
        self._expiry = self.service.loop.call_later(max(0.0, delay), self._expired)

    def _expired(self) -> None:
        self._expiry = None
        self.close(CloseCode.TOKEN_EXPIRED, error="token expired")

    def refuse(self, refusal: ConnectRefused) -> None:
        """Close a refused connection: an error frame only when it is final.

        "Come back later" codes carry no error frame, since any error frame
        stops the SDKs from reconnecting; their reason rides in the close frame.
        """
        if CloseCode(refusal.code).final:
            self.close(refusal.code, error=refusal.reason)
        else:
            self.close(refusal.code, refusal.reason)

    def ping(self) -> None:
        self.ping_sent = True
        self.outbox.push(encode_frame(OP_PING, b""))

    def abort(self) -> None:
        """Drop the TCP connection at once (dead peer)."""
        self.outbox.seal()
        self.transport.abort()

    def _slow_consumer(self) -> None:
        # The outbox is sealed: the close frame goes straight to the transport,
        # behind what is already buffered, and the socket is dropped if the
        # peer does not drain it in time.
        if self.closing:
            return
        self.closing = True
        self.transport.write(close_frame(CloseCode.SLOW_CONSUMER, "slow consumer"))
        self._closer = self.service.loop.call_later(CLOSE_TIMEOUT, self.transport.abort)
        log.warning(
            "slow consumer closed conn=%s channel=%s",
            self.conn_id,
            self.params.channel_id if self.params else "-",
        )

    async def run(self) -> None:
        """Read client frames until the connection ends."""
        ws = self.ws
        service = self.service
        loop = service.loop
        while True:
            msg = await ws.receive()
            self.last_seen = loop.time()
            self.ping_sent = False
            kind = msg.type
            if kind is WSMsgType.TEXT or kind is WSMsgType.BINARY:
                if self.closing:
                    continue
                await self._message(kind is WSMsgType.TEXT, msg.data)
            elif kind is WSMsgType.PING:
                self.outbox.push(encode_frame(OP_PONG, msg.data))
            elif kind is WSMsgType.CLOSE:
                self._peer_closed(msg.data, msg.extra)
                return
            elif kind is WSMsgType.PONG:
                continue
            elif kind is WSMsgType.ERROR and isinstance(msg.data, WebSocketError):
                self._fail(msg.data)
                return
            else:
                # CLOSED or ERROR: the socket is gone.
                self.closing = True
                self.outbox.seal()
                return

    async def _message(self, is_text: bool, data: bytes) -> None:
        if is_text:
            try:
                data.decode("utf-8")
            except UnicodeDecodeError:
                self.close(CloseCode.INVALID_DATA, "invalid UTF-8 text")
                return
        if self.service.debug:
            log.debug(
                "frame in conn=%s text=%s bytes=%d head=%r",
                self.conn_id,
                is_text,
                len(data),
                data[:32],
            )
        await self.service.client_message(self, OP_TEXT if is_text else OP_BINARY, data)

    def _fail(self, error: WebSocketError) -> None:
        """The parser found a protocol violation (RFC 6455 7.1.7).

        The close frame goes out behind what is already queued, unless this
        connection sent one before.  The parser reads nothing after an error,
        so no close frame can come back: the stream ends once the queue is
        written, or when ``CLOSE_TIMEOUT`` runs out.
        """
        reason = _FAILURE_REASONS.get(error.code, "protocol error")
        detail = str(error)[:200]
        if error.code == CloseCode.MESSAGE_TOO_BIG:
            # aiohttp's own text names its internal limit, one above ours.
            detail = f"over max_message_size {self.service.settings.max_message_size}"
        log.info(
            "protocol error conn=%s code=%d error=%s", self.conn_id, error.code, detail
        )
        self.close(error.code, reason)
        self.transport.close()

    def _peer_closed(self, code: int, reason: str | None) -> None:
        if self.closing:
            self.transport.close()
            return
        if code == 0:
            self.close(None)
        elif not peer_close_code_is_valid(code):
            self.close(CloseCode.PROTOCOL_ERROR, "invalid close code")
        else:
            self.close(code, reason or "")
        self.transport.close()

    def finished(self) -> None:
        """The handler is done: end the stream, within ``CLOSE_TIMEOUT``.

        A peer that stopped reading keeps the transport from finishing its
        close; the abort timer, started when the closing began or here, drops
        the socket instead of holding it and its buffer forever.
        """
        if self._expiry is not None:
            self._expiry.cancel()
        self.closing = True
        self.outbox.seal()
        if not self.transport.is_closing():
            self.transport.close()
        if self.transport.get_write_buffer_size() == 0:
            if self._closer is not None:
                self._closer.cancel()
        elif self._closer is None:
            loop = self.service.loop
            self._closer = loop.call_later(CLOSE_TIMEOUT, self.transport.abort)


async def websocket_handler(request: web.Request) -> web.StreamResponse:
    service = request.app[SERVICE]
    settings = service.settings
    ws = ServerWebSocket(
        autoclose=False,
        autoping=False,
        compress=False,
        # aiohttp refuses a message of exactly max_msg_size bytes.
        max_msg_size=settings.max_message_size + 1,
        decode_text=False,
        timeout=CLOSE_TIMEOUT,
    )
    if not ws.can_prepare(request).ok:
        return web.json_response(
            {"error": "expected a WebSocket upgrade request"}, status=426
        )
    params: ConnectParams | None = None
    admission: Admission | None = None
    refusal: ConnectRefused | None = None
    try:
        params = parse_connect(request.raw_path)
        admission = service.admit(params, request.headers)
    except ConnectRefused as exc:
        refusal = exc
    if service.shutting_down:
        return web.json_response({"error": "server is shutting down"}, status=503)
    try:
        await ws.prepare(request)
    except ConnectionError:
        # The client left during its own handshake: nothing to answer.
        log.info("connection lost during the handshake")
        return ws
    transport = request.transport
    assert transport is not None
    conn = Connection(service, ws, transport, params)
    try:
        if refusal is None:
            assert params is not None and admission is not None
            try:
                await service.attach(conn, params, admission)
            except ConnectRefused as exc:
                refusal = exc
        if refusal is not None:
            log.info(
                "connection refused conn=%s code=%d reason=%s",
                conn.conn_id,
                refusal.code,
                refusal.reason,
            )
            conn.refuse(refusal)
            await conn.run()
            return ws
        try:
            await conn.run()
        finally:
            service.detach(conn)
    finally:
        conn.finished()
    return ws
