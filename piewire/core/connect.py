"""Parsing of the connect URL ``/v3/CHANNEL_ID?api_key=...``.

The SDKs put values into the URL without escaping them, so the raw path is
split on ``/`` before ``%XX`` is decoded, once, in each piece; ``+`` stays ``+``.
"""

from __future__ import annotations

import uuid as uuid_module
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

from piewire.closecodes import CloseCode
from piewire.core.channels import channel_id_error
from piewire.errors import ConnectRefused

# Canonical name of each known parameter, keyed by every accepted spelling.
_PARAMETERS = {
    "api_key": "api_key",
    "apiKey": "api_key",
    "notify_self": "notify_self",
    "presence": "presence",
    "user": "user",
    "jwt": "jwt",
    "uuid": "uuid",
    "be": "be",
}
_FLAGS = ("notify_self", "presence", "be")
_TRUE = {"", "1", "true"}
_FALSE = {"0", "false"}
MAX_USER_BYTES = 4096
MAX_UUID_LENGTH = 128


@dataclass(frozen=True, slots=True)
class ConnectParams:
    """What a client asked for in its connect URL."""

    channel_id: str
    api_key: str
    notify_self: bool = False
    presence: bool = False
    boot_event: bool = False
    user: str | None = None
    jwt: str | None = None
    uuid: str = ""


def _bad(reason: str) -> ConnectRefused:
    return ConnectRefused(CloseCode.BAD_REQUEST, reason)


def decode_piece(piece: str) -> str:
    """Decode ``%XX`` escapes once; the result must be UTF-8."""
    try:
        return unquote_to_bytes(piece).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _bad(f"{piece[:40]!r} is not valid UTF-8 once decoded") from exc


def parse_flag(name: str, value: str | None) -> bool:
    """Bare, empty, ``1`` or ``true`` (any case) is on; ``0`` or ``false`` is off."""
    if value is None:
        return True
    folded = value.lower()
    if folded in _TRUE:
        return True
    if folded in _FALSE:
        return False
    raise _bad(f"invalid value {value[:20]!r} for {name}: use 1, true, 0 or false")


def parse_query(raw_query: str) -> dict[str, str | None]:
    """Known parameters by canonical name; ``None`` marks a bare one (``&flag``)."""
    found: dict[str, str | None] = {}
    for part in raw_query.split("&"):
        if not part:
            continue
        raw_name, eq, raw_value = part.partition("=")
        try:
            name = unquote_to_bytes(raw_name).decode("utf-8")
        except UnicodeDecodeError:
            continue  # not UTF-8, so not the name of any known parameter
        canonical = _PARAMETERS.get(name)
        if canonical is None:
            continue
        if canonical in found:
            raise _bad(f"parameter {canonical!r} given more than once")
        found[canonical] = decode_piece(raw_value) if eq else None
    return found


def channel_from_path(raw_path: str) -> str:
    """The channel id of ``/v3/CHANNEL`` or the older ``/v3/CLUSTER/CHANNEL``."""
    pieces = raw_path.split("/")
    if len(pieces) not in (3, 4) or pieces[0] != "" or pieces[1] != "v3":
        raise _bad("connect to /v3/CHANNEL_ID")
    channel_id = decode_piece(pieces[-1])
    error = channel_id_error(channel_id)
    if error is not None:
        raise ConnectRefused(CloseCode.INVALID_CHANNEL, error)
    return channel_id


def parse_connect(raw_target: str) -> ConnectParams:
    """Parse the raw request target (path and query) of a connect request."""
    raw_path, _, raw_query = raw_target.partition("?")
    channel_id = channel_from_path(raw_path)
    query = parse_query(raw_query)
    api_key = query.get("api_key")
    if not api_key:
        raise ConnectRefused(CloseCode.INVALID_API_KEY, "missing api_key")
    flags = {name: parse_flag(name, query[name]) for name in _FLAGS if name in query}
    user = query.get("user")
    if user is not None and len(user.encode()) > MAX_USER_BYTES:
        raise _bad(f"user is longer than {MAX_USER_BYTES} bytes")
    client_uuid = query.get("uuid")
    if not client_uuid:
        client_uuid = str(uuid_module.uuid4())
    elif len(client_uuid) > MAX_UUID_LENGTH:
        raise _bad(f"uuid is longer than {MAX_UUID_LENGTH} characters")
    return ConnectParams(
        channel_id=channel_id,
        api_key=api_key,
        notify_self=flags.get("notify_self", False),
        presence=flags.get("presence", False),
        boot_event=flags.get("be", False),
        user=user,
        jwt=query.get("jwt") or None,
        uuid=client_uuid,
    )
