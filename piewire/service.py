"""The node: glue between the protocol core, the key store, the broker and
the I/O layers.  The WebSocket and HTTP handlers call it; it calls the core.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from functools import partial
from typing import TYPE_CHECKING, Any

from piewire.broker.base import Broker, NodeHooks
from piewire.closecodes import CloseCode
from piewire.core.admission import Admission, admit
from piewire.core.channels import channel_key
from piewire.core.connect import ConnectParams
from piewire.core.hub import Hub
from piewire.core.messages import (
    client_frame_refusal,
    event_text,
    system_error_text,
)
from piewire.core.publish import PublishRequest
from piewire.errors import ApiError, BrokerUnavailable, ConnectRefused, KeyStoreError
from piewire.heap import HeapTrimmer
from piewire.rosters import Rosters
from piewire.settings import Settings
from piewire.store.keys import ApiKey, KeyStore
from piewire.transport.frames import OP_TEXT, encode_frame
from piewire.transport.outbox import Flusher

if TYPE_CHECKING:
    from piewire.transport.websocket import Connection

log = logging.getLogger("piewire.server")

BAD_CREDENTIALS = "invalid key or secret"


def _report_failure(conn: Connection, sent: asyncio.Future[None]) -> None:
    if sent.cancelled():
        return
    exc = sent.exception()
    if exc is not None:
        conn.send_text(system_error_text(f"message not sent: {exc}"))


class KeyCache:
    """An in-memory copy of the key store, reloaded when its revision moves."""

    def __init__(self, store: KeyStore) -> None:
        self.store = store
        self.keys: dict[str, ApiKey] = {}
        self._revision = -1

    def refresh(self) -> list[ApiKey]:
        """Reload if anything changed; return keys that stopped being usable."""
        revision = self.store.revision()
        if revision == self._revision:
            return []
        fresh = {key.api_key: key for key in self.store.all()}
        gone = [
            old
            for name, old in self.keys.items()
            if not old.revoked and (name not in fresh or fresh[name].revoked)
        ]
        self.keys = fresh
        self._revision = revision
        return gone

    def get(self, api_key: str) -> ApiKey | None:
        return self.keys.get(api_key)

    def check_secret(self, api_key: str, secret: str) -> ApiKey:
        """The live key whose secret matches; the same error for every miss."""
        key = self.keys.get(api_key)
        if key is None or key.revoked:
            # Compare anyway, so an unknown key costs what a wrong secret does.
            ApiKey(api_key="", api_secret=" " * 40).secret_matches(secret)
            raise ApiError(401, BAD_CREDENTIALS)
        if not key.secret_matches(secret):
            raise ApiError(401, BAD_CREDENTIALS)
        return key


class Service:
    """Everything one piewire node knows and does."""

    def __init__(
        self,
        settings: Settings,
        store: KeyStore,
        broker: Broker,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.settings = settings
        self.loop = loop
        self.keys = KeyCache(store)
        self.broker = broker
        self.hub = Hub()
        self.flusher = Flusher(loop)
        self.connections: dict[str, Connection] = {}
        self.per_key: dict[str, int] = {}
        self.rosters = Rosters(settings, self.hub, broker, self.connections, loop)
        self.heap = HeapTrimmer()
        self.shutting_down = False
        # Checked on every frame, so looked up once: DEBUG logs each frame.
        self.debug = logging.getLogger("piewire").isEnabledFor(logging.DEBUG)
        self._tasks: list[asyncio.Task[None]] = []
        self._starting: set[asyncio.Task[None]] = set()

    # -- lifecycle -------------------------------------------------------

    async def start(self) -> None:
        await asyncio.to_thread(self.keys.refresh)
        hooks = NodeHooks(
            deliver=self.deliver,
            on_presence=self.rosters.on_change,
            local_members=self.rosters.local_members,
            on_resync=self.rosters.reload_all,
            is_local=lambda key: self.hub.get(key) is not None,
            local_counts=self.hub.counts,
        )
        await self.broker.start(hooks)
        self._tasks.append(asyncio.create_task(self._refresh_keys()))
        self._tasks.append(asyncio.create_task(self._keepalive()))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        await self.rosters.close()
        await self.broker.close()

    async def _refresh_keys(self) -> None:
        while True:
            await asyncio.sleep(self.settings.key_refresh)
            try:
                gone = await asyncio.to_thread(self.keys.refresh)
            except KeyStoreError as exc:
                log.warning("key store refresh failed error=%s", exc)
                continue
            for key in gone:
                self._close_key(key.api_key, "api key revoked")

    def _close_key(self, api_key: str, reason: str) -> None:
        closed = 0
        for conn in list(self.connections.values()):
            if conn.api_key == api_key:
                conn.close(CloseCode.INVALID_API_KEY, error=reason)
                closed += 1
        log.info("key revoked key=%s closed=%d", api_key[:8], closed)

    async def _keepalive(self) -> None:
        """Ping silent connections; drop those silent past the timeout."""
        interval = self.settings.ping_interval
        timeout = self.settings.ping_timeout
        step = min(1.0, interval / 4, timeout / 4)
        while True:
            await asyncio.sleep(step)
            now = self.loop.time()
            self.heap.maybe_trim(now)
            for conn in list(self.connections.values()):
                silent = now - conn.last_seen
                if silent >= interval + timeout:
                    log.info("connection timed out conn=%s", conn.conn_id)
                    conn.abort()
                elif silent >= interval and not conn.ping_sent:
                    conn.ping()

    async def shutdown(self) -> None:
        """Close every client with 1001 and wait, within the grace period."""
        self.shutting_down = True
        conns = list(self.connections.values())
        log.info("shutdown closing connections=%d", len(conns))
        for conn in conns:
            conn.close(CloseCode.GOING_AWAY, "server shutting down")
        deadline = self.loop.time() + self.settings.shutdown_grace
        while self.connections and self.loop.time() < deadline:
            await asyncio.sleep(0.05)
        for conn in list(self.connections.values()):
            conn.abort()
        for task in list(self._starting):
            task.cancel()

    # -- connections -----------------------------------------------------

    def admit(
        self, params: ConnectParams, origin: str | None, header_jwt: str | None
    ) -> Admission:
        """What a connect request is admitted as, or ``ConnectRefused``."""
        return admit(
            params,
            self.keys.get(params.api_key),
            origin,
            header_jwt,
            self.per_key.get(params.api_key, 0),
        )

    def starting(self, work: Coroutine[Any, Any, None]) -> None:
        """Run a connection's start (joining its channel) as a tracked task."""
        task = self.loop.create_task(work)
        self._starting.add(task)
        task.add_done_callback(self._started)

    def _started(self, task: asyncio.Task[None]) -> None:
        self._starting.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("connection start failed", exc_info=task.exception())

    async def attach(
        self, conn: Connection, params: ConnectParams, admission: Admission
    ) -> None:
        """Join an admitted connection to its channel (and its roster).

        The broker subscription comes first, so the connection misses nothing
        published after it joined; if it fails, the connection is refused.
        """
        key = admission.key
        conn.api_key = key.api_key
        conn.channel_key = channel_key(key.api_key, params.channel_id)
        conn.user = admission.user
        try:
            if self.hub.get(conn.channel_key) is None:
                await self.broker.subscribe(conn.channel_key)
        except BrokerUnavailable as exc:
            log.warning("subscribe failed channel=%s error=%s", params.channel_id, exc)
            raise ConnectRefused(CloseCode.TRY_AGAIN_LATER, str(exc)) from exc
        self.connections[conn.conn_id] = conn
        self.per_key[key.api_key] = self.per_key.get(key.api_key, 0) + 1
        if params.boot_event:
            conn.send_text(event_text("system:boot", {}))
        channel = self.hub.join(conn.channel_key, key.api_key, params.channel_id, conn)
        if admission.expires_at is not None:
            conn.expire_at(admission.expires_at - time.time())
        log.info(
            "connection opened conn=%s channel=%s key=%s presence=%s",
            conn.conn_id,
            params.channel_id,
            key.api_key[:8],
            admission.presence,
        )
        if admission.presence:
            conn.presence = True
            try:
                await self.rosters.join(channel, conn)
            except ConnectRefused:
                conn.presence = False
                self.detach(conn)
                raise
            except BrokerUnavailable as exc:
                conn.presence = False
                self.detach(conn)
                raise ConnectRefused(CloseCode.TRY_AGAIN_LATER, str(exc)) from exc

    def detach(self, conn: Connection) -> None:
        if self.connections.pop(conn.conn_id, None) is None:
            return
        self.heap.connection_ended()
        channel = self.hub.get(conn.channel_key)
        if channel is not None and conn.presence:
            self.rosters.leave(channel, conn)
        if self.hub.leave(conn.channel_key, conn):
            self.broker.unsubscribe(conn.channel_key)
        remaining = self.per_key.get(conn.api_key, 1) - 1
        if remaining:
            self.per_key[conn.api_key] = remaining
        else:
            self.per_key.pop(conn.api_key, None)
        # The code this side sent or echoed; none when the peer just vanished.
        log.info(
            "connection closed conn=%s code=%s",
            conn.conn_id,
            conn.close_code if conn.close_code is not None else "none",
        )

    def client_message(self, conn: Connection, opcode: int, data: bytes) -> None:
        """A member sent ``data``: relay it, or tell the sender why not."""
        key = self.keys.get(conn.api_key)
        if key is None or not key.client_publish:
            conn.send_text(system_error_text("client publishing is off for this key"))
            return
        # Binary frames too: the SDK on Node parses them as JSON text.
        refusal = client_frame_refusal(data)
        if refusal is not None:
            conn.send_text(system_error_text(refusal))
            return
        try:
            sent = self.broker.publish(conn.channel_key, opcode, data, conn.conn_id)
        except BrokerUnavailable as exc:
            conn.send_text(system_error_text(f"message not sent: {exc}"))
            return
        # Not awaited: the next frame of this client is read at once, and a
        # failure reaches the sender when it is known.
        if not sent.done():
            sent.add_done_callback(partial(_report_failure, conn))

    # -- fan-out ---------------------------------------------------------

    def deliver(self, key: str, opcode: int, payload: bytes, sender: str) -> None:
        """A message for ``key`` reached this node: one frame, every member."""
        if self.hub.get(key) is not None:
            self.hub.deliver(key, encode_frame(opcode, payload), sender)

    # -- REST ------------------------------------------------------------

    async def rest_publish(self, request: PublishRequest) -> None:
        key = self.keys.check_secret(request.api_key, request.secret)
        target = channel_key(key.api_key, request.channel_id)
        try:
            await self.broker.publish(target, OP_TEXT, request.payload, "")
        except BrokerUnavailable as exc:
            raise ApiError(503, f"message bus unavailable: {exc}") from exc

    async def channel_counts(self, api_key: str, secret: str) -> dict[str, int]:
        key = self.keys.check_secret(api_key, secret)
        try:
            counts = await self.broker.connection_counts(key.api_key)
        except BrokerUnavailable as exc:
            raise ApiError(503, f"message bus unavailable: {exc}") from exc
        return self.hub.channels_of(key.api_key) if counts is None else counts

    async def roster(self, api_key: str, secret: str, channel_id: str) -> list[Any]:
        key = self.keys.check_secret(api_key, secret)
        target = channel_key(key.api_key, channel_id)
        try:
            _, members = await self.broker.presence_snapshot(target)
        except BrokerUnavailable as exc:
            raise ApiError(503, f"message bus unavailable: {exc}") from exc
        return [{"user": m.user, "uuid": m.uuid} for m in members]
