"""Assembling and running one piewire node, with an ordered shutdown."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import ssl
import subprocess
import sys

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage

from piewire.broker.base import Broker
from piewire.broker.memory import MemoryBroker
from piewire.errors import ConfigError
from piewire.service import Service
from piewire.settings import Settings, settings_environment
from piewire.store.keys import ApiKey, KeyStore
from piewire.store.sqlite import SqliteKeyStore
from piewire.transport.frontdoor import HEAD_TIMEOUT, FrontDoor
from piewire.transport.http import SERVICE, add_routes, json_errors

log = logging.getLogger("piewire.server")

# Set in the environment of the processes ``--workers`` starts.
WORKER_ENV = "PIEWIRE_WORKER"


def open_key_store(settings: Settings) -> KeyStore:
    """Redis in a cluster, so every node sees every key; else SQLite."""
    if settings.redis_url:
        from piewire.store.redis import RedisKeyStore

        return RedisKeyStore(settings.redis_url, settings.redis_prefix)
    return SqliteKeyStore(settings.data_dir)


def make_broker(settings: Settings) -> Broker:
    if settings.redis_url:
        from piewire.broker.redis import RedisBroker

        return RedisBroker(
            settings.redis_url, settings.redis_prefix, settings.presence_ttl
        )
    return MemoryBroker()


def build_app(service: Service) -> web.Application:
    app = web.Application(middlewares=[json_errors])
    app[SERVICE] = service
    add_routes(app)
    return app


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(settings.tls_cert, settings.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"cannot load --tls-cert {settings.tls_cert} with --tls-key "
            f"{settings.tls_key}: {exc}"
        ) from exc
    return context


def describe_store(settings: Settings) -> str:
    """Where keys and messages go, for the start line (no password shown)."""
    if settings.redis_url:
        from urllib.parse import urlsplit

        parts = urlsplit(settings.redis_url)
        where = f"{parts.hostname}:{parts.port or 6379}{parts.path}"
        return f"redis={where} prefix={settings.redis_prefix}"
    return f"data_dir={settings.data_dir}"


def public_host(settings: Settings) -> str:
    return "localhost" if settings.host in ("0.0.0.0", "::", "") else settings.host


def first_key_banner(settings: Settings, key: ApiKey) -> str:
    """What a new user needs to connect and publish, printed once."""
    scheme = "wss" if settings.tls else "ws"
    http = "https" if settings.tls else "http"
    base = f"{public_host(settings)}:{settings.port}"
    insecure = "-k " if settings.tls else ""
    body = (
        f'{{"key":"{key.api_key}","secret":"{key.api_secret}",'
        f'"channelId":"1","message":"hello from curl"}}'
    )
    return "\n".join(
        [
            "piewire created a first API key:",
            f"  cluster id: {settings.cluster_id}",
            f"  api key:    {key.api_key}",
            f"  api secret: {key.api_secret}",
            "connect (paste into a browser console, twice):",
            f"  ws = new WebSocket('{scheme}://{base}/v3/1?api_key={key.api_key}"
            "&notify_self=1'); ws.onmessage = e => console.log(e.data);",
            "  ws.send('hello')",
            "publish:",
            f"  curl {insecure}-X POST {http}://{base}/api/publish "
            f"-H 'Content-Type: application/json' -d '{body}'",
        ]
    )


def ensure_first_key(settings: Settings, store: KeyStore) -> None:
    if store.all():
        return
    key = ApiKey.generate(name="default")
    store.create(key)
    print(first_key_banner(settings, key), flush=True)


async def serve(settings: Settings) -> None:
    """Run a node until SIGTERM or SIGINT, then shut down in order."""
    loop = asyncio.get_running_loop()
    tls = ssl_context(settings)
    store = open_key_store(settings)
    service = Service(settings, store, make_broker(settings), loop)
    await service.start()
    app = build_app(service)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    http = runner.server
    assert http is not None
    try:
        listener = await loop.create_server(
            lambda: FrontDoor(service, http),
            settings.host,
            settings.port,
            ssl=tls,
            ssl_handshake_timeout=HEAD_TIMEOUT if tls else None,
            reuse_port=settings.workers > 1 or bool(os.environ.get(WORKER_ENV)),
            backlog=4096,
        )
    except OSError as exc:
        await runner.cleanup()
        await service.stop()
        store.close()
        raise ConfigError(
            f"cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}"
        ) from exc
    if not os.environ.get(WORKER_ENV):
        ensure_first_key(settings, store)
        service.keys.refresh()
    log.info(
        "listening address=%s://%s:%d cluster=%s %s pid=%d",
        "https" if settings.tls else "http",
        settings.host,
        settings.port,
        settings.cluster_id,
        describe_store(settings),
        os.getpid(),
    )
    stop = asyncio.Event()
    signals = 0

    def on_signal() -> None:
        nonlocal signals
        signals += 1
        if signals > 1:
            log.warning("second signal: exiting now")
            os._exit(1)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal)
    await stop.wait()

    log.info("shutdown phase=stop-accepting")
    listener.close()
    log.info("shutdown phase=close-connections")
    await service.shutdown()
    log.info("shutdown phase=cleanup")
    await runner.cleanup()
    await service.stop()
    store.close()
    log.info("shutdown complete")


def run_workers(settings: Settings) -> int:
    """Start ``settings.workers`` processes on one port and wait for them.

    Each worker is a full node sharing the port with SO_REUSEPORT and the
    cluster through Redis.  Signals are passed on; the exit status is the
    worst of the workers'.
    """
    store = open_key_store(settings)
    try:
        ensure_first_key(settings, store)
    finally:
        store.close()
    argv = [sys.executable, "-m", "piewire", "serve", "--workers", "1"]
    env = {**os.environ, WORKER_ENV: "1", **settings_environment(settings)}
    # Own sessions: a terminal Ctrl-C reaches the workers once, through here.
    children = [
        subprocess.Popen(argv, env=env, start_new_session=True)
        for _ in range(settings.workers)
    ]

    def forward(signum: int, frame: object) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    codes = [child.wait() for child in children]
    return max(codes, key=abs)


class ClientFaultFilter(logging.Filter):
    """aiohttp logs a malformed request at ERROR with a traceback.

    It is the client's fault, not a bug of the server's: one INFO line, so a
    client cannot flood the log's ERROR level.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, BadHttpMessage):
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.msg, record.args, record.exc_info = (
                "bad http request error=%s",
                (str(exc).splitlines()[0][:200],),
                None,
            )
        return True


def run(settings: Settings) -> int:
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("aiohttp.server").addFilter(ClientFaultFilter())
    if settings.workers > 1:
        return run_workers(settings)
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(settings))
    else:
        uvloop.run(serve(settings))
    return 0
