"""Presence rosters when members vanish, flap, share a user, reuse a uuid, or storm.

Cases P1 (a frozen client), P2 (join and drop at once, 1,000 times), P3 (one
user in several tabs), P4 (a reconnect that reuses its uuid) and a storm of
2,000 joins and leaves in one channel.  Every presence connection here keeps
its roster the way the SDK does: each ``member_list``, ``member_joined`` and
``member_left`` replaces it with the event's ``members``.  A test counts how
often each uuid enters and leaves that view, so a burst that the server sends
as one ``member_list`` is judged by the same rule as exact events.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import random
import resource
import signal
import socket
import struct
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.rawws import OP_CLOSE, OP_TEXT, RawWebSocket
from tests.support import HOST, Key, Server, running_server, scaled

PRESENCE_EVENTS = frozenset(
    {"system:member_list", "system:member_joined", "system:member_left"}
)
PING_INTERVAL = 1.0
PING_TIMEOUT = 1.0
FAST_PINGS = (
    "--ping-interval",
    str(PING_INTERVAL),
    "--ping-timeout",
    str(PING_TIMEOUT),
)
# How long a server waits for the peer's close frame before it drops the socket.
CLOSE_TIMEOUT = 2.0
# What a dead peer costs at most: silence until the ping, the pong timeout, and
# a second for the keepalive sweep and the announcement.
REAP_WITHIN = PING_INTERVAL + PING_TIMEOUT + 1.0


# -- presence connections that keep their roster --------------------------


@dataclass
class RosterView:
    """What one presence connection believes the roster is (uuid -> user)."""

    members: dict[str, Any] = field(default_factory=dict)
    entered: Counter[str] = field(default_factory=Counter)
    left: Counter[str] = field(default_factory=Counter)
    events: list[dict[str, Any]] = field(default_factory=list)
    listed_twice: list[dict[str, Any]] = field(default_factory=list)

    def apply(self, event: dict[str, Any]) -> None:
        self.events.append(event)
        listed = event["data"]["members"]
        fresh = {m["uuid"]: m["user"] for m in listed}
        if len(fresh) != len(listed):
            self.listed_twice.append(event)
        for uuid in fresh.keys() - self.members.keys():
            self.entered[uuid] += 1
        for uuid in self.members.keys() - fresh.keys():
            self.left[uuid] += 1
        self.members = fresh

    def summary(self) -> str:
        """The roster and the last events, short enough for a failure message."""
        roster = sorted(self.members)
        shown = ", ".join(roster[:10]) + (", ..." if len(roster) > 10 else "")
        last = [
            f"{name} {member} ({len(uuids)} listed)"
            for name, member, uuids in self.exact()[-3:]
        ]
        return f"roster of {len(roster)}: {shown}; last events: {'; '.join(last)}"

    def exact(self) -> list[tuple[str, str | None, set[str]]]:
        """Every event as (name, the member's uuid, the uuids of ``members``)."""
        return [
            (
                e["event"],
                e["data"]["member"]["uuid"] if "member" in e["data"] else None,
                {m["uuid"] for m in e["data"]["members"]},
            )
            for e in self.events
        ]


class Member:
    """A presence connection that reads every frame in the background."""

    def __init__(self, ws: ClientConnection, uuid: str) -> None:
        self.ws = ws
        self.uuid = uuid
        self.view = RosterView()
        self.other: list[str | bytes] = []
        self._changed = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def join(
        cls, server: Server, key: Key, channel: str, uuid: str, user: str
    ) -> Member:
        """Connect with presence on; return once its own join is in its roster."""
        query = f"presence=1&uuid={uuid}&user={user}"
        ws = await connect(
            server.ws_url(channel, key, query),
            ping_interval=None,
            open_timeout=scaled(5),
            max_size=None,
        )
        member = cls(ws, uuid)
        await member.wait_until(lambda view: uuid in view.members, "its own join")
        return member

    async def _read(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for message in self.ws:
                event = as_presence_event(message)
                if event is None:
                    self.other.append(message)
                else:
                    self.view.apply(event)
                self._changed.set()
        self._changed.set()

    async def wait_until(
        self, check: Callable[[RosterView], bool], what: str, within: float = 5
    ) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + scaled(within)
        while True:
            self._changed.clear()
            if check(self.view):
                return
            left = deadline - loop.time()
            if left <= 0:
                raise AssertionError(
                    f"{self.uuid}: {what} not seen within {scaled(within):g} s; "
                    f"{self.view.summary()}"
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), left)

    async def close(self) -> None:
        await self.ws.close()
        await asyncio.wait_for(self._reader, scaled(5))


def as_presence_event(message: str | bytes) -> dict[str, Any] | None:
    if isinstance(message, bytes):
        return None
    try:
        event = json.loads(message)
    except ValueError:
        return None
    if isinstance(event, dict) and event.get("event") in PRESENCE_EVENTS:
        return event
    return None


def has_events(count: int) -> Callable[[RosterView], bool]:
    return lambda view: len(view.events) >= count


def members_of(event: dict[str, Any]) -> list[str]:
    return [m["uuid"] for m in event["data"]["members"]]


# -- REST, the server process and other processes -------------------------


def credentials(key: Key) -> dict[str, str]:
    return {"key": key.api_key, "secret": key.api_secret}


async def rest_roster(server: Server, key: Key, channel: str) -> list[dict[str, Any]]:
    status, body = await asyncio.to_thread(
        server.request,
        "GET",
        f"/api/channels/{channel}/members",
        None,
        credentials(key),
    )
    assert status == 200, body
    return list(body["members"])


async def connection_sum(server: Server, key: Key) -> int:
    status, body = await asyncio.to_thread(
        server.request, "GET", "/api/connections/sum", None, credentials(key)
    )
    assert status == 200, body
    return int(body["connections"])


async def wait_for_sum(
    server: Server, key: Key, expected: int, within: float = 5
) -> None:
    deadline = time.monotonic() + scaled(within)
    while (count := await connection_sum(server, key)) != expected:
        if time.monotonic() > deadline:
            raise AssertionError(f"{count} connections, expected {expected}")
        await asyncio.sleep(0.02)


async def quiet(seconds: float) -> None:
    """Let late events arrive, so a test can say none came."""
    await asyncio.sleep(scaled(seconds))


def proc_status(pid: int, field_name: str) -> int:
    """A ``kB`` line of ``/proc/PID/status``, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field_name} in /proc/{pid}/status")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process, from ``/proc/PID/stat``."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def server_pid(server: Server) -> int:
    assert server.process is not None
    return server.process.pid


# A member in its own process, so a test can freeze it with SIGSTOP.
MEMBER_SCRIPT = """
import asyncio, sys
from websockets.asyncio.client import connect

async def main(url):
    async with connect(url, ping_interval=None, max_size=None) as ws:
        async for message in ws:
            pass

asyncio.run(main(sys.argv[1]))
"""


@contextlib.contextmanager
def member_process(url: str, stderr_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``MEMBER_SCRIPT`` for ``url``; always resumed, killed and reaped."""
    with stderr_path.open("wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-c", MEMBER_SCRIPT, url],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGCONT)
        proc.kill()
        proc.wait(timeout=scaled(10))


def server_state(server: Server) -> str:
    """Whether the server still runs, and the end of its log, for a failure."""
    assert server.process is not None
    code = server.process.poll()
    state = "running" if code is None else f"exited with {code}"
    tail = "\n".join(server.log().splitlines()[-20:])
    return f"server {state}; log ends:\n{tail}"


def log_problems(log: str) -> list[str]:
    """Errors, pending tasks destroyed, and tracebacks, each with its last line."""
    problems = []
    in_traceback = False
    for line in log.splitlines():
        if line.startswith("Traceback"):
            in_traceback = True
        elif in_traceback and not line.startswith(" "):
            problems.append(f"traceback ending in {line}")
            in_traceback = False
        elif " ERROR " in line or "Task was destroyed but it is pending" in line:
            problems.append(line.split(" ", 2)[-1])
    return problems


def no_problems(log: str) -> None:
    problems = Counter(log_problems(log))
    listed = "\n".join(f"{n} x {line}" for line, n in problems.most_common(10))
    assert not problems, f"the server log shows:\n{listed}"


# -- P1 ---------------------------------------------------------------------


async def test_frozen_member_is_reaped_and_announced_once(tmp_path: Path) -> None:
    with running_server(tmp_path, *FAST_PINGS) as server:
        assert server.key is not None
        key = server.key
        a = await Member.join(server, key, "room1", "uuid-a", "alice")
        url = server.ws_url("room1", key, "presence=1&uuid=uuid-b&user=bob")
        with member_process(url, tmp_path / "b.stderr") as b:
            try:
                await a.wait_until(lambda v: "uuid-b" in v.members, "B's join")
            except AssertionError as exc:
                raise AssertionError(
                    f"{exc}\nB: {(tmp_path / 'b.stderr').read_text()}"
                ) from None
            os.kill(b.pid, signal.SIGSTOP)
            frozen_at = time.monotonic()

            await a.wait_until(
                lambda v: "uuid-b" not in v.members, "B's leave", REAP_WITHIN
            )
            reaped_after = time.monotonic() - frozen_at
            await quiet(1.0)
            assert b.poll() is None, "B must still be alive, only frozen"

            assert a.view.entered["uuid-b"] == 1
            assert a.view.left["uuid-b"] == 1, a.view.exact()
            assert a.view.listed_twice == []
            assert a.view.members == {"uuid-a": "alice"}
            assert await rest_roster(server, key, "room1") == [
                {"user": "alice", "uuid": "uuid-a"}
            ]
            assert await connection_sum(server, key) == 1

            c = await Member.join(server, key, "room1", "uuid-c", "carol")
            first = c.view.events[0]
            assert first["event"] == "system:member_list"
            assert sorted(members_of(first)) == ["uuid-a", "uuid-c"]
            await a.wait_until(lambda v: "uuid-c" in v.members, "C's join")
            assert a.view.left["uuid-b"] == 1
            await c.close()
        await a.close()
    print(f"\nP1: frozen member announced as left after {reaped_after:.2f} s")
    assert reaped_after < scaled(REAP_WITHIN)


# -- P2 ---------------------------------------------------------------------

HANDSHAKE_ONLY = "abort after sending the upgrade request"
CLOSE_THEN_ABORT = "close frame, then abort"
ABORT = "abort without a close frame"
CLOSE_THEN_FIN = "close frame, then FIN"
RESET = "RST via SO_LINGER 0"
MODES = (HANDSHAKE_ONLY, CLOSE_THEN_ABORT, ABORT, CLOSE_THEN_FIN, RESET)


def upgrade_request(path: str) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


def client_frame(opcode: int, payload: bytes) -> bytes:
    """A masked client frame with a zero mask, so the payload reads as is."""
    assert len(payload) < 126
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + b"\0\0\0\0" + payload


CLOSE_1000 = client_frame(OP_CLOSE, struct.pack("!H", 1000))


async def flash(server: Server, path: str, mode: str, pause: float) -> None:
    """Join, wait ``pause`` seconds, and drop the TCP connection at once."""
    reader, writer = await asyncio.open_connection(HOST, server.port)
    try:
        writer.write(upgrade_request(path))
        if mode != HANDSHAKE_ONLY:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), scaled(5))
            assert head.startswith(b"HTTP/1.1 101 "), head
            await asyncio.sleep(pause)
        if mode in (CLOSE_THEN_ABORT, CLOSE_THEN_FIN):
            writer.write(CLOSE_1000)
        if mode == RESET:
            sock = writer.get_extra_info("socket")
            sock.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
            )
        if mode == CLOSE_THEN_FIN:
            writer.close()
        else:
            writer.transport.abort()
    finally:
        writer.close()


async def test_a_thousand_flash_joins_each_leave_once(tmp_path: Path) -> None:
    rounds = 1000
    rng = random.Random(878)
    with running_server(tmp_path) as server:
        assert server.key is not None
        key = server.key
        a = await Member.join(server, key, "room1", "uuid-a", "alice")
        modes: Counter[str] = Counter()
        started = time.monotonic()
        for n in range(rounds):
            mode = MODES[n % len(MODES)]
            modes[mode] += 1
            query = f"api_key={key.api_key}&presence=1&uuid=flash-{n}&user=bob"
            try:
                await flash(server, f"/v3/room1?{query}", mode, rng.uniform(0, 0.005))
            except OSError as exc:
                raise AssertionError(
                    f"round {n} ({mode}): {exc!r}; {server_state(server)}"
                ) from exc
        elapsed = time.monotonic() - started

        await wait_for_sum(server, key, 1, within=10)
        await a.wait_until(lambda v: set(v.members) == {"uuid-a"}, "an empty room")
        await quiet(0.5)
        assert set(a.view.members) == {"uuid-a"}
        assert await rest_roster(server, key, "room1") == [
            {"user": "alice", "uuid": "uuid-a"}
        ]
        await a.close()

        view = a.view
        flashes = set(view.entered) - {"uuid-a"}
        assert view.listed_twice == []
        assert set(view.left) <= flashes
        twice = {u: view.entered[u] for u in flashes if view.entered[u] != 1}
        assert twice == {}, "uuids that entered the roster more than once"
        unbalanced = {u: view.left[u] for u in flashes if view.left[u] != 1}
        assert unbalanced == {}, "uuids announced as joined, left not exactly once"
        assert view.left["uuid-a"] == 0

        assert server.stop() == 0
        no_problems(server.log())
    events = Counter(e["event"] for e in view.events)
    print(
        f"\nP2: {rounds} rounds in {elapsed:.1f} s, modes {dict(modes)}; "
        f"{len(flashes)} flashes announced; events seen by A {dict(events)}"
    )


# -- P3 ---------------------------------------------------------------------


async def test_one_user_in_three_tabs(server: Server, key: Key) -> None:
    x = await Member.join(server, key, "tabs", "uuid-x", "observer")
    tabs: dict[str, Member] = {}
    # What each connection must have seen: (event, member uuid, roster).
    expected: dict[str, list[tuple[str, str | None, set[str]]]] = {
        "uuid-x": [
            ("system:member_list", None, {"uuid-x"}),
            ("system:member_joined", "uuid-x", {"uuid-x"}),
        ]
    }

    def record(event: str, uuid: str) -> None:
        roster = {"uuid-x", *tabs}
        for holder in roster:
            expected[holder].append((event, uuid, roster))

    async def everyone_saw(count: int) -> None:
        for member in (x, *tabs.values()):
            wanted = len(expected[member.uuid])
            await member.wait_until(has_events(wanted), f"event {count}")
            assert member.view.exact() == expected[member.uuid], member.uuid
            assert member.view.members == {
                "uuid-x": "observer",
                **dict.fromkeys(tabs, "user1"),
            }

    for n, uuid in enumerate(("U1", "U2", "U3")):
        expected[uuid] = [("system:member_list", None, {"uuid-x", *tabs, uuid})]
        tabs[uuid] = await Member.join(server, key, "tabs", uuid, "user1")
        record("system:member_joined", uuid)
        await everyone_saw(n)
        joined = x.view.events[-1]["data"]["member"]
        assert joined == {"user": "user1", "uuid": uuid}

    for n, uuid in enumerate(("U1", "U2", "U3")):
        await tabs.pop(uuid).close()
        record("system:member_left", uuid)
        await everyone_saw(3 + n)
        left = x.view.events[-1]["data"]["member"]
        assert left == {"user": "user1", "uuid": uuid}

    await quiet(0.3)
    assert x.view.exact() == expected["uuid-x"]
    assert await rest_roster(server, key, "tabs") == [
        {"user": "observer", "uuid": "uuid-x"}
    ]
    await x.close()


# -- P4 ---------------------------------------------------------------------


def frames_until_close(ws: RawWebSocket, within: float) -> list[Any]:
    """Every frame the silent old connection has buffered, up to its close."""
    frames = []
    deadline = time.monotonic() + within
    while True:
        frame = ws.recv_frame(max(0.0, deadline - time.monotonic()))
        frames.append(frame)
        if frame.is_close:
            return frames


async def test_reconnect_with_same_uuid_takes_over_silently(tmp_path: Path) -> None:
    with running_server(tmp_path, *FAST_PINGS) as server:
        assert server.key is not None
        key = server.key
        a = await Member.join(server, key, "room1", "uuid-a", "alice")
        query = "presence=1&uuid=uuid-b&user=bob"
        # The old connection reads nothing and answers no ping from here on:
        # its TCP is cut as far as the server can tell, but not yet noticed.
        old = await asyncio.to_thread(
            RawWebSocket.connect, server.ws_url("room1", key, query), timeout=5
        )
        try:
            await a.wait_until(lambda v: "uuid-b" in v.members, "B's first join")
            b = await Member.join(server, key, "room1", "uuid-b", "bob")
            await a.wait_until(has_events(4), "B's second join")

            # A saw two joins of B and no leave; every roster lists B once.
            assert [e[:2] for e in a.view.exact()] == [
                ("system:member_list", None),
                ("system:member_joined", "uuid-a"),
                ("system:member_joined", "uuid-b"),
                ("system:member_joined", "uuid-b"),
            ]
            assert a.view.listed_twice == [] and b.view.listed_twice == []
            assert sorted(members_of(a.view.events[-1])) == ["uuid-a", "uuid-b"]
            assert sorted(members_of(b.view.events[0])) == ["uuid-a", "uuid-b"]

            frames = await asyncio.to_thread(frames_until_close, old, scaled(5))
            texts = [json.loads(f.text) for f in frames if f.opcode == OP_TEXT]
            errors = [t for t in texts if "error" in t]
            assert len(errors) == 1 and set(errors[0]) == {"error"}
            assert errors[0]["error"]
            assert texts[-1] == errors[0], "the error frame comes right before close"
            assert frames[-1].close_code == 4008

            # The old socket is reaped (it never answers the close), quietly.
            await wait_for_sum(server, key, 2, within=CLOSE_TIMEOUT + REAP_WITHIN)
            await quiet(1.0)
            assert a.view.left["uuid-b"] == 0, a.view.exact()
            assert len(a.view.events) == 4
            assert a.view.members == {"uuid-a": "alice", "uuid-b": "bob"}
            roster = await rest_roster(server, key, "room1")
            assert sorted(m["uuid"] for m in roster) == ["uuid-a", "uuid-b"]
        finally:
            old.close()

        # Another identity cannot take the uuid: refused, and B stays.
        intruder = server.ws_url("room1", key, "presence=1&uuid=uuid-b&user=mallory")
        async with connect(intruder, ping_interval=None) as ws:
            frame = json.loads(await asyncio.wait_for(ws.recv(), scaled(5)))
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), scaled(5))
        assert set(frame) == {"error"} and frame["error"]
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4007

        status, _ = await asyncio.to_thread(server.publish, key, "room1", "still b")
        assert status == 200
        await b.wait_until(lambda v: "still b" in b.other, "a publish")
        await quiet(0.3)
        assert len(a.view.events) == 4 and len(b.view.events) == 2
        assert b.view.members == {"uuid-a": "alice", "uuid-b": "bob"}
        roster = await rest_roster(server, key, "room1")
        assert {m["uuid"]: m["user"] for m in roster} == b.view.members
        await b.close()
        await a.wait_until(lambda v: "uuid-b" not in v.members, "B's real leave")
        assert a.view.left["uuid-b"] == 1
        await a.close()


# -- the storm --------------------------------------------------------------

ROSTER_PREFIX = b'{"event":"system:member_'
OP_PING = 0x9
OP_PONG = 0xA


class StormClient(asyncio.Protocol):
    """A lean presence client for thousands of connections in one process.

    It parses frames, answers pings, and keeps only the last roster event it
    got: each one carries the whole roster.  Equal events are shared through
    ``seen``, so 2,000 copies of one big ``member_list`` cost one.
    """

    def __init__(self, request: bytes, seen: dict[bytes, bytes]) -> None:
        loop = asyncio.get_running_loop()
        self.request = request
        self.seen = seen
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.upgraded: asyncio.Future[None] = loop.create_future()
        self.ended: asyncio.Future[None] = loop.create_future()
        self.roster: bytes | None = None
        self.roster_events = 0
        self.messages = 0
        self.close_frame: bytes | None = None
        self.leaving = False
        self.faults: list[str] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.upgraded.done():
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[:end])
            del self.buffer[: end + 4]
            if not head.startswith(b"HTTP/1.1 101 "):
                self.upgraded.set_exception(AssertionError(f"refused: {head!r}"))
                return
            self.upgraded.set_result(None)
        self._frames()

    def _frames(self) -> None:
        buf = self.buffer
        pos = 0
        while len(buf) - pos >= 2:
            first, second = buf[pos], buf[pos + 1]
            size = second & 0x7F
            start = pos + 2
            if size == 126:
                if len(buf) - pos < 4:
                    break
                size = int.from_bytes(buf[pos + 2 : pos + 4], "big")
                start = pos + 4
            elif size == 127:
                if len(buf) - pos < 10:
                    break
                size = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                start = pos + 10
            if len(buf) < start + size:
                break
            if second & 0x80 or not first & 0x80:
                self.faults.append(f"masked or fragmented frame {first:#x}")
            self._frame(first & 0x0F, bytes(buf[start : start + size]))
            pos = start + size
        if pos:
            del buf[:pos]

    def _frame(self, opcode: int, payload: bytes) -> None:
        assert self.transport is not None
        if opcode == OP_TEXT and payload.startswith(ROSTER_PREFIX):
            self.roster = self.seen.setdefault(payload, payload)
            self.roster_events += 1
        elif opcode == OP_PING:
            self.transport.write(client_frame(OP_PONG, payload))
        elif opcode == OP_CLOSE:
            self.close_frame = payload
            if not self.leaving:
                self.faults.append(f"closed by the server: {payload[:60]!r}")
            self.transport.close()
        else:
            self.messages += 1

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.upgraded.done():
            self.upgraded.set_exception(ConnectionError(f"lost before 101: {exc}"))
        if not self.leaving:
            self.faults.append(f"connection lost: {exc}")
        if not self.ended.done():
            self.ended.set_result(None)

    def leave(self) -> None:
        assert self.transport is not None
        self.leaving = True
        self.transport.write(CLOSE_1000)


class RosterCache:
    """Parses each distinct roster event once."""

    def __init__(self) -> None:
        self._parsed: dict[bytes, frozenset[tuple[str, str]] | None] = {}

    def of(self, payload: bytes | None) -> frozenset[tuple[str, str]] | None:
        """The (uuid, user) pairs of a roster event; None if it lists a uuid twice."""
        if payload is None:
            return frozenset()
        if payload not in self._parsed:
            listed = json.loads(payload)["data"]["members"]
            pairs = frozenset((m["uuid"], m["user"]) for m in listed)
            self._parsed[payload] = pairs if len(pairs) == len(listed) else None
        return self._parsed[payload]

    def wrong(
        self, clients: list[StormClient], truth: frozenset[tuple[str, str]]
    ) -> int:
        return sum(self.of(c.roster) != truth for c in clients)


# Publishes over REST every 100 ms and samples the server's memory.  It runs in
# its own process, so the test's busy event loop does not slow it down, and
# keeps one HTTP connection open, so a publish does not queue for the accept
# behind the storm's handshakes: its latency is the server's own.  Each line it
# prints is {"status": ..., "latency": seconds, "rss": bytes}.
SAMPLER_SCRIPT = """
import http.client, json, os, sys, threading, time
host, port, channel, pid = sys.argv[1:]
key, secret = os.environ["SAMPLER_KEY"], os.environ["SAMPLER_SECRET"]
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
http = http.client.HTTPConnection(host, int(port), timeout=30)
n = 0
while not stop.wait(0.1):
    with open(f"/proc/{pid}/status") as status:
        rss = [int(x.split()[1]) * 1024 for x in status if x.startswith("VmRSS:")]
    message = {"key": key, "secret": secret, "channelId": channel, "message": n}
    started = time.monotonic()
    http.request(
        "POST",
        "/api/publish",
        json.dumps(message).encode(),
        {"Content-Type": "application/json"},
    )
    response = http.getresponse()
    response.read()
    latency = time.monotonic() - started
    line = {"status": response.status, "latency": latency, "rss": rss[0]}
    print(json.dumps(line), flush=True)
    n += 1
"""


@dataclass
class Samples:
    statuses: list[int]
    latencies: list[float]
    peak_rss: int
    exit_code: int


@contextlib.contextmanager
def sampler(server: Server, key: Key, channel: str) -> Iterator[list[Samples]]:
    """Run ``SAMPLER_SCRIPT`` for the ``with`` block; its samples come after."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            SAMPLER_SCRIPT,
            HOST,
            str(server.port),
            channel,
            str(server_pid(server)),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env={
            **os.environ,
            "SAMPLER_KEY": key.api_key,
            "SAMPLER_SECRET": key.api_secret,
        },
    )
    result: list[Samples] = []
    try:
        yield result
    finally:
        try:
            out, _ = proc.communicate(b"", timeout=scaled(35))
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    lines = [json.loads(line) for line in out.splitlines()]
    result.append(
        Samples(
            [line["status"] for line in lines],
            [line["latency"] for line in lines],
            max((line["rss"] for line in lines), default=0),
            proc.returncode,
        )
    )


@contextlib.contextmanager
def open_files(needed: int) -> Iterator[None]:
    """Raise this process's open-files limit; a server started now inherits it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY:
        assert hard >= needed, f"the hard open-files limit {hard} is under {needed}"
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, needed), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def open_clients(
    server: Server,
    key: Key,
    channel: str,
    names: list[tuple[str, str]],
    seen: dict[bytes, bytes],
    per_second: float,
) -> list[StormClient]:
    """Connect one client per (uuid, user), starting ``per_second`` a second.

    A client does not wait for the one before it, so handshakes overlap.
    """
    loop = asyncio.get_running_loop()

    async def one(uuid: str, user: str) -> StormClient:
        path = f"/v3/{channel}?api_key={key.api_key}&presence=1&uuid={uuid}&user={user}"
        request = upgrade_request(path)
        _, client = await loop.create_connection(
            lambda: StormClient(request, seen), HOST, server.port
        )
        await client.upgraded
        return client

    tasks = []
    batch = 50
    for start in range(0, len(names), batch):
        tasks += [
            asyncio.create_task(one(*name)) for name in names[start : start + batch]
        ]
        await asyncio.sleep(batch / per_second)
    return list(await asyncio.wait_for(asyncio.gather(*tasks), scaled(30)))


async def converge(
    rosters: RosterCache,
    clients: list[StormClient],
    truth: frozenset[tuple[str, str]],
    within: float,
) -> float:
    """Seconds until every client's last roster is ``truth``."""
    started = time.monotonic()
    deadline = started + scaled(within)
    while (wrong := rosters.wrong(clients, truth)) != 0:
        faults = [f for c in clients for f in c.faults]
        assert faults == [], faults[:5]
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{wrong} of {len(clients)} clients still have another roster"
            )
        await asyncio.sleep(0.1)
    return time.monotonic() - started


async def test_storm_of_two_thousand_presence_joins(tmp_path: Path) -> None:
    storm, watchers, channel = 2000, 5, "presence-storm"
    with open_files(2 * (storm + watchers) + 1000), running_server(tmp_path) as server:
        assert server.key is not None
        key = server.key
        pid = server_pid(server)
        seen: dict[bytes, bytes] = {}
        rosters = RosterCache()
        watcher_names = [(f"watcher-{n}", "watcher") for n in range(watchers)]
        storm_names = [(f"storm-{n:04d}", f"user{n % 97}") for n in range(storm)]
        watching = await open_clients(server, key, channel, watcher_names, seen, 1e3)
        quiet_set = frozenset(watcher_names)
        await converge(rosters, watching, quiet_set, 5)
        rss_before = proc_status(pid, "VmRSS")
        cpu_before = cpu_seconds(pid)

        clients: list[StormClient] = []
        with sampler(server, key, channel) as samples:
            try:
                started = time.monotonic()
                clients = await open_clients(
                    server, key, channel, storm_names, seen, 2e3
                )
                joined_in = time.monotonic() - started
                full = frozenset(watcher_names + storm_names)
                join_settle = await converge(rosters, watching + clients, full, 30)
                roster = await rest_roster(server, key, channel)
                assert len(roster) == storm + watchers
                join_events = sum(c.roster_events for c in watching + clients)
                cpu_joined = cpu_seconds(pid)

                started = time.monotonic()
                for start in range(0, storm, 100):
                    for client in clients[start : start + 100]:
                        client.leave()
                    await asyncio.sleep(0.05)
                ends = asyncio.gather(*(c.ended for c in clients))
                await asyncio.wait_for(ends, scaled(30))
                left_in = time.monotonic() - started
                leave_settle = await converge(rosters, watching, quiet_set, 30)
            finally:
                for client in clients:
                    assert client.transport is not None
                    client.transport.close()
        cpu_total = cpu_seconds(pid) - cpu_before
        peak = max(samples[0].peak_rss, proc_status(pid, "VmHWM"))

        await wait_for_sum(server, key, watchers, within=10)
        roster = await rest_roster(server, key, channel)
        assert {(m["uuid"], m["user"]) for m in roster} == quiet_set
        for client in clients:
            assert client.close_frame is not None
            assert client.close_frame[:2] == struct.pack("!H", 1000)
        assert [f for c in watching + clients for f in c.faults] == []

        # The watchers were there all along: each got every REST publish.
        published = len(samples[0].statuses)
        deadline = time.monotonic() + scaled(5)
        while any(w.messages != published for w in watching):
            assert time.monotonic() < deadline, [w.messages for w in watching]
            await asyncio.sleep(0.05)
        for client in watching:
            client.leave()
        ends = asyncio.gather(*(c.ended for c in watching))
        await asyncio.wait_for(ends, scaled(10))
        assert server.stop() == 0
        no_problems(server.log())

    latency = max(samples[0].latencies)
    print(
        f"\nstorm: {storm} joins in {joined_in:.2f} s ({storm / joined_in:.0f}/s), "
        f"every roster right {join_settle:.2f} s later, "
        f"{join_events} roster events to {storm + watchers} clients; "
        f"{storm} leaves in {left_in:.2f} s, watchers right {leave_settle:.2f} s "
        f"later; REST publish max {latency * 1000:.0f} ms over {published} "
        f"publishes; server CPU {cpu_total:.1f} s ({cpu_joined - cpu_before:.1f} s "
        f"for the joins); RSS {rss_before / 2**20:.0f} MB before, "
        f"peak {peak / 2**20:.0f} MB"
    )
    assert samples[0].exit_code == 0
    assert published >= 10
    assert set(samples[0].statuses) == {200}
    assert latency < scaled(1.0)
    assert peak < 300 * 2**20
