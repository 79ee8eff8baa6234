"""The REST API against a real server: body sizes (R1), body shapes (R2),
secret comparison (T3), and the account and health endpoints.

Requests go over raw sockets where the exact bytes and their timing matter.
Decisions under test: the whole body is read before it is parsed; a message
up to the maximum size is delivered byte for byte; a declared body over the
REST body limit gets 413 before any of it is read; a body that stops
arriving gets 408 after ``--body-timeout`` and the connection is closed; every
error is a JSON ``{"error": ...}`` with a 4xx status.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import secrets
import socket
import string
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

from piewire.store.keys import ApiKey, random_token
from piewire.store.sqlite import SqliteKeyStore
from tests.support import HOST, Key, Server, running_server, scaled

LIMIT = 64 * 1024
BODY_LIMIT = 6 * LIMIT + 4096
TEN_MB = 10_000_000
BODY_TIMEOUT = 1.0


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(
        tmp_path_factory.mktemp("rest"), "--body-timeout", str(BODY_TIMEOUT)
    ) as server:
        yield server


@pytest.fixture(scope="module")
def key(srv: Server) -> Key:
    assert srv.key is not None
    return srv.key


# -- a raw HTTP/1.1 client ---------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        assert self.headers.get("content-type", "").startswith("application/json")
        return json.loads(self.body)


class RawHttp:
    """One TCP connection that sends exactly the bytes it is given."""

    def __init__(self, srv: Server, timeout: float = 10) -> None:
        self.sock = socket.create_connection((HOST, srv.port), timeout=scaled(5))
        self.sock.settimeout(scaled(timeout))
        self.buffer = b""

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _more(self) -> None:
        chunk = self.sock.recv(256 * 1024)
        if not chunk:
            raise ConnectionError(f"closed by the server after {self.buffer[:200]!r}")
        self.buffer += chunk

    def reply(self) -> Reply:
        while b"\r\n\r\n" not in self.buffer:
            self._more()
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        while len(self.buffer) < length:
            self._more()
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return Reply(status, headers, body)

    def closed_by_server(self) -> bool:
        """True when the server ends the connection within the timeout."""
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
                self.buffer += chunk
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True


def head(
    path: str = "/api/publish",
    method: str = "POST",
    length: int | None = None,
    chunked: bool = False,
    content_type: str | None = "application/json",
    extra: Sequence[str] = (),
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {HOST}"]
    if content_type is not None:
        lines.append(f"Content-Type: {content_type}")
    if length is not None:
        lines.append(f"Content-Length: {length}")
    if chunked:
        lines.append("Transfer-Encoding: chunked")
    lines.extend(extra)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def chunked(body: bytes, size: int = 16 * 1024) -> bytes:
    out = [
        b"%x\r\n%s\r\n" % (len(body[at : at + size]), body[at : at + size])
        for at in range(0, len(body), size)
    ]
    return b"".join(out) + b"0\r\n\r\n"


def thirds(data: bytes) -> list[bytes]:
    step = len(data) // 3 + 1
    return [data[at : at + step] for at in range(0, len(data), step)]


def post(
    srv: Server,
    body: bytes,
    mode: str = "length",
    content_type: str | None = "application/json",
) -> Reply:
    """POST /api/publish with the body sent whole, chunked, or in three writes."""
    conn = RawHttp(srv)
    try:
        if mode == "chunked":
            conn.send(head(chunked=True, content_type=content_type) + chunked(body))
        elif mode == "three-writes":
            conn.send(head(length=len(body), content_type=content_type))
            for n, part in enumerate(thirds(body)):
                if n:
                    time.sleep(0.2)
                conn.send(part)
        else:
            conn.send(head(length=len(body), content_type=content_type) + body)
        return conn.reply()
    finally:
        conn.close()


def publish_body(key: Key, channel: Any, message: Any, **extra: Any) -> bytes:
    fields = {"key": key.api_key, "secret": key.api_secret, "channelId": channel}
    fields["message"] = message
    fields.update(extra)
    return json.dumps(fields).encode()


def message_of(size: int) -> str:
    """Printable text of ``size`` bytes whose every position is checkable."""
    alphabet = string.ascii_letters + string.digits
    return "".join(alphabet[(n * 7 + n // 61) % len(alphabet)] for n in range(size))


def assert_json_error(reply: Reply, status: int) -> str:
    assert reply.status == status, (reply.status, reply.body[:200])
    body = reply.json()
    assert set(body) == {"error"}
    assert isinstance(body["error"], str)
    assert body["error"]
    return str(body["error"])


# -- subscribers -------------------------------------------------------------


class Subscriber:
    def __init__(self, srv: Server, key: Key) -> None:
        self.srv = srv
        self.key = key
        self.channel = f"rest-{secrets.token_hex(4)}"
        self.ws: ClientConnection | None = None

    async def recv(self) -> Any:
        assert self.ws is not None
        return await asyncio.wait_for(self.ws.recv(), scaled(10))

    async def got_nothing(self) -> None:
        """A marker published now is the very next frame."""
        marker = "marker-" + secrets.token_hex(4)
        status, _ = await asyncio.to_thread(
            self.srv.publish, self.key, self.channel, marker
        )
        assert status == 200
        assert await self.recv() == marker


@pytest.fixture
async def sub(srv: Server, key: Key) -> AsyncIterator[Subscriber]:
    subscriber = Subscriber(srv, key)
    async with connect(
        srv.ws_url(subscriber.channel, key), max_size=None, max_queue=None
    ) as ws:
        subscriber.ws = ws
        yield subscriber


# -- R1: body sizes --------------------------------------------------------------

SIZES = [1000, 63_999, 64_001, LIMIT, LIMIT + 1, TEN_MB]
MODES = ["length", "chunked", "three-writes"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("size", SIZES)
async def test_message_sizes(
    srv: Server, key: Key, sub: Subscriber, size: int, mode: str
) -> None:
    message = message_of(size)
    body = publish_body(key, sub.channel, message)
    reply = await asyncio.to_thread(post, srv, body, mode)
    if size <= LIMIT:
        assert (reply.status, reply.json()) == (200, {"success": True})
        received = await sub.recv()
        assert received == message
    else:
        error = assert_json_error(reply, 413)
        assert str(LIMIT if size < BODY_LIMIT else BODY_LIMIT) in error
        await sub.got_nothing()


def test_a_declared_oversized_body_is_refused_before_it_is_sent(
    srv: Server, key: Key
) -> None:
    conn = RawHttp(srv, timeout=5)
    try:
        started = time.monotonic()
        conn.send(head(length=TEN_MB))
        reply = conn.reply()
        assert time.monotonic() - started < scaled(2)
        assert_json_error(reply, 413)
        assert reply.headers.get("connection", "").lower() == "close"
    finally:
        conn.close()


def test_an_oversized_body_is_refused_before_the_body_limit_is_passed(
    srv: Server, key: Key
) -> None:
    conn = RawHttp(srv, timeout=5)
    try:
        conn.send(head(chunked=True))
        conn.send(b"%x\r\n%s\r\n" % (BODY_LIMIT + 1, b"x" * (BODY_LIMIT + 1)))
        assert_json_error(conn.reply(), 413)
    finally:
        conn.close()


def test_expect_continue_with_an_oversized_body_gets_413_not_100(
    srv: Server, key: Key
) -> None:
    conn = RawHttp(srv, timeout=5)
    try:
        conn.send(head(length=TEN_MB, extra=["Expect: 100-continue"]))
        assert_json_error(conn.reply(), 413)
    finally:
        conn.close()


async def test_expect_continue_with_a_fitting_body(
    srv: Server, key: Key, sub: Subscriber
) -> None:
    body = publish_body(key, sub.channel, "after continue")

    def exchange() -> tuple[Reply, Reply]:
        conn = RawHttp(srv, timeout=5)
        try:
            conn.send(head(length=len(body), extra=["Expect: 100-continue"]))
            interim = conn.reply()
            conn.send(body)
            return interim, conn.reply()
        finally:
            conn.close()

    interim, final = await asyncio.to_thread(exchange)
    assert interim.status == 100
    assert (final.status, final.json()) == (200, {"success": True})
    assert await sub.recv() == "after continue"


def test_a_client_that_sends_all_ten_mb_first_still_gets_413(
    srv: Server, key: Key
) -> None:
    body = publish_body(key, "room", message_of(TEN_MB))
    conn = http.client.HTTPConnection(HOST, srv.port, timeout=scaled(30))
    try:
        conn.request("POST", "/api/publish", body, {"Content-Type": "application/json"})
        response = conn.getresponse()
        assert response.status == 413
        assert set(json.loads(response.read())) == {"error"}
    finally:
        conn.close()


async def test_limit_and_body_limit_follow_max_message_size(
    tmp_path: Path,
) -> None:
    limit = 1000
    with running_server(tmp_path, "--max-message-size", str(limit)) as small:
        assert small.key is not None
        key = small.key
        subscriber = Subscriber(small, key)
        async with connect(small.ws_url(subscriber.channel, key)) as ws:
            subscriber.ws = ws
            # The worst case for JSON text: every byte escaped as \u00XX.
            message = "\x01" * limit
            body = publish_body(key, subscriber.channel, message)
            assert len(body) > 6 * limit
            reply = await asyncio.to_thread(post, small, body)
            assert reply.status == 200
            assert await subscriber.recv() == message
            exact = publish_body(key, subscriber.channel, "é" * (limit // 2))
            assert (await asyncio.to_thread(post, small, exact)).status == 200
            assert await subscriber.recv() == "é" * (limit // 2)
            over = publish_body(key, subscriber.channel, "é" * (limit // 2) + "x")
            assert_json_error(await asyncio.to_thread(post, small, over), 413)
            too_long = 6 * limit + 4096 + 1
            conn = RawHttp(small, timeout=5)
            try:
                conn.send(head(length=too_long))
                assert_json_error(conn.reply(), 413)
            finally:
                conn.close()
            await subscriber.got_nothing()


@pytest.mark.parametrize("shortfall", ["missing-bytes", "no-body", "unfinished-chunks"])
def test_a_stalled_body_times_out_with_408_and_a_close(
    srv: Server, key: Key, shortfall: str
) -> None:
    body = publish_body(key, "room", "never delivered")
    conn = RawHttp(srv, timeout=BODY_TIMEOUT + 5)
    try:
        started = time.monotonic()
        if shortfall == "missing-bytes":
            conn.send(head(length=len(body) + 100) + body)
        elif shortfall == "no-body":
            conn.send(head(length=len(body)))
        else:
            conn.send(head(chunked=True) + b"%x\r\n%s\r\n" % (len(body), body))
        reply = conn.reply()
        elapsed = time.monotonic() - started
        error = assert_json_error(reply, 408)
        assert "body" in error
        assert BODY_TIMEOUT * 0.9 <= elapsed < BODY_TIMEOUT + scaled(2)
        conn.sock.settimeout(scaled(2))
        assert conn.closed_by_server()
    finally:
        conn.close()


def test_a_client_gone_mid_body_leaves_no_error_in_the_log(
    srv: Server, key: Key
) -> None:
    before = len(srv.log())
    for framing in ("length", "chunked"):
        conn = RawHttp(srv)
        if framing == "length":
            conn.send(head(length=1000) + b'{"key": ')
        else:
            conn.send(head(chunked=True) + b'8\r\n{"key": \r\n')
        time.sleep(0.2)
        conn.close()
    time.sleep(0.3)
    assert srv.request("GET", "/health") == (200, {"status": "ok"})
    log = srv.log()[before:]
    assert "Traceback" not in log
    assert " ERROR " not in log


# -- R2: body shapes -------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json",
        "application/json; charset=utf-8",
        "text/plain",
        "text/plain;charset=UTF-8",
        None,
    ],
)
async def test_json_is_read_under_these_content_types(
    srv: Server, key: Key, sub: Subscriber, content_type: str | None
) -> None:
    body = publish_body(key, sub.channel, "typed")
    reply = await asyncio.to_thread(post, srv, body, "length", content_type)
    assert (reply.status, reply.json()) == (200, {"success": True})
    assert await sub.recv() == "typed"


@pytest.mark.parametrize(
    "content_type",
    ["application/x-www-form-urlencoded", "multipart/form-data; boundary=x"],
)
async def test_other_content_types_get_415(
    srv: Server, key: Key, sub: Subscriber, content_type: str
) -> None:
    body = publish_body(key, sub.channel, "typed")
    reply = await asyncio.to_thread(post, srv, body, "length", content_type)
    assert_json_error(reply, 415)
    await sub.got_nothing()


@pytest.mark.parametrize(
    ("message", "delivered"),
    [
        ({"event": "chat", "data": {"text": "hi"}}, None),
        ({"nested": [1, {"a": None}], "é": "✓"}, None),
        ([1, 2, 3], None),
        (42, "42"),
        (-1.5, "-1.5"),
        (True, "true"),
        ("plain text", "plain text"),
        ('{"looks": "like json"}', '{"looks": "like json"}'),
        ('"quoted"', '"quoted"'),
        ("", ""),
        ("κόσμε ✓ \n\t", "κόσμε ✓ \n\t"),
    ],
)
async def test_message_values_arrive_as_they_were_given(
    srv: Server, key: Key, sub: Subscriber, message: Any, delivered: str | None
) -> None:
    body = publish_body(key, sub.channel, message)
    reply = await asyncio.to_thread(post, srv, body)
    assert reply.status == 200
    received = await sub.recv()
    assert isinstance(received, str)
    if delivered is None:
        assert json.loads(received) == message
    else:
        assert received == delivered


async def test_room_id_is_an_alias_and_numbers_are_ids(srv: Server, key: Key) -> None:
    async with connect(srv.ws_url("4242", key)) as ws:
        body = json.dumps(
            {"key": key.api_key, "secret": key.api_secret, "roomId": 4242, "message": 1}
        ).encode()
        assert (await asyncio.to_thread(post, srv, body)).status == 200
        assert await asyncio.wait_for(ws.recv(), scaled(5)) == "1"


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"{", 400),
        (b"not json", 400),
        (b"", 400),
        (b"[]", 400),
        (b'[{"channelId": "room"}]', 400),
        (b"null", 400),
        (b"42", 400),
        (b"\xff\xfe\x00{", 400),
        (b'{"key": "\xe9"}', 400),
        (b"[" * 50_000 + b"]" * 50_000, 400),
        (b'{"message": ' + b"[" * 50_000 + b"]" * 50_000 + b"}", 400),
    ],
)
def test_bodies_that_are_not_an_object_get_json_4xx(
    srv: Server, body: bytes, status: int
) -> None:
    assert_json_error(post(srv, body), status)


@pytest.mark.parametrize(
    ("fields", "status", "text"),
    [
        ({"channelId": None}, 400, "channelId"),
        ({"message": None}, 400, "Missing message from payload"),
        ({"message": ...}, 400, "Missing message from payload"),
        ({"channelId": ["room"]}, 400, None),
        ({"channelId": True}, 400, None),
        ({"secret": ...}, 401, "invalid key or secret"),
        ({"key": ...}, 401, "invalid key or secret"),
    ],
)
async def test_missing_fields(
    srv: Server,
    key: Key,
    sub: Subscriber,
    fields: dict[str, Any],
    status: int,
    text: str | None,
) -> None:
    raw = {
        "key": key.api_key,
        "secret": key.api_secret,
        "channelId": sub.channel,
        "message": "m",
    }
    raw.update(fields)
    if "channelId" in fields and fields["channelId"] is None:
        del raw["channelId"]
    raw = {name: value for name, value in raw.items() if value is not ...}
    reply = await asyncio.to_thread(post, srv, json.dumps(raw).encode())
    error = assert_json_error(reply, status)
    if text is not None:
        assert text in error
    await sub.got_nothing()


async def test_non_utf8_message_bytes_are_refused(
    srv: Server, key: Key, sub: Subscriber
) -> None:
    body = publish_body(key, sub.channel, "MARK").replace(b"MARK", b"\xc3\x28\xff")
    reply = await asyncio.to_thread(post, srv, body)
    assert_json_error(reply, 400)
    await sub.got_nothing()


def test_the_src_query_of_the_official_libraries_is_ignored(
    srv: Server, key: Key
) -> None:
    body = publish_body(key, "room", "m")
    conn = RawHttp(srv)
    try:
        conn.send(head("/api/publish?src=php", length=len(body)) + body)
        assert conn.reply().status == 200
    finally:
        conn.close()


# -- T3: secrets -----------------------------------------------------------------


def test_unknown_key_and_wrong_secret_get_the_same_401(srv: Server, key: Key) -> None:
    other = srv.create_key("--name", "other")
    attempts = [
        Key("no-such-key", key.api_secret),
        Key(key.api_key, "wrong"),
        Key(key.api_key, key.api_secret[:-1]),
        Key(key.api_key, other.api_secret),
        Key(other.api_key, key.api_secret),
        Key(key.api_key, key.api_secret + "x"),
    ]
    replies = [post(srv, publish_body(k, "room", "m")) for k in attempts]
    assert {(r.status, r.body) for r in replies} == {
        (401, b'{"error": "invalid key or secret"}')
    }
    assert post(srv, publish_body(key, "room", "m")).status == 200
    assert post(srv, publish_body(other, "room", "m")).status == 200


@pytest.fixture(scope="module")
def unicode_key(srv: Server) -> Key:
    record = ApiKey(api_key=random_token(40), api_secret="sécrèt-ключ-秘密-✓" * 2)
    store = SqliteKeyStore(Path(srv.data_dir))
    try:
        store.create(record)
    finally:
        store.close()
    found = Key(record.api_key, record.api_secret)
    # Its secret cannot travel in a header, so wait through REST publish.
    deadline = time.monotonic() + scaled(10)
    while srv.publish(found, "room", "m")[0] != 200:
        assert time.monotonic() < deadline, "the key never became live"
        time.sleep(0.05)
    return found


@pytest.mark.parametrize(
    ("secret", "status"),
    [
        (None, 200),
        ("sécret-ключ-秘密-✓" * 2, 401),
        ("secret", 401),
        ("\ud800", 401),
        ("é" * 1000, 401),
        ("\x00", 401),
    ],
)
def test_non_ascii_secrets_compare_without_errors(
    srv: Server, unicode_key: Key, secret: str | None, status: int
) -> None:
    given = unicode_key.api_secret if secret is None else secret
    before = len(srv.log())
    body = json.dumps(
        {
            "key": unicode_key.api_key,
            "secret": given,
            "channelId": "room",
            "message": "m",
        }
    ).encode()
    assert post(srv, body).status == status
    assert "Traceback" not in srv.log()[before:]


def test_non_ascii_header_secrets_get_401_not_500(
    srv: Server, unicode_key: Key
) -> None:
    for value in ("\xff\xfe".encode("latin-1"), "é✓".encode(), b"\x80"):
        conn = RawHttp(srv)
        try:
            conn.send(
                b"GET /api/connections HTTP/1.1\r\nHost: x\r\nkey: %s\r\n"
                b"secret: %s\r\n\r\n" % (unicode_key.api_key.encode(), value)
            )
            assert_json_error(conn.reply(), 401)
        finally:
            conn.close()
    assert srv.key is not None
    assert srv.key.api_secret not in srv.log()
    assert unicode_key.api_secret not in srv.log()


# -- account and health endpoints -------------------------------------------------


async def test_connection_counts(srv: Server) -> None:
    counted = srv.create_key("--name", "counted")
    headers = {"key": counted.api_key, "secret": counted.api_secret}
    assert srv.request("GET", "/api/connections", headers=headers) == (
        200,
        {"channels": []},
    )
    async with (
        connect(srv.ws_url("alpha", counted)) as _a1,
        connect(srv.ws_url("alpha", counted)) as _a2,
        connect(srv.ws_url("beta", counted)) as _b,
    ):
        status, body = await asyncio.to_thread(
            srv.request, "GET", "/api/connections", None, headers
        )
        assert status == 200
        assert body == {
            "channels": [
                {"channel": "alpha", "connections": 2},
                {"channel": "beta", "connections": 1},
            ]
        }
        status, body = await asyncio.to_thread(
            srv.request, "GET", "/api/connections/sum", None, headers
        )
        assert (status, body) == (200, {"connections": 3})


@pytest.mark.parametrize("path", ["/api/connections", "/api/connections/sum"])
def test_account_endpoints_need_key_and_secret_headers(
    srv: Server, key: Key, path: str
) -> None:
    for headers in (
        {},
        {"key": key.api_key},
        {"secret": key.api_secret},
        {"key": key.api_key, "secret": "wrong"},
        {"key": "nobody", "secret": key.api_secret},
    ):
        assert srv.request("GET", path, headers=headers) == (
            401,
            {"error": "invalid key or secret"},
        )
    good = {"key": key.api_key, "secret": key.api_secret}
    assert srv.request("GET", path, headers=good)[0] == 200
    # Credentials travel in headers here, not in the query string.
    query = f"{path}?key={key.api_key}&secret={key.api_secret}"
    assert srv.request("GET", query)[0] == 401


def test_health(srv: Server) -> None:
    assert srv.request("GET", "/health") == (200, {"status": "ok"})


@pytest.mark.parametrize("path", ["/", "/nope", "/api", "/api/publish/x", "/v3"])
def test_unknown_paths_get_json_404(srv: Server, path: str) -> None:
    conn = RawHttp(srv)
    try:
        conn.send(head(path, "GET", content_type=None))
        assert_json_error(conn.reply(), 404)
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("GET", "/api/publish", "POST"),
        ("PUT", "/api/publish", "POST"),
        ("DELETE", "/health", "GET"),
        ("POST", "/health", "GET"),
        ("POST", "/api/connections", "GET"),
    ],
)
def test_wrong_methods_get_json_405_with_allow(
    srv: Server, method: str, path: str, allowed: str
) -> None:
    conn = RawHttp(srv)
    try:
        conn.send(head(path, method, length=0, content_type=None))
        reply = conn.reply()
        assert_json_error(reply, 405)
        assert allowed in reply.headers.get("allow", "")
    finally:
        conn.close()


def test_a_plain_get_on_the_websocket_path_is_json_426(srv: Server, key: Key) -> None:
    conn = RawHttp(srv)
    try:
        conn.send(head(f"/v3/room?api_key={key.api_key}", "GET", content_type=None))
        assert_json_error(conn.reply(), 426)
    finally:
        conn.close()


def test_the_server_keeps_serving_after_every_error(srv: Server) -> None:
    with contextlib.closing(RawHttp(srv)) as conn:
        conn.send(head("/health", "GET", content_type=None))
        assert conn.reply().status == 200
        conn.send(head("/nope", "GET", content_type=None))
        assert conn.reply().status == 404
        conn.send(head("/health", "GET", content_type=None))
        assert conn.reply().status == 200
