"""A real redis-server on a loopback port, and piewire nodes sharing it.

A missing ``redis-server`` fails the run: cluster tests never skip.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import redis

from tests.support import HOST, Key, Server, free_port, piewire_cli, scaled


@dataclass
class RedisServer:
    port: int
    workdir: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError(
                "redis-server is not installed; `make test` installs it "
                "(apt-get install redis-server)"
            )
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                HOST,
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + scaled(10)
        while time.monotonic() < deadline:
            with contextlib.suppress(redis.RedisError):
                if self.client().ping():
                    return self
            time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=scaled(10))
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def restart(self, down_for: float = 0.5) -> None:
        self.stop()
        time.sleep(down_for)
        self.start()

    def client(self) -> redis.Redis:
        return redis.Redis(host=HOST, port=self.port, socket_timeout=5)


@contextlib.contextmanager
def running_redis(tmp_path: Path) -> Iterator[RedisServer]:
    workdir = tmp_path / f"redis-{free_port()}"
    workdir.mkdir()
    server = RedisServer(free_port(), workdir).start()
    try:
        yield server
    finally:
        server.stop()


@dataclass
class Cluster:
    """Piewire nodes sharing one Redis under one prefix."""

    redis: RedisServer
    prefix: str
    tmp_path: Path
    nodes: list[Server] = field(default_factory=list)
    key: Key | None = None

    def store_args(self) -> list[str]:
        return ["--redis-url", self.redis.url, "--redis-prefix", self.prefix]

    def create_key(self, *flags: str) -> Key:
        record = json.loads(
            piewire_cli("keys", "create", "--json", *self.store_args(), *flags)
        )
        key = Key(record["api_key"], record["api_secret"], record)
        for node in self.nodes:
            if node.process is not None and node.process.poll() is None:
                node.wait_key_live(key)
        return key

    def add_node(self, *args: str) -> Server:
        index = len(self.nodes)
        data_dir = self.tmp_path / f"node-{index}-{free_port()}"
        data_dir.mkdir()
        node = Server(
            data_dir,
            free_port(),
            ["--key-refresh", "0.2", *self.store_args(), *args],
            self.tmp_path / f"node-{index}.log",
        )
        node.start()
        self.nodes.append(node)
        return node

    def stop(self) -> None:
        for node in self.nodes:
            with contextlib.suppress(Exception):
                node.stop()


@contextlib.contextmanager
def running_cluster(
    redis_server: RedisServer, tmp_path: Path, count: int, *args: str
) -> Iterator[Cluster]:
    cluster = Cluster(redis_server, f"pw{secrets.token_hex(3)}", tmp_path)
    try:
        cluster.key = cluster.create_key("--name", "cluster")
        for _ in range(count):
            cluster.add_node(*args)
        yield cluster
    finally:
        cluster.stop()


def wait_until(predicate: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + scaled(within)
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def wait_port_closed(port: int) -> None:
    def closed() -> bool:
        with socket.socket() as sock:
            return sock.connect_ex((HOST, port)) != 0

    wait_until(closed, 10, f"port {port} to close")
