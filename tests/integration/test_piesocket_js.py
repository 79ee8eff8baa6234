"""The official JavaScript client, piesocket-js 5.1.0, against a real piewire.

Node runs ``tests/node/sdk_scenario.mjs``: four SDK clients join one channel
over wss:// (a self-signed certificate made here), publish with and without
``notifySelf``, and receive REST publishes.  The script prints what every
client received; the assertions are here.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from websockets.sync.client import connect

from tests.sdk import (
    Tls,
    check_sdk_installed,
    node_binary,
    run_node_script,
)
from tests.support import HOST, Key, Server, scaled

SCRIPT = "sdk_scenario.mjs"
CHANNEL = "sdk-room"
CLIENTS = ("A", "B", "C", "D")
# The notifySelf option each client of the script is given, and how the SDK
# writes it into the connect URL.
NOTIFY_SELF_IN_URL = {"A": "0", "B": "false", "C": "true", "D": "1"}
STEPS = [
    "subscribe",
    "joined",
    "publish-notify-off",
    "marker",
    "publish-notify-true",
    "publish-notify-1",
    "rest-json",
    "rest-string",
    "end",
]
UUID4 = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"
)

# What each client's socket receives, in order, as (event, data.tag).
# A and B have notify_self off: A never sees its own chat, B never its marker.
# C (notifySelf true) and D (notifySelf 1) see their own messages.
LATER = [("chat", "C1"), ("chat", "D1"), ("rest", "R1"), ("rest-text", "R2")]
LATER.append(("end", "E1"))
EXPECTED_FRAMES = {
    "A": [("marker", "B1"), *LATER],
    "B": [("chat", "A1"), *LATER],
    "C": [("chat", "A1"), ("marker", "B1"), *LATER],
    "D": [("chat", "A1"), ("marker", "B1"), *LATER],
}
# The exact JSON text piesocket-js sends for each client publish
# (JSON.stringify of {event, data, meta}, meta left out when undefined).
CLIENT_FRAMES = {
    "A1": {
        "event": "chat",
        "data": {"tag": "A1", "text": "from A"},
        "meta": {"by": "A"},
    },
    "B1": {"event": "marker", "data": {"tag": "B1"}, "meta": {"by": "B"}},
    "C1": {
        "event": "chat",
        "data": {"tag": "C1", "text": "from C"},
        "meta": {"by": "C"},
    },
    "D1": {"event": "chat", "data": {"tag": "D1", "text": "from D"}},
}


@dataclass
class Scenario:
    server: Server
    key: Key
    tls: Tls
    records: list[dict[str, Any]]

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [r for r in self.records if r["kind"] == kind]

    def frames(self, client: str) -> list[str]:
        return [r["text"] for r in self.of_kind("frame") if r["client"] == client]


def run_scenario(server: Server, key: Key, tls: Tls) -> list[dict[str, Any]]:
    config = {
        "host": f"{HOST}:{server.port}",
        "apiKey": key.api_key,
        "apiSecret": key.api_secret,
        "channel": CHANNEL,
        "timeoutMs": round(scaled(5) * 1000),
    }
    return run_node_script(SCRIPT, config, server, tls)


@pytest.fixture(scope="module")
def scenario(tls_server: Server, tls: Tls) -> Scenario:
    assert tls_server.key is not None
    records = run_scenario(tls_server, tls_server.key, tls)
    return Scenario(tls_server, tls_server.key, tls, records)


def https_json(
    server: Server,
    tls: Tls,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    all_headers = {**(headers or {})}
    if data is not None:
        all_headers["Content-Type"] = "application/json"
    assert server.http_url.startswith("https://")
    request = urllib.request.Request(
        server.http_url + path, data=data, method=method, headers=all_headers
    )
    try:
        with urllib.request.urlopen(
            request, timeout=scaled(10), context=tls.client_context
        ) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def wait_connections(
    server: Server, tls: Tls, key: Key, channel: str, count: int
) -> None:
    """Wait until the server counts ``count`` members in ``channel``.

    A client sees the upgrade answered a moment before the server has added
    it to its channel; publishing before then may miss it.
    """
    headers = {"key": key.api_key, "secret": key.api_secret}
    deadline = time.monotonic() + scaled(10)
    seen: Any = None
    while time.monotonic() < deadline:
        status, seen = https_json(server, tls, "GET", "/api/connections", None, headers)
        assert status == 200, seen
        counts = {c["channel"]: c["connections"] for c in seen["channels"]}
        if counts.get(channel) == count:
            return
        time.sleep(0.05)
    raise AssertionError(f"{channel} never had {count} connections: {seen}")


def tags(frames: list[str]) -> list[tuple[str, str]]:
    out = []
    for text in frames:
        message = json.loads(text)
        out.append((message["event"], message["data"]["tag"]))
    return out


def test_node_and_the_sdk_are_installed() -> None:
    node = node_binary()
    version = subprocess.run(
        [node, "--version"],
        capture_output=True,
        text=True,
        timeout=scaled(30),
        check=True,
    ).stdout.strip()
    assert re.fullmatch(r"v\d+\.\d+\.\d+", version), version
    assert int(version[1:].split(".")[0]) >= 20, f"node {version} is too old"
    check_sdk_installed()


def test_every_step_completes(scenario: Scenario) -> None:
    assert [r["name"] for r in scenario.of_kind("step")] == STEPS
    assert scenario.of_kind("failed") == []
    assert scenario.of_kind("error") == []
    assert scenario.of_kind("done") == [{"kind": "done"}]
    # Sockets close only when the script unsubscribes, after the last step.
    done_at = scenario.records.index({"kind": "done"})
    closes = [i for i, r in enumerate(scenario.records) if r["kind"] == "close"]
    assert len(closes) == len(CLIENTS)
    assert min(closes) > done_at


def test_sdk_connect_url(scenario: Scenario) -> None:
    endpoints = {r["client"]: r["url"] for r in scenario.of_kind("endpoint")}
    assert sorted(endpoints) == list(CLIENTS)
    uuids = set()
    for client, url in endpoints.items():
        parts = urlsplit(url)
        assert parts.scheme == "wss"
        assert parts.netloc == f"{HOST}:{scenario.server.port}"
        assert parts.path == f"/v3/{CHANNEL}"
        query = parse_qsl(parts.query, keep_blank_values=True)
        assert [name for name, _ in query] == [
            "api_key",
            "notify_self",
            "source",
            "v",
            "presence",
            "uuid",
        ]
        values = dict(query)
        assert values["api_key"] == scenario.key.api_key
        assert values["notify_self"] == NOTIFY_SELF_IN_URL[client]
        assert (values["source"], values["v"], values["presence"]) == (
            "jssdk",
            "5.0.8",
            "0",
        )
        assert UUID4.fullmatch(values["uuid"])
        uuids.add(values["uuid"])
    assert len(uuids) == len(CLIENTS)


def test_each_client_receives_exactly_the_expected_frames(scenario: Scenario) -> None:
    for client in CLIENTS:
        assert tags(scenario.frames(client)) == EXPECTED_FRAMES[client], client


def test_notify_self_off_never_echoes_to_the_sender(scenario: Scenario) -> None:
    assert ("chat", "A1") not in tags(scenario.frames("A"))
    assert ("marker", "B1") not in tags(scenario.frames("B"))
    assert ("chat", "A1") in tags(scenario.frames("B"))
    assert ("marker", "B1") in tags(scenario.frames("A"))


def test_notify_self_on_echoes_to_the_sender(scenario: Scenario) -> None:
    assert ("chat", "C1") in tags(scenario.frames("C"))
    assert ("chat", "D1") in tags(scenario.frames("D"))


def test_client_publish_is_relayed_byte_for_byte(scenario: Scenario) -> None:
    for client in CLIENTS:
        for text in scenario.frames(client):
            tag = json.loads(text)["data"]["tag"]
            if tag in CLIENT_FRAMES:
                expected = json.dumps(CLIENT_FRAMES[tag], separators=(",", ":"))
                assert text == expected, (client, tag)


def test_listen_callbacks_get_data_and_meta(scenario: Scenario) -> None:
    events = scenario.of_kind("event")
    for client in CLIENTS:
        heard = [
            (r["event"], r["data"]["tag"]) for r in events if r["client"] == client
        ]
        assert heard == EXPECTED_FRAMES[client], client
    by_tag = {(r["client"], r["data"]["tag"]): r for r in events}
    b_from_a = by_tag[("B", "A1")]
    assert b_from_a["data"] == {"tag": "A1", "text": "from A"}
    assert (b_from_a["hasMeta"], b_from_a["meta"]) == (True, {"by": "A"})
    a_from_d = by_tag[("A", "D1")]
    assert a_from_d["data"] == {"tag": "D1", "text": "from D"}
    assert a_from_d["hasMeta"] is False
    for client in CLIENTS:
        assert by_tag[(client, "R1")]["meta"] == {"by": "rest"}
        assert by_tag[(client, "R2")]["hasMeta"] is False


def test_rest_publish_over_https_reaches_every_sdk_client(scenario: Scenario) -> None:
    replies = scenario.of_kind("rest")
    assert [(r["status"], r["body"]) for r in replies] == [(200, {"success": True})] * 3
    for client in CLIENTS:
        frames = scenario.frames(client)
        rest = [json.loads(text) for text in frames if '"R1"' in text]
        assert rest == [
            {"event": "rest", "data": {"tag": "R1"}, "meta": {"by": "rest"}}
        ]
        # A string message arrives as that exact text.
        assert '{"event":"rest-text","data":{"tag":"R2"}}' in frames


def test_https_rest_and_wss_share_one_port(tls_server: Server, tls: Tls) -> None:
    key = tls_server.key
    assert key is not None
    assert https_json(tls_server, tls, "GET", "/health") == (200, {"status": "ok"})
    status, body = https_json(
        tls_server,
        tls,
        "GET",
        "/api/connections/sum",
        headers={"key": key.api_key, "secret": key.api_secret},
    )
    assert (status, set(body)) == (200, {"connections"})
    bad = {"key": key.api_key, "secret": "wrong", "channelId": CHANNEL, "message": "x"}
    status, body = https_json(tls_server, tls, "POST", "/api/publish", bad)
    assert status == 401
    assert set(body) == {"error"}
    url = tls_server.ws_url("tls-check", key)
    assert url.startswith(f"wss://{HOST}:{tls_server.port}/")
    with connect(
        url,
        ssl=tls.client_context,
        open_timeout=scaled(10),
        close_timeout=scaled(5),
    ) as ws:
        wait_connections(tls_server, tls, key, "tls-check", 1)
        message = {"key": key.api_key, "secret": key.api_secret}
        message.update({"channelId": "tls-check", "message": "over https"})
        status, body = https_json(tls_server, tls, "POST", "/api/publish", message)
        assert (status, body) == (200, {"success": True})
        assert ws.recv(timeout=scaled(10)) == "over https"
