"""This node's copy of the presence rosters of its channels.

The broker orders every roster change of a channel and gives it a version.
Each node keeps a ``PresenceFeed`` per channel with local presence members,
built from a snapshot and then moved forward by the changes, and announces to
its own members what the feed decides.  A change that skips a version means
changes were lost (a broker reconnect): the roster is reloaded whole.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Iterator
from typing import TYPE_CHECKING, Any

from piewire.broker.base import Broker
from piewire.closecodes import CloseCode
from piewire.core.hub import Channel, Hub
from piewire.core.presence import JOIN, Out, PresenceFeed, PresenceMember
from piewire.errors import BrokerUnavailable
from piewire.settings import Settings
from piewire.transport.frames import OP_TEXT, encode_frame

if TYPE_CHECKING:
    from piewire.transport.websocket import Connection

log = logging.getLogger("piewire.presence")


class Rosters:
    def __init__(
        self,
        settings: Settings,
        hub: Hub,
        broker: Broker,
        connections: dict[str, Connection],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self._settings = settings
        self._hub = hub
        self._broker = broker
        self._connections = connections
        self._loop = loop
        self._flushes: dict[str, asyncio.TimerHandle] = {}
        # Channels whose snapshot is loading, with the changes that came meanwhile.
        self._loading: dict[str, list[tuple[int, str, PresenceMember]]] = {}
        self._loaded: dict[str, asyncio.Future[None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def _new_feed(self, members: list[PresenceMember], version: int) -> PresenceFeed:
        return PresenceFeed(
            self._settings.presence_window,
            self._settings.presence_rate,
            members,
            version,
        )

    # -- joining and leaving ---------------------------------------------

    async def join(self, channel: Channel, conn: Connection) -> None:
        """Add ``conn`` to the roster; it hears roster events from its own join on."""
        if channel.feed is None:
            await self._load(channel.key)
        await self._broker.presence_join(channel.key, conn.presence_member())

    async def _load(self, key: str) -> None:
        pending = self._loaded.get(key)
        if pending is not None:
            await asyncio.shield(pending)
            return
        done: asyncio.Future[None] = self._loop.create_future()
        self._loaded[key] = done
        self._loading[key] = []
        try:
            version, members = await self._broker.presence_snapshot(key)
            channel = self._hub.get(key)
            if channel is not None and channel.feed is None:
                channel.feed = self._new_feed(members, version)
                for change in self._loading[key]:
                    self._apply(channel, *change)
            done.set_result(None)
        except BaseException as exc:
            done.set_exception(exc)
            done.exception()
            raise
        finally:
            del self._loading[key]
            del self._loaded[key]

    def leave(self, channel: Channel, conn: Connection) -> None:
        """``conn`` ended: remove it from the roster, in the background."""
        channel.listeners.pop(conn.conn_id, None)
        self._spawn(self._broker.presence_leave(channel.key, conn.presence_member()))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        async def run() -> None:
            try:
                await work
            except BrokerUnavailable as exc:
                log.warning("presence change not stored error=%s", exc)

        task = self._loop.create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        for timer in self._flushes.values():
            timer.cancel()
        self._flushes.clear()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- changes from the broker -----------------------------------------

    def on_change(
        self, key: str, version: int, op: str, member: PresenceMember
    ) -> None:
        loading = self._loading.get(key)
        if loading is not None:
            loading.append((version, op, member))
            return
        channel = self._hub.get(key)
        if channel is not None and channel.feed is not None:
            self._apply(channel, version, op, member)

    def _apply(
        self, channel: Channel, version: int, op: str, member: PresenceMember
    ) -> None:
        feed = channel.feed
        assert feed is not None
        if version <= feed.version:
            return
        if version > feed.version + 1:
            log.warning(
                "roster changes missed channel=%s have=%d got=%d",
                channel.channel_id,
                feed.version,
                version,
            )
            self._spawn(self._reload(channel.key))
            return
        feed.version = version
        now = self._loop.time()
        if op == JOIN:
            previous = feed.members.get(member.uuid)
            joiner = self._connections.get(member.conn_id)
            if joiner is not None and joiner.channel_key == channel.key:
                channel.listeners[joiner.conn_id] = joiner
            outs = feed.join(member, len(channel.listeners), now)
            if previous is not None and previous.conn_id != member.conn_id:
                self._replaced(previous.conn_id)
        else:
            outs = feed.leave(member.uuid, member.conn_id, len(channel.listeners), now)
        self._announce(channel, outs)
        if not feed.members and not channel.listeners:
            channel.feed = None

    def _replaced(self, conn_id: str) -> None:
        conn = self._connections.get(conn_id)
        if conn is not None:
            conn.close(
                CloseCode.REPLACED,
                error="replaced by a newer connection with the same uuid",
            )

    async def _reload(self, key: str) -> None:
        version, members = await self._broker.presence_snapshot(key)
        channel = self._hub.get(key)
        if channel is None or channel.feed is None or version < channel.feed.version:
            return
        self._announce(channel, channel.feed.reset(members, version))

    def reload_all(self) -> None:
        """The broker lost changes: reload every roster this node shows."""
        for key in [ch.key for ch in self._hub.channels() if ch.feed is not None]:
            self._spawn(self._reload(key))

    # -- announcing ------------------------------------------------------

    def _announce(self, channel: Channel, outs: list[Out]) -> None:
        feed = channel.feed
        assert feed is not None
        for out in outs:
            frame = encode_frame(OP_TEXT, out.text.encode())
            if out.to_uuid is None:
                channel.send_to_listeners(frame)
                continue
            holder = feed.members.get(out.to_uuid)
            listener = channel.listeners.get(holder.conn_id) if holder else None
            if listener is not None:
                listener.send(frame)
        if feed.deadline is not None and channel.key not in self._flushes:
            self._flushes[channel.key] = self._loop.call_at(
                feed.deadline, self._flush, channel.key
            )

    def _flush(self, key: str) -> None:
        self._flushes.pop(key, None)
        channel = self._hub.get(key)
        if channel is not None and channel.feed is not None:
            self._announce(channel, channel.feed.flush(self._loop.time()))

    # -- reading ---------------------------------------------------------

    def members(self, key: str) -> list[PresenceMember]:
        channel = self._hub.get(key)
        if channel is None or channel.feed is None:
            return []
        return list(channel.feed.members.values())

    def local_members(self) -> Iterator[tuple[str, PresenceMember]]:
        for channel in self._hub.channels():
            for conn_id in list(channel.listeners):
                conn = self._connections.get(conn_id)
                if conn is not None:
                    yield channel.key, conn.presence_member()
