"""The REST API: it reads requests, calls the service, and answers in JSON."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import HttpVersion11, web

from piewire.core.publish import content_type_allowed, parse_publish
from piewire.errors import ApiError

if TYPE_CHECKING:
    from piewire.service import Service

log = logging.getLogger("piewire.api")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


SERVICE: web.AppKey[Service] = web.AppKey("service")


def _service(request: web.Request) -> Service:
    return request.app[SERVICE]


def error_response(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error is JSON with a 4xx or 5xx status, never an HTML page."""
    try:
        return await handler(request)
    except ApiError as exc:
        response = error_response(exc.status, exc.message)
        if exc.status in (408, 413):
            # The body was not read to its end: the connection cannot be reused.
            response.force_close()
        if exc.status == 408:
            # The client stopped sending: answer and close now, rather than
            # wait once more for a body that is not coming.
            await response.prepare(request)
            await response.write_eof()
            if request.transport is not None:
                request.transport.close()
        return response
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = error_response(exc.status, exc.reason)
        allow = exc.headers.get("Allow")
        if allow is not None:
            response.headers["Allow"] = allow
        return response
    except (asyncio.CancelledError, ConnectionError):
        raise
    except Exception:
        log.exception("request failed path=%s", request.path)
        return error_response(500, "internal server error")


async def read_body(request: web.Request, limit: int, timeout: float) -> bytes:
    """The whole body, up to ``limit`` bytes, within ``timeout`` seconds."""
    declared = request.content_length
    if declared is not None and declared > limit:
        raise ApiError(413, f"body of {declared} bytes is over the {limit} limit")
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.content.iter_any():
                size += len(chunk)
                if size > limit:
                    raise ApiError(413, f"body is over the {limit} byte limit")
                chunks.append(chunk)
    except TimeoutError as exc:
        raise ApiError(408, f"body not received within {timeout:g} s") from exc
    except ConnectionError as exc:
        # The client went away mid-body; the answer reaches no one.
        raise ApiError(400, "connection closed before the body ended") from exc
    return b"".join(chunks)


async def expect_publish(request: web.Request) -> web.StreamResponse | None:
    """``Expect: 100-continue``: refuse a declared body over the limit at once."""
    limit = _service(request).settings.rest_body_limit
    declared = request.content_length
    if declared is not None and declared > limit:
        response = error_response(
            413, f"body of {declared} bytes is over the {limit} limit"
        )
        response.force_close()
        return response
    expect = request.headers.get("Expect", "")
    if request.version != HttpVersion11:
        return None
    if expect.lower() != "100-continue":
        return error_response(417, f"unknown expectation {expect[:40]!r}")
    await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    request.writer.output_size = 0
    return None


async def publish(request: web.Request) -> web.StreamResponse:
    service = _service(request)
    settings = service.settings
    if not content_type_allowed(request.headers.get("Content-Type", "")):
        raise ApiError(415, "send the body as JSON (application/json)")
    body = await read_body(request, settings.rest_body_limit, settings.body_timeout)
    parsed = parse_publish(body, settings.max_message_size)
    await service.rest_publish(parsed)
    return web.json_response({"success": True})


def _credentials(request: web.Request) -> tuple[str, str]:
    return request.headers.get("key", ""), request.headers.get("secret", "")


async def connections(request: web.Request) -> web.StreamResponse:
    counts = await _service(request).channel_counts(*_credentials(request))
    channels = [
        {"channel": channel_id, "connections": count}
        for channel_id, count in sorted(counts.items())
    ]
    return web.json_response({"channels": channels})


async def connections_sum(request: web.Request) -> web.StreamResponse:
    counts = await _service(request).channel_counts(*_credentials(request))
    return web.json_response({"connections": sum(counts.values())})


async def channel_members(request: web.Request) -> web.StreamResponse:
    members = await _service(request).roster(
        *_credentials(request), request.match_info["channel_id"]
    )
    return web.json_response({"members": members})


async def websocket_elsewhere(request: web.Request) -> web.StreamResponse:
    """A ``/v3/`` request that reached the HTTP server instead of the upgrade.

    Upgrades are answered before HTTP parsing, on a connection's first
    request; one that comes later on a kept-alive connection is refused.
    """
    if request.headers.get("Upgrade", "").lower() == "websocket":
        raise ApiError(400, "open a new connection for the WebSocket upgrade")
    raise ApiError(426, "expected a WebSocket upgrade request")


async def health(request: web.Request) -> web.StreamResponse:
    return web.json_response({"status": "ok"})


async def ready(request: web.Request) -> web.StreamResponse:
    service = _service(request)
    body: dict[str, Any] = {"ready": service.broker.ready}
    if service.shutting_down:
        body["ready"] = False
    return web.json_response(body, status=200 if body["ready"] else 503)


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/publish", publish, expect_handler=expect_publish)
    app.router.add_get("/api/connections", connections)
    app.router.add_get("/api/connections/sum", connections_sum)
    app.router.add_get("/api/channels/{channel_id}/members", channel_members)
    app.router.add_get(r"/v3/{tail:[\s\S]*}", websocket_elsewhere)
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
