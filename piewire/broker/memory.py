"""The embedded broker: one process, so a publish is a direct local delivery."""

from __future__ import annotations

import asyncio

from piewire.broker.base import Deliver, NodeHooks, OnPresence
from piewire.closecodes import CloseCode
from piewire.core.presence import JOIN, LEAVE, PresenceMember
from piewire.errors import ConnectRefused


def _no_delivery(key: str, opcode: int, payload: bytes, sender: str) -> None:
    return None


def _no_presence(key: str, version: int, op: str, member: PresenceMember) -> None:
    return None


class _Roster:
    __slots__ = ("members", "version")

    def __init__(self) -> None:
        self.members: dict[str, PresenceMember] = {}
        self.version = 0


class MemoryBroker:
    def __init__(self) -> None:
        self._deliver: Deliver = _no_delivery
        self._on_presence: OnPresence = _no_presence
        self._rosters: dict[str, _Roster] = {}

    @property
    def ready(self) -> bool:
        return True

    async def start(self, hooks: NodeHooks) -> None:
        self._deliver = hooks.deliver
        self._on_presence = hooks.on_presence

    def publish(
        self, key: str, opcode: int, payload: bytes, sender: str
    ) -> asyncio.Future[None]:
        self._deliver(key, opcode, payload, sender)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    async def subscribe(self, key: str) -> None:
        return None

    def unsubscribe(self, key: str) -> None:
        return None

    async def presence_join(self, key: str, member: PresenceMember) -> None:
        roster = self._rosters.setdefault(key, _Roster())
        holder = roster.members.get(member.uuid)
        if holder is not None and holder.ident != member.ident:
            raise ConnectRefused(CloseCode.UUID_IN_USE, "uuid already in use")
        roster.members[member.uuid] = member
        roster.version += 1
        self._on_presence(key, roster.version, JOIN, member)

    async def presence_leave(self, key: str, member: PresenceMember) -> None:
        roster = self._rosters.get(key)
        if roster is None:
            return
        holder = roster.members.get(member.uuid)
        if holder is None or holder.conn_id != member.conn_id:
            return
        del roster.members[member.uuid]
        roster.version += 1
        version = roster.version
        if not roster.members:
            del self._rosters[key]
        self._on_presence(key, version, LEAVE, holder)

    async def presence_snapshot(self, key: str) -> tuple[int, list[PresenceMember]]:
        roster = self._rosters.get(key)
        if roster is None:
            return 0, []
        return roster.version, list(roster.members.values())

    async def connection_counts(self, api_key: str) -> dict[str, int] | None:
        return None

    async def close(self) -> None:
        self._deliver = _no_delivery
        self._on_presence = _no_presence
