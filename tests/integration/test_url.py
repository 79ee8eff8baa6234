"""The connect URL against a real server: query flags (U1) and channel ids (U2).

The rules under test (piewire/core/connect.py and core/channels.py):

* a flag that is bare, empty, ``1`` or ``true`` (any case) is on; ``0`` or
  ``false`` is off; absent is off; any other value is refused with 4000;
* a known parameter given twice (``apiKey`` is ``api_key``) is refused with 4000;
* ``%XX`` is decoded exactly once, after the raw path is split on ``/``, and a
  literal ``+`` stays ``+``; unknown parameters are ignored;
* an invalid channel id is refused with 4002, an unknown key with 4001, and a
  private channel without a token with 4003.

A refused connection gets exactly one frame, ``{"error": "..."}``, then its
close code, and no other member of the channel hears anything of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.uri import parse_uri

from piewire.core.messages import AUTH_FAILED_TEXT
from piewire.core.tokens import mint_token
from piewire.store.keys import ApiKey, random_token
from piewire.store.sqlite import SqliteKeyStore
from tests.support import HOST, Key, Server, running_server, scaled


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("url")) as server:
        yield server


@pytest.fixture(scope="module")
def key(srv: Server) -> Key:
    assert srv.key is not None
    return srv.key


@pytest.fixture(scope="module")
def plus_key(srv: Server) -> Key:
    """A key whose text holds a ``+``, as a key from another system might."""
    api_key = f"{random_token(12)}+{random_token(12)}"
    record = ApiKey(api_key=api_key, api_secret=random_token(40), name="plus")
    store = SqliteKeyStore(Path(srv.data_dir))
    try:
        store.create(record)
    finally:
        store.close()
    key = Key(record.api_key, record.api_secret)
    srv.wait_key_live(key)
    return key


def fresh(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


def url(srv: Server, raw_channel: str, query: str) -> str:
    """A connect URL whose path and query go on the wire exactly as written."""
    target = f"ws://{HOST}:{srv.port}/v3/{raw_channel}"
    return target + ("?" + query if query else "")


async def recv(ws: ClientConnection) -> Any:
    return await asyncio.wait_for(ws.recv(), scaled(5))


async def refused(address: str, send_first: str | None = None) -> tuple[Any, int]:
    """The only frame a refused connection gets, and its close code."""
    frames: list[Any] = []
    async with connect(address, open_timeout=scaled(5)) as ws:
        if send_first is not None:
            # The server must drop what a refused connection sends, if the
            # refusal has not already closed it.
            with contextlib.suppress(ConnectionClosed):
                await ws.send(send_first)
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                frames.append(await recv(ws))
    assert len(frames) == 1, frames
    assert closed.value.rcvd is not None, "no close frame from the server"
    frame = json.loads(frames[0])
    assert isinstance(frame, dict)
    assert set(frame) == {"error"}
    assert isinstance(frame["error"], str)
    assert frame["error"]
    return frame, closed.value.rcvd.code


class Witness:
    """Members of a channel, one with presence, that must hear nothing more."""

    def __init__(self, srv: Server, key: Key, channel: str, query: str = "") -> None:
        self.srv = srv
        self.key = key
        self.channel = channel
        self.query = query
        self.plain: ClientConnection | None = None
        self.present: ClientConnection | None = None

    async def __aenter__(self) -> Witness:
        uuid = secrets.token_hex(8)
        plain = self.query
        present = "&".join(q for q in (self.query, f"presence=1&uuid={uuid}") if q)
        self.plain = await connect(self.srv.ws_url(self.channel, self.key, plain))
        self.present = await connect(self.srv.ws_url(self.channel, self.key, present))
        # Its own join: a member_list, then a member_joined naming it.
        while True:
            frame = json.loads(await recv(self.present))
            if frame.get("event") == "system:member_joined":
                assert frame["data"]["member"]["uuid"] == uuid
                break
        return self

    async def __aexit__(self, *exc: object) -> None:
        for ws in (self.plain, self.present):
            if ws is not None:
                await ws.close()

    async def heard_nothing(self) -> None:
        """A marker published now is the very next frame each member gets."""
        assert self.plain is not None and self.present is not None
        marker = "marker-" + secrets.token_hex(4)
        status, _ = await asyncio.to_thread(
            self.srv.publish, self.key, self.channel, marker
        )
        assert status == 200
        assert await recv(self.plain) == marker
        assert await recv(self.present) == marker


@pytest.fixture
async def witness(srv: Server, key: Key) -> AsyncIterator[Witness]:
    async with Witness(srv, key, "room") as w:
        yield w


async def joined(srv: Server, key: Key, ws: ClientConnection, channel: str) -> None:
    """``ws`` is a member of ``channel`` of ``key``: a REST publish reaches it."""
    text = "probe-" + secrets.token_hex(4)
    status, _ = await asyncio.to_thread(srv.publish, key, channel, text)
    assert status == 200
    frame = await recv(ws)
    while frame.startswith('{"event":"system:member_'):
        frame = await recv(ws)
    assert frame == text


def test_the_client_sends_raw_targets_unchanged() -> None:
    # The tests below rely on websockets putting the path on the wire as is.
    for resource in (
        "/v3/a%2Fb?api_key=K%2Bx&notify_self",
        "/v3/a%252Fb?api_key=K+x",
        "/v3/room%00?api_key=K&source&v=5.1.0",
        "/v3/?api_key=K&notify_self=",
        "/v3/caf%C3%A9?api_key=K",
    ):
        assert parse_uri(f"ws://{HOST}:1{resource}").resource_name == resource


# -- U1: query flags ------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "on"),
    [
        ("notify_self", True),
        ("notify_self=", True),
        ("notify_self=1", True),
        ("notify_self=true", True),
        ("notify_self=TRUE", True),
        ("notify_self=True", True),
        ("notify_self=0", False),
        ("notify_self=false", False),
        ("notify_self=FALSE", False),
        ("", False),
    ],
)
async def test_notify_self_values(srv: Server, key: Key, query: str, on: bool) -> None:
    channel = fresh("flags")
    sender_query = "&".join(q for q in (f"api_key={key.api_key}", query) if q)
    async with (
        connect(url(srv, channel, sender_query)) as sender,
        connect(srv.ws_url(channel, key)) as other,
    ):
        await sender.send("mine")
        assert await recv(other) == "mine"
        await other.send("theirs")
        expected = ["mine", "theirs"] if on else ["theirs"]
        assert [await recv(sender) for _ in expected] == expected


@pytest.mark.parametrize(
    "query",
    [
        "notify_self=yes",
        "notify_self=no",
        "notify_self=on",
        "notify_self=2",
        "notify_self=%20",
        "presence=yes",
        "presence=1&notify_self=yes",
        "be=yes",
        "notify_self=0&notify_self=1",
        "notify_self=1&notify_self=0",
        "notify_self&notify_self=1",
        "presence=1&presence=1",
        "user=a&user=b",
    ],
)
async def test_bad_or_repeated_flags_are_refused_with_4000(
    srv: Server, key: Key, witness: Witness, query: str
) -> None:
    address = url(srv, "room", f"api_key={key.api_key}&{query}")
    frame, code = await refused(address, send_first="leaked")
    assert code == 4000
    named = {part.partition("=")[0] for part in query.split("&")}
    assert any(name in frame["error"] for name in named), frame
    await witness.heard_nothing()


async def test_api_key_given_twice_is_refused_in_either_order(
    srv: Server, key: Key, witness: Witness
) -> None:
    good, bad = key.api_key, "not-a-key"
    for query in (
        f"api_key={good}&api_key={bad}",
        f"api_key={bad}&api_key={good}",
        f"api_key={good}&api_key={good}",
        f"api_key={good}&apiKey={good}",
        f"apiKey={good}&api_key={bad}",
    ):
        frame, code = await refused(url(srv, "room", query), send_first="leaked")
        assert code == 4000, query
        assert "api_key" in frame["error"]
    await witness.heard_nothing()


async def test_api_key_escape_is_decoded_once_and_plus_is_kept(
    srv: Server, plus_key: Key
) -> None:
    channel = fresh("plus")
    before, after = plus_key.api_key.split("+")
    for written in (f"{before}%2B{after}", f"{before}%2b{after}", plus_key.api_key):
        async with connect(url(srv, channel, f"api_key={written}")) as ws:
            await joined(srv, plus_key, ws, channel)
    for written in (f"{before}%252B{after}", f"{before}%20{after}", f"{before}{after}"):
        _, code = await refused(url(srv, channel, f"api_key={written}"))
        assert code == 4001, written


async def test_apikey_spelling_and_two_segment_path(srv: Server, key: Key) -> None:
    async with connect(url(srv, "1/1998", f"apiKey={key.api_key}")) as ws:
        await joined(srv, key, ws, "1998")


@pytest.mark.parametrize(
    "extra",
    ["source=js", "v=5.1.0", "source=js&v=5.1.0", "source", "x=%FF", "%FF=1", "&&"],
)
async def test_unknown_parameters_are_ignored(
    srv: Server, key: Key, extra: str
) -> None:
    channel = fresh("unknown")
    async with connect(url(srv, channel, f"api_key={key.api_key}&{extra}")) as ws:
        await joined(srv, key, ws, channel)


@pytest.mark.parametrize(
    "query", ["", "api_key=", "api_key", "api_key=unknown", "apikey=K", "API_KEY=K"]
)
async def test_missing_or_unknown_key_is_refused_with_4001(
    srv: Server, key: Key, witness: Witness, query: str
) -> None:
    query = query.replace("=K", "=" + key.api_key)
    _, code = await refused(url(srv, "room", query), send_first="leaked")
    assert code == 4001
    await witness.heard_nothing()


# -- U2: channel ids -------------------------------------------------------


@pytest.mark.parametrize(
    "channel",
    ["abc", "a" * 30, "Z9_-z", "1", "100000", "presence-lobby"],
)
async def test_valid_channel_ids_join(srv: Server, key: Key, channel: str) -> None:
    async with connect(srv.ws_url(channel, key)) as ws:
        await joined(srv, key, ws, channel)


async def test_ids_are_case_sensitive(srv: Server, key: Key) -> None:
    async with (
        connect(srv.ws_url("CaseRoom", key)) as upper,
        connect(srv.ws_url("caseroom", key)) as lower,
    ):
        await upper.send("to Room only")
        await joined(srv, key, lower, "caseroom")
        await joined(srv, key, upper, "CaseRoom")


# Each invalid id, with the channels a wrong decoding could have put it in.
INVALID_IDS = [
    ("a" * 31, ["a" * 30]),
    ("", ["room"]),
    ("caf%C3%A9", ["caf", "cafe"]),
    ("a%2Fb", ["a", "b"]),
    ("a%252Fb", ["a", "b"]),
    ("room%00", ["room"]),
    ("room%20", ["room"]),
    ("0", ["room"]),
    ("007", ["7"]),
    ("100001", ["room"]),
    ("room%2F", ["room"]),
    ("a%0Ab", ["a", "b"]),
]


@pytest.mark.parametrize(("raw_channel", "nearby"), INVALID_IDS)
async def test_invalid_channel_ids_are_refused_with_4002(
    srv: Server, key: Key, raw_channel: str, nearby: list[str]
) -> None:
    witnesses = [Witness(srv, key, channel) for channel in nearby]
    for w in witnesses:
        await w.__aenter__()
    try:
        address = url(srv, raw_channel, f"api_key={key.api_key}&presence=1")
        frame, code = await refused(address, send_first="leaked")
        assert code == 4002
        assert "invalid channel id" in frame["error"]
        for w in witnesses:
            await w.heard_nothing()
    finally:
        for w in witnesses:
            await w.__aexit__()


async def test_private_channel_without_a_token_is_refused(
    srv: Server, key: Key
) -> None:
    channel = fresh("private")
    token = mint_token(key.api_secret, channel)
    async with Witness(srv, key, channel, f"jwt={token}") as w:
        frame, code = await refused(
            srv.ws_url(channel, key, "presence=1"), send_first="leaked"
        )
        assert frame == {"error": AUTH_FAILED_TEXT}
        assert code == 4003
        await w.heard_nothing()


# -- the same ids through REST publish -------------------------------------


@pytest.mark.parametrize(
    "channel",
    [
        "a" * 31,
        "",
        "café",
        "a/b",
        "a%2Fb",
        "room\x00",
        "room ",
        "0",
        0,
        "007",
        "100001",
        100001,
        -0.0,
        True,
    ],
)
def test_rest_refuses_invalid_ids_with_400(srv: Server, key: Key, channel: Any) -> None:
    status, body = srv.publish(key, channel, "m")
    assert status == 400
    assert set(body) == {"error"}


async def test_rest_reaches_the_ids_a_client_can_join(srv: Server, key: Key) -> None:
    for channel, wire in [
        ("abc", "abc"),
        ("a" * 30, "a" * 30),
        ("1", "1"),
        (1, "1"),
        ("100000", "100000"),
        (100000, "100000"),
        ("Room", "Room"),
    ]:
        async with connect(srv.ws_url(wire, key)) as ws:
            status, body = await asyncio.to_thread(srv.publish, key, channel, "hi")
            assert (status, body) == (200, {"success": True})
            assert await recv(ws) == "hi"


async def test_rest_may_publish_into_private_channels(srv: Server, key: Key) -> None:
    status, body = await asyncio.to_thread(srv.publish, key, "private-x", "m")
    assert (status, body) == (200, {"success": True})


async def test_rest_room_does_not_reach_room_with_another_case(
    srv: Server, key: Key
) -> None:
    async with connect(srv.ws_url("lowercase", key)) as ws:
        status, _ = await asyncio.to_thread(srv.publish, key, "Lowercase", "wrong")
        assert status == 200
        await joined(srv, key, ws, "lowercase")
