"""The body of ``POST /api/publish``, checked without any I/O."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from piewire.core.channels import channel_id_error
from piewire.core.messages import dumps
from piewire.errors import ApiError

# Content types whose body is read as JSON; anything else gets 415.
JSON_CONTENT_TYPES = frozenset({"", "application/json", "text/plain"})


@dataclass(frozen=True, slots=True)
class PublishRequest:
    api_key: str
    secret: str
    channel_id: str
    payload: bytes
    """The message as delivered: a string's own text, else its JSON text."""


def _credential(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value:
        raise ApiError(401, "invalid key or secret")
    return value


def _channel(body: dict[str, Any]) -> str:
    raw = body.get("channelId", body.get("roomId"))
    if raw is None:
        raise ApiError(400, "Missing channelId from payload")
    if isinstance(raw, bool) or not isinstance(raw, str | int):
        raise ApiError(400, "channelId must be a string or a number")
    channel_id = str(raw)
    error = channel_id_error(channel_id)
    if error is not None:
        raise ApiError(400, error)
    return channel_id


def _finite_float(text: str) -> float:
    """A JSON number; one too large for a float is refused, not made Infinity."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:20]} is out of range")
    return value


def _no_constant(text: str) -> Any:
    raise ValueError(f"{text} is not JSON")


def content_type_allowed(content_type: str) -> bool:
    main = content_type.partition(";")[0].strip().lower()
    return main in JSON_CONTENT_TYPES or main.endswith("+json")


def parse_publish(body: bytes, max_message_size: int) -> PublishRequest:
    """Check a publish body; raise ``ApiError`` with the status that fits."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(400, "body is not valid UTF-8") from exc
    try:
        parsed = json.loads(
            text, parse_float=_finite_float, parse_constant=_no_constant
        )
    except ValueError as exc:
        raise ApiError(400, f"body is not valid JSON: {exc}") from exc
    except RecursionError as exc:
        raise ApiError(400, "body is nested too deeply") from exc
    if not isinstance(parsed, dict):
        raise ApiError(400, "body must be a JSON object")
    api_key = _credential(parsed, "key")
    secret = _credential(parsed, "secret")
    message = parsed.get("message")
    if message is None:
        raise ApiError(400, "Missing message from payload")
    channel_id = _channel(parsed)
    try:
        text_message = message if isinstance(message, str) else dumps(message)
    except RecursionError as exc:
        raise ApiError(400, "message is nested too deeply") from exc
    try:
        payload = text_message.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ApiError(400, "message holds a lone surrogate escape") from exc
    if len(payload) > max_message_size:
        raise ApiError(
            413, f"message of {len(payload)} bytes is over {max_message_size}"
        )
    return PublishRequest(api_key, secret, channel_id, payload)
