"""Running the official JavaScript client, piesocket-js, from Node.

The scripts in ``tests/node`` drive SDK clients against a real piewire over
wss:// (a throwaway CA made here, trusted through ``NODE_EXTRA_CA_CERTS``) and
print JSON records, one a line; the tests assert on those records.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trustme

from tests.support import HOST, Server, running_server, scaled

NODE_DIR = Path(__file__).resolve().parent / "node"
SDK_VERSION = "5.1.0"


@dataclass
class Tls:
    ca_file: Path
    cert_file: Path
    key_file: Path
    client_context: ssl.SSLContext


def make_tls(directory: Path) -> Tls:
    """A throwaway CA and a server certificate for 127.0.0.1 and localhost."""
    ca = trustme.CA()
    cert = ca.issue_cert(HOST, "localhost")
    tls = Tls(
        ca_file=directory / "ca.pem",
        cert_file=directory / "server-cert.pem",
        key_file=directory / "server-key.pem",
        client_context=ssl.create_default_context(),
    )
    ca.cert_pem.write_to_path(str(tls.ca_file))
    cert.private_key_pem.write_to_path(str(tls.key_file))
    tls.cert_file.write_bytes(b"".join(pem.bytes() for pem in cert.cert_chain_pems))
    ca.configure_trust(tls.client_context)
    return tls


@contextlib.contextmanager
def running_tls_server(directory: Path, tls: Tls) -> Iterator[Server]:
    """A piewire serving wss:// and https:// with the certificate of ``tls``."""
    args = ("--tls-cert", str(tls.cert_file), "--tls-key", str(tls.key_file))
    with running_server(directory, *args, tls=True) as server:
        yield server


def node_binary() -> str:
    node = shutil.which("node")
    assert node is not None, (
        "node is not on PATH: the piesocket-js tests need Node.js 20 or newer"
    )
    return node


def check_sdk_installed() -> None:
    manifest = NODE_DIR / "node_modules" / "piesocket-js" / "package.json"
    assert manifest.exists(), f"{manifest} is missing: run `make install`"
    version = json.loads(manifest.read_text())["version"]
    assert version == SDK_VERSION, f"piesocket-js {version} is installed, not 5.1.0"


def run_node_script(
    script: str, config: dict[str, Any], server: Server, tls: Tls
) -> list[dict[str, Any]]:
    """Run ``tests/node/SCRIPT CONFIG_JSON``; its records, once it exited 0."""
    node = node_binary()
    check_sdk_installed()
    env = {**os.environ, "NODE_EXTRA_CA_CERTS": str(tls.ca_file)}
    try:
        result = subprocess.run(
            [node, str(NODE_DIR / script), json.dumps(config)],
            cwd=NODE_DIR,
            env=env,
            capture_output=True,
            text=True,
            timeout=scaled(90),
        )
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(
            f"{script} did not finish:\n{exc.stdout!r}\n{exc.stderr!r}\n"
            f"server log:\n{server.log()}"
        ) from exc
    report = (
        f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n"
        f"{result.stderr}\nserver log:\n{server.log()}"
    )
    assert result.returncode == 0, report
    records = [json.loads(line) for line in result.stdout.splitlines() if line]
    assert records, report
    return records
