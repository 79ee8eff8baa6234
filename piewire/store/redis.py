"""The cluster key store: every key of a deployment in one Redis hash.

Keys live in ``{prefix}:keys`` (field: API key, value: its JSON record) and
``{prefix}:keys:revision`` counts changes, so every node sees a create, update
or revocation within its refresh interval.

A Redis that restarts without persistence comes back empty.  Keys are never
deleted (a revocation is an update), so a store whose revision counter is gone
after a node has read it lost its data: that node writes back the keys it last
read, instead of reporting every key as gone, which would close every
connection of the deployment.
"""

from __future__ import annotations

import logging

import redis

from piewire.errors import KeyStoreError
from piewire.store.keys import ApiKey

log = logging.getLogger("piewire.store.redis")

# Create only if absent, and bump the revision, atomically.
_CREATE = """
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('INCR', KEYS[2])
return 1
"""
# Replace only if present, and bump the revision, atomically.
_PUT = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('INCR', KEYS[2])
return 1
"""
# Put keys back, only if the revision counter is still missing, atomically.
# ARGV: revision, then API key and record pairs.
_RESTORE = """
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
for i = 2, #ARGV, 2 do
  redis.call('HSETNX', KEYS[1], ARGV[i], ARGV[i + 1])
end
redis.call('SET', KEYS[2], ARGV[1])
return 1
"""


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RedisKeyStore:
    def __init__(self, url: str, prefix: str) -> None:
        self._hash = f"{prefix}:keys"
        self._revision = f"{prefix}:keys:revision"
        try:
            self._redis = redis.Redis.from_url(
                url, socket_timeout=5, socket_connect_timeout=5
            )
            self._redis.ping()
        except redis.RedisError as exc:
            raise KeyStoreError(f"cannot reach Redis at {url}: {exc}") from exc
        self._create = self._redis.register_script(_CREATE)
        self._put = self._redis.register_script(_PUT)
        self._restore = self._redis.register_script(_RESTORE)
        # The last revision and records this store read, to restore from.
        self._seen_revision = 0
        self._seen: dict[str, str] = {}

    def _call(self, script: redis.commands.core.Script, key: ApiKey) -> int:
        try:
            keys = [self._hash, self._revision]
            return int(script(keys=keys, args=[key.api_key, key.dumps()]))
        except redis.RedisError as exc:
            raise KeyStoreError(f"key store write failed: {exc}") from exc

    def create(self, key: ApiKey) -> None:
        if not self._call(self._create, key):
            raise KeyStoreError(f"key {key.api_key!r} exists")

    def put(self, key: ApiKey) -> None:
        if not self._call(self._put, key):
            raise KeyStoreError(f"no key {key.api_key!r}")

    def get(self, api_key: str) -> ApiKey | None:
        try:
            body = self._redis.hget(self._hash, api_key)
        except redis.RedisError as exc:
            raise KeyStoreError(f"key store read failed: {exc}") from exc
        return None if body is None else ApiKey.loads(_text(body))

    def all(self) -> list[ApiKey]:
        try:
            bodies = self._redis.hvals(self._hash)
        except redis.RedisError as exc:
            raise KeyStoreError(f"key store read failed: {exc}") from exc
        keys = [ApiKey.loads(_text(body)) for body in bodies]
        self._seen = {
            key.api_key: _text(body) for key, body in zip(keys, bodies, strict=True)
        }
        return sorted(keys, key=lambda k: k.created_at)

    def revision(self) -> int:
        try:
            value = self._redis.get(self._revision)
            if value is None and self._seen:
                args: list[str | int] = [self._seen_revision]
                for pair in self._seen.items():
                    args.extend(pair)
                if self._restore(keys=[self._hash, self._revision], args=args):
                    log.warning(
                        "key store was empty, restored keys=%d revision=%d",
                        len(self._seen),
                        self._seen_revision,
                    )
                value = self._redis.get(self._revision)
        except redis.RedisError as exc:
            raise KeyStoreError(f"key store read failed: {exc}") from exc
        self._seen_revision = int(value or 0)
        return self._seen_revision

    def close(self) -> None:
        self._redis.close()
