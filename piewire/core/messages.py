"""What the server says in JSON, and which client frames it will not relay."""

from __future__ import annotations

import json
from typing import Any

# Events only the server emits; a client frame carrying one is not relayed.
RESERVED_EVENTS = frozenset(
    {
        "system:member_list",
        "system:member_joined",
        "system:member_left",
        "system:boot",
        "system:error",
    }
)

AUTH_FAILED_TEXT = "Authentication failed, provide valid jwt token."


def dumps(value: Any) -> str:
    """Compact JSON text, non-ASCII kept as is."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def error_text(reason: str) -> str:
    """The frame sent right before a final close: ``{"error": reason}``."""
    return dumps({"error": reason})


def event_text(event: str, data: Any) -> str:
    return dumps({"event": event, "data": data})


def system_error_text(reason: str) -> str:
    """A non-final error: the connection stays open (PieSocket SDKs keep going)."""
    return event_text("system:error", {"error": reason})


def reserved_event_of(payload: bytes) -> str | None:
    """The reserved event a text frame carries, or None.

    Only a JSON object with a top-level ``event`` matters; anything else
    (plain text, arrays, other events) is relayed untouched.  The cheap byte
    check keeps ordinary messages off the JSON parser.
    """
    if b"system:" not in payload:
        return None
    stripped = payload.lstrip()
    if not stripped.startswith(b"{"):
        return None
    try:
        value = json.loads(payload)
    except ValueError:
        return None
    if not isinstance(value, dict):
        return None
    event = value.get("event")
    if isinstance(event, str) and event in RESERVED_EVENTS:
        return event
    return None
