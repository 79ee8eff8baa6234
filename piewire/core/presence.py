"""Presence rosters and the events that announce their changes (PROTOCOL.md 4).

A ``PresenceFeed`` holds the roster of one channel and decides what each
change costs its listeners.  A roster event carries the whole roster to every
presence connection, so one change in a channel of N members sends about
N * N * 60 bytes.  Slow changes get the exact ``member_joined`` and
``member_left`` events; when changes come faster than a byte budget allows,
the feed holds them and later sends one ``system:member_list`` with the
current roster to everyone.  The budget is a rate in bytes per second with a
one-second burst, so a storm of joins costs a bounded amount of writing.

The feed does no I/O and reads no clock: callers pass ``now`` and act on the
``Out`` items it returns, and call ``flush`` at ``deadline``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from piewire.core.messages import dumps

MEMBER_LIST = "system:member_list"
MEMBER_JOINED = "system:member_joined"
MEMBER_LEFT = "system:member_left"


JOIN = "join"
LEAVE = "leave"


@dataclass(frozen=True, slots=True)
class PresenceMember:
    """One presence connection as the roster shows it.

    ``ident`` is the identity two connections must share for the newer one to
    take over a uuid; ``text`` is the member as roster events show it.
    """

    uuid: str
    user: Any
    conn_id: str
    text: str
    ident: str

    @classmethod
    def make(cls, uuid: str, user: Any, conn_id: str) -> PresenceMember:
        text = dumps({"user": user, "uuid": uuid})
        return cls(uuid, user, conn_id, text, json.dumps(user, sort_keys=True))

    def record(self) -> str:
        """The member as the cluster stores it."""
        return dumps(
            {
                "user": self.user,
                "uuid": self.uuid,
                "conn": self.conn_id,
                "ident": self.ident,
            }
        )

    @classmethod
    def from_record(cls, record: str | bytes) -> PresenceMember:
        data = json.loads(record)
        member = cls.make(data["uuid"], data["user"], data["conn"])
        return member


@dataclass(frozen=True, slots=True)
class Out:
    """A roster event to send: to one uuid's connection, or to every listener."""

    text: str
    to_uuid: str | None = None


class PresenceFeed:
    """The roster of one channel and the pacing of its announcements."""

    def __init__(
        self,
        window: float,
        rate: float,
        members: list[PresenceMember] | None = None,
        version: int = 0,
    ) -> None:
        self.members: dict[str, PresenceMember] = {}
        self.version = version
        self.deadline: float | None = None
        self._window = window
        self._rate = rate
        self._credit = rate
        self._refilled_at: float | None = None
        self._roster_bytes = 2
        for member in members or ():
            self._add(member)

    # -- roster ----------------------------------------------------------

    def roster_text(self) -> str:
        return "[" + ",".join(m.text for m in self.members.values()) + "]"

    def _event(self, event: str, member: PresenceMember | None) -> str:
        roster = self.roster_text()
        if member is None:
            return f'{{"event":"{event}","data":{{"members":{roster}}}}}'
        return (
            f'{{"event":"{event}","data":'
            f'{{"member":{member.text},"members":{roster}}}}}'
        )

    def _add(self, member: PresenceMember) -> None:
        old = self.members.pop(member.uuid, None)
        if old is not None:
            self._roster_bytes -= len(old.text) + 1
        self.members[member.uuid] = member
        self._roster_bytes += len(member.text) + 1

    def _remove(self, uuid: str) -> PresenceMember | None:
        member = self.members.pop(uuid, None)
        if member is not None:
            self._roster_bytes -= len(member.text) + 1
        return member

    # -- pacing ----------------------------------------------------------

    def _refill(self, now: float) -> None:
        if self._refilled_at is not None:
            gained = (now - self._refilled_at) * self._rate
            self._credit = min(self._rate, self._credit + gained)
        self._refilled_at = now

    def _spend(self, cost: float, now: float) -> bool:
        """Pay for an exact event, unless changes are already being held."""
        self._refill(now)
        if self.deadline is not None or cost > self._credit:
            self._hold(now)
            return False
        self._credit -= cost
        return True

    def _hold(self, now: float) -> None:
        if self.deadline is None:
            cost = len(self.members) * self._roster_bytes
            wait = max(0.0, cost - self._credit) / self._rate
            self.deadline = now + max(self._window, wait)

    # -- changes ---------------------------------------------------------

    def join(self, member: PresenceMember, listeners: int, now: float) -> list[Out]:
        """``member`` joined; ``listeners`` is how many connections hear events.

        A member whose uuid is already listed takes that entry over: the roster
        lists the uuid once, and the replaced connection's end announces nothing.
        """
        self._add(member)
        cost = (listeners + 1) * self._roster_bytes
        if not self._spend(cost, now):
            return []
        return [
            Out(self._event(MEMBER_LIST, None), member.uuid),
            Out(self._event(MEMBER_JOINED, member)),
        ]

    def leave(self, uuid: str, conn_id: str, listeners: int, now: float) -> list[Out]:
        """The connection ``conn_id`` of ``uuid`` ended."""
        current = self.members.get(uuid)
        if current is None or current.conn_id != conn_id:
            return []
        self._remove(uuid)
        if not self.members:
            self.deadline = None
            return []
        if not self._spend(listeners * self._roster_bytes, now):
            return []
        return [Out(self._event(MEMBER_LEFT, current))]

    def reset(self, members: list[PresenceMember], version: int) -> list[Out]:
        """Replace the roster (after missed changes); everyone gets the new one."""
        self.members.clear()
        self._roster_bytes = 2
        for member in members:
            self._add(member)
        self.version = version
        self.deadline = None
        if not self.members:
            return []
        return [Out(self._event(MEMBER_LIST, None))]

    def flush(self, now: float) -> list[Out]:
        """The held changes, as one member_list to every listener."""
        self.deadline = None
        if not self.members:
            return []
        self._refill(now)
        self._credit -= len(self.members) * self._roster_bytes
        return [Out(self._event(MEMBER_LIST, None))]
