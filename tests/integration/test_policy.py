"""Per-key policy: client publishing, reserved events, origins, limits, keys CLI."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.support import Key, Server, scaled


async def recv_json(ws: ClientConnection) -> Any:
    return json.loads(await asyncio.wait_for(ws.recv(), scaled(5)))


async def expect_nothing(ws: ClientConnection, seconds: float = 0.3) -> None:
    with pytest.raises(TimeoutError):
        got = await asyncio.wait_for(ws.recv(), scaled(seconds))
        raise AssertionError(f"unexpected frame {got!r}")


async def closed_with(ws: ClientConnection) -> int:
    with pytest.raises(ConnectionClosed) as closed:
        await asyncio.wait_for(ws.recv(), scaled(5))
    assert closed.value.rcvd is not None
    return closed.value.rcvd.code


@pytest.mark.parametrize(
    "event",
    [
        "system:member_list",
        "system:member_joined",
        "system:member_left",
        "system:boot",
        "system:error",
    ],
)
async def test_reserved_events_are_not_relayed(
    server: Server, key: Key, event: str
) -> None:
    async with (
        connect(server.ws_url("room", key)) as sender,
        connect(server.ws_url("room", key)) as other,
    ):
        await sender.send(json.dumps({"event": event, "data": {"members": []}}))
        reply = await recv_json(sender)
        assert reply["event"] == "system:error"
        assert event in reply["data"]["error"]
        await expect_nothing(other)
        await sender.send("still open")
        assert await asyncio.wait_for(other.recv(), scaled(5)) == "still open"


@pytest.mark.parametrize(
    "event", ["system:portal_offer", "system:video_answer", "system:stopped_screen"]
)
async def test_video_signalling_is_relayed(
    server: Server, key: Key, event: str
) -> None:
    async with (
        connect(server.ws_url("call", key)) as a,
        connect(server.ws_url("call", key)) as b,
    ):
        text = json.dumps({"event": event, "data": {"sdp": "v=0"}})
        await a.send(text)
        assert await asyncio.wait_for(b.recv(), scaled(5)) == text


async def test_client_publish_off_keeps_the_connection(server: Server) -> None:
    quiet = server.create_key("--no-client-publish")
    async with (
        connect(server.ws_url("room", quiet)) as a,
        connect(server.ws_url("room", quiet)) as b,
    ):
        await a.send("hello")
        reply = await recv_json(a)
        assert reply["event"] == "system:error"
        await expect_nothing(b)
        status, _ = server.publish(quiet, "room", "from the backend")
        assert status == 200
        assert await asyncio.wait_for(a.recv(), scaled(5)) == "from the backend"
        assert await asyncio.wait_for(b.recv(), scaled(5)) == "from the backend"
        # Turning it on takes effect on open connections within seconds.
        server.keys_cli("update", quiet.api_key, "--client-publish")
        for _ in range(int(scaled(50))):
            await a.send("now?")
            try:
                got = await asyncio.wait_for(b.recv(), scaled(0.1))
            except TimeoutError:
                await recv_json(a)
                continue
            assert got == "now?"
            break
        else:
            raise AssertionError("client publishing never came back on")


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        ("https://example.com", True),
        ("http://example.com:8080", True),
        ("https://chat.example.com", True),
        ("https://a.b.example.com", True),
        ("https://EXAMPLE.com", True),
        ("https://app.test", True),
        ("https://evil-example.com", False),
        ("https://example.com.evil.org", False),
        ("https://notexample.com", False),
        ("https://sub.app.test", False),
        ("null", False),
        (None, True),
    ],
)
async def test_allowed_origins(
    server: Server, origin: str | None, allowed: bool
) -> None:
    key = server.create_key(
        "--allowed-origin",
        "example.com",
        "--allowed-origin",
        "*.example.com",
        "--allowed-origin",
        "app.test",
    )
    headers = {"Origin": origin} if origin else {}
    # websockets sends no Origin unless asked to.
    async with connect(
        server.ws_url("room", key), origin=None, additional_headers=headers
    ) as ws:
        if allowed:
            await expect_nothing(ws, 0.2)
        else:
            frame = await recv_json(ws)
            assert "origin" in frame["error"]
            assert await closed_with(ws) == 4005


async def test_strict_origin_refuses_a_missing_origin(server: Server) -> None:
    key = server.create_key("--allowed-origin", "example.com", "--strict-origin")
    async with connect(server.ws_url("room", key)) as ws:
        assert "origin" in (await recv_json(ws))["error"]
        assert await closed_with(ws) == 4005
    headers = {"Origin": "https://example.com"}
    async with connect(server.ws_url("room", key), additional_headers=headers) as ws:
        await expect_nothing(ws, 0.2)


async def test_max_connections_per_key(server: Server) -> None:
    limited = server.create_key("--max-connections", "2")
    first = await connect(server.ws_url("a", limited))
    second = await connect(server.ws_url("b", limited))
    try:
        async with connect(server.ws_url("c", limited)) as third:
            assert "limit" in (await recv_json(third))["error"]
            assert await closed_with(third) == 4006
        await first.close()
        await asyncio.sleep(scaled(0.2))
        async with connect(server.ws_url("c", limited)) as again:
            await expect_nothing(again, 0.2)
    finally:
        await first.close()
        await second.close()


async def test_members_endpoint(server: Server, key: Key) -> None:
    headers = {"key": key.api_key, "secret": key.api_secret}
    url = server.ws_url("presence-lobby", key, "user=ann&uuid=u-ann")
    async with connect(url) as ws:
        await recv_json(ws)
        status, body = server.request(
            "GET", "/api/channels/presence-lobby/members", headers=headers
        )
        assert status == 200
        assert body == {"members": [{"user": "ann", "uuid": "u-ann"}]}
    status, body = server.request(
        "GET", "/api/channels/presence-lobby/members", headers={"key": key.api_key}
    )
    assert status == 401
    assert set(body) == {"error"}


def test_keys_cli_round_trip(server: Server) -> None:
    created = server.create_key(
        "--name", "shop", "--no-client-publish", "--max-connections", "5"
    )
    record = created.record
    assert record["cluster_id"] == "local"
    assert record["client_publish"] is False
    assert record["max_connections"] == 5
    shown = json.loads(server.keys_cli("show", created.api_key, "--json"))
    assert shown["api_secret"] == created.api_secret
    listed = json.loads(server.keys_cli("list", "--json"))
    assert created.api_key in {k["api_key"] for k in listed}
    updated = json.loads(
        server.keys_cli(
            "update",
            created.api_key,
            "--client-publish",
            "--allowed-origin",
            "a.test",
            "--json",
        )
    )
    assert updated["client_publish"] is True
    assert updated["allowed_origins"] == ["a.test"]
    revoked = json.loads(server.keys_cli("revoke", created.api_key, "--json"))
    assert revoked["revoked"] is True


@pytest.mark.parametrize(
    "frame",
    [
        '{"error":"stop reconnecting"}',
        b'{"event":"system:member_left","data":{"members":[]}}',
        b'{"error":"binary too"}',
    ],
)
async def test_frames_that_would_stop_other_sdks_are_not_relayed(
    server: Server, key: Key, frame: str | bytes
) -> None:
    async with (
        connect(server.ws_url("room", key)) as sender,
        connect(server.ws_url("room", key)) as other,
    ):
        await sender.send(frame)
        reply = await recv_json(sender)
        assert reply["event"] == "system:error"
        await expect_nothing(other)
