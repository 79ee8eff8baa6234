"""Raw WebSocket members of a running piewire, and what the server reports."""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from pathlib import Path

from tests.rawws import RawWebSocket
from tests.support import Key, Server, scaled


def fresh_channel(prefix: str) -> str:
    """A channel id no other test uses."""
    return f"{prefix}-{secrets.token_hex(4)}"


def connection_count(server: Server, key: Key) -> int:
    """The total the server reports on ``/api/connections/sum`` for ``key``."""
    headers = {"key": key.api_key, "secret": key.api_secret}
    status, body = server.request("GET", "/api/connections/sum", headers=headers)
    assert status == 200, body
    return int(body["connections"])


def wait_for_count(server: Server, key: Key, expected: int, within: float = 5) -> None:
    deadline = time.monotonic() + scaled(within)
    count = connection_count(server, key)
    while count != expected:
        if time.monotonic() > deadline:
            raise AssertionError(f"{count} connections, expected {expected}")
        time.sleep(0.02)
        count = connection_count(server, key)


def join(
    server: Server,
    key: Key,
    channel: str,
    query: str = "",
    rcvbuf: int | None = None,
) -> RawWebSocket:
    """Connect to ``channel`` and wait until the server counts the member."""
    before = connection_count(server, key)
    ws = RawWebSocket.connect(
        server.ws_url(channel, key, query), timeout=scaled(5), rcvbuf=rcvbuf
    )
    try:
        wait_for_count(server, key, before + 1)
    except BaseException:
        ws.close()
        raise
    return ws


def rss_bytes(server: Server) -> int:
    """The resident memory of the server process, from ``/proc``."""
    assert server.process is not None
    status = Path(f"/proc/{server.process.pid}/status").read_text()
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS line in /proc/PID/status")


def holds_socket_of(server: Server, ws: RawWebSocket) -> bool:
    """Whether the server process still has the socket of ``ws``'s connection.

    A socket the server let go of may live on in the kernel for a while (to
    send what it still holds), but no longer belongs to the process.
    """
    assert server.process is not None
    client_port = ws.sock.getsockname()[1]
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port = int(fields[1].split(":")[1], 16)
        remote_port = int(fields[2].split(":")[1], 16)
        if (local_port, remote_port) == (server.port, client_port):
            inodes.add(fields[9])
    held = set()
    for fd in Path(f"/proc/{server.process.pid}/fd").iterdir():
        with contextlib.suppress(FileNotFoundError):
            held.add(os.readlink(fd))
    return any(f"socket:[{inode}]" in held for inode in inodes)


def wait_until_released(server: Server, ws: RawWebSocket, within: float) -> None:
    deadline = time.monotonic() + scaled(within)
    while holds_socket_of(server, ws):
        if time.monotonic() > deadline:
            raise AssertionError("the server still holds the socket")
        time.sleep(0.05)
