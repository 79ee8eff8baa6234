"""Private channels and channel tokens, end to end."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import subprocess
import sys
import time
import warnings
from typing import Any

import jwt
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.support import Key, Server, piewire_cli, scaled

AUTH_FAILED = {"error": "Authentication failed, provide valid jwt token."}


async def recv_json(ws: ClientConnection, seconds: float = 5) -> Any:
    return json.loads(await asyncio.wait_for(ws.recv(), scaled(seconds)))


async def expect_nothing(ws: ClientConnection, seconds: float = 0.3) -> None:
    with pytest.raises(TimeoutError):
        got = await asyncio.wait_for(ws.recv(), scaled(seconds))
        raise AssertionError(f"unexpected frame {got!r}")


def token(secret: str, **claims: Any) -> str:
    body = {"sub": "private-room", "exp": int(time.time()) + 600}
    body.update(claims)
    return jwt.encode({k: v for k, v in body.items() if v is not None}, secret)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forged(header: dict[str, str], claims: dict[str, Any], secret: str) -> str:
    """A token with any header, HMAC-SHA256 signed with ``secret``."""
    signing_input = (
        f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    )
    mac = hmac.new(secret.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


def hs512(secret: str, claims: dict[str, Any]) -> str:
    with warnings.catch_warnings():
        # A 40-byte secret is short for HS512; the token is refused anyway.
        warnings.simplefilter("ignore", jwt.warnings.InsecureKeyLengthWarning)
        return jwt.encode(claims, secret, "HS512")


async def assert_refused(url: str, observer: ClientConnection) -> None:
    async with connect(url) as ws:
        assert await recv_json(ws) == AUTH_FAILED
        with pytest.raises(ConnectionClosed) as closed:
            await recv_json(ws)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 4003
    await expect_nothing(observer)


async def test_private_channel_checks_every_token(server: Server, key: Key) -> None:
    other = server.create_key("--name", "other")
    secret = key.api_secret
    now = int(time.time())
    good = token(secret, user="user1")
    observer_url = server.ws_url("private-room", key, f"jwt={good}&presence=1")
    async with connect(observer_url) as observer:
        roster = await recv_json(observer)
        assert roster["event"] == "system:member_list"
        assert (await recv_json(observer))["event"] == "system:member_joined"
        bad_tokens = [
            jwt.encode({"sub": "private-room", "exp": now + 600}, None, "none"),
            token("not-the-secret-but-long-enough-for-hmac-keys"),
            token(other.api_secret),
            forged(
                {"alg": "RS256", "typ": "JWT"},
                {"sub": "private-room", "exp": now + 600},
                secret,
            ),
            hs512(secret, {"sub": "private-room", "exp": now + 600}),
            token(secret, sub="other-room"),
            token(secret, exp=now - 60),
            token(secret, nbf=now + 600),
            token(secret, exp="99999999999"),
            token(secret, exp=0),
            token(secret, exp=-5),
        ]
        for bad in bad_tokens:
            await assert_refused(
                server.ws_url("private-room", key, f"jwt={bad}&presence=1"), observer
            )
        await assert_refused(server.ws_url("private-room", key, "presence=1"), observer)
        # Nothing a refused client sent, and no join, reached the member.
        server.publish(key, "private-room", "after the refusals")
        assert (
            await asyncio.wait_for(observer.recv(), scaled(5)) == "after the refusals"
        )
    log = server.log()
    assert good not in log
    for bad in bad_tokens:
        assert bad not in log


async def test_token_user_wins_over_query_user(server: Server, key: Key) -> None:
    good = token(key.api_secret, user="user1")
    url = server.ws_url("private-room", key, f"jwt={good}&presence=1&user=attacker")
    async with connect(url) as ws:
        roster = await recv_json(ws)
        assert [m["user"] for m in roster["data"]["members"]] == ["user1"]


async def test_token_in_header_and_json_user_claim(server: Server, key: Key) -> None:
    user = {"id": 7, "name": "Ada"}
    good = token(key.api_secret, user=user)
    url = server.ws_url("private-room", key, "presence=1")
    async with connect(url, additional_headers={"jwt": good}) as ws:
        roster = await recv_json(ws)
        assert roster["data"]["members"][0]["user"] == user


async def test_token_expiry_ends_the_connection(server: Server, key: Key) -> None:
    expires = int(time.time()) + 3
    short = token(key.api_secret, exp=expires, user="short")
    long_lived = token(key.api_secret, user="long")
    async with (
        connect(
            server.ws_url("private-room", key, f"jwt={long_lived}&presence=1")
        ) as stay,
        connect(
            server.ws_url("private-room", key, f"jwt={short}&presence=1")
        ) as leaving,
    ):
        events = []
        while len(events) < 3:
            events.append((await recv_json(stay))["event"])
        assert events.count("system:member_joined") == 2
        await recv_json(leaving)
        await recv_json(leaving)
        assert await recv_json(leaving, 10) == {"error": "token expired"}
        assert time.time() >= expires
        with pytest.raises(ConnectionClosed) as closed:
            await recv_json(leaving)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 4004
        left = await recv_json(stay)
        assert left["event"] == "system:member_left"
        assert left["data"]["member"]["user"] == "short"
        assert [m["user"] for m in left["data"]["members"]] == ["long"]


async def test_force_auth_key_needs_tokens_everywhere(server: Server) -> None:
    strict = server.create_key("--force-auth")
    frame = None
    async with connect(server.ws_url("open-room", strict)) as ws:
        frame = await recv_json(ws)
    assert frame == AUTH_FAILED
    good = jwt.encode(
        {"sub": "open-room", "exp": int(time.time()) + 60}, strict.api_secret
    )
    async with (
        connect(server.ws_url("open-room", strict, f"jwt={good}")) as a,
        connect(server.ws_url("open-room", strict, f"jwt={good}")) as b,
    ):
        await a.send("authorised")
        assert await asyncio.wait_for(b.recv(), scaled(5)) == "authorised"


def test_token_command_mints_a_working_token(server: Server, key: Key) -> None:
    minted = piewire_cli(
        "token",
        "private-room",
        "--key",
        key.api_key,
        "--user",
        "cli-user",
        "--ttl",
        "120",
        "--data-dir",
        str(server.data_dir),
    ).strip()
    claims = jwt.decode(minted, key.api_secret, algorithms=["HS256"])
    assert claims["sub"] == "private-room"
    assert claims["user"] == "cli-user"
    assert 100 <= claims["exp"] - time.time() <= 121

    async def join() -> Any:
        url = server.ws_url("private-room", key, f"jwt={minted}&presence=1")
        async with connect(url) as ws:
            return await recv_json(ws)

    roster = asyncio.run(join())
    assert roster["data"]["members"][0]["user"] == "cli-user"


@pytest.mark.parametrize(
    ("args", "message"),
    [(["bad id!"], "invalid channel id"), (["room", "--ttl", "-5"], "--ttl")],
)
def test_token_command_refuses_bad_input(
    server: Server, key: Key, args: list[str], message: str
) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "piewire",
            "token",
            *args,
            "--key",
            key.api_key,
            "--data-dir",
            str(server.data_dir),
        ],
        capture_output=True,
        text=True,
        timeout=scaled(30),
    )
    assert result.returncode == 2
    assert message in result.stderr
    assert result.stdout == ""
