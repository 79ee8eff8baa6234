"""The channel-id rule, shared by WebSocket connects and REST publishes.

An id of digits only is numeric and must be 1..100000 with no leading zero;
any other id is 1 to 30 characters of ``[A-Za-z0-9_-]``.  Ids are case-sensitive.
"""

import re

_NAMED = re.compile(r"[A-Za-z0-9_-]{1,30}")
MAX_NUMERIC_ID = 100_000
PRIVATE_PREFIX = "private-"
PRESENCE_PREFIX = "presence-"


def channel_id_error(channel_id: str) -> str | None:
    """Why ``channel_id`` is not a valid channel id, or None when it is."""
    if channel_id.isascii() and channel_id.isdigit():
        if channel_id.startswith("0"):
            return f"invalid channel id {channel_id!r}: numeric ids are 1..100000"
        if int(channel_id) > MAX_NUMERIC_ID:
            return f"invalid channel id {channel_id!r}: numeric ids are 1..100000"
        return None
    if _NAMED.fullmatch(channel_id) is None:
        return (
            f"invalid channel id {channel_id[:40]!r}: use 1-30 characters of "
            "A-Z a-z 0-9 _ - or a number 1..100000"
        )
    return None


def is_private(channel_id: str) -> bool:
    return channel_id.startswith(PRIVATE_PREFIX)


def is_presence(channel_id: str) -> bool:
    return channel_id.startswith(PRESENCE_PREFIX)


def channel_key(api_key: str, channel_id: str) -> str:
    """The name of a channel inside the server: channels belong to an API key."""
    return f"{api_key}:{channel_id}"
