"""Messages reach the other members of their channel, and only them."""

from __future__ import annotations

import asyncio
import json
import signal
import time

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.support import Key, Server, scaled


async def expect_nothing(ws: ClientConnection, seconds: float = 0.3) -> None:
    with pytest.raises(TimeoutError):
        got = await asyncio.wait_for(ws.recv(), scaled(seconds))
        raise AssertionError(f"unexpected frame {got!r}")


async def recv(ws: ClientConnection) -> str | bytes:
    return await asyncio.wait_for(ws.recv(), scaled(5))


async def refused(url: str) -> tuple[dict[str, str], int | None]:
    """The one error frame and the close code of a refused connection."""
    async with connect(url) as ws:
        frame = json.loads(await recv(ws))
        with pytest.raises(ConnectionClosed) as closed:
            await recv(ws)
    assert closed.value.rcvd is not None
    return frame, closed.value.rcvd.code


async def test_original_docs_channel_example(server: Server, key: Key) -> None:
    room_a = [await connect(server.ws_url("1998", key)) for _ in range(5)]
    room_b = [await connect(server.ws_url("1999", key)) for _ in range(5)]
    try:
        await room_a[0].send("hello 1998")
        for ws in room_a[1:]:
            assert await recv(ws) == "hello 1998"
        await expect_nothing(room_a[0])
        for ws in room_b:
            await expect_nothing(ws, 0.1)
    finally:
        for ws in room_a + room_b:
            await ws.close()


async def test_notify_self_sender_gets_its_own_message(
    server: Server, key: Key
) -> None:
    sender = await connect(server.ws_url("1998", key, "notify_self=1"))
    others = [await connect(server.ws_url("1998", key)) for _ in range(4)]
    try:
        await sender.send("echo")
        assert await recv(sender) == "echo"
        for ws in others:
            assert await recv(ws) == "echo"
    finally:
        for ws in [sender, *others]:
            await ws.close()


@pytest.mark.parametrize(
    ("query", "on"),
    [
        ("notify_self", True),
        ("notify_self=", True),
        ("notify_self=1", True),
        ("notify_self=true", True),
        ("notify_self=TRUE", True),
        ("notify_self=0", False),
        ("notify_self=false", False),
        ("", False),
    ],
)
async def test_notify_self_spellings(
    server: Server, key: Key, query: str, on: bool
) -> None:
    async with connect(server.ws_url("room", key, query)) as ws:
        await ws.send("me")
        if on:
            assert await recv(ws) == "me"
        else:
            await expect_nothing(ws)


async def test_text_and_binary_relayed_byte_for_byte(server: Server, key: Key) -> None:
    async with (
        connect(server.ws_url("bytes", key)) as a,
        connect(server.ws_url("bytes", key)) as b,
    ):
        blob = bytes(range(256)) * 4
        await a.send(blob)
        assert await recv(b) == blob
        text = 'κόσμε {"event":"chat","data":[1,2]}  '
        await a.send(text)
        assert await recv(b) == text


async def test_burst_of_ten_thousand_keeps_order(server: Server, key: Key) -> None:
    async with (
        connect(server.ws_url("burst", key)) as a,
        connect(server.ws_url("burst", key), max_queue=None) as b,
    ):
        count = 10_000
        for n in range(count):
            await a.send(f"m{n}")
        received = [await recv(b) for _ in range(count)]
        assert received == [f"m{n}" for n in range(count)]


async def test_rest_publish_reaches_every_member(server: Server, key: Key) -> None:
    async with (
        connect(server.ws_url("news", key)) as a,
        connect(server.ws_url("news", key)) as b,
        connect(server.ws_url("other", key)) as c,
    ):
        status, body = server.publish(key, "news", "breaking")
        assert (status, body) == (200, {"success": True})
        assert await recv(a) == "breaking"
        assert await recv(b) == "breaking"
        await expect_nothing(c)


async def test_channels_belong_to_their_key(server: Server, key: Key) -> None:
    other = server.create_key("--name", "other")
    async with (
        connect(server.ws_url("room", key)) as mine,
        connect(server.ws_url("room", other)) as theirs,
    ):
        await mine.send("private to key one")
        server.publish(key, "room", "rest to key one")
        await expect_nothing(theirs)
        status, body = server.request(
            "GET",
            "/api/connections",
            headers={"key": other.api_key, "secret": other.api_secret},
        )
        assert status == 200
        assert body == {"channels": [{"channel": "room", "connections": 1}]}


async def test_boot_event_comes_first(server: Server, key: Key) -> None:
    async with connect(server.ws_url("boot", key, "be=1")) as ws:
        assert json.loads(await recv(ws)) == {"event": "system:boot", "data": {}}
    async with connect(server.ws_url("boot", key)) as ws:
        await expect_nothing(ws)


@pytest.mark.parametrize(
    ("channel", "query", "use_key", "code"),
    [
        ("room", "", False, 4001),
        ("room%2F", "", True, 4002),
        ("0", "", True, 4002),
        ("room", "notify_self=yes", True, 4000),
        ("room", "presence=maybe", True, 4000),
    ],
)
async def test_refusals_send_error_then_close(
    server: Server, key: Key, channel: str, query: str, use_key: bool, code: int
) -> None:
    async with connect(server.ws_url("room", key)) as member:
        url = server.ws_url(channel, key if use_key else "unknown-key", query)
        frame, close_code = await refused(url)
        assert set(frame) == {"error"}
        assert frame["error"]
        assert close_code == code
        await expect_nothing(member)


async def test_revoked_key_is_refused_and_its_sockets_closed(
    server: Server,
) -> None:
    victim = server.create_key("--name", "victim")
    bystander = server.create_key("--name", "bystander")
    async with (
        connect(server.ws_url("room", victim)) as open_ws,
        connect(server.ws_url("room", bystander)) as safe,
    ):
        server.keys_cli("revoke", victim.api_key)
        frame = json.loads(await asyncio.wait_for(open_ws.recv(), scaled(5)))
        assert frame == {"error": "api key revoked"}
        with pytest.raises(ConnectionClosed) as closed:
            await recv(open_ws)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 4001
        frame, code = await refused(server.ws_url("room", victim))
        assert (frame, code) == ({"error": "api key revoked"}, 4001)
        await safe.send("still here")
        await expect_nothing(safe, 0.1)
        async with connect(server.ws_url("room", bystander)) as peer:
            await safe.send("still here")
            assert await recv(peer) == "still here"
    status, _ = server.publish(victim, "room", "x")
    assert status == 401


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_shutdown_closes_clients_with_1001(
    server: Server, key: Key, sig: signal.Signals
) -> None:
    clients = [await connect(server.ws_url("bye", key)) for _ in range(3)]
    assert server.process is not None
    started = time.monotonic()
    server.process.send_signal(sig)
    for ws in clients:
        with pytest.raises(ConnectionClosed) as closed:
            await recv(ws)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1001
    code = await asyncio.to_thread(server.process.wait, scaled(10))
    assert code == 0
    assert time.monotonic() - started < scaled(10)
    log = server.log()
    assert "shutdown complete" in log
    assert server.key is not None and server.key.api_secret not in log
