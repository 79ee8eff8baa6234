"""What the server says in JSON, and which client frames it will not relay."""

from __future__ import annotations

import json
import re
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


def _any_number(text: str) -> int:
    return 0


def _no_constant(text: str) -> Any:
    raise ValueError(f"{text} is not JSON")


# Numbers are never converted (a 5,000-digit integer must not stop the check),
# and NaN or Infinity make the text invalid, as for JSON.parse.
_DECODER = json.JSONDecoder(
    parse_int=_any_number, parse_float=_any_number, parse_constant=_no_constant
)
_SPACE = re.compile(r"[ \t\n\r]*")
_NESTING = re.compile(r'["\[\]{}]')


def _top_level(payload: bytes, needles: tuple[bytes, ...]) -> dict[str, object]:
    """The top-level members of a JSON object, or {} for anything else.

    Only payloads holding one of ``needles`` (or a ``\\u`` escape, which could
    spell one) are parsed at all: ordinary messages stay off the JSON parser.
    """
    if b"\\u" not in payload and not any(n in payload for n in needles):
        return {}
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        return {}
    if not text.startswith("{", _space(text, 0)):
        return {}
    try:
        value = _DECODER.decode(text)
    except ValueError:
        return {}
    except RecursionError:
        return _shallow_members(text)
    return value if isinstance(value, dict) else {}


def reserved_event_of(payload: bytes) -> str | None:
    """The reserved event a client frame carries, or None.

    Only a JSON object with a top-level ``event`` matters; anything else
    (plain text, arrays, other events) is relayed untouched.
    """
    event = _top_level(payload, (b"system:",)).get("event")
    if isinstance(event, str) and event in RESERVED_EVENTS:
        return event
    return None


def carries_error(payload: bytes) -> bool:
    """Whether a client frame is a JSON object with a non-empty ``error``.

    Every PieSocket SDK stops reconnecting for good once it sees one, so a
    member could use it to cut the others off; only the server sends it.
    """
    return bool(_top_level(payload, (b'"error"',)).get("error"))


def client_frame_refusal(payload: bytes) -> str | None:
    """Why a client frame may not be relayed, or None when it may."""
    reserved = reserved_event_of(payload)
    if reserved is not None:
        return f"clients may not send {reserved} events"
    if carries_error(payload):
        return "clients may not send a top-level error field"
    return None


def _space(text: str, at: int) -> int:
    found = _SPACE.match(text, at)
    return at if found is None else found.end()


def _skip_value(text: str, at: int) -> int:
    """The end of the JSON value at ``at``; containers are skipped, not parsed."""
    if not text.startswith(("{", "["), at):
        return int(_DECODER.raw_decode(text, at)[1])
    depth = 0
    while True:
        found = _NESTING.search(text, at)
        if found is None:
            raise ValueError("unterminated JSON value")
        char, at = found.group(), found.end()
        if char == '"':
            at = _DECODER.raw_decode(text, at - 1)[1]
        elif char in "{[":
            depth += 1
        else:
            depth -= 1
            if depth == 0:
                return at


def _shallow_members(text: str) -> dict[str, object]:
    """The top-level string members of an object nested too deeply for ``json``.

    The keys of the outer object are read one by one and every container value
    is skipped without recursion (and shown as True); as with JSON.parse, the
    last of a repeated key wins.
    """
    members: dict[str, object] = {}
    try:
        at = _space(text, _space(text, 0) + 1)  # past the opening brace
        if text.startswith("}", at):
            return {}
        while True:
            if not text.startswith('"', at):
                return {}
            name, at = _DECODER.raw_decode(text, at)
            at = _space(text, at)
            if not text.startswith(":", at):
                return {}
            at = _space(text, at + 1)
            if text.startswith(("{", "["), at):
                members[name] = True
                at = _skip_value(text, at)
            else:
                members[name], at = _DECODER.raw_decode(text, at)
            at = _space(text, at)
            if text.startswith(",", at):
                at = _space(text, at + 1)
            elif text.startswith("}", at):
                return members if _space(text, at + 1) == len(text) else {}
            else:
                return {}
    except ValueError:
        return {}
