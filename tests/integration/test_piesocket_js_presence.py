"""Presence on a private channel with piesocket-js 5.1.0 against a real piewire.

Node runs ``tests/node/sdk_presence.mjs`` with three SDK clients, all with
``presence: 1`` and a ``userId``, on one ``private-`` channel over wss://:

* A gets its token through the SDK's ``authEndpoint`` flow, from an auth
  endpoint served here (a customer's backend: it knows the caller by the
  ``Authorization`` header the SDK sends from ``authHeaders``);
* B is given a token made by ``piewire token`` through the SDK's ``jwt``;
* C calls the same endpoint without a session, gets no token, and must be
  refused for good.

A and B see each other in ``channel.members``, then B unsubscribes and A sees
it leave.  The script prints what every client received; the assertions are
here.
"""

from __future__ import annotations

import email.parser
import email.policy
import json
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import jwt
import pytest

from tests.sdk import Tls, run_node_script
from tests.support import HOST, Key, Server, piewire_cli, scaled

SCRIPT = "sdk_presence.mjs"
CHANNEL = "private-sdk-presence"
AUTH_PATH = "/broadcasting/auth"
USERS = {"A": "alice", "B": "bob", "C": "mallory"}
# The auth endpoint knows its callers by this header; C has no session.
SESSIONS = {"Bearer session-of-alice": "alice"}
AUTH_FAILED = "Authentication failed, provide valid jwt token."
STEPS = ["a-joins", "b-joins", "b-leaves", "c-refused", "after", "a-leaves"]
UUID4 = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"
)


@dataclass
class AuthCall:
    """One request the auth endpoint received, and what it answered."""

    method: str
    path: str
    headers: dict[str, str]
    fields: list[tuple[str, str]]
    status: int
    reply: dict[str, Any]


@dataclass
class AuthEndpoint:
    """A customer's backend: mints a channel token for a signed-in caller."""

    key: Key
    url: str = ""
    calls: list[AuthCall] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def mint(self, channel: str, user: str) -> str:
        now = int(time.time())
        claims = {"sub": channel, "iat": now, "exp": now + 600, "user": user}
        return jwt.encode(claims, self.key.api_secret, algorithm="HS256")

    def answer(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, Any]]:
        fields = form_fields(headers.get("content-type", ""), body)
        user = SESSIONS.get(headers.get("authorization", ""))
        channels = [value for name, value in fields if name == "channel_name"]
        if user is None:
            status, reply = 403, {"error": "not signed in"}
        elif len(channels) != 1:
            status, reply = 400, {"error": "send one channel_name"}
        else:
            status, reply = 200, {"auth": self.mint(channels[0], user)}
        self.calls.append(AuthCall(method, path, headers, fields, status, reply))
        return status, reply


def form_fields(content_type: str, body: bytes) -> list[tuple[str, str]]:
    """The fields of a multipart/form-data body, in order."""
    head = f"Content-Type: {content_type}\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    if message.get_content_type() != "multipart/form-data":
        return []
    return [
        (str(part.get_param("name", header="content-disposition")), part.get_content())
        for part in message.iter_parts()
    ]


def handler_for(endpoint: AuthEndpoint) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            try:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                headers = {name.lower(): value for name, value in self.headers.items()}
                status, reply = endpoint.answer("POST", self.path, headers, body)
            except Exception as exc:
                endpoint.failures.append(repr(exc))
                status, reply = 500, {"error": "auth endpoint failed"}
            data = json.dumps(reply).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@dataclass
class Scenario:
    server: Server
    key: Key
    auth: AuthEndpoint
    b_token: str
    records: list[dict[str, Any]]

    def of_kind(self, kind: str, client: str | None = None) -> list[dict[str, Any]]:
        return [
            r
            for r in self.records
            if r["kind"] == kind and (client is None or r["client"] == client)
        ]

    def frames(self, client: str) -> list[Any]:
        return [json.loads(r["text"]) for r in self.of_kind("frame", client)]

    def uuid(self, client: str) -> str:
        [endpoint] = self.of_kind("endpoint", client)
        return str(endpoint["uuid"])

    def member(self, client: str) -> dict[str, str]:
        return {"user": USERS[client], "uuid": self.uuid(client)}

    def snapshot(self, client: str, step: str) -> dict[str, Any]:
        found = [r for r in self.of_kind("members", client) if r["step"] == step]
        assert len(found) == 1, (client, step, found)
        return found[0]


@pytest.fixture(scope="module")
def auth_endpoint(tls_server: Server) -> Iterator[AuthEndpoint]:
    assert tls_server.key is not None
    endpoint = AuthEndpoint(tls_server.key)
    httpd = ThreadingHTTPServer((HOST, 0), handler_for(endpoint))
    endpoint.url = f"http://{HOST}:{httpd.server_address[1]}{AUTH_PATH}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield endpoint
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=scaled(10))


@pytest.fixture(scope="module")
def scenario(tls_server: Server, tls: Tls, auth_endpoint: AuthEndpoint) -> Scenario:
    key = tls_server.key
    assert key is not None
    b_token = piewire_cli(
        "token",
        CHANNEL,
        "--key",
        key.api_key,
        "--user",
        USERS["B"],
        "--data-dir",
        str(tls_server.data_dir),
    ).strip()
    config = {
        "host": f"{HOST}:{tls_server.port}",
        "apiKey": key.api_key,
        "apiSecret": key.api_secret,
        "channel": CHANNEL,
        "timeoutMs": round(scaled(5) * 1000),
        "clients": {
            "A": {
                "userId": USERS["A"],
                "authEndpoint": auth_endpoint.url,
                "authHeaders": {"Authorization": "Bearer session-of-alice"},
            },
            "B": {"userId": USERS["B"], "jwt": b_token},
            "C": {"userId": USERS["C"], "authEndpoint": auth_endpoint.url},
        },
    }
    records = run_node_script(SCRIPT, config, tls_server, tls)
    return Scenario(tls_server, key, auth_endpoint, b_token, records)


def test_every_step_completes(scenario: Scenario) -> None:
    assert [r["name"] for r in scenario.of_kind("step")] == STEPS
    assert scenario.of_kind("failed") == []
    assert scenario.of_kind("error") == []
    assert scenario.of_kind("done") == [{"kind": "done"}]
    assert scenario.auth.failures == []


def test_the_sdk_posts_the_channel_name_to_the_auth_endpoint(
    scenario: Scenario,
) -> None:
    # B has a token of its own, so only A and C ask the endpoint.  The SDK
    # posts a FormData, which a browser (and the script) sends as
    # multipart/form-data, with the authHeaders option as headers.
    calls = scenario.auth.calls
    assert len(calls) == 2
    for call in calls:
        assert (call.method, call.path) == ("POST", AUTH_PATH)
        assert call.headers["content-type"].startswith("multipart/form-data; boundary=")
        assert call.fields == [("channel_name", CHANNEL)]
    assert [c.headers.get("authorization") for c in calls] == [
        "Bearer session-of-alice",
        None,
    ]
    assert [c.status for c in calls] == [200, 403]


def test_tokens_and_identities_in_the_connect_urls(scenario: Scenario) -> None:
    [a_call, _] = scenario.auth.calls
    tokens = {"A": a_call.reply["auth"], "B": scenario.b_token}
    claims = jwt.decode(tokens["A"], scenario.key.api_secret, algorithms=["HS256"])
    assert (claims["sub"], claims["user"]) == (CHANNEL, USERS["A"])
    for client in USERS:
        [endpoint] = scenario.of_kind("endpoint", client)
        assert [r["url"] for r in scenario.of_kind("socket", client)] == [
            endpoint["url"]
        ]
        parts = urlsplit(endpoint["url"])
        assert (parts.scheme, parts.netloc, parts.path) == (
            "wss",
            f"{HOST}:{scenario.server.port}",
            f"/v3/{CHANNEL}",
        )
        query = parse_qsl(parts.query, keep_blank_values=True)
        with_token = ["jwt"] if client in tokens else []
        assert [name for name, _ in query] == [
            "api_key",
            "notify_self",
            "source",
            "v",
            "presence",
            *with_token,
            "user",
            "uuid",
        ]
        values = dict(query)
        assert values["api_key"] == scenario.key.api_key
        assert values["presence"] == "1"
        assert values["user"] == USERS[client]
        assert values["uuid"] == endpoint["uuid"]
        assert UUID4.fullmatch(values["uuid"])
        if client in tokens:
            assert values["jwt"] == tokens[client]
    assert len({scenario.uuid(c) for c in USERS}) == len(USERS)


def test_each_member_sees_the_other(scenario: Scenario) -> None:
    both = [scenario.member("A"), scenario.member("B")]
    alone = scenario.snapshot("A", "alone")
    assert alone["members"] == [scenario.member("A")]
    for client in ("A", "B"):
        together = scenario.snapshot(client, "together")
        assert together["members"] == both, client
        other = scenario.member("B" if client == "A" else "A")
        assert together["byUuid"][other["uuid"]] == other, client


def test_each_member_finds_itself_by_uuid(scenario: Scenario) -> None:
    for client, step in (("A", "alone"), ("A", "together"), ("B", "together")):
        snapshot = scenario.snapshot(client, step)
        me = scenario.member(client)
        assert snapshot["uuid"] == me["uuid"]
        assert snapshot["byUuid"][me["uuid"]] == me
        assert snapshot["current"] == me


def test_the_server_sends_the_exact_presence_events(scenario: Scenario) -> None:
    a, b = scenario.member("A"), scenario.member("B")

    def event(name: str, members: list[Any], member: Any = None) -> dict[str, Any]:
        if member is None:
            return {"event": name, "data": {"members": members}}
        return {"event": name, "data": {"member": member, "members": members}}

    assert scenario.frames("A") == [
        event("system:member_list", [a]),
        event("system:member_joined", [a], a),
        event("system:member_joined", [a, b], b),
        event("system:member_left", [a], b),
        {"event": "after", "data": {"tag": "X1"}},
    ]
    assert scenario.frames("B") == [
        event("system:member_list", [a, b]),
        event("system:member_joined", [a, b], b),
    ]


def test_a_sees_b_leave(scenario: Scenario) -> None:
    a, b = scenario.member("A"), scenario.member("B")
    heard = [(r["event"], r["data"]) for r in scenario.of_kind("event", "A")]
    left = [data for name, data in heard if name == "system:member_left"]
    assert left == [{"member": b, "members": [a]}]
    # The SDK has replaced its roster when the listener runs.
    [left_event] = [
        r for r in scenario.of_kind("event", "A") if r["event"] == "system:member_left"
    ]
    assert left_event["members"] == [a]
    after = scenario.snapshot("A", "after-leave")
    assert after["members"] == [a]
    assert after["byUuid"][b["uuid"]] is None
    assert after["current"] == a
    [b_close] = scenario.of_kind("close", "B")
    assert b_close["shouldReconnect"] is False
    assert b_close["sockets"] == 1


def test_a_client_without_a_token_is_refused_for_good(scenario: Scenario) -> None:
    # The only frame is the error; the SDK stops reconnecting on it.
    assert [r["text"] for r in scenario.of_kind("frame", "C")] == [
        json.dumps({"error": AUTH_FAILED}, separators=(",", ":"))
    ]
    [close] = scenario.of_kind("close", "C")
    assert close["code"] == 4003
    assert (close["shouldReconnect"], close["sameSocket"], close["sockets"]) == (
        False,
        True,
        1,
    )
    sockets = {r["client"]: r["count"] for r in scenario.of_kind("sockets")}
    assert sockets == {"A": 1, "B": 1, "C": 1}
    assert scenario.of_kind("error", "C") == []


def test_the_refused_client_never_reaches_the_roster(scenario: Scenario) -> None:
    uuid_c = scenario.uuid("C")
    for client in ("A", "B"):
        for record in scenario.of_kind("frame", client):
            assert uuid_c not in record["text"]
            assert USERS["C"] not in record["text"]
    assert scenario.snapshot("A", "after")["members"] == [scenario.member("A")]
    assert scenario.of_kind("rest") == [
        {"kind": "rest", "status": 200, "body": {"success": True}}
    ]
    [roster] = scenario.of_kind("roster")
    assert (roster["status"], roster["body"]) == (
        200,
        {"members": [scenario.member("A")]},
    )
