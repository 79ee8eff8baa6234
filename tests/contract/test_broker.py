"""One contract, every broker backend: the embedded one and Redis."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from piewire.broker.base import Broker, NodeHooks
from piewire.broker.memory import MemoryBroker
from piewire.broker.redis import RedisBroker
from piewire.closecodes import CloseCode
from piewire.core.presence import JOIN, LEAVE, PresenceMember
from piewire.errors import BrokerUnavailable, ConnectRefused
from tests.redis_support import RedisServer, running_redis
from tests.support import scaled


@dataclass
class Node:
    """What a broker told the node it serves."""

    messages: list[tuple[str, int, bytes, str]] = field(default_factory=list)
    changes: list[tuple[str, int, str, PresenceMember]] = field(default_factory=list)
    local: set[str] = field(default_factory=set)
    resyncs: int = 0

    def hooks(self) -> NodeHooks:
        def resync() -> None:
            self.resyncs += 1

        return NodeHooks(
            deliver=lambda *m: self.messages.append(m),
            on_presence=lambda *c: self.changes.append(c),
            local_members=lambda: [],
            on_resync=resync,
            is_local=lambda key: key in self.local,
            local_counts=lambda: {key: 1 for key in self.local},
        )


MakeBroker = Callable[[Node], Awaitable[Broker]]


async def settle(condition: Callable[[], bool], seconds: float = 5) -> None:
    deadline = asyncio.get_running_loop().time() + scaled(seconds)
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("broker did not deliver in time")
        await asyncio.sleep(0.01)


@pytest.fixture(scope="module")
def shared_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with running_redis(Path(tmp_path_factory.mktemp("redis"))) as server:
        yield server


@pytest.fixture(params=["memory", "redis"])
async def make_broker(
    request: pytest.FixtureRequest, shared_redis: RedisServer
) -> AsyncIterator[MakeBroker]:
    brokers: list[Broker] = []
    prefix = f"contract{secrets.token_hex(3)}"

    async def make(node: Node) -> Broker:
        broker: Broker
        if request.param == "memory":
            broker = MemoryBroker()
        else:
            broker = RedisBroker(shared_redis.url, prefix, presence_ttl=4)
        await broker.start(node.hooks())
        brokers.append(broker)
        return broker

    yield make
    for broker in brokers:
        await broker.close()


def member(uuid: str, user: Any, conn: str) -> PresenceMember:
    return PresenceMember.make(uuid, user, conn)


async def test_messages_arrive_in_order(make_broker: MakeBroker) -> None:
    node = Node(local={"k:room"})
    broker = await make_broker(node)
    assert broker.ready
    await broker.subscribe("k:room")
    for n in range(500):
        await broker.publish("k:room", 1, f"m{n}".encode(), "sender-1")
    await broker.publish("k:room", 2, b"\x00\xff", "")
    await settle(lambda: len(node.messages) == 501)
    assert node.messages[:500] == [
        ("k:room", 1, f"m{n}".encode(), "sender-1") for n in range(500)
    ]
    assert node.messages[500] == ("k:room", 2, b"\x00\xff", "")


async def test_roster_changes_are_versioned(make_broker: MakeBroker) -> None:
    node = Node(local={"k:lobby"})
    broker = await make_broker(node)
    await broker.subscribe("k:lobby")
    ann = member("u1", "ann", "c1")
    bob = member("u2", {"id": 2}, "c2")
    await broker.presence_join("k:lobby", ann)
    await broker.presence_join("k:lobby", bob)
    await settle(lambda: len(node.changes) == 2)
    version, members = await broker.presence_snapshot("k:lobby")
    assert version == node.changes[-1][1]
    assert [c[1] for c in node.changes] == [version - 1, version]
    assert [(c[2], c[3].uuid) for c in node.changes] == [(JOIN, "u1"), (JOIN, "u2")]
    assert {m.uuid: m.user for m in members} == {"u1": "ann", "u2": {"id": 2}}

    # Leaving with a connection that no longer holds the uuid changes nothing.
    await broker.presence_leave("k:lobby", member("u1", "ann", "someone-else"))
    await broker.presence_leave("k:lobby", ann)
    await settle(lambda: len(node.changes) == 3)
    assert node.changes[-1][1:3] == (version + 1, LEAVE)
    assert node.changes[-1][3].uuid == "u1"
    version, members = await broker.presence_snapshot("k:lobby")
    assert [m.uuid for m in members] == ["u2"]


async def test_uuid_takeover_and_refusal(make_broker: MakeBroker) -> None:
    node = Node(local={"k:tabs"})
    broker = await make_broker(node)
    await broker.subscribe("k:tabs")
    await broker.presence_join("k:tabs", member("u1", "ann", "old"))
    with pytest.raises(ConnectRefused) as refused:
        await broker.presence_join("k:tabs", member("u1", "mallory", "evil"))
    assert refused.value.code == CloseCode.UUID_IN_USE
    await broker.presence_join("k:tabs", member("u1", "ann", "new"))
    await settle(lambda: len(node.changes) == 2)
    _, members = await broker.presence_snapshot("k:tabs")
    assert [(m.uuid, m.conn_id) for m in members] == [("u1", "new")]
    # The replaced connection's leave does not remove the newer one.
    await broker.presence_leave("k:tabs", member("u1", "ann", "old"))
    _, members = await broker.presence_snapshot("k:tabs")
    assert [m.conn_id for m in members] == ["new"]


async def test_empty_roster_snapshot(make_broker: MakeBroker) -> None:
    broker = await make_broker(Node())
    assert await broker.presence_snapshot("k:nobody") == (0, [])


async def test_redis_nodes_see_each_other(
    shared_redis: RedisServer,
) -> None:
    prefix = f"contract{secrets.token_hex(3)}"
    first, second = Node(local={"k:room"}), Node(local={"k:room"})
    brokers = [RedisBroker(shared_redis.url, prefix, 4) for _ in range(2)]
    await brokers[0].start(first.hooks())
    await brokers[1].start(second.hooks())
    try:
        for broker in brokers:
            await broker.subscribe("k:room")
        await brokers[0].publish("k:room", 1, b"across", "c-1")
        await brokers[1].presence_join("k:room", member("u", "ann", "c-2"))
        for node in (first, second):
            await settle(lambda n=node: len(n.messages) == 1 and len(n.changes) == 1)
            assert node.messages == [("k:room", 1, b"across", "c-1")]
            assert node.changes[0][2] == JOIN
        # After the last local member leaves, the node unsubscribes after a grace.
        first.local.clear()
        brokers[0].unsubscribe("k:room")
        client = shared_redis.client()
        channel = f"{prefix}:ch:k:room"
        await settle(lambda: client.pubsub_numsub(channel)[0][1] == 1)
    finally:
        for broker in brokers:
            await broker.close()


async def test_redis_down_means_not_ready(tmp_path: Path) -> None:
    with running_redis(tmp_path) as server:
        node = Node(local={"k:room"})
        broker = RedisBroker(server.url, "down", 4)
        await broker.start(node.hooks())
        try:
            assert broker.ready
            server.stop()
            await settle(lambda: not broker.ready)
            with pytest.raises(BrokerUnavailable):
                await broker.publish("k:room", 1, b"lost", "")
            with pytest.raises(BrokerUnavailable):
                await broker.subscribe("k:room")
            server.start()
            await settle(lambda: broker.ready, 15)
            await broker.subscribe("k:room")
            await broker.publish("k:room", 1, b"back", "")
            await settle(lambda: node.messages == [("k:room", 1, b"back", "")])
        finally:
            await broker.close()


async def test_redis_counts_add_up_across_nodes(shared_redis: RedisServer) -> None:
    prefix = f"contract{secrets.token_hex(3)}"
    nodes = [Node(local={"k:room", "k:hall"}), Node(local={"k:room", "j:room"})]
    brokers = [RedisBroker(shared_redis.url, prefix, 4) for _ in nodes]
    for broker, node in zip(brokers, nodes, strict=True):
        await broker.start(node.hooks())
    try:
        expected = {"room": 2, "hall": 1}
        deadline = asyncio.get_running_loop().time() + scaled(5)
        while await brokers[0].connection_counts("k") != expected:
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.05)
        assert await brokers[1].connection_counts("j") == {"room": 1}
        nodes[1].local.clear()
        while await brokers[0].connection_counts("k") != {"room": 1, "hall": 1}:
            assert asyncio.get_running_loop().time() < deadline + scaled(5)
            await asyncio.sleep(0.05)
    finally:
        for broker in brokers:
            await broker.close()
