"""Channel membership on one node, and the fan-out decision.

The hub knows which local connections are in which channel.  It does no I/O:
a member is anything with an id, a ``notify_self`` flag and a ``send`` that
queues bytes.  ``deliver`` encodes nothing itself; it hands the same frame
bytes to every member that should get them.
"""

from __future__ import annotations

from typing import Protocol

from piewire.core.presence import PresenceFeed


class Member(Protocol):
    """A local connection as the hub sees it."""

    @property
    def conn_id(self) -> str: ...

    @property
    def notify_self(self) -> bool: ...

    def send(self, frame: bytes) -> None: ...


class Channel:
    """The local members of one channel of one API key.

    ``listeners`` are the members that take part in presence; ``feed`` holds
    the channel's roster once any of them joined.
    """

    __slots__ = ("api_key", "channel_id", "feed", "key", "listeners", "members")

    def __init__(self, key: str, api_key: str, channel_id: str) -> None:
        self.key = key
        self.api_key = api_key
        self.channel_id = channel_id
        self.members: dict[str, Member] = {}
        self.listeners: dict[str, Member] = {}
        self.feed: PresenceFeed | None = None

    def send_to_listeners(self, frame: bytes) -> None:
        for member in self.listeners.values():
            member.send(frame)


class Hub:
    """Every channel with at least one local member, and nothing else."""

    def __init__(self) -> None:
        self._channels: dict[str, Channel] = {}
        self._by_api_key: dict[str, dict[str, Channel]] = {}

    def join(self, key: str, api_key: str, channel_id: str, member: Member) -> Channel:
        channel = self._channels.get(key)
        if channel is None:
            channel = Channel(key, api_key, channel_id)
            self._channels[key] = channel
            self._by_api_key.setdefault(api_key, {})[channel_id] = channel
        channel.members[member.conn_id] = member
        return channel

    def leave(self, key: str, member: Member) -> bool:
        """Remove ``member``; True when that emptied and removed the channel."""
        channel = self._channels.get(key)
        if channel is None or channel.members.pop(member.conn_id, None) is None:
            return False
        channel.listeners.pop(member.conn_id, None)
        if channel.members:
            return False
        del self._channels[key]
        of_key = self._by_api_key[channel.api_key]
        del of_key[channel.channel_id]
        if not of_key:
            del self._by_api_key[channel.api_key]
        return True

    def deliver(self, key: str, frame: bytes, sender: str) -> int:
        """Queue ``frame`` to every member of ``key`` but a sender that opted out."""
        channel = self._channels.get(key)
        if channel is None:
            return 0
        count = 0
        for member in channel.members.values():
            if member.conn_id == sender and not member.notify_self:
                continue
            member.send(frame)
            count += 1
        return count

    def get(self, key: str) -> Channel | None:
        return self._channels.get(key)

    def channels_of(self, api_key: str) -> dict[str, int]:
        """Local connection count of each active channel of ``api_key``."""
        of_key = self._by_api_key.get(api_key, {})
        return {cid: len(ch.members) for cid, ch in of_key.items()}

    def counts(self) -> dict[str, int]:
        """Local connection count of every channel key."""
        return {key: len(ch.members) for key, ch in self._channels.items()}

    def channels(self) -> list[Channel]:
        return list(self._channels.values())

    @property
    def channel_count(self) -> int:
        return len(self._channels)
