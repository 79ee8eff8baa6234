"""The WebSocket layer: one asyncio protocol per client after the upgrade.

aiohttp's frame parser (its C reader, fed straight from ``data_received``)
checks framing, UTF-8 sizes and control frames; every frame the server sends
goes out through the connection's outbox.  No task and no request object
live as long as the connection: only this protocol, its outbox and its parser.

This module moves bytes and calls the service.  What a connection may do, and
where its messages go, is decided in the core.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
from typing import TYPE_CHECKING, Any, cast

from aiohttp import WebSocketError, WSMsgType
from aiohttp._websocket.reader import WebSocketDataQueue, WebSocketReader

from piewire.closecodes import CloseCode, peer_close_code_is_valid
from piewire.core.admission import Admission
from piewire.core.connect import ConnectParams
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

_TEXT = WSMsgType.TEXT
_BINARY = WSMsgType.BINARY
_PING = WSMsgType.PING
_CLOSE = WSMsgType.CLOSE


class _Gone:
    """The transport of a connection that has ended: every call is a no-op."""

    def write(self, data: bytes) -> None:
        return None

    def close(self) -> None:
        return None

    def abort(self) -> None:
        return None

    def is_closing(self) -> bool:
        return True

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        return None

    def resume_reading(self) -> None:
        return None


GONE = cast(asyncio.Transport, _Gone())


class _Inbox(WebSocketDataQueue):
    """Where aiohttp's parser puts each client message: straight to the connection.

    Nothing is queued, so no task has to wake up for a message and no buffer
    grows: the parser's flow control never engages.
    """

    def __init__(self, conn: Connection, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(conn, 2**16, loop=loop)  # type: ignore[arg-type]
        self._conn = conn

    def feed_data(self, data: Any, size: int) -> None:
        self._conn.on_message(data)

    def set_exception(self, exc: BaseException, exc_cause: Any = None) -> None:
        self._conn.on_parse_error(exc)

    def feed_eof(self) -> None:
        return None


class Connection(asyncio.Protocol):
    """One client WebSocket: its identity, its outbox, its liveness."""

    def __init__(
        self,
        service: Service,
        transport: asyncio.Transport,
        params: ConnectParams | None,
    ) -> None:
        self.conn_id = f"{NODE_ID}-{next(_serial)}"
        self.service = service
        self.transport = transport
        self.params = params
        self.notify_self = params.notify_self if params else False
        self.uuid = params.uuid if params else ""
        self.user: Any = "anonymous"
        self.api_key = ""
        self.channel_key = ""
        self.outbox = Outbox(
            transport,
            service.flusher,
            service.settings.outbound_buffer,
            self._slow_consumer,
        )
        self.presence = False
        self.attached = False
        self.closing = False
        self.close_code: int | None = None
        self.last_seen = service.loop.time()
        self.ping_sent = False
        self._closer: asyncio.TimerHandle | None = None
        self._expiry: asyncio.TimerHandle | None = None
        # aiohttp refuses a message of exactly max_msg_size bytes, hence + 1.
        self._reader: WebSocketReader | None = WebSocketReader(
            _Inbox(self, service.loop),
            service.settings.max_message_size + 1,
            False,
            False,
        )

    # -- asyncio -----------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        if reader is not None:
            self.last_seen = self.service.loop.time()
            self.ping_sent = False
            reader.feed_data(data)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._reader = None
        self.closing = True
        self.outbox.seal()
        for timer in (self._closer, self._expiry):
            if timer is not None:
                timer.cancel()
        self._leave_channel()
        # A TLS transport and its protocol point at this connection and back:
        # cutting the link lets them go at once, not at the next full GC pass.
        self.transport = self.outbox.transport = GONE

    def _leave_channel(self) -> None:
        if self.attached:
            self.attached = False
            self.service.detach(self)

    def pause_writing(self) -> None:
        # The outbox bounds what is queued in bytes; nothing waits on drain.
        return None

    def resume_writing(self) -> None:
        return None

    # -- joining -----------------------------------------------------------

    async def start(
        self,
        params: ConnectParams | None,
        admission: Admission | None,
        refusal: ConnectRefused | None,
        early: bytes,
    ) -> None:
        """Join the channel (reading paused meanwhile), then read ``early`` bytes."""
        if refusal is None:
            assert params is not None and admission is not None
            try:
                await self.service.attach(self, params, admission)
                self.attached = True
            except ConnectRefused as exc:
                refusal = exc
        if self.transport.is_closing():
            # The client left while joining: connection_lost found nothing to leave.
            self._leave_channel()
            return
        if refusal is not None:
            log.info(
                "connection refused conn=%s code=%d reason=%s",
                self.conn_id,
                refusal.code,
                refusal.reason,
            )
            self.refuse(refusal)
        self.transport.resume_reading()
        if early:
            self.data_received(early)

    # -- sending -----------------------------------------------------------

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
        self.close_code = CloseCode.SLOW_CONSUMER
        self.transport.write(close_frame(CloseCode.SLOW_CONSUMER, "slow consumer"))
        self._closer = self.service.loop.call_later(CLOSE_TIMEOUT, self.transport.abort)
        log.warning(
            "slow consumer closed conn=%s channel=%s",
            self.conn_id,
            self.params.channel_id if self.params else "-",
        )

    # -- receiving ---------------------------------------------------------

    def on_message(self, msg: Any) -> None:
        if self._reader is None:
            # A close or an error earlier in the same read: the rest is ignored.
            return
        kind = msg.type
        if kind is _TEXT or kind is _BINARY:
            if not self.closing:
                self._message(kind is _TEXT, msg.data)
        elif kind is _PING:
            self.outbox.push(encode_frame(OP_PONG, bytes(msg.data)))
        elif kind is _CLOSE:
            self._peer_closed(msg.data, msg.extra)

    def _message(self, is_text: bool, data: bytes) -> None:
        if is_text:
            try:
                data.decode("utf-8")
            except UnicodeDecodeError:
                self._stop_reading()
                self.close(CloseCode.INVALID_DATA, "invalid UTF-8 text")
                self.transport.close()
                return
        if self.service.debug:
            log.debug(
                "frame in conn=%s text=%s bytes=%d head=%r",
                self.conn_id,
                is_text,
                len(data),
                data[:32],
            )
        self.service.client_message(self, OP_TEXT if is_text else OP_BINARY, data)

    def on_parse_error(self, error: BaseException) -> None:
        """The parser found a protocol violation (RFC 6455 7.1.7).

        The close frame goes out behind what is already queued, unless this
        connection sent one before.  The parser reads nothing after an error,
        so no close frame can come back: the stream ends once the queue is
        written, or when ``CLOSE_TIMEOUT`` runs out.
        """
        self._stop_reading()
        code = error.code if isinstance(error, WebSocketError) else 1002
        reason = _FAILURE_REASONS.get(code, "protocol error")
        detail = str(error)[:200]
        if code == CloseCode.MESSAGE_TOO_BIG:
            # aiohttp's own text names its internal limit, one above ours.
            detail = f"over max_message_size {self.service.settings.max_message_size}"
        log.info("protocol error conn=%s code=%d error=%s", self.conn_id, code, detail)
        self.close(code, reason)
        self.transport.close()

    def _stop_reading(self) -> None:
        self._reader = None

    def _peer_closed(self, code: int, reason: str | None) -> None:
        self._stop_reading()
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
