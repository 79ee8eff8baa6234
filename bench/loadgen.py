"""The load generator: one process, pinned to its own core, driving raw sockets.

Each connection is an asyncio ``Protocol`` (on uvloop when it is installed) that
writes its own upgrade request and reads server frames straight from the bytes
it receives.  Counting needs no per-message objects: when a read holds a run of
frames of the expected size, the frame headers are checked with two strided
slices and the run is counted at once; anything else (pings, close frames,
rosters, errors) goes through a small frame parser.

A job is a plain dict; the process reports progress lines, timing marks (the
parent samples server and generator CPU at each mark) and one result dict
through a pipe.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import struct
import time
import traceback
from array import array
from collections.abc import Callable, Coroutine, Sequence
from multiprocessing.connection import Connection
from typing import Any, cast

from bench.wire import (
    ACCEPT_HEADER,
    CLOSE_NORMAL,
    HOST,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    TS_DIGITS,
    TS_OFFSET,
    MessageMaker,
    RestBodyMaker,
    client_frame,
    ws_request,
)

Job = dict[str, Any]
Result = dict[str, Any]

_RUN = 1 << 16
_NEVER = 1 << 62

# Connections come from several loopback source addresses.  Linux looks for a
# free ephemeral port by walking the range, and to one destination that walk
# grows long past ~14,000 connections (connect() prefers even ports); a second
# source address gives a second, empty range.
SOURCES = [f"127.0.0.{i}" for i in range(1, 9)]
_BIND_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
_serial = 0


async def connect(
    loop: asyncio.AbstractEventLoop,
    protocol: asyncio.Protocol,
    port: int,
) -> None:
    """Open a TCP connection to the server for ``protocol``."""
    global _serial
    _serial += 1
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.IPPROTO_IP, _BIND_NO_PORT, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((SOURCES[_serial % len(SOURCES)], 0))
        sock.setblocking(False)
        await loop.sock_connect(sock, (HOST, port))
    except BaseException:
        sock.close()
        raise
    await loop.create_connection(lambda: protocol, sock=sock)


class Control:
    """The child's side of the pipe to the benchmark process."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self._last_progress = 0.0

    def progress(self, text: str, every: float = 0.0) -> None:
        now = time.monotonic()
        if every and now - self._last_progress < every:
            return
        self._last_progress = now
        self.conn.send(("progress", text))

    def mark(self, name: str, **data: Any) -> None:
        self.conn.send(("mark", name, data))


class Gen:
    """What every connection of one job shares."""

    def __init__(self, ctl: Control, message_size: int = 100) -> None:
        self.ctl = ctl
        self.loop = asyncio.get_running_loop()
        self.delivered = 0
        # Runs of final text frames of this size are counted without a loop:
        # their first two bytes are 0x81 and the size.
        self.head0 = bytes((0x81,)) * _RUN
        if message_size < 126:
            self.frame_len = 2 + message_size
            self.head1 = bytes((message_size,)) * _RUN
        else:
            self.frame_len = 0
            self.head1 = b""
        self.lat = array("q")
        self.rec_from = _NEVER
        self.rec_until = _NEVER
        self.on_delivery: Callable[[], None] | None = None


class WsClient(asyncio.Protocol):
    """A raw WebSocket client that counts the data messages it receives.

    ``inspect`` clients also look inside each message (``message`` and
    ``batch``); the others only count.
    """

    inspect = False

    def __init__(self, gen: Gen, request: bytes) -> None:
        self.gen = gen
        self.request = request
        self.transport: asyncio.Transport | None = None
        self.ready: asyncio.Future[None] = gen.loop.create_future()
        self.upgraded = False
        self.head = b""
        self.partial: bytearray | None = None
        self.skip = 0
        self.count = 0
        self.fragments: list[bytes] | None = None
        self.close_code: int | None = None
        self.lost = False

    # -- connection events -------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if not self.ready.done():
            self.ready.set_exception(
                ConnectionError(f"connection lost during the handshake: {exc}")
            )
        self.on_lost()

    def data_received(self, data: bytes) -> None:
        if self.upgraded:
            self.feed(data)
            return
        self.head += data
        end = self.head.find(b"\r\n\r\n")
        if end < 0:
            if len(self.head) > 16384:
                self.fail("handshake response too long")
            return
        head, rest = self.head[:end], self.head[end + 4 :]
        self.head = b""
        if not head.startswith(b"HTTP/1.1 101") or ACCEPT_HEADER not in head.lower():
            self.fail(head.split(b"\r\n", 1)[0].decode(errors="replace"))
            return
        self.upgraded = True
        if not self.ready.done():
            self.ready.set_result(None)
        self.on_open()
        if rest:
            self.feed(rest)

    def fail(self, why: str) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"handshake failed: {why}"))
        if self.transport is not None:
            self.transport.abort()

    # -- hooks ---------------------------------------------------------------

    def on_open(self) -> None:
        pass

    def on_lost(self) -> None:
        pass

    def on_close(self, code: int | None) -> None:
        pass

    def message(self, payload: bytes, now: int) -> None:
        pass

    def batch(self, buf: bytes | bytearray, pos: int, k: int, step: int) -> None:
        """``k`` uniform frames of ``step`` bytes start at ``pos``."""

    # -- writing -------------------------------------------------------------

    def send(self, frame: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(frame)

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(CLOSE_NORMAL)
            self.transport.close()

    # -- reading -------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        partial = self.partial
        buf: bytes | bytearray
        if partial is not None:
            partial += data
            buf = partial
        else:
            buf = data
        n = len(buf)
        pos = self.skip
        if pos:
            if pos >= n:
                self.skip = pos - n
                return
            self.skip = 0
        gen = self.gen
        got = 0
        step = gen.frame_len
        if step:
            k = (n - pos) // step
            if k:
                end = pos + k * step
                if (
                    buf[pos:end:step] == gen.head0[:k]
                    and buf[pos + 1 : end : step] == gen.head1[:k]
                ):
                    if self.inspect:
                        self.batch(buf, pos, k, step)
                    got = k
                    pos = end
        inspect = self.inspect
        while pos < n:
            avail = n - pos
            if avail < 2:
                break
            b0 = buf[pos]
            b1 = buf[pos + 1]
            size = b1 & 0x7F
            head = 2
            if size == 126:
                if avail < 4:
                    break
                size = (buf[pos + 2] << 8) | buf[pos + 3]
                head = 4
            elif size == 127:
                if avail < 10:
                    break
                size = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                head = 10
            if b1 & 0x80:
                head += 4
            total = head + size
            op = b0 & 0x0F
            if op < 3 and not inspect:
                got += b0 >> 7
                if total > avail:
                    self.skip = total - avail
                    pos = n
                    break
                pos += total
                continue
            if total > avail:
                break
            payload = bytes(buf[pos + head : pos + total])
            pos += total
            if op < 3:
                if op != OP_CONT and b0 & 0x80 and self.fragments is None:
                    got += 1
                    self.message(payload, time.monotonic_ns())
                elif b0 & 0x80:
                    parts = self.fragments or []
                    parts.append(payload)
                    self.fragments = None
                    got += 1
                    self.message(b"".join(parts), time.monotonic_ns())
                else:
                    if self.fragments is None:
                        self.fragments = []
                    self.fragments.append(payload)
            elif op == OP_CLOSE:
                self.got_close(payload)
            elif op == OP_PING:
                self.send(client_frame(payload, OP_PONG))
        if pos >= n:
            self.partial = None
        elif buf is partial:
            del partial[:pos]
        else:
            self.partial = bytearray(buf[pos:])
        if got:
            self.count += got
            gen.delivered += got
            callback = gen.on_delivery
            if callback is not None:
                callback()

    def got_close(self, payload: bytes) -> None:
        code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
        self.close_code = code if code is not None else 1005
        self.on_close(code)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(client_frame(payload[:2], OP_CLOSE))
            self.transport.close()


class LatencyClient(WsClient):
    """Reads the send time out of every benchmark message it receives."""

    inspect = True

    def batch(self, buf: bytes | bytearray, pos: int, k: int, step: int) -> None:
        gen = self.gen
        now = time.monotonic_ns()
        lo, hi = gen.rec_from, gen.rec_until
        append = gen.lat.append
        at = pos + 2 + TS_OFFSET
        for _ in range(k):
            ts = int(buf[at : at + TS_DIGITS])
            if lo <= ts < hi:
                append(now - ts)
            at += step

    def message(self, payload: bytes, now: int) -> None:
        gen = self.gen
        try:
            ts = int(payload[TS_OFFSET : TS_OFFSET + TS_DIGITS])
        except ValueError:
            return
        if gen.rec_from <= ts < gen.rec_until:
            gen.lat.append(now - ts)


class Handshake(WsClient):
    """One connect-and-leave client for the handshake-rate scenario."""

    inspect = True

    def __init__(self, gen: Gen, request: bytes, expect_ok: bool) -> None:
        super().__init__(gen, request)
        self.expect_ok = expect_ok
        self.error: bytes | None = None
        self.outcome: asyncio.Future[str] = gen.loop.create_future()

    def settle(self, outcome: str) -> None:
        if not self.outcome.done():
            self.outcome.set_result(outcome)

    def on_open(self) -> None:
        if self.expect_ok:
            self.settle("ok")
            self.close()

    def message(self, payload: bytes, now: int) -> None:
        if b'"error"' in payload:
            self.error = payload

    def on_close(self, code: int | None) -> None:
        if self.expect_ok:
            self.settle(f"closed {code}")
        elif code == 4001 and self.error is not None:
            self.settle("refused")
        else:
            self.settle(f"closed {code} error={self.error!r}")

    def on_lost(self) -> None:
        self.settle("lost")


class PresenceClient(WsClient):
    """Keeps how many members the last roster event it received listed."""

    inspect = True

    def __init__(self, gen: Gen, request: bytes, keep: bool) -> None:
        super().__init__(gen, request)
        self.keep = keep
        self.members = -1
        self.last_at = 0
        self.events = 0
        self.roster_bytes = 0
        self.last_roster: bytes | None = None
        self.errors = 0

    def message(self, payload: bytes, now: int) -> None:
        if b'"system:member_' not in payload:
            if b'"error"' in payload:
                self.errors += 1
            return
        at = payload.find(b'"members"')
        if at < 0:
            return
        self.members = payload.count(b'"uuid"', at)
        self.last_at = now
        self.events += 1
        self.roster_bytes += len(payload)
        if self.keep:
            self.last_roster = payload


class HttpPublisher(asyncio.Protocol):
    """A keep-alive HTTP/1.1 client sending one REST publish at a time."""

    def __init__(self, gen: Gen, port: int, maker: RestBodyMaker) -> None:
        self.gen = gen
        self.port = port
        self.maker = maker
        self.transport: asyncio.Transport | None = None
        self.ready: asyncio.Future[None] = gen.loop.create_future()
        self.buf = bytearray()
        self.running = False
        self.idle: asyncio.Future[None] | None = None
        self.sent_at = 0
        self.ok = 0
        self.bad = 0
        self.latencies = array("q")
        self.next_seq: Callable[[], int] = lambda: 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.ready.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.running = False
        if self.idle is not None and not self.idle.done():
            self.idle.set_result(None)

    def request(self) -> None:
        assert self.transport is not None
        self.sent_at = now = time.monotonic_ns()
        self.transport.write(self.maker.request(self.port, self.next_seq(), now))

    def start(self) -> None:
        self.running = True
        self.idle = self.gen.loop.create_future()
        self.request()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buf[:end]).lower()
            at = head.find(b"content-length:")
            if at < 0:
                raise RuntimeError("REST reply without Content-Length")
            length = int(head[at + 15 :].split(b"\r\n", 1)[0])
            if len(self.buf) < end + 4 + length:
                return
            status = int(head[9:12])
            del self.buf[: end + 4 + length]
            self.latencies.append(time.monotonic_ns() - self.sent_at)
            if status == 200:
                self.ok += 1
            else:
                self.bad += 1
            if self.running:
                self.request()
            elif self.idle is not None and not self.idle.done():
                self.idle.set_result(None)


# -- helpers -------------------------------------------------------------------


async def open_all(
    gen: Gen,
    clients: Sequence[WsClient],
    ports: Sequence[int],
    concurrency: int,
    what: str,
) -> float:
    """Connect every client (each to its port); return the seconds it took."""
    loop = gen.loop
    started = time.monotonic()
    gate = asyncio.Semaphore(concurrency)
    done = 0
    failures: list[str] = []

    async def one(client: WsClient, port: int) -> None:
        nonlocal done
        async with gate:
            try:
                await connect(loop, client, port)
                await asyncio.wait_for(client.ready, 20)
            except (OSError, TimeoutError) as exc:
                failures.append(f"{type(exc).__name__}: {exc}")
                return
        done += 1
        gen.ctl.progress(f"{what}: {done}/{len(clients)} connected", every=1.0)

    await asyncio.gather(*(one(c, p) for c, p in zip(clients, ports, strict=True)))
    if failures:
        raise RuntimeError(
            f"{len(failures)} of {len(clients)} {what} failed to connect; "
            f"first: {failures[0]}"
        )
    return time.monotonic() - started


async def settle(gen: Gen, quiet: float = 0.3, within: float = 10.0) -> None:
    """Wait until no message has arrived for ``quiet`` seconds."""
    deadline = time.monotonic() + within
    seen = -1
    while time.monotonic() < deadline and seen != gen.delivered:
        seen = gen.delivered
        await asyncio.sleep(quiet)


async def ensure_joined(
    gen: Gen,
    groups: Sequence[tuple[WsClient, Sequence[WsClient]]],
    maker: MessageMaker,
    within: float = 30.0,
) -> None:
    """Publish probes until each group's receivers have all had one, so every
    subscription is in place; then wait for quiet and reset every count."""
    deadline = time.monotonic() + within
    pending = list(groups)
    while pending:
        for sender, _ in pending:
            sender.send(maker.frame(0, 0))
        await asyncio.sleep(0.2)
        pending = [g for g in pending if any(c.count == 0 for c in g[1])]
        if pending and time.monotonic() > deadline:
            raise RuntimeError(f"{len(pending)} groups never received a probe")
    await settle(gen)
    for sender, receivers in groups:
        sender.count = 0
        for client in receivers:
            client.count = 0
    gen.delivered = 0


async def drain(gen: Gen, expected: int, within: float) -> None:
    deadline = time.monotonic() + within
    while gen.delivered < expected and time.monotonic() < deadline:
        await asyncio.sleep(0.05)


def percentiles(values: array[int], scale: float = 1e-6) -> dict[str, float]:
    """p50, p99, p99.9 and max (nearest rank), in ms for ns input."""
    if not values:
        nan = float("nan")
        return {"p50": nan, "p99": nan, "p999": nan, "max": nan}
    ordered = sorted(values)
    n = len(ordered)

    def rank(q: float) -> float:
        return ordered[min(n - 1, max(0, int(q * n + 0.999999) - 1))] * scale

    top = ordered[-1] * scale
    return {"p50": rank(0.5), "p99": rank(0.99), "p999": rank(0.999), "max": top}


def close_all(clients: Sequence[WsClient]) -> None:
    for client in clients:
        client.close()


# -- jobs ----------------------------------------------------------------------


async def job_fanout(ctl: Control, job: Job) -> Result:
    """One channel, ``subs`` subscribers, a publisher kept ``window`` messages
    ahead of both the sentinel subscriber and the average subscriber."""
    gen = Gen(ctl, job["size"])
    maker = MessageMaker(job["size"])
    ports: list[int] = job["ports"]
    subs_n: int = job["subs"]
    window: int = job["window"]
    sub_ports = [ports[i % len(ports)] for i in range(subs_n)]
    sub_ports[-1] = ports[-1]
    subs = [
        WsClient(gen, ws_request(p, job["channel"], job["api_key"])) for p in sub_ports
    ]
    connect_s = await open_all(gen, subs, sub_ports, job["concurrency"], "subscribers")
    sentinel = subs[-1]
    publisher = WsClient(gen, ws_request(ports[0], job["channel"], job["api_key"]))
    await open_all(gen, [publisher], [ports[0]], 1, "publisher")
    ctl.progress(f"{subs_n} subscribers connected in {connect_s:.1f}s; probing")
    await ensure_joined(gen, [(publisher, subs)], maker)

    sent = 0
    burst = max(1, window // 4)

    def pump() -> None:
        nonlocal sent
        done = min(sentinel.count, gen.delivered // subs_n)
        free = done + window - sent
        if free >= burst:
            now = time.monotonic_ns()
            frame = maker.frame
            publisher.send(b"".join([frame(sent + i + 1, now) for i in range(free)]))
            sent += free

    ticking = True

    def tick() -> None:
        if ticking:
            pump()
            gen.loop.call_later(0.005, tick)

    gen.on_delivery = pump
    tick()
    ctl.progress("publishing (warm-up)")
    await asyncio.sleep(job["warmup"])
    t0, d0 = time.monotonic(), gen.delivered
    ctl.mark("start")
    await asyncio.sleep(job["duration"])
    t1, d1 = time.monotonic(), gen.delivered
    ctl.mark("end")
    ticking = False
    gen.on_delivery = None
    await drain(gen, sent * subs_n, job.get("drain", 10.0))
    lost = sent * subs_n - gen.delivered
    close_all([*subs, publisher])
    return {
        "deliveries_per_s": (d1 - d0) / (t1 - t0),
        "messages_per_s": (d1 - d0) / (t1 - t0) / subs_n,
        "deliveries": d1 - d0,
        "published": sent,
        "lost": lost,
        "closed_by_server": sum(1 for c in subs if c.close_code is not None),
        "connect_s": connect_s,
        "window": window,
    }


async def job_latency(ctl: Control, job: Job) -> Result:
    """One channel, ``subs`` receivers timing every message, sent at ``rate``."""
    gen = Gen(ctl, job["size"])
    maker = MessageMaker(job["size"])
    port = job["ports"][0]
    subs_n: int = job["subs"]
    request = ws_request(port, job["channel"], job["api_key"])
    subs = [LatencyClient(gen, request) for _ in range(subs_n)]
    await open_all(gen, subs, [port] * subs_n, job["concurrency"], "subscribers")
    publisher = WsClient(gen, request)
    await open_all(gen, [publisher], [port], 1, "publisher")
    await ensure_joined(gen, [(publisher, subs)], maker)

    rate: float = job["rate"]
    total = max(1, round(rate * job["duration"]))
    interval = 1e9 / rate
    loop = gen.loop
    finished: asyncio.Future[None] = loop.create_future()
    sent = 0
    first = time.monotonic_ns()
    gen.rec_from = first

    def tick() -> None:
        nonlocal sent
        now = time.monotonic_ns()
        due = min(total, int((now - first) / interval) + 1)
        if due > sent:
            frame = maker.frame
            publisher.send(b"".join([frame(i + 1, now) for i in range(sent, due)]))
            sent = due
        if sent >= total:
            finished.set_result(None)
            return
        wait = (first + sent * interval - time.monotonic_ns()) / 1e9
        loop.call_later(max(0.0, wait), tick)

    ctl.mark("start")
    ctl.progress(f"publishing {total} messages at {rate:g}/s")
    tick()
    await finished
    ctl.mark("end")
    await drain(gen, total * subs_n, max(5.0, 2 * job["duration"]))
    lost = total * subs_n - gen.delivered
    close_all([*subs, publisher])
    return {
        **percentiles(gen.lat),
        "samples": len(gen.lat),
        "published": total,
        "lost": lost,
    }


async def job_chat(ctl: Control, job: Job) -> Result:
    """Many small channels; every member sends ``rate`` messages per second
    (phases spread evenly) and every receiver times every message."""
    gen = Gen(ctl, job["size"])
    maker = MessageMaker(job["size"])
    port = job["ports"][0]
    rooms: int = job["channels"]
    members: int = job["members"]
    clients = [
        [
            LatencyClient(gen, ws_request(port, f"chat-{r}", job["api_key"]))
            for _ in range(members)
        ]
        for r in range(rooms)
    ]
    flat = [c for room in clients for c in room]
    connect_s = await open_all(
        gen, flat, [port] * len(flat), job["concurrency"], "members"
    )
    ctl.progress(f"{len(flat)} members connected in {connect_s:.1f}s; probing")
    await ensure_joined(gen, [(room[0], room[1:]) for room in clients], maker)

    # Member order is interleaved across rooms so that a room's members do not
    # all send in the same instant.
    senders = [clients[r][m] for m in range(members) for r in range(rooms)]
    count = len(senders)
    period_ns = 1e9 / job["rate"]
    loop = gen.loop
    sent = 0
    sending = True
    first = time.monotonic_ns()

    def tick() -> None:
        nonlocal sent
        if not sending:
            return
        now = time.monotonic_ns()
        due = int((now - first) * count / period_ns) + 1
        frame = maker.frame
        while sent < due:
            senders[sent % count].send(frame(sent + 1, now))
            sent += 1
        loop.call_later(0.005, tick)

    tick()
    ctl.progress("chatting (warm-up)")
    await asyncio.sleep(job["warmup"])
    gen.rec_from = time.monotonic_ns()
    d0, s0, t0 = gen.delivered, sent, time.monotonic()
    ctl.mark("start")
    await asyncio.sleep(job["duration"])
    gen.rec_until = time.monotonic_ns()
    d1, s1, t1 = gen.delivered, sent, time.monotonic()
    ctl.mark("end")
    sending = False
    expected = sent * (members - 1)
    await drain(gen, expected, 10.0)
    close_all(flat)
    return {
        **percentiles(gen.lat),
        "samples": len(gen.lat),
        "messages_per_s": (s1 - s0) / (t1 - t0),
        "deliveries_per_s": (d1 - d0) / (t1 - t0),
        "lost": expected - gen.delivered,
        "connect_s": connect_s,
    }


async def job_idle(ctl: Control, job: Job) -> Result:
    """Open ``conns`` connections that say nothing; the parent reads the
    server's memory at the ``base`` and ``settled`` marks."""
    gen = Gen(ctl)
    port = job["ports"][0]
    rooms: int = job["channels"]

    def request(i: int) -> bytes:
        return ws_request(port, f"idle-{i % rooms}", job["api_key"])

    warm = [WsClient(gen, request(i)) for i in range(200)]
    await open_all(gen, warm, [port] * len(warm), 50, "warm-up")
    close_all(warm)
    await asyncio.sleep(1.5)
    ctl.mark("base")
    n: int = job["conns"]
    clients = [WsClient(gen, request(i)) for i in range(n)]
    connect_s = await open_all(gen, clients, [port] * n, job["concurrency"], "idle")
    ctl.progress(f"{n} idle connections open in {connect_s:.1f}s; settling")
    await asyncio.sleep(job["settle"])
    ctl.mark("settled")
    alive = sum(1 for c in clients if not c.lost and c.close_code is None)
    close_all(clients)
    await asyncio.sleep(0.5)
    return {"conns": n, "alive": alive, "connect_s": connect_s}


async def job_connect(ctl: Control, job: Job) -> Result:
    """Connect and leave, ``concurrency`` handshakes at a time; every
    ``bad_every``-th connection uses a key the server does not know."""
    gen = Gen(ctl)
    loop = gen.loop
    port = job["ports"][0]
    bad_every: int = job["bad_every"]
    deadline = time.monotonic() + job["warmup"] + job["duration"]
    window: list[float] = [float("inf"), float("inf")]
    outcomes: dict[str, int] = {}
    in_window: dict[str, int] = {}
    serial = 0

    async def worker() -> None:
        nonlocal serial
        while time.monotonic() < deadline:
            serial += 1
            bad = bool(bad_every) and serial % bad_every == 0
            key = f"bench-bad-{serial}" if bad else job["api_key"]
            client = Handshake(gen, ws_request(port, job["channel"], key), not bad)
            try:
                await connect(loop, client, port)
                outcome = await asyncio.wait_for(client.outcome, 10)
            except (OSError, TimeoutError) as exc:
                outcome = f"error {type(exc).__name__}"
                if client.transport is not None:
                    client.transport.abort()
            if outcome == "ok" and bad:
                outcome = "bad key accepted"
            kind = "valid" if not bad else "bad"
            label = f"{kind}:{outcome}"
            outcomes[label] = outcomes.get(label, 0) + 1
            if window[0] <= time.monotonic() < window[1]:
                in_window[label] = in_window.get(label, 0) + 1

    async def marks() -> None:
        await asyncio.sleep(job["warmup"])
        window[0] = time.monotonic()
        ctl.mark("start")
        await asyncio.sleep(job["duration"])
        window[1] = time.monotonic()
        ctl.mark("end")

    await asyncio.gather(marks(), *(worker() for _ in range(job["concurrency"])))
    seconds = window[1] - window[0]
    good = in_window.get("valid:ok", 0) + in_window.get("bad:refused", 0)
    return {
        "handshakes_per_s": good / seconds,
        "valid_per_s": in_window.get("valid:ok", 0) / seconds,
        "refused_per_s": in_window.get("bad:refused", 0) / seconds,
        "unexpected": sum(
            v for k, v in outcomes.items() if k not in ("valid:ok", "bad:refused")
        ),
        "outcomes": outcomes,
    }


async def job_rest(ctl: Control, job: Job) -> Result:
    """REST publish from ``http_conns`` keep-alive connections, each waiting
    for its reply before the next request, to a channel of ``subs``."""
    gen = Gen(ctl, job["size"])
    port = job["ports"][0]
    subs_n: int = job["subs"]
    request = ws_request(port, job["channel"], job["api_key"])
    subs = [WsClient(gen, request) for _ in range(subs_n)]
    await open_all(gen, subs, [port] * subs_n, job["concurrency"], "subscribers")
    maker = RestBodyMaker(job["api_key"], job["secret"], job["channel"], job["size"])
    loop = gen.loop
    seq = 0

    def next_seq() -> int:
        nonlocal seq
        seq += 1
        return seq

    publishers = [HttpPublisher(gen, port, maker) for _ in range(job["http_conns"])]
    for pub in publishers:
        pub.next_seq = next_seq
        await connect(loop, pub, port)
        await pub.ready

    probe = publishers[0]
    deadline = time.monotonic() + 30
    while any(c.count == 0 for c in subs):
        if time.monotonic() > deadline:
            raise RuntimeError("REST probes never reached every subscriber")
        probe.running = False
        probe.idle = loop.create_future()
        probe.request()
        await probe.idle
        await asyncio.sleep(0.2)
    await settle(gen)
    for client in subs:
        client.count = 0
    gen.delivered = 0
    for pub in publishers:
        pub.ok = pub.bad = 0
        pub.latencies = array("q")

    for pub in publishers:
        pub.start()
    ctl.progress("publishing over REST (warm-up)")
    await asyncio.sleep(job["warmup"])

    def totals() -> tuple[int, int]:
        return sum(p.ok for p in publishers), sum(p.bad for p in publishers)

    (ok0, _), d0, t0 = totals(), gen.delivered, time.monotonic()
    for pub in publishers:
        pub.latencies = array("q")
    ctl.mark("start")
    await asyncio.sleep(job["duration"])
    (ok1, _), d1, t1 = totals(), gen.delivered, time.monotonic()
    ctl.mark("end")
    for pub in publishers:
        pub.running = False
    idle = [p.idle for p in publishers if p.idle is not None]
    await asyncio.wait_for(asyncio.gather(*idle), 15)
    ok, bad = totals()
    await drain(gen, ok * subs_n, 10.0)
    lat = array("q")
    for pub in publishers:
        lat.extend(pub.latencies)
        if pub.transport is not None:
            pub.transport.close()
    close_all(subs)
    seconds = t1 - t0
    return {
        "requests_per_s": (ok1 - ok0) / seconds,
        "deliveries_per_s": (d1 - d0) / seconds,
        "non_200": bad,
        "lost": ok * subs_n - gen.delivered,
        **{f"req_{k}": v for k, v in percentiles(lat).items()},
    }


async def job_presence(ctl: Control, job: Job) -> Result:
    """``joins`` presence connections to one channel, as fast as they are
    accepted; then wait until every connection's roster lists everyone."""
    gen = Gen(ctl)
    port = job["ports"][0]
    n: int = job["joins"]
    sample = set(range(0, n, max(1, n // 20)))
    uuids = [f"00000000-0000-4000-8000-{i:012d}" for i in range(n)]
    clients = [
        PresenceClient(
            gen,
            ws_request(
                port,
                job["channel"],
                job["api_key"],
                f"presence=1&uuid={uuids[i]}&user=u{i}",
            ),
            keep=i in sample,
        )
        for i in range(n)
    ]
    ctl.mark("start")
    first = time.monotonic_ns()
    joined_s = await open_all(gen, clients, [port] * n, job["concurrency"], "joins")
    last_join = time.monotonic_ns()
    deadline = time.monotonic() + job["timeout"]
    while time.monotonic() < deadline:
        right = sum(1 for c in clients if c.members == n)
        ctl.progress(f"{right}/{n} rosters complete", every=1.0)
        if right == n:
            break
        await asyncio.sleep(0.05)
    ctl.mark("end")
    await asyncio.sleep(job["quiet"])
    complete = [c for c in clients if c.members == n]
    expected = set(uuids)
    sampled_right = 0
    for client in clients:
        if client.keep and client.last_roster is not None:
            data = json.loads(client.last_roster)["data"]
            if {m["uuid"] for m in data["members"]} == expected:
                sampled_right += 1
    close_all(clients)
    all_right = len(complete) == n
    done_at = max((c.last_at for c in clients), default=first)
    return {
        "joins": n,
        "join_s": joined_s,
        "right_s": (done_at - first) / 1e9 if all_right else float("nan"),
        "after_last_join_s": (done_at - last_join) / 1e9 if all_right else float("nan"),
        "complete": len(complete),
        "sampled_right": sampled_right,
        "sampled": sum(1 for c in clients if c.keep),
        "events_per_conn": sum(c.events for c in clients) / n,
        "roster_mib": sum(c.roster_bytes for c in clients) / 2**20,
        "errors": sum(c.errors for c in clients),
    }


JOBS: dict[str, Callable[[Control, Job], Coroutine[Any, Any, Result]]] = {
    "fanout": job_fanout,
    "latency": job_latency,
    "chat": job_chat,
    "idle": job_idle,
    "connect": job_connect,
    "rest": job_rest,
    "presence": job_presence,
}


def child_main(conn: Connection, job: Job, core: int | None) -> None:
    """The load generator process: run one job, send its result, exit."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if core is not None:
        os.sched_setaffinity(0, {core})
    ctl = Control(conn)
    try:
        runner = JOBS[job["kind"]](ctl, job)
        result: Result
        try:
            import uvloop
        except ImportError:
            result = asyncio.run(runner)
        else:
            result = uvloop.run(runner)
        conn.send(("result", result))
    except BaseException:
        conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()
