"""Who may connect: the per-key policy applied to a connect request."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from piewire.closecodes import CloseCode
from piewire.core.channels import is_presence, is_private
from piewire.core.connect import ConnectParams
from piewire.core.tokens import verify_token
from piewire.errors import ConnectRefused
from piewire.store.keys import ApiKey

ANONYMOUS = "anonymous"


@dataclass(frozen=True, slots=True)
class Admission:
    """What an admitted connection is: its key, identity, and token expiry."""

    key: ApiKey
    user: Any
    presence: bool
    expires_at: float | None


def origin_host(origin: str) -> str | None:
    """The lowercased host of an Origin header, or None when it has none."""
    try:
        host = urlsplit(origin.strip()).hostname
    except ValueError:
        return None
    return host or None


def origin_allowed(key: ApiKey, origin: str | None) -> bool:
    """Exact hosts and ``*.domain`` wildcards, matched on the parsed host.

    ``*.example.com`` matches ``a.example.com`` and ``a.b.example.com`` but not
    ``example.com`` itself; ``*`` matches any origin.  A request with no
    Origin header (a server, a mobile app) passes unless the key is strict.
    """
    if origin is None:
        return not key.strict_origin
    if not key.allowed_origins or "*" in key.allowed_origins:
        return True
    host = origin_host(origin)
    if host is None:
        return False
    for pattern in key.allowed_origins:
        pattern = pattern.lower()
        if pattern.startswith("*."):
            if host.endswith(pattern[1:]) and len(host) > len(pattern) - 1:
                return True
        elif host == pattern:
            return True
    return False


def admit(
    params: ConnectParams,
    key: ApiKey | None,
    origin: str | None,
    header_jwt: str | None,
    open_connections: int,
) -> Admission:
    """Apply the key's policy; raise ``ConnectRefused`` with the reason."""
    if key is None:
        raise ConnectRefused(CloseCode.INVALID_API_KEY, "invalid api key")
    if key.revoked:
        raise ConnectRefused(CloseCode.INVALID_API_KEY, "api key revoked")
    if not origin_allowed(key, origin):
        raise ConnectRefused(
            CloseCode.ORIGIN_FORBIDDEN, f"origin {origin!r} is not allowed"
        )
    if key.max_connections and open_connections >= key.max_connections:
        raise ConnectRefused(
            CloseCode.KEY_LIMIT_REACHED,
            f"connection limit of {key.max_connections} reached for this key",
        )
    user: Any = params.user if params.user is not None else ANONYMOUS
    expires_at: float | None = None
    token = params.jwt or header_jwt
    if is_private(params.channel_id) or key.force_auth or token:
        grant = verify_token(token, key.api_secret, params.channel_id)
        expires_at = grant.expires_at
        if grant.has_user:
            user = grant.user
    presence = params.presence or is_presence(params.channel_id)
    return Admission(key, user, presence, expires_at)
