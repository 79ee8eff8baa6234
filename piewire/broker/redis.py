"""The cluster broker: Redis pub/sub carries messages and roster changes.

Each channel with local members is one Redis channel ``{prefix}:ch:{key}``.
A message crosses Redis once per publish, and each node fans it out locally.
Rosters live in Redis (``{prefix}:roster:{key}`` hash, ``{prefix}:roster-exp:
{key}`` sorted set of expiry times, ``{prefix}:roster-ver:{key}`` version), and
every change is made by a Lua script that also PUBLISHes it on the channel, so
all nodes see roster changes and messages in one order.  Each node refreshes
its members' expiry on a heartbeat; the members of a node that died expire and
are announced as left by any node still showing that roster.

Wire format on a Redis channel: ``m`` + opcode byte + sender length byte +
sender + payload for a message; ``pj`` or ``pl`` + version + space + member
record (JSON) for a roster join or leave.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
from collections.abc import Coroutine
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from piewire.broker.base import NodeHooks
from piewire.closecodes import CloseCode
from piewire.core.presence import JOIN, LEAVE, PresenceMember
from piewire.errors import BrokerUnavailable, ConnectRefused

log = logging.getLogger("piewire.broker.redis")

# Seconds a channel stays subscribed after its last local member left.
UNSUBSCRIBE_GRACE = 1.0
# Seconds to wait for Redis to confirm a SUBSCRIBE.
SUBSCRIBE_TIMEOUT = 5.0
# Reconnect backoff: doubles from the first value up to the cap, with jitter.
BACKOFF_FIRST = 0.1
BACKOFF_CAP = 5.0
# Seconds between writes of this node's connection counts; they expire after
# three missed writes, so a dead node's connections stop counting.
COUNTS_INTERVAL = 1.0

# Seconds of silence on the subscriber connection before it is probed, and
# after which it is given up as dead.
PROBE_AFTER = 1.0
DEAD_AFTER = 3.0

# KEYS: roster, expiry, version, channel.
# ARGV: uuid, record, ident, ttl, conn id, mode ("join" or "refresh").
# join: refuse (-1) if another identity holds the uuid; else store and announce.
# refresh: bump the expiry if this connection holds the uuid; store and announce
# it again if the entry is gone (lost in a Redis outage); 0 if another holds it.
_JOIN = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local ttl = tonumber(ARGV[4])
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur then
  local held = cjson.decode(cur)
  if ARGV[6] == 'refresh' then
    if held.conn ~= ARGV[5] then return 0 end
    redis.call('ZADD', KEYS[2], now + ttl / 2, ARGV[1])
    redis.call('EXPIRE', KEYS[1], math.ceil(ttl))
    redis.call('EXPIRE', KEYS[2], math.ceil(ttl))
    redis.call('EXPIRE', KEYS[3], math.ceil(ttl * 10))
    return 1
  end
  if held.ident ~= ARGV[3] then return -1 end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], now + ttl / 2, ARGV[1])
local v = redis.call('INCR', KEYS[3])
redis.call('EXPIRE', KEYS[1], math.ceil(ttl))
redis.call('EXPIRE', KEYS[2], math.ceil(ttl))
redis.call('EXPIRE', KEYS[3], math.ceil(ttl * 10))
redis.call('PUBLISH', KEYS[4], 'pj' .. v .. ' ' .. ARGV[2])
return v
"""

# KEYS: roster, expiry, version, channel.  ARGV: uuid, conn id.
_LEAVE = """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if not cur then return 0 end
if cjson.decode(cur).conn ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
local v = redis.call('INCR', KEYS[3])
redis.call('PUBLISH', KEYS[4], 'pl' .. v .. ' ' .. cur)
return v
"""

# KEYS: roster, expiry, version, channel.  Removes and announces expired members.
_REAP = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
for _, uuid in ipairs(gone) do
  redis.call('ZREM', KEYS[2], uuid)
  local cur = redis.call('HGET', KEYS[1], uuid)
  if cur then
    redis.call('HDEL', KEYS[1], uuid)
    local v = redis.call('INCR', KEYS[3])
    redis.call('PUBLISH', KEYS[4], 'pl' .. v .. ' ' .. cur)
  end
end
return #gone
"""

# KEYS: roster, version.  The roster and its version, read together.
_SNAPSHOT = """
return {tonumber(redis.call('GET', KEYS[2]) or '0'), redis.call('HVALS', KEYS[1])}
"""


class RedisBroker:
    def __init__(self, url: str, prefix: str, presence_ttl: float) -> None:
        self._prefix = prefix
        self._channel_prefix = f"{prefix}:ch:".encode()
        self._ttl = presence_ttl
        # One quick retry covers a pooled connection that went stale.
        self._redis = aioredis.Redis.from_url(
            url,
            socket_timeout=2.0,
            socket_connect_timeout=2.0,
            retry=Retry(NoBackoff(), 1),
        )
        # The subscriber connection gets no retry: redis-py would reconnect and
        # subscribe again inside a read, and the node would never learn that
        # messages and roster changes were lost meanwhile.  ``_listen`` does
        # the reconnecting, marks the node unready, and resyncs.
        self._sub_redis = aioredis.Redis.from_url(
            url,
            socket_timeout=2.0,
            socket_connect_timeout=2.0,
            retry=Retry(NoBackoff(), 0),
        )
        self._join = self._redis.register_script(_JOIN)
        self._leave = self._redis.register_script(_LEAVE)
        self._reap = self._redis.register_script(_REAP)
        self._snapshot = self._redis.register_script(_SNAPSHOT)
        self._hooks: NodeHooks | None = None
        self._pubsub: aioredis.client.PubSub | None = None
        self._ready = False
        self._was_ready = False
        self._wanted: set[str] = set()
        self._confirmed: set[str] = set()
        self._waiting: dict[str, asyncio.Future[None]] = {}
        self._dropping: dict[str, asyncio.TimerHandle] = {}
        self._tasks: list[asyncio.Task[None]] = []
        # Short-lived work (unsubscribes, restores), each dropped once done.
        self._background: set[asyncio.Task[None]] = set()
        self._control = f"{prefix}:control"
        self._outgoing: list[tuple[str, bytes]] = []
        self._batch: asyncio.Future[None] | None = None
        self._sender: asyncio.Task[None] | None = None
        self._counts_key = f"{prefix}:counts:{secrets.token_hex(6)}"

    # -- names -----------------------------------------------------------

    def _channel(self, key: str) -> str:
        return f"{self._prefix}:ch:{key}"

    def _roster_keys(self, key: str) -> list[str]:
        p = self._prefix
        return [
            f"{p}:roster:{key}",
            f"{p}:roster-exp:{key}",
            f"{p}:roster-ver:{key}",
            self._channel(key),
        ]

    # -- lifecycle -------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._ready

    async def start(self, hooks: NodeHooks) -> None:
        self._hooks = hooks
        connected = asyncio.get_running_loop().create_future()
        self._tasks.append(asyncio.create_task(self._listen(connected)))
        self._tasks.append(asyncio.create_task(self._heartbeat()))
        self._tasks.append(asyncio.create_task(self._write_counts()))
        # Start serving even when Redis is down: /ready says so, and the
        # connection loop keeps trying.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(connected), SUBSCRIBE_TIMEOUT)

    async def close(self) -> None:
        if self._batch is not None and not self._batch.done():
            self._batch.cancel()
        tasks = [*self._tasks, *self._background]
        if self._sender is not None:
            tasks.append(self._sender)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        for timer in self._dropping.values():
            timer.cancel()
        self._ready = False
        await self._sub_redis.aclose()
        await self._redis.aclose()

    # -- the subscriber connection ---------------------------------------

    async def _listen(self, connected: asyncio.Future[None]) -> None:
        backoff = BACKOFF_FIRST
        first = True
        while True:
            pubsub = self._sub_redis.pubsub()
            try:
                await pubsub.subscribe(self._control)
                names = [self._channel(key) for key in self._wanted]
                if names:
                    await pubsub.subscribe(*names)
                self._pubsub = pubsub
                await self._read(pubsub, connected, first)
            except (RedisError, OSError) as exc:
                if self._ready:
                    log.warning("redis connection lost error=%s", exc)
                self._lost(exc)
            finally:
                self._pubsub = None
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            if self._was_ready:
                # It worked for a while: the next connect is a restore.
                first = False
                backoff = BACKOFF_FIRST
                self._was_ready = False
            delay = backoff * random.uniform(0.5, 1.0)
            backoff = min(BACKOFF_CAP, backoff * 2)
            await asyncio.sleep(delay)

    async def _read(
        self,
        pubsub: aioredis.client.PubSub,
        connected: asyncio.Future[None],
        first: bool,
    ) -> None:
        loop = asyncio.get_running_loop()
        heard = loop.time()
        probed = False
        while True:
            message = await pubsub.get_message(timeout=PROBE_AFTER)
            now = loop.time()
            if message is None:
                if now - heard > DEAD_AFTER:
                    raise ConnectionError("redis stopped answering")
                if not probed:
                    await pubsub.ping()
                    probed = True
                continue
            heard = now
            probed = False
            kind = message["type"]
            if kind == "message":
                self._on_message(message["channel"], message["data"])
            elif kind == "subscribe":
                self._on_subscribed(message["channel"], connected, first)

    def _on_subscribed(
        self, channel: bytes, connected: asyncio.Future[None], first: bool
    ) -> None:
        if channel == self._control.encode():
            if not self._wanted:
                self._now_ready(connected, first)
            return
        key = channel[len(self._channel_prefix) :].decode()
        self._confirmed.add(key)
        waiter = self._waiting.pop(key, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if not self._ready and self._wanted <= self._confirmed:
            self._now_ready(connected, first)

    def _now_ready(self, connected: asyncio.Future[None], first: bool) -> None:
        self._ready = True
        self._was_ready = True
        if not connected.done():
            connected.set_result(None)
        if not first:
            log.warning("redis connection restored channels=%d", len(self._wanted))
            self._spawn(self._restore())

    async def _restore(self) -> None:
        """After a reconnect: put back lost roster entries, then reload rosters."""
        try:
            await self._refresh_members()
        except (RedisError, OSError) as exc:
            log.warning("presence restore failed error=%s", exc)
        assert self._hooks is not None
        self._hooks.on_resync()

    def _lost(self, exc: BaseException) -> None:
        self._ready = False
        self._confirmed.clear()
        for waiter in self._waiting.values():
            if not waiter.done():
                waiter.set_exception(BrokerUnavailable(f"redis unreachable: {exc}"))
                waiter.exception()
        self._waiting.clear()

    def _on_message(self, channel: bytes, data: bytes) -> None:
        assert self._hooks is not None
        key = channel[len(self._channel_prefix) :].decode()
        kind = data[:1]
        if kind == b"m":
            size = data[2]
            sender = data[3 : 3 + size].decode()
            self._hooks.deliver(key, data[1], data[3 + size :], sender)
        elif kind == b"p":
            version, _, record = data[2:].partition(b" ")
            op = JOIN if data[1:2] == b"j" else LEAVE
            member = PresenceMember.from_record(record)
            self._hooks.on_presence(key, int(version), op, member)

    # -- publishing and subscribing --------------------------------------

    def publish(
        self, key: str, opcode: int, payload: bytes, sender: str
    ) -> asyncio.Future[None]:
        """Queue a PUBLISH; everything queued in one loop turn goes in one write.

        One batch is in flight at a time, so Redis sees the messages in call
        order.  Sending them together also lets every node receive them
        together, and so write them to each socket together.
        """
        if not self._ready:
            raise BrokerUnavailable("redis unreachable")
        who = sender.encode()
        envelope = b"m" + bytes((opcode, len(who))) + who + payload
        self._outgoing.append((self._channel(key), envelope))
        batch = self._batch
        if batch is None:
            batch = self._batch = asyncio.get_running_loop().create_future()
        if self._sender is None:
            self._sender = asyncio.create_task(self._send_batches())
        return batch

    async def _send_batches(self) -> None:
        try:
            while self._outgoing:
                items, self._outgoing = self._outgoing, []
                batch, self._batch = self._batch, None
                assert batch is not None
                try:
                    async with self._redis.pipeline(transaction=False) as pipe:
                        for name, envelope in items:
                            pipe.publish(name, envelope)
                        await pipe.execute()
                except (RedisError, OSError) as exc:
                    failure = BrokerUnavailable(f"redis publish failed: {exc}")
                    if not batch.done():
                        batch.set_exception(failure)
                        # Callers that do not wait (clients) are told otherwise.
                        batch.exception()
                else:
                    if not batch.done():
                        batch.set_result(None)
        finally:
            self._sender = None

    async def subscribe(self, key: str) -> None:
        timer = self._dropping.pop(key, None)
        if timer is not None:
            timer.cancel()
        if key in self._confirmed:
            return
        waiter = self._waiting.get(key)
        if waiter is None:
            pubsub = self._pubsub
            if not self._ready or pubsub is None:
                raise BrokerUnavailable("redis unreachable")
            waiter = asyncio.get_running_loop().create_future()
            self._waiting[key] = waiter
            self._wanted.add(key)
            try:
                await pubsub.subscribe(self._channel(key))
            except (RedisError, OSError) as exc:
                self._waiting.pop(key, None)
                self._wanted.discard(key)
                raise BrokerUnavailable(f"redis subscribe failed: {exc}") from exc
        try:
            await asyncio.wait_for(asyncio.shield(waiter), SUBSCRIBE_TIMEOUT)
        except TimeoutError as exc:
            raise BrokerUnavailable("redis did not confirm the subscription") from exc

    def unsubscribe(self, key: str) -> None:
        if key in self._dropping:
            return
        loop = asyncio.get_running_loop()
        self._dropping[key] = loop.call_later(UNSUBSCRIBE_GRACE, self._drop, key)

    def _drop(self, key: str) -> None:
        self._dropping.pop(key, None)
        assert self._hooks is not None
        if self._hooks.is_local(key) or key in self._waiting:
            return
        self._wanted.discard(key)
        self._confirmed.discard(key)
        pubsub = self._pubsub
        if pubsub is not None:
            self._spawn(self._unsubscribe(pubsub, key))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _unsubscribe(self, pubsub: aioredis.client.PubSub, key: str) -> None:
        with contextlib.suppress(RedisError, OSError):
            await pubsub.unsubscribe(self._channel(key))

    # -- presence --------------------------------------------------------

    def _member_args(self, member: PresenceMember, mode: str) -> list[str | float]:
        return [
            member.uuid,
            member.record(),
            member.ident,
            self._ttl,
            member.conn_id,
            mode,
        ]

    async def presence_join(self, key: str, member: PresenceMember) -> None:
        try:
            result = await self._join(
                keys=self._roster_keys(key), args=self._member_args(member, "join")
            )
        except (RedisError, OSError) as exc:
            raise BrokerUnavailable(f"redis presence failed: {exc}") from exc
        if int(result) == -1:
            raise ConnectRefused(CloseCode.UUID_IN_USE, "uuid already in use")

    async def presence_leave(self, key: str, member: PresenceMember) -> None:
        try:
            await self._leave(
                keys=self._roster_keys(key), args=[member.uuid, member.conn_id]
            )
        except (RedisError, OSError) as exc:
            raise BrokerUnavailable(f"redis presence failed: {exc}") from exc

    async def presence_snapshot(self, key: str) -> tuple[int, list[PresenceMember]]:
        keys = self._roster_keys(key)
        try:
            version, records = await self._snapshot(keys=[keys[0], keys[2]])
        except (RedisError, OSError) as exc:
            raise BrokerUnavailable(f"redis presence failed: {exc}") from exc
        return int(version), [PresenceMember.from_record(r) for r in records]

    # -- connection counts -----------------------------------------------

    async def _write_counts(self) -> None:
        """Keep ``{prefix}:counts:{node}`` equal to this node's counts."""
        assert self._hooks is not None
        written: dict[str, int] = {}
        while True:
            await asyncio.sleep(COUNTS_INTERVAL)
            counts = self._hooks.local_counts()
            if not self._ready or (not counts and not written):
                continue
            try:
                async with self._redis.pipeline(transaction=True) as pipe:
                    if counts != written:
                        pipe.delete(self._counts_key)
                        if counts:
                            flat = [part for pair in counts.items() for part in pair]
                            pipe.execute_command("HSET", self._counts_key, *flat)
                    if counts:
                        pipe.expire(self._counts_key, int(3 * COUNTS_INTERVAL) + 1)
                    await pipe.execute()
                written = counts
            except (RedisError, OSError) as exc:
                log.warning("connection counts not written error=%s", exc)

    async def connection_counts(self, api_key: str) -> dict[str, int] | None:
        prefix = f"{api_key}:"
        totals: dict[str, int] = {}
        try:
            async for name in self._redis.scan_iter(
                match=f"{self._prefix}:counts:*", count=100
            ):
                for raw, value in (await self._redis.hgetall(name)).items():
                    field = raw.decode() if isinstance(raw, bytes) else raw
                    if field.startswith(prefix):
                        channel_id = field[len(prefix) :]
                        totals[channel_id] = totals.get(channel_id, 0) + int(value)
        except (RedisError, OSError) as exc:
            raise BrokerUnavailable(f"redis read failed: {exc}") from exc
        return totals

    async def _heartbeat(self) -> None:
        """Keep this node's roster entries alive; reap other nodes' dead ones."""
        while True:
            await asyncio.sleep(self._ttl / 4)
            if not self._ready:
                continue
            try:
                await self._refresh_members()
            except (RedisError, OSError) as exc:
                log.warning("presence heartbeat failed error=%s", exc)

    async def _refresh_members(self) -> None:
        assert self._hooks is not None
        members = list(self._hooks.local_members())
        if not members:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            keys_seen: set[str] = set()
            for key, member in members:
                keys = self._roster_keys(key)
                await self._join(
                    keys=keys, args=self._member_args(member, "refresh"), client=pipe
                )
                if key not in keys_seen:
                    keys_seen.add(key)
                    await self._reap(keys=keys, client=pipe)
            await pipe.execute()
