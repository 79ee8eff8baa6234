"""A channel server written the way tutorials show it.

The ``websockets`` asyncio server on the default event loop, a dict from
channel to the set of its connections, and every message sent to every other
member with ``await ws.send()``.  It accepts the same URLs as piewire,
``/v3/CHANNEL?api_key=KEY``, and checks no key.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from urllib.parse import urlsplit

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

channels: dict[str, set[ServerConnection]] = {}


async def handler(ws: ServerConnection) -> None:
    path = urlsplit(ws.request.path if ws.request else "/").path
    channel = path.rstrip("/").rsplit("/", 1)[-1]
    members = channels.setdefault(channel, set())
    members.add(ws)
    try:
        async for message in ws:
            for member in list(members):
                if member is not ws:
                    with contextlib.suppress(ConnectionClosed):
                        await member.send(message)
    finally:
        members.discard(ws)
        if not members:
            channels.pop(channel, None)


async def main(host: str, port: int) -> None:
    stop = asyncio.get_running_loop().create_future()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set_result, None)
    async with serve(handler, host, port, max_size=65536, backlog=4096):
        await stop


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    args = parser.parse_args()
    asyncio.run(main(args.host, args.port))
