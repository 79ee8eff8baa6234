"""The one settings object.

Each setting has a command-line flag of ``piewire serve`` and an environment
variable ``PIEWIRE_<NAME>``; the flag wins over the variable, the variable over
the default.  ``SETTINGS`` is the table both the CLI and the docs are built from.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from piewire.errors import ConfigError


@dataclass(frozen=True)
class Settings:
    host: str = field(default="0.0.0.0", metadata={"help": "address to listen on"})
    port: int = field(default=8080, metadata={"help": "port to listen on"})
    data_dir: Path = field(
        default=Path("piewire-data"),
        metadata={"help": "folder of the embedded key store (SQLite)"},
    )
    cluster_id: str = field(
        default="local",
        metadata={"help": "name of this deployment, shown with every key"},
    )
    tls_cert: Path | None = field(
        default=None, metadata={"help": "PEM certificate: serve wss:// and https://"}
    )
    tls_key: Path | None = field(
        default=None, metadata={"help": "PEM private key of --tls-cert"}
    )
    max_message_size: int = field(
        default=64 * 1024,
        metadata={"help": "largest message in bytes, from a client or REST"},
    )
    outbound_buffer: int = field(
        default=1024 * 1024,
        metadata={"help": "bytes queued for one slow client before it is closed"},
    )
    ping_interval: float = field(
        default=25.0, metadata={"help": "seconds of silence before the server pings"}
    )
    ping_timeout: float = field(
        default=20.0,
        metadata={"help": "seconds to wait for any frame after a ping"},
    )
    shutdown_grace: float = field(
        default=5.0,
        metadata={"help": "seconds to wait for clients to close on shutdown"},
    )
    body_timeout: float = field(
        default=10.0,
        metadata={"help": "seconds a REST client may take to send its body"},
    )
    key_refresh: float = field(
        default=1.0,
        metadata={"help": "seconds between checks of the key store for changes"},
    )
    presence_window: float = field(
        default=0.05,
        metadata={
            "help": "seconds over which a burst of presence changes becomes "
            "one member_list"
        },
    )
    presence_rate: int = field(
        default=64 * 1024 * 1024,
        metadata={
            "help": "bytes per second of roster events one channel may send "
            "before changes are batched into member_list events"
        },
    )
    presence_ttl: float = field(
        default=20.0,
        metadata={
            "help": "cluster: seconds after which a dead node's members are "
            "announced as left"
        },
    )
    redis_url: str | None = field(
        default=None,
        metadata={"help": "redis://HOST:PORT/DB: join a cluster sharing this Redis"},
    )
    redis_prefix: str = field(
        default="piewire",
        metadata={"help": "prefix of every Redis key and channel of this deployment"},
    )
    workers: int = field(
        default=1, metadata={"help": "processes sharing the port (needs --redis-url)"}
    )
    log_level: str = field(
        default="INFO", metadata={"help": "DEBUG, INFO, WARNING or ERROR"}
    )

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ConfigError(f"--port must be 1..65535, not {self.port}")
        if self.max_message_size < 1:
            raise ConfigError("--max-message-size must be positive")
        if self.outbound_buffer < 2 * self.max_message_size:
            raise ConfigError(
                "--outbound-buffer must be at least twice --max-message-size "
                f"({self.outbound_buffer} < 2 * {self.max_message_size})"
            )
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("--tls-cert and --tls-key go together")
        for name in (
            "ping_interval",
            "ping_timeout",
            "body_timeout",
            "key_refresh",
            "presence_window",
            "presence_ttl",
        ):
            value = getattr(self, name)
            if not math.isfinite(value) or value <= 0:
                raise ConfigError(
                    f"{flag_name(name)} must be a positive number, not {value}"
                )
        if not math.isfinite(self.shutdown_grace) or self.shutdown_grace < 0:
            raise ConfigError("--shutdown-grace must be 0 or more")
        if self.presence_rate < 1:
            raise ConfigError("--presence-rate must be positive")
        if self.workers < 1:
            raise ConfigError("--workers must be at least 1")
        if self.workers > 1 and not self.redis_url:
            raise ConfigError(
                "--workers above 1 needs --redis-url: the processes share Redis"
            )
        if self.log_level.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ConfigError(f"--log-level: unknown level {self.log_level!r}")

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    @property
    def rest_body_limit(self) -> int:
        """Largest REST body read: a message escaped as JSON text grows at most 6x."""
        return 6 * self.max_message_size + 4096


SETTINGS: tuple[dataclasses.Field[Any], ...] = dataclasses.fields(Settings)


def env_name(name: str) -> str:
    return "PIEWIRE_" + name.upper()


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def _convert(f: dataclasses.Field[Any], raw: str) -> Any:
    kind = str(f.type)
    try:
        if kind.startswith("int"):
            return int(raw)
        if kind.startswith("float"):
            return float(raw)
        if "Path" in kind:
            return Path(raw)
    except ValueError as exc:
        raise ConfigError(
            f"{flag_name(f.name)} (or {env_name(f.name)}): "
            f"{raw!r} is not a valid {kind}"
        ) from exc
    return raw


def load_settings(
    overrides: Mapping[str, str | None], environ: Mapping[str, str] | None = None
) -> Settings:
    """Build settings from CLI ``overrides`` (raw strings), then ``PIEWIRE_*``."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for f in SETTINGS:
        raw = overrides.get(f.name)
        if raw is None:
            raw = environ.get(env_name(f.name))
        if raw is not None and raw != "":
            values[f.name] = _convert(f, raw)
    return Settings(**values)


def settings_environment(settings: Settings) -> dict[str, str]:
    """``settings`` as ``PIEWIRE_*`` variables, for processes started from here."""
    env: dict[str, str] = {}
    for f in SETTINGS:
        value = getattr(settings, f.name)
        if value is not None and f.name != "workers":
            env[env_name(f.name)] = str(value)
    return env
