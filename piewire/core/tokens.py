"""Channel tokens: HS256 JWTs signed with the API secret (PROTOCOL.md 5)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import jwt

from piewire.closecodes import CloseCode
from piewire.core.messages import AUTH_FAILED_TEXT
from piewire.errors import ConnectRefused

# Clock skew tolerated on nbf and iat.  ``exp`` is exact, at connect time and
# while connected, so a token is never accepted and then dropped at once.
LEEWAY_SECONDS = 5


@dataclass(frozen=True, slots=True)
class Grant:
    """What a valid token grants: a channel until ``expires_at``, as ``user``."""

    expires_at: float
    user: Any = None
    has_user: bool = False


def mint_token(secret: str, channel_id: str, user: Any = None, ttl: int = 3600) -> str:
    now = int(time.time())
    claims: dict[str, Any] = {"sub": channel_id, "iat": now, "exp": now + ttl}
    if user is not None:
        claims["user"] = user
    return jwt.encode(claims, secret, algorithm="HS256")


def _is_time(value: object) -> bool:
    """A NumericDate: a JSON number that fits a float, not a string or a boolean."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def verify_token(token: str | None, secret: str, channel_id: str) -> Grant:
    """Check a token for ``channel_id``; refuse with the documented text."""
    refused = ConnectRefused(CloseCode.AUTH_FAILED, AUTH_FAILED_TEXT)
    if not token:
        raise refused
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=["HS256"],
            leeway=LEEWAY_SECONDS,
            options={
                "require": ["exp", "sub"],
                "verify_sub": False,
                "verify_exp": False,
                # Claims other than sub, exp, nbf and iat are ignored.
                "verify_aud": False,
                "verify_iss": False,
                "verify_jti": False,
            },
        )
    except Exception as exc:
        # Whatever an untrusted token makes the decoder raise is a refusal.
        raise refused from exc
    exp = claims["exp"]
    if claims["sub"] != channel_id or not _is_time(exp) or exp <= time.time():
        raise refused
    if any(name in claims and not _is_time(claims[name]) for name in ("nbf", "iat")):
        raise refused
    return Grant(float(exp), claims.get("user"), "user" in claims)
