"""API keys, their per-key policy, and the key-store interface."""

from __future__ import annotations

import hmac
import json
import secrets
import string
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Protocol

_ALPHABET = string.ascii_letters + string.digits


def random_token(length: int) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))


@dataclass(frozen=True, slots=True)
class ApiKey:
    """One API key, its secret, and the policy applied to its channels."""

    api_key: str
    api_secret: str
    name: str = ""
    created_at: float = 0.0
    revoked: bool = False
    client_publish: bool = True
    force_auth: bool = False
    allowed_origins: tuple[str, ...] = ()
    strict_origin: bool = False
    max_connections: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def generate(cls, name: str = "", **policy: Any) -> ApiKey:
        return cls(
            api_key=random_token(40),
            api_secret=random_token(40),
            name=name,
            created_at=time.time(),
            **policy,
        )

    def secret_matches(self, candidate: str) -> bool:
        """Constant-time comparison on the UTF-8 bytes of both secrets."""
        return hmac.compare_digest(
            self.api_secret.encode("utf-8", "surrogatepass"),
            candidate.encode("utf-8", "surrogatepass"),
        )

    def with_policy(self, **changes: Any) -> ApiKey:
        return replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["allowed_origins"] = list(self.allowed_origins)
        data.pop("extra")
        return data

    def dumps(self) -> str:
        return json.dumps(self.to_json(), sort_keys=True)

    @classmethod
    def loads(cls, text: str) -> ApiKey:
        data = json.loads(text)
        data["allowed_origins"] = tuple(data.get("allowed_origins", ()))
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


class KeyStore(Protocol):
    """Where keys are kept.  Every call may block briefly; servers cache keys."""

    def create(self, key: ApiKey) -> None: ...

    def put(self, key: ApiKey) -> None:
        """Replace an existing key (policy change or revocation)."""

    def get(self, api_key: str) -> ApiKey | None: ...

    def all(self) -> list[ApiKey]: ...

    def revision(self) -> int:
        """A number that changes whenever any key changes."""

    def close(self) -> None: ...
