"""The broker interface every backend implements."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

# Called on each node for each message of a channel it subscribed to:
# (channel key, opcode, payload, sender connection id or "").
Deliver = Callable[[str, int, bytes, str], None]


class Broker(Protocol):
    """Publishes into channels and delivers to the local hub.

    ``subscribe``/``unsubscribe`` are called when a channel gains its first or
    loses its last local member; they never block the caller.
    """

    @property
    def ready(self) -> bool:
        """Whether a publish now is carried to every node."""

    async def start(self, deliver: Deliver) -> None: ...

    async def publish(self, key: str, opcode: int, payload: bytes, sender: str) -> None:
        """Send to every member of ``key`` on every node, in call order.

        Raises ``BrokerUnavailable`` when that cannot be promised.
        """

    def subscribe(self, key: str) -> None: ...

    def unsubscribe(self, key: str) -> None: ...

    async def close(self) -> None: ...
