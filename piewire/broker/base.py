"""The broker interface every backend implements.

A broker carries two things to every node with members in a channel, in one
order per channel: published messages, and changes of the channel's presence
roster.  Each roster change has a version, one more than the change before
it, so a node that missed one can tell and reload the roster.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from piewire.core.presence import PresenceMember

# Called on each node for each message of a channel it subscribed to:
# (channel key, opcode, payload, sender connection id or "").
Deliver = Callable[[str, int, bytes, str], None]
# Called on each node for each roster change of a channel it subscribed to:
# (channel key, version, JOIN or LEAVE, member).
OnPresence = Callable[[str, int, str, PresenceMember], None]
# The presence members this node holds, as (channel key, member) pairs.
LocalMembers = Callable[[], Iterable[tuple[str, PresenceMember]]]
# Called after the broker lost messages (a reconnect): reload every roster.
OnResync = Callable[[], None]


@dataclass(frozen=True)
class NodeHooks:
    """How a broker reaches the node it serves."""

    deliver: Deliver
    on_presence: OnPresence
    local_members: LocalMembers
    on_resync: OnResync
    is_local: Callable[[str], bool]
    local_counts: Callable[[], dict[str, int]]
    """Open connections of each channel key on this node."""
    """Whether the node has members in a channel (asked before unsubscribing)."""


class Broker(Protocol):
    @property
    def ready(self) -> bool:
        """Whether a publish now is carried to every node."""

    async def start(self, hooks: NodeHooks) -> None: ...

    def publish(
        self, key: str, opcode: int, payload: bytes, sender: str
    ) -> asyncio.Future[None]:
        """Send to every member of ``key`` on every node, in call order.

        The call only queues the message, so a caller can publish many in one
        loop turn and they travel together.  The future completes once the
        message is on its way to every node, or fails with
        ``BrokerUnavailable``; the call itself raises it when the broker is
        known to be down.
        """

    async def subscribe(self, key: str) -> None:
        """Receive ``key`` on this node from now on; ``BrokerUnavailable`` if not."""

    def unsubscribe(self, key: str) -> None:
        """Stop receiving ``key`` after a short grace, unless subscribed again."""

    async def presence_join(self, key: str, member: PresenceMember) -> None:
        """Add ``member`` to the roster; a JOIN change follows on every node.

        Raises ``ConnectRefused`` when another identity holds the uuid.
        """

    async def presence_leave(self, key: str, member: PresenceMember) -> None:
        """Remove ``member`` if its connection still holds the uuid; a LEAVE follows."""

    async def presence_snapshot(self, key: str) -> tuple[int, list[PresenceMember]]:
        """The roster of ``key`` and the version of its last change."""

    async def connection_counts(self, api_key: str) -> dict[str, int] | None:
        """Connections of each channel of ``api_key`` across every node.

        None when this node's own counts are the whole service's.
        """

    async def close(self) -> None: ...
