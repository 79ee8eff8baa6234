"""Real piewire servers on loopback ports, for tests.

Every time bound in the tests is multiplied by ``PIEWIRE_TEST_TIME_SCALE``
(default 1), so a slow machine can stretch them without editing tests.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

TIME_SCALE = float(os.environ.get("PIEWIRE_TEST_TIME_SCALE", "1"))
HOST = "127.0.0.1"


def scaled(seconds: float) -> float:
    return seconds * TIME_SCALE


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def piewire_cli(*args: str, env: dict[str, str] | None = None) -> str:
    """Run ``piewire ARGS`` and return its standard output."""
    result = subprocess.run(
        [sys.executable, "-m", "piewire", *args],
        capture_output=True,
        text=True,
        timeout=scaled(30),
        env={**os.environ, **(env or {})},
        check=True,
    )
    return result.stdout


@dataclass
class Key:
    api_key: str
    api_secret: str
    record: dict[str, Any] = field(default_factory=dict)


@dataclass
class Server:
    """A piewire process; stopped by ``stop()`` or the fixture that made it."""

    data_dir: Path
    port: int
    args: list[str]
    log_path: Path
    tls: bool = False
    process: subprocess.Popen[bytes] | None = None
    env: dict[str, str] = field(default_factory=dict)
    key: Key | None = None

    @property
    def http_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{HOST}:{self.port}"

    def ws_url(
        self, channel: str, key: Key | str | None = None, query: str = ""
    ) -> str:
        api_key = key.api_key if isinstance(key, Key) else key
        scheme = "wss" if self.tls else "ws"
        url = f"{scheme}://{HOST}:{self.port}/v3/{channel}"
        parts = [f"api_key={api_key}"] if api_key is not None else []
        if query:
            parts.append(query)
        return url + ("?" + "&".join(parts) if parts else "")

    def start(self) -> Server:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "piewire",
                "serve",
                "--host",
                HOST,
                "--port",
                str(self.port),
                "--data-dir",
                str(self.data_dir),
                *self.args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **self.env},
        )
        log.close()
        self.wait_ready()
        return self

    def wait_ready(self) -> None:
        deadline = time.monotonic() + scaled(20)
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"piewire exited early:\n{self.log()}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection((HOST, self.port), timeout=0.5),
            ):
                return
            time.sleep(0.05)
        raise RuntimeError(f"piewire did not start:\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(sig)
        try:
            return self.process.wait(timeout=scaled(15))
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise

    def log(self) -> str:
        return (
            self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        )

    def create_key(self, *flags: str) -> Key:
        out = piewire_cli(
            "keys", "create", "--json", "--data-dir", str(self.data_dir), *flags
        )
        record = json.loads(out)
        key = Key(record["api_key"], record["api_secret"], record)
        if self.process is not None:
            self.wait_key_live(key)
        return key

    def wait_key_live(self, key: Key) -> None:
        """Wait until the running server has loaded ``key`` from the store."""
        deadline = time.monotonic() + scaled(10)
        headers = {"key": key.api_key, "secret": key.api_secret}
        while time.monotonic() < deadline:
            if self.request("GET", "/api/connections/sum", headers=headers)[0] == 200:
                return
            time.sleep(0.05)
        raise AssertionError(f"key {key.api_key} never became live")

    def keys_cli(self, *args: str) -> str:
        return piewire_cli("keys", *args, "--data-dir", str(self.data_dir))

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        """An HTTP request; returns the status and the parsed JSON body."""
        req = urllib.request.Request(
            self.http_url + path, data=body, method=method, headers=headers or {}
        )
        try:
            with urllib.request.urlopen(req, timeout=scaled(10)) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def publish(self, key: Key, channel: Any, message: Any) -> tuple[int, Any]:
        body = {"key": key.api_key, "secret": key.api_secret}
        body.update({"channelId": channel, "message": message})
        return self.request(
            "POST",
            "/api/publish",
            json.dumps(body).encode(),
            {"Content-Type": "application/json"},
        )


def quoted(value: str) -> str:
    return quote(value, safe="")


@contextlib.contextmanager
def running_server(tmp_path: Path, *args: str, tls: bool = False) -> Iterator[Server]:
    """Start piewire with a fresh data directory; always stop it."""
    data_dir = tmp_path / f"data-{free_port()}"
    data_dir.mkdir()
    args = ("--key-refresh", "0.2", *args)
    server = Server(data_dir, free_port(), list(args), tmp_path / "server.log", tls)
    # The first key is made before the start, so the server prints no banner.
    server.key = server.create_key("--name", "test")
    server.start()
    try:
        yield server
    finally:
        server.stop()
