"""The embedded broker: one process, so a publish is a direct local delivery."""

from __future__ import annotations

from piewire.broker.base import Deliver


def _nowhere(key: str, opcode: int, payload: bytes, sender: str) -> None:
    return None


class MemoryBroker:
    def __init__(self) -> None:
        self._deliver: Deliver = _nowhere

    @property
    def ready(self) -> bool:
        return True

    async def start(self, deliver: Deliver) -> None:
        self._deliver = deliver

    async def publish(self, key: str, opcode: int, payload: bytes, sender: str) -> None:
        self._deliver(key, opcode, payload, sender)

    def subscribe(self, key: str) -> None:
        return None

    def unsubscribe(self, key: str) -> None:
        return None

    async def close(self) -> None:
        self._deliver = _nowhere
