"""The first request of a connection: upgrades here, everything else to HTTP."""

from __future__ import annotations

import json
import socket

import pytest

from tests.support import HOST, Key, Server, scaled


def exchange(server: Server, request: bytes) -> bytes:
    """Send ``request`` on a new connection; read one whole response."""
    with socket.create_connection((HOST, server.port), timeout=scaled(5)) as sock:
        sock.sendall(request)
        reply = b""
        while True:
            chunk = sock.recv(65536)
            reply += chunk
            head, found, body = reply.partition(b"\r\n\r\n")
            if found:
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                if len(body) >= length:
                    return reply
            if not chunk:
                return reply


def upgrade(path: str, **headers: str) -> bytes:
    fields = {
        "Host": "x",
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version": "13",
    }
    fields.update({k.replace("_", "-"): v for k, v in headers.items()})
    lines = "".join(f"{k}: {v}\r\n" for k, v in fields.items() if v)
    return f"GET {path} HTTP/1.1\r\n{lines}\r\n".encode()


def status_and_body(reply: bytes) -> tuple[int, dict[str, str]]:
    head, _, body = reply.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def test_a_valid_upgrade_gets_101_with_the_accept_key(server: Server, key: Key) -> None:
    reply = exchange(server, upgrade(f"/v3/room?api_key={key.api_key}"))
    assert reply.startswith(b"HTTP/1.1 101 ")
    assert b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n" in reply


def test_another_websocket_version_gets_426(server: Server, key: Key) -> None:
    reply = exchange(
        server, upgrade(f"/v3/room?api_key={key.api_key}", Sec_WebSocket_Version="8")
    )
    status, body = status_and_body(reply)
    assert status == 426
    assert b"Sec-WebSocket-Version: 13" in reply
    assert "version" in body["error"]


@pytest.mark.parametrize(
    "headers",
    [{"Sec_WebSocket_Key": "short"}, {"Sec_WebSocket_Key": ""}, {"Connection": "x"}],
)
def test_a_bad_handshake_gets_400(
    server: Server, key: Key, headers: dict[str, str]
) -> None:
    reply = exchange(server, upgrade(f"/v3/room?api_key={key.api_key}", **headers))
    status, body = status_and_body(reply)
    assert status == 400
    assert body["error"]


def test_a_plain_get_of_a_channel_gets_426(server: Server, key: Key) -> None:
    request = f"GET /v3/room?api_key={key.api_key} HTTP/1.1\r\nHost: x\r\n"
    reply = exchange(server, (request + "Connection: close\r\n\r\n").encode())
    status, body = status_and_body(reply)
    assert status == 426
    assert "upgrade" in body["error"]


def test_http_and_upgrade_share_the_port(server: Server, key: Key) -> None:
    reply = exchange(
        server, b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    assert status_and_body(reply) == (200, {"status": "ok"})
    reply = exchange(server, upgrade("/v2/room"))
    assert status_and_body(reply)[0] == 404


def test_a_head_that_never_ends_is_handed_to_http(server: Server) -> None:
    # 20 KiB of header without an end: not an upgrade piewire will read.
    request = b"GET /v3/room HTTP/1.1\r\nX-Filler: " + b"a" * 20_000 + b"\r\n\r\n"
    reply = exchange(server, request)
    assert reply.split()[1].startswith(b"4")


@pytest.mark.parametrize("in_pieces", [False, True])
def test_a_head_over_16_kib_gets_431_however_it_arrives(
    server: Server, key: Key, in_pieces: bool
) -> None:
    request = upgrade(f"/v3/room?api_key={key.api_key}&pad={'p' * 17_000}")
    with socket.create_connection((HOST, server.port), timeout=scaled(5)) as sock:
        if in_pieces:
            for at in range(0, len(request), 2048):
                sock.sendall(request[at : at + 2048])
        else:
            sock.sendall(request)
        reply = sock.recv(65536)
    assert reply.startswith(b"HTTP/1.1 431 ")


def test_a_slow_endless_head_is_not_kept(server: Server) -> None:
    # Past 16 KiB without an end of head: refused at once, not handed on.
    with socket.create_connection((HOST, server.port), timeout=scaled(5)) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\n" + b"X-Pad: " + b"a" * 17_000)
        reply = sock.recv(65536)
        assert reply.startswith(b"HTTP/1.1 431 ")
        assert sock.recv(65536) == b""


def test_an_http_10_upgrade_is_refused(server: Server, key: Key) -> None:
    request = upgrade(f"/v3/room?api_key={key.api_key}").replace(
        b"HTTP/1.1", b"HTTP/1.0", 1
    )
    status, body = status_and_body(exchange(server, request))
    assert status == 400
    assert "HTTP/1.1" in body["error"]


def test_malformed_requests_are_not_logged_as_errors(server: Server) -> None:
    exchange(server, b"GET /health HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n")
    exchange(server, b"GET /v3/room HTTP/1.1\r\nHost: x\r\nBad\x00: y\r\n\r\n")
    log = server.log()
    assert log.count("bad http request") == 2
    assert "ERROR" not in log
    assert "Traceback" not in log
