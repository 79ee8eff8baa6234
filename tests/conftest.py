from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.redis_support import RedisServer, running_redis
from tests.sdk import Tls, make_tls, running_tls_server
from tests.support import Key, Server, running_server


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    with running_server(tmp_path) as srv:
        yield srv


@pytest.fixture
def key(server: Server) -> Key:
    assert server.key is not None
    return server.key


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    with running_redis(tmp_path) as server:
        yield server


# A self-signed certificate and a piewire serving wss:// with it, shared by the
# tests of one module that drive the official SDK.
@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    return make_tls(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory, tls: Tls) -> Iterator[Server]:
    with running_tls_server(tmp_path_factory.mktemp("piewire"), tls) as srv:
        yield srv
