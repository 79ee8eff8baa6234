"""The embedded key store: one SQLite file in the data directory."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from piewire.errors import KeyStoreError
from piewire.store.keys import ApiKey

_SCHEMA = """
CREATE TABLE IF NOT EXISTS keys (
    api_key TEXT PRIMARY KEY,
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT OR IGNORE INTO meta (name, value) VALUES ('revision', 0);
"""


class SqliteKeyStore:
    """Keys as JSON rows; a revision counter tells servers to reload."""

    def __init__(self, data_dir: Path) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.path = data_dir / "keys.sqlite3"
        try:
            # The server reads from a worker thread, one call at a time.
            self._db = sqlite3.connect(
                self.path, timeout=5.0, isolation_level=None, check_same_thread=False
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise KeyStoreError(f"cannot open key store {self.path}: {exc}") from exc

    def _write(self, sql: str, key: ApiKey) -> int:
        try:
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                cursor = self._db.execute(sql, (key.api_key, key.dumps()))
                self._db.execute(
                    "UPDATE meta SET value = value + 1 WHERE name = 'revision'"
                )
                return cursor.rowcount
        except sqlite3.Error as exc:
            raise KeyStoreError(f"key store write failed: {exc}") from exc

    def create(self, key: ApiKey) -> None:
        self._write("INSERT INTO keys (api_key, body) VALUES (?, ?)", key)

    def put(self, key: ApiKey) -> None:
        changed = self._write("UPDATE keys SET body = ?2 WHERE api_key = ?1", key)
        if changed == 0:
            raise KeyStoreError(f"no key {key.api_key!r}")

    def get(self, api_key: str) -> ApiKey | None:
        row = self._db.execute(
            "SELECT body FROM keys WHERE api_key = ?", (api_key,)
        ).fetchone()
        return None if row is None else ApiKey.loads(row[0])

    def all(self) -> list[ApiKey]:
        rows = self._db.execute("SELECT body FROM keys ORDER BY rowid").fetchall()
        return [ApiKey.loads(body) for (body,) in rows]

    def revision(self) -> int:
        row = self._db.execute(
            "SELECT value FROM meta WHERE name = 'revision'"
        ).fetchone()
        return int(row[0])

    def close(self) -> None:
        self._db.close()
