"""Cluster mode: piewire nodes sharing one real Redis.

Cases F1 (sender exclusion across nodes), F2 (the Redis connection is lost),
F3 (two deployments share one Redis) and L3 (channels nobody listens to), a
churn run with numbered messages, and a node killed with SIGKILL.  Every node
is a real ``piewire serve`` process and every Redis a real ``redis-server``,
both on 127.0.0.1.

L3 is scaled down from the case's 100,000 publishes and 100,000 connect/close
cycles to 20,000 and 5,000 (every fifth cycle with presence), so each variant
runs in well under a minute.  Nothing exposes a node's channel map but
``GET /api/connections``, and tracemalloc inside a server process is out of a
test's reach, so memory is judged by RSS with a stated tolerance.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import signal
import time
import uuid as uuidlib
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from piewire.broker.redis import BACKOFF_CAP, UNSUBSCRIBE_GRACE
from piewire.store.keys import ApiKey, random_token
from piewire.store.redis import RedisKeyStore
from tests.members import rss_bytes
from tests.redis_support import Cluster, RedisServer, running_cluster
from tests.support import Key, Server, running_server, scaled

PRESENCE_EVENTS = frozenset(
    {"system:member_list", "system:member_joined", "system:member_left"}
)
MIB = 1024 * 1024
# Presence TTL of the nodes where a test needs members of dead nodes to expire.
PRESENCE_TTL = 2.0


def now() -> float:
    return asyncio.get_running_loop().time()


# -- clients ------------------------------------------------------------------


class Client:
    """A WebSocket member that reads every frame in the background.

    Presence events update ``roster`` the way the SDK does (each event's
    ``members`` replaces it) and count how often each uuid enters and leaves
    it; every other frame goes to ``frames``.
    """

    def __init__(self, ws: ClientConnection, name: str) -> None:
        self.ws = ws
        self.name = name
        self.frames: list[str | bytes] = []
        self.events: list[dict[str, Any]] = []
        self.roster: dict[str, Any] = {}
        self.entered: Counter[str] = Counter()
        self.left: Counter[str] = Counter()
        self.ended = False
        self._changed = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def open(
        cls, node: Server, key: Key, channel: str, query: str = "", name: str = ""
    ) -> Client:
        ws = await connect(
            node.ws_url(channel, key, query),
            ping_interval=None,
            open_timeout=scaled(5),
            close_timeout=scaled(5),
            max_size=None,
        )
        return cls(ws, name or query)

    async def _read(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for frame in self.ws:
                event = presence_event(frame)
                if event is None:
                    self.frames.append(frame)
                else:
                    self._apply(event)
                self._changed.set()
        self.ended = True
        self._changed.set()

    def _apply(self, event: dict[str, Any]) -> None:
        self.events.append(event)
        fresh = {m["uuid"]: m["user"] for m in event["data"]["members"]}
        for uuid in fresh.keys() - self.roster.keys():
            self.entered[uuid] += 1
        for uuid in self.roster.keys() - fresh.keys():
            self.left[uuid] += 1
        self.roster = fresh

    async def wait_for(
        self, check: Callable[[], bool], what: str, within: float = 5
    ) -> None:
        deadline = now() + scaled(within)
        while True:
            self._changed.clear()
            if check():
                return
            remaining = deadline - now()
            if remaining <= 0:
                raise AssertionError(
                    f"{self.name}: {what} not seen within {scaled(within):g} s; "
                    f"roster {sorted(self.roster)}, last frames {self.frames[-3:]}, "
                    f"ended {self.ended}"
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    async def wait_roster(self, uuids: set[str], within: float = 5) -> None:
        await self.wait_for(
            lambda: set(self.roster) == uuids, f"roster {sorted(uuids)}", within
        )

    async def close(self) -> None:
        with contextlib.suppress(ConnectionClosed, OSError):
            await self.ws.close()
        await asyncio.wait_for(self._reader, scaled(10))


def presence_event(frame: str | bytes) -> dict[str, Any] | None:
    if isinstance(frame, bytes):
        return None
    try:
        event = json.loads(frame)
    except ValueError:
        return None
    if isinstance(event, dict) and event.get("event") in PRESENCE_EVENTS:
        return event
    return None


async def presence_client(
    node: Server, key: Key, channel: str, uuid: str, user: str
) -> Client:
    """A presence member, returned once its own join is in its roster."""
    query = f"presence=1&uuid={uuid}&user={user}"
    client = await Client.open(node, key, channel, query, user)
    await client.wait_for(lambda: uuid in client.roster, "its own join")
    return client


async def close_all(clients: list[Client]) -> None:
    await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)


def new_uuid() -> str:
    return str(uuidlib.uuid4())


# -- HTTP ---------------------------------------------------------------------


def credentials(key: Key) -> dict[str, str]:
    return {"key": key.api_key, "secret": key.api_secret}


class Http:
    """Asynchronous REST calls to the nodes, over kept-alive connections."""

    def __init__(self) -> None:
        self.session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=scaled(10))
        )

    async def request(
        self,
        method: str,
        url: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        async with self.session.request(
            method, url, json=body, headers=headers
        ) as resp:
            return resp.status, await resp.json(content_type=None)

    async def publish(
        self,
        node: Server,
        key: Key,
        channel: str,
        message: Any,
        secret: str | None = None,
    ) -> tuple[int, Any]:
        body = {
            "key": key.api_key,
            "secret": key.api_secret if secret is None else secret,
            "channelId": channel,
            "message": message,
        }
        return await self.request("POST", node.http_url + "/api/publish", body)

    async def get(
        self, node: Server, path: str, key: Key | None = None
    ) -> tuple[int, Any]:
        headers = credentials(key) if key is not None else None
        return await self.request("GET", node.http_url + path, headers=headers)

    async def ready(self, node: Server) -> int:
        try:
            status, _ = await self.get(node, "/ready")
        except (aiohttp.ClientError, TimeoutError):
            return 0
        return status

    async def connection_sum(self, node: Server, key: Key) -> int:
        status, body = await self.get(node, "/api/connections/sum", key)
        assert status == 200, body
        return int(body["connections"])

    async def wait_sum(
        self, node: Server, key: Key, expected: int, within: float = 5
    ) -> None:
        deadline = now() + scaled(within)
        while (count := await self.connection_sum(node, key)) != expected:
            if now() > deadline:
                raise AssertionError(
                    f"node on {node.port}: {count} connections, expected {expected}"
                )
            await asyncio.sleep(0.02)

    async def wait_ready(self, nodes: list[Server], within: float) -> float:
        """Wait until every node answers ``GET /ready`` with 200; when that was."""
        deadline = now() + scaled(within)
        while True:
            statuses = [await self.ready(node) for node in nodes]
            if all(status == 200 for status in statuses):
                return now()
            if now() > deadline:
                raise AssertionError(f"nodes not ready again: /ready {statuses}")
            await asyncio.sleep(0.05)

    async def close(self) -> None:
        await self.session.close()


@contextlib.asynccontextmanager
async def http_client() -> AsyncIterator[Http]:
    http = Http()
    try:
        yield http
    finally:
        await http.close()


async def quiet(seconds: float) -> None:
    """Let late frames arrive, so a test can say that none came."""
    await asyncio.sleep(scaled(seconds))


def node_key(cluster: Cluster) -> Key:
    assert cluster.key is not None
    return cluster.key


# -- F1 -----------------------------------------------------------------------


@pytest.mark.parametrize("count", [2, 3])
async def test_sender_exclusion_across_nodes(
    redis_server: RedisServer, tmp_path: Path, count: int
) -> None:
    with running_cluster(redis_server, tmp_path, count) as cluster:
        key = node_key(cluster)
        first, *others = cluster.nodes
        async with http_client() as http:
            a = await Client.open(first, key, "room", "notify_self=0", "A")
            b = await Client.open(first, key, "room", "", "B")
            a2 = await Client.open(first, key, "room", "notify_self=1", "A2")
            remote = [
                await Client.open(node, key, "room", "", f"C{i}")
                for i, node in enumerate(others, 1)
            ]
            everyone = [a, b, a2, *remote]
            try:
                # The counts are the cluster's, as every node reports them.
                for node in cluster.nodes:
                    await http.wait_sum(node, key, len(everyone))

                await a.ws.send("from A")
                for client in [b, a2, *remote]:
                    await client.wait_for(
                        lambda c=client: "from A" in c.frames, "A's message"
                    )
                await a2.ws.send("from A2")
                for client in everyone:
                    await client.wait_for(
                        lambda c=client: "from A2" in c.frames, "A2's message"
                    )
                rest = [f"REST via node {i}" for i in range(count)]
                for node, text in zip(cluster.nodes, rest, strict=True):
                    assert await http.publish(node, key, "room", text) == (
                        200,
                        {"success": True},
                    )
                    for client in everyone:
                        await client.wait_for(
                            lambda c=client, t=text: t in c.frames, text
                        )
                await quiet(0.5)

                everything = ["from A", "from A2", *rest]
                for client in [b, a2, *remote]:
                    assert client.frames == everything, client.name
                assert a.frames == everything[1:]
            finally:
                await close_all(everyone)


# -- F2 -----------------------------------------------------------------------


@dataclass
class Sent:
    number: int
    started: float
    answered: float = 0.0
    status: int = 0


@dataclass
class Outage:
    """One loss of the bus, from its start until every node was ready again."""

    what: str
    began: float
    # When Redis was gone for sure, and when it was back (a restart only).
    down: float | None = None
    up: float | None = None
    recovered: float = 0.0
    ready_answers: list[tuple[int, float, int]] = field(default_factory=list)

    def covers(self, sent: Sent) -> bool:
        return sent.started < self.recovered and sent.answered > self.began


@dataclass
class Publisher:
    """Publishes ``0, 1, 2, ...`` to one node every 100 ms until stopped."""

    http: Http
    node: Server
    key: Key
    channel: str
    sent: list[Sent] = field(default_factory=list)
    stopping: bool = False

    async def run(self) -> None:
        number = 0
        while not self.stopping:
            sent = Sent(number, now())
            self.sent.append(sent)
            try:
                status, _ = await self.http.publish(
                    self.node, self.key, self.channel, str(number)
                )
            except (aiohttp.ClientError, TimeoutError):
                status = -1
            sent.answered = now()
            sent.status = status
            number += 1
            await asyncio.sleep(max(0.0, 0.1 - (sent.answered - sent.started)))


async def poll_ready(http: Http, nodes: list[Server], outage: Outage) -> None:
    """Record what each node's /ready says until cancelled."""
    while True:
        for index, node in enumerate(nodes):
            asked = now()
            outage.ready_answers.append((index, asked, await http.ready(node)))
        await asyncio.sleep(0.05)


async def redis_down_and_up(
    redis_server: RedisServer,
    http: Http,
    nodes: list[Server],
    down_for: float,
) -> Outage:
    """``RedisServer.restart`` in its two steps, watching the nodes between."""
    outage = Outage(f"Redis down {down_for:g} s", now())
    await asyncio.to_thread(redis_server.stop)
    outage.down = now()
    poller = asyncio.create_task(poll_ready(http, nodes, outage))
    await asyncio.sleep(down_for)
    poller.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await poller
    outage.up = now()
    await asyncio.to_thread(redis_server.start)
    outage.recovered = await http.wait_ready(nodes, BACKOFF_CAP + 3)
    return outage


BUS_LOST = "redis connection lost"


async def pubsub_killed(
    redis_server: RedisServer, http: Http, nodes: list[Server]
) -> Outage:
    outage = Outage("CLIENT KILL TYPE pubsub", now())
    before = [node.log().count(BUS_LOST) for node in nodes]
    with redis_server.client() as client:
        killed = client.client_kill_filter(_type="pubsub")
    assert killed == len(nodes), f"{killed} pubsub connections killed"
    # Each node must notice: it lost whatever was published until it had
    # subscribed again, so it reports the loss and reloads its rosters.
    for node, count in zip(nodes, before, strict=True):
        await wait_for_log(node, BUS_LOST, count + 1)
    outage.recovered = await http.wait_ready(nodes, BACKOFF_CAP + 3)
    return outage


async def wait_for_log(node: Server, text: str, count: int, within: float = 5) -> None:
    deadline = now() + scaled(within)
    while node.log().count(text) < count:
        if now() > deadline:
            raise AssertionError(f"node on {node.port} did not log {text!r}")
        await asyncio.sleep(0.05)


def received_numbers(client: Client) -> list[int]:
    return [int(frame) for frame in client.frames]


async def test_redis_connection_lost(redis_server: RedisServer, tmp_path: Path) -> None:
    with running_cluster(redis_server, tmp_path, 2) as cluster:
        key = node_key(cluster)
        node1, node2 = cluster.nodes
        async with http_client() as http:
            s = await Client.open(node2, key, "f2room", "", "S")
            await http.wait_sum(node2, key, 1)
            publisher = Publisher(http, node1, key, "f2room")
            running = asyncio.create_task(publisher.run())
            outages: list[Outage] = []
            try:
                await asyncio.sleep(1.0)
                for _ in range(3):
                    outages.append(
                        await redis_down_and_up(redis_server, http, cluster.nodes, 0.5)
                    )
                    await asyncio.sleep(1.0)
                outages.append(await pubsub_killed(redis_server, http, cluster.nodes))
                await asyncio.sleep(1.0)
                outages.append(
                    await redis_down_and_up(redis_server, http, cluster.nodes, 6.0)
                )
                await asyncio.sleep(1.0)
            finally:
                publisher.stopping = True
                await running
            last_ok = max(p.number for p in publisher.sent if p.status == 200)
            await s.wait_for(lambda: str(last_ok) in s.frames, "the last message")
            await quiet(0.5)
            assert not s.ended, "S was disconnected"
            await s.close()
            # Redis restarted empty; the nodes put the key store back.
            with redis_server.client() as client:
                assert client.hexists(f"{cluster.prefix}:keys", key.api_key)

    got = received_numbers(s)
    copies = Counter(got)
    assert [n for n, c in copies.items() if c > 1] == [], "duplicates"
    assert got == sorted(got), "out of order"

    lost_in_recovery: Counter[int] = Counter()
    for sent in publisher.sent:
        outage = next((o for o in outages if o.covers(sent)), None)
        if outage is None:
            assert sent.status == 200, f"message {sent.number}: {sent.status}"
            assert copies[sent.number] == 1, f"message {sent.number} lost"
            continue
        assert sent.status in (200, 503), f"message {sent.number}: {sent.status}"
        if sent.status == 503:
            assert copies[sent.number] == 0, f"503 message {sent.number} delivered"
        elif copies[sent.number] == 0:
            # Answered 200 after Redis was back, before the other node had
            # subscribed again: Redis pub/sub keeps nothing for it.
            assert outage.up is None or sent.answered > outage.up, sent.number
            lost_in_recovery[outages.index(outage)] += 1
        if outage.down is not None and outage.up is not None:
            while_down = outage.down <= sent.started and sent.answered <= outage.up
            assert sent.status == 503 or not while_down, sent.number

    for index, outage in enumerate(outages):
        recovery = outage.recovered - (outage.up or outage.began)
        print(
            f"\nF2: {outage.what}: every node ready {recovery:.2f} s after "
            f"{'Redis was back' if outage.up else 'the kill'}; "
            f"{lost_in_recovery[index]} messages answered 200 meanwhile "
            "never reached S",
            end="",
        )
        assert recovery <= scaled(BACKOFF_CAP + 3)
        if outage.down is None:
            continue
        refused = [
            p.status
            for p in publisher.sent
            if outage.down <= p.started and p.answered <= (outage.up or 0)
        ]
        assert refused and set(refused) == {503}, outage.what
        for number in range(len(cluster.nodes)):
            answers = [
                status
                for node, asked, status in outage.ready_answers
                if node == number and asked >= outage.down + scaled(0.2)
            ]
            assert answers and set(answers) == {503}, (outage.what, number, answers)
    print(
        f"\nF2: {len(publisher.sent)} published, {len(got)} delivered to S, "
        f"{sum(p.status == 503 for p in publisher.sent)} answered 503"
    )


# -- F3 -----------------------------------------------------------------------


@dataclass
class Group:
    """The members of ``room`` under one key in one deployment."""

    name: str
    nodes: list[Server]
    key: Key
    members: list[Client] = field(default_factory=list)
    uuids: list[str] = field(default_factory=list)


def store_key(redis_url: str, prefix: str, api_key: str) -> Key:
    """Put a key with a chosen API key and a new secret into a deployment."""
    record = ApiKey(api_key, random_token(40), name="twin", created_at=time.time())
    store = RedisKeyStore(redis_url, prefix)
    try:
        store.create(record)
    finally:
        store.close()
    return Key(record.api_key, record.api_secret)


async def test_two_deployments_share_one_redis(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    with (
        running_cluster(redis_server, tmp_path / "one", 2) as one,
        running_cluster(redis_server, tmp_path / "two", 2) as two,
    ):
        assert one.prefix != two.prefix
        key1, key2 = node_key(one), node_key(two)
        # The same API key string in both deployments, with another secret:
        # only the prefix keeps their channels, rosters and secrets apart.
        twin = store_key(redis_server.url, two.prefix, key1.api_key)
        for node in two.nodes:
            node.wait_key_live(twin)
        shared_uuids = [new_uuid(), new_uuid()]
        groups = [
            Group("one", one.nodes, key1, uuids=shared_uuids),
            Group("two", two.nodes, key2, uuids=[new_uuid(), new_uuid()]),
            # Same key string, channel and uuids as group one.
            Group("twin", two.nodes, twin, uuids=shared_uuids),
        ]
        async with http_client() as http:
            try:
                for group in groups:
                    for index, (node, uuid) in enumerate(
                        zip(group.nodes, group.uuids, strict=True)
                    ):
                        group.members.append(
                            await presence_client(
                                node, group.key, "room", uuid, f"{group.name}{index}"
                            )
                        )
                for group in groups:
                    for member in group.members:
                        await member.wait_roster(set(group.uuids))

                for group in groups:
                    await group.members[0].ws.send(f"ws {group.name}")
                    for node in group.nodes:
                        status, body = await http.publish(
                            node, group.key, "room", f"rest {group.name} {node.port}"
                        )
                        assert (status, body) == (200, {"success": True})
                for group in groups:
                    texts = [f"rest {group.name} {node.port}" for node in group.nodes]
                    await group.members[0].wait_for(
                        lambda g=group, t=texts: all(
                            x in g.members[0].frames for x in t
                        ),
                        "its group's REST publishes",
                    )
                    await group.members[1].wait_for(
                        lambda g=group, t=texts: all(
                            x in g.members[1].frames for x in [f"ws {g.name}", *t]
                        ),
                        "its group's messages",
                    )
                await quiet(0.5)

                for group in groups:
                    rest = [f"rest {group.name} {node.port}" for node in group.nodes]
                    sender, other = group.members
                    assert Counter(sender.frames) == Counter(rest), group.name
                    assert Counter(other.frames) == Counter([f"ws {group.name}", *rest])
                    for member in group.members:
                        assert set(member.roster) == set(group.uuids), group.name
                        # Nothing of the other deployments ever entered it.
                        assert set(member.entered) == set(group.uuids), group.name
                        assert sum(member.left.values()) == 0, group.name
                    for node in group.nodes:
                        status, body = await http.get(
                            node, "/api/channels/room/members", group.key
                        )
                        assert status == 200, body
                        listed = {m["uuid"]: m["user"] for m in body["members"]}
                        assert listed == group.members[0].roster, group.name

                # One deployment's key with the other deployment's secret.
                wrong = [
                    (one.nodes[0], key1, key2.api_secret),
                    (one.nodes[1], key1, twin.api_secret),
                    (two.nodes[0], key2, key1.api_secret),
                    (two.nodes[1], twin, key1.api_secret),
                    (two.nodes[0], key1, key1.api_secret),
                ]
                for node, key, secret in wrong:
                    status, body = await http.publish(node, key, "room", "x", secret)
                    assert status == 401, body
                await quiet(0.3)
                for group in groups:
                    for member in group.members:
                        assert "x" not in member.frames, group.name
            finally:
                await close_all([m for g in groups for m in g.members])


# -- L3 -----------------------------------------------------------------------

L3_ROUNDS = 4
L3_PUBLISHES = 5_000  # per round: 20,000 in all
L3_CYCLES = 1_250  # per round: 5,000 in all
L3_PARALLEL = 16
L3_PRESENCE_EVERY = 5


async def in_parallel(count: int, work: Callable[[int], Awaitable[None]]) -> None:
    """Run ``work(0) .. work(count - 1)``, ``L3_PARALLEL`` at a time."""
    numbers = iter(range(count))

    async def worker() -> None:
        for number in numbers:
            await work(number)

    await asyncio.gather(*(worker() for _ in range(L3_PARALLEL)))


@dataclass
class UnusedChannels:
    """REST publishes to channels nobody joined, and members that come and go."""

    http: Http
    nodes: list[Server]
    key: Key
    rounds: int = 0
    rss: list[list[int]] = field(default_factory=list)

    async def publish(self, number: int) -> None:
        node = self.nodes[number % len(self.nodes)]
        channel = f"p{self.rounds}-{number}"
        assert await self.http.publish(node, self.key, channel, "nobody") == (
            200,
            {"success": True},
        )

    async def cycle(self, number: int) -> None:
        """Join a channel of one's own, see one's message come back, leave.

        Every fifth member takes part in presence too.
        """
        node = self.nodes[number % len(self.nodes)]
        query = "notify_self=1"
        if number % L3_PRESENCE_EVERY == 0:
            query += f"&presence=1&uuid={new_uuid()}&user=u{number}"
        url = node.ws_url(f"c{self.rounds}-{number}", self.key, query)
        async with connect(
            url,
            ping_interval=None,
            open_timeout=scaled(5),
            close_timeout=scaled(5),
        ) as ws:
            await ws.send("echo")
            while (frame := await asyncio.wait_for(ws.recv(), scaled(5))) != "echo":
                assert presence_event(frame) is not None, frame

    async def run_round(self) -> None:
        await in_parallel(L3_PUBLISHES, self.publish)
        await in_parallel(L3_CYCLES, self.cycle)
        self.rounds += 1

    async def settle(self) -> None:
        """Wait until no node has a channel left, then note each node's RSS."""
        for node in self.nodes:
            deadline = now() + scaled(UNSUBSCRIBE_GRACE + 5)
            while True:
                status, body = await self.http.get(node, "/api/connections", self.key)
                assert status == 200, body
                if body == {"channels": []}:
                    break
                if now() > deadline:
                    raise AssertionError(f"channels left: {body['channels'][:5]}")
                await asyncio.sleep(0.05)
        # Past the unsubscribe grace, so the broker dropped its state too.
        await asyncio.sleep(scaled(UNSUBSCRIBE_GRACE + 0.5))
        self.rss.append([rss_bytes(node) for node in self.nodes])

    def rss_growth(self) -> list[int]:
        """Per node, how much RSS grew from after the first round to the end."""
        first, last = self.rss[0], self.rss[-1]
        return [end - start for start, end in zip(first, last, strict=True)]


# RSS is measured after the first round, once allocators and caches are warm,
# and at the end.  Rounds 2 to 4 are 18,750 publishes and cycles: a leak of
# 1 KiB each would grow a single node by 18 MiB and each of two nodes by about
# 9 MiB.  RSS is noisy and CPython keeps freed arenas, so 6 MiB is allowed.
RSS_TOLERANCE = 6 * MIB


async def test_unused_channels_leave_nothing_in_redis(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    ttl = ("--presence-ttl", str(PRESENCE_TTL))
    with (
        running_cluster(redis_server, tmp_path, 2, *ttl) as cluster,
        redis_server.client() as client,
    ):
        key = node_key(cluster)
        pattern = f"{cluster.prefix}:*"
        versions = f"{cluster.prefix}:roster-ver:".encode()

        def redis_state() -> tuple[list[bytes], int]:
            # Roster version counters outlive their rosters, for a while.
            keys = [k for k in client.scan_iter(pattern) if not k.startswith(versions)]
            return sorted(client.pubsub_channels(pattern)), len(keys)

        baseline = redis_state()
        assert baseline[0] == [f"{cluster.prefix}:control".encode()]
        assert baseline[1] == client.dbsize()
        peak = 0

        async def watch() -> None:
            nonlocal peak
            while True:
                channels = await asyncio.to_thread(client.pubsub_channels, pattern)
                peak = max(peak, len(channels))
                await asyncio.sleep(0.05)

        async with http_client() as http:
            load = UnusedChannels(http, cluster.nodes, key)
            watcher = asyncio.create_task(watch())
            started = now()
            try:
                for _ in range(L3_ROUNDS):
                    await load.run_round()
                    if load.rounds == 1:
                        await load.settle()
            finally:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
            took = now() - started
            await load.settle()

            deadline = now() + scaled(UNSUBSCRIBE_GRACE + 5)
            while (state := await asyncio.to_thread(redis_state)) != baseline:
                if now() > deadline:
                    raise AssertionError(f"Redis {state}, baseline {baseline}")
                await asyncio.sleep(0.05)
            for node in cluster.nodes:
                assert await http.connection_sum(node, key) == 0
            # What is left are roster version counters (the oldest may have
            # expired already), each expiring within ten presence TTLs: DBSIZE
            # gets back to its baseline then, with nothing left behind.
            counters = list(client.scan_iter(f"{cluster.prefix}:roster-ver:*"))
            assert len(counters) <= L3_ROUNDS * L3_CYCLES // L3_PRESENCE_EVERY
            assert baseline[1] <= client.dbsize() <= baseline[1] + len(counters)
            for name in counters:
                # -2: expired meanwhile; -1 would mean it never expires.
                left = client.ttl(name)
                assert left == -2 or 0 <= left <= 10 * PRESENCE_TTL, (name, left)

    growth = load.rss_growth()
    print(
        f"\nL3 cluster: {L3_ROUNDS * L3_PUBLISHES} publishes and "
        f"{L3_ROUNDS * L3_CYCLES} cycles in {took:.1f} s; at most {peak - 1} "
        f"channels subscribed at once; Redis back to {len(baseline[0])} "
        f"channel(s) and {baseline[1]} keys, plus {len(counters)} roster version "
        f"counters left to expire within {10 * PRESENCE_TTL:g} s; RSS growth per node "
        f"{[round(g / MIB, 1) for g in growth]} MiB"
    )
    assert peak > 1, "the cycles never showed up in Redis"
    assert all(g <= RSS_TOLERANCE for g in growth), growth


async def test_unused_channels_leave_nothing_on_a_single_node(tmp_path: Path) -> None:
    with running_server(tmp_path) as server:
        assert server.key is not None
        async with http_client() as http:
            load = UnusedChannels(http, [server], server.key)
            started = now()
            for _ in range(L3_ROUNDS):
                await load.run_round()
                if load.rounds == 1:
                    await load.settle()
            took = now() - started
            await load.settle()
            assert await http.connection_sum(server, server.key) == 0
    growth = load.rss_growth()
    print(
        f"\nL3 single node: {L3_ROUNDS * L3_PUBLISHES} publishes and "
        f"{L3_ROUNDS * L3_CYCLES} cycles in {took:.1f} s; RSS growth "
        f"{round(growth[0] / MIB, 1)} MiB"
    )
    assert growth[0] <= RSS_TOLERANCE, growth


# -- churn --------------------------------------------------------------------

CHURN_STEADY = 5  # per node
CHURN_CHURNERS = 20  # per node
CHURN_MESSAGES = 10_000
CHURN_REST_CALLERS = 4


def numbered(frames: list[str | bytes]) -> dict[str, list[int]]:
    """The numbers each publisher's messages carried, in arrival order."""
    seen: dict[str, list[int]] = {}
    for frame in frames:
        assert isinstance(frame, str), frame
        publisher, _, number = frame.partition(":")
        seen.setdefault(publisher, []).append(int(number))
    return seen


async def test_churn_loses_no_message(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    with running_cluster(redis_server, tmp_path, 2) as cluster:
        key = node_key(cluster)
        node1 = cluster.nodes[0]
        per_rest_caller = CHURN_MESSAGES // 2 // CHURN_REST_CALLERS
        from_client = CHURN_MESSAGES // 2
        async with http_client() as http:
            steady = [
                await Client.open(node, key, "churn", "", f"steady {i}.{j}")
                for i, node in enumerate(cluster.nodes, 1)
                for j in range(CHURN_STEADY)
            ]
            sender = await Client.open(node1, key, "churn", "", "sender")
            for node in cluster.nodes:
                await http.wait_sum(node, key, 2 * CHURN_STEADY + 1)
            stopping = False
            cycles: Counter[str] = Counter()

            async def churner(node: Server, index: int) -> None:
                while not stopping:
                    query = ""
                    if index % 2:
                        query = f"presence=1&uuid={new_uuid()}&user=churner{index}"
                    async with connect(
                        node.ws_url("churn", key, query),
                        ping_interval=None,
                        open_timeout=scaled(5),
                        close_timeout=scaled(5),
                        max_queue=None,
                    ):
                        await asyncio.sleep(random.uniform(0, 0.05))
                    cycles["presence" if query else "plain"] += 1

            async def rest_caller(index: int) -> None:
                for number in range(per_rest_caller):
                    node = cluster.nodes[number % 2]
                    status, body = await http.publish(
                        node, key, "churn", f"rest{index}:{number}"
                    )
                    assert status == 200, body

            async def client_sender() -> None:
                for number in range(from_client):
                    await sender.ws.send(f"ws:{number}")
                    if number % 10 == 9:
                        await asyncio.sleep(0.005)

            churners = [
                asyncio.create_task(churner(node, index))
                for node in cluster.nodes
                for index in range(CHURN_CHURNERS)
            ]
            started = now()
            try:
                await asyncio.gather(
                    client_sender(),
                    *(rest_caller(i) for i in range(CHURN_REST_CALLERS)),
                )
            finally:
                stopping = True
                await asyncio.gather(*churners)
            took = now() - started
            try:
                for client in steady:
                    await client.wait_for(
                        lambda c=client: len(c.frames) >= CHURN_MESSAGES,
                        "every message",
                        within=30,
                    )
                await quiet(0.5)
            finally:
                await close_all([*steady, sender])

    expected = {
        f"rest{i}": list(range(per_rest_caller)) for i in range(CHURN_REST_CALLERS)
    }
    for client in steady:
        assert client.events == [], client.name
        assert numbered(client.frames) == {
            **expected,
            "ws": list(range(from_client)),
        }, client.name
    assert numbered(sender.frames) == expected
    delivered = sum(len(c.frames) for c in steady)
    print(
        f"\nchurn: {CHURN_MESSAGES} messages in {took:.1f} s; {delivered} "
        f"delivered to {len(steady)} steady subscribers "
        f"({[len(c.frames) for c in steady]}); {len(sender.frames)} REST "
        f"messages to the sender; {cycles['plain']} plain and "
        f"{cycles['presence']} presence join/leave cycles"
    )
    assert cycles["plain"] >= 2 * CHURN_CHURNERS
    assert cycles["presence"] >= 2 * CHURN_CHURNERS


# -- a node killed with SIGKILL ------------------------------------------------


def roster_in_redis(cluster: Cluster, key: Key, channel: str) -> set[str]:
    with cluster.redis.client() as client:
        fields = client.hkeys(f"{cluster.prefix}:roster:{key.api_key}:{channel}")
    return {name.decode() for name in fields}


async def kill_node(node: Server) -> float:
    """SIGKILL the node's process and reap it; when the signal was sent."""
    assert node.process is not None
    killed_at = now()
    node.process.send_signal(signal.SIGKILL)
    await asyncio.to_thread(node.process.wait, scaled(10))
    return killed_at


async def test_killed_node_members_leave_and_stay_gone(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    ttl = ("--presence-ttl", str(PRESENCE_TTL))
    with running_cluster(redis_server, tmp_path, 2, *ttl) as cluster:
        key = node_key(cluster)
        node1, node2 = cluster.nodes
        observer_uuid = new_uuid()
        observer = await presence_client(node2, key, "room", observer_uuid, "observer")
        doomed: list[Client] = []
        try:
            ghosts = [new_uuid() for _ in range(3)]
            for index, uuid in enumerate(ghosts):
                doomed.append(
                    await presence_client(node1, key, "room", uuid, f"ghost{index}")
                )
            await observer.wait_roster({observer_uuid, *ghosts})

            # Killed, then restarted once its members were announced as left.
            killed_at = await kill_node(node1)
            await observer.wait_roster({observer_uuid}, within=PRESENCE_TTL + 1)
            first_leave = now() - killed_at
            await asyncio.to_thread(node1.start)
            newcomer_uuid = new_uuid()
            newcomer = await presence_client(node1, key, "room", newcomer_uuid, "new")
            doomed.append(newcomer)
            first = newcomer.events[0]
            assert first["event"] == "system:member_list"
            assert {m["uuid"] for m in first["data"]["members"]} == {
                observer_uuid,
                newcomer_uuid,
            }
            await observer.wait_roster({observer_uuid, newcomer_uuid})

            # Killed and restarted at once, before its members expired.
            killed_at = await kill_node(node1)
            await asyncio.to_thread(node1.start)
            await observer.wait_roster({observer_uuid}, within=PRESENCE_TTL + 1)
            second_leave = now() - killed_at
            late_uuid = new_uuid()
            late = await presence_client(node1, key, "room", late_uuid, "late")
            doomed.append(late)
            await observer.wait_roster({observer_uuid, late_uuid})
            assert set(late.roster) == {observer_uuid, late_uuid}

            # Two more TTLs: no ghost comes back anywhere.
            await quiet(2 * PRESENCE_TTL)
            assert set(observer.roster) == {observer_uuid, late_uuid}
            assert set(late.roster) == {observer_uuid, late_uuid}
            for uuid in [*ghosts, newcomer_uuid]:
                assert observer.entered[uuid] == 1, uuid
                assert observer.left[uuid] == 1, uuid
            assert roster_in_redis(cluster, key, "room") == {observer_uuid, late_uuid}
            async with http_client() as http:
                for node in cluster.nodes:
                    status, body = await http.get(
                        node, "/api/channels/room/members", key
                    )
                    assert status == 200, body
                    listed = {m["uuid"] for m in body["members"]}
                    assert listed == {observer_uuid, late_uuid}
        finally:
            await close_all([observer, *doomed])
    print(
        f"\nSIGKILL: members announced as left {first_leave:.2f} s and "
        f"{second_leave:.2f} s after the kill (presence TTL {PRESENCE_TTL:g} s)"
    )
    assert first_leave <= scaled(PRESENCE_TTL)
    assert second_leave <= scaled(PRESENCE_TTL)


async def test_connection_counts_are_the_clusters(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    with running_cluster(redis_server, tmp_path, 2) as cluster:
        key = node_key(cluster)
        first, second = cluster.nodes
        clients = [
            await connect(first.ws_url("room", key)),
            await connect(second.ws_url("room", key)),
            await connect(second.ws_url("hall", key)),
        ]
        headers = credentials(key)

        def counts(node: Server) -> Any:
            return node.request("GET", "/api/connections", headers=headers)[1]

        expected = {
            "channels": [
                {"channel": "hall", "connections": 1},
                {"channel": "room", "connections": 2},
            ]
        }
        try:
            deadline = time.monotonic() + scaled(10)
            while counts(first) != expected or counts(second) != expected:
                assert time.monotonic() < deadline, counts(first)
                await asyncio.sleep(0.1)
            status, body = first.request("GET", "/api/connections/sum", headers=headers)
            assert (status, body) == (200, {"connections": 3})
        finally:
            for client in clients:
                await client.close()
        deadline = time.monotonic() + scaled(10)
        while counts(first) != {"channels": []}:
            assert time.monotonic() < deadline, counts(first)
            await asyncio.sleep(0.1)


async def first_frame_and_close(url: str) -> tuple[list[str | bytes], int | None]:
    frames: list[str | bytes] = []
    async with connect(url) as ws:
        with contextlib.suppress(ConnectionClosed):
            while True:
                frames.append(await asyncio.wait_for(ws.recv(), scaled(5)))
    assert ws.close_code is not None
    return frames, ws.close_code


async def test_joins_that_need_redis_come_back_later(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    with running_cluster(redis_server, tmp_path, 1) as cluster:
        key = node_key(cluster)
        (node,) = cluster.nodes
        async with connect(node.ws_url("busy", key, "presence=1")) as member:
            await asyncio.wait_for(member.recv(), scaled(5))
            redis_server.stop()
            async with http_client() as http:
                deadline = now() + scaled(10)
                while await http.ready(node) != 503:
                    assert now() < deadline
                    await asyncio.sleep(0.05)
            for url in (
                node.ws_url("busy", key, "presence=1"),
                node.ws_url("fresh-channel", key),
            ):
                # No error frame: the SDKs must keep reconnecting.
                frames, code = await first_frame_and_close(url)
                assert (frames, code) == ([], 4101)
            # A plain member of a channel this node already serves is kept.
            async with connect(node.ws_url("busy", key)) as plain:
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(plain.recv(), scaled(0.3))
        assert "Traceback" not in node.log()
