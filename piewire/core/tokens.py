"""Channel tokens: HS256 JWTs signed with the API secret (PROTOCOL.md 5)."""

from __future__ import annotations

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


def verify_token(token: str | None, secret: str, channel_id: str) -> Grant:
    """Check a token for ``channel_id``; refuse with the documented text."""
    if not token:
        raise ConnectRefused(CloseCode.AUTH_FAILED, AUTH_FAILED_TEXT)
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
            },
        )
    except jwt.PyJWTError as exc:
        raise ConnectRefused(CloseCode.AUTH_FAILED, AUTH_FAILED_TEXT) from exc
    exp = claims["exp"]
    if (
        claims["sub"] != channel_id
        or isinstance(exp, bool)
        or not isinstance(exp, int | float)
        or exp <= time.time()
    ):
        raise ConnectRefused(CloseCode.AUTH_FAILED, AUTH_FAILED_TEXT)
    return Grant(float(exp), claims.get("user"), "user" in claims)
