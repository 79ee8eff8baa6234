"""Channel tokens: only an HS256 JWT signed with the key's secret, for this
channel, in its validity window, is accepted; every other one gets the
documented text."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from piewire.closecodes import CloseCode
from piewire.core.messages import AUTH_FAILED_TEXT
from piewire.core.tokens import mint_token, verify_token
from piewire.errors import ConnectRefused

SECRET = "S3cr3t" * 11  # 66 bytes: long enough for HS512 without a warning
OTHER_SECRET = "0therKeysSecret" * 5
CHANNEL = "private-room"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def craft(header: dict[str, Any], payload: bytes, secret: str | None) -> str:
    """A token assembled by hand; signed with HMAC-SHA256 when given a secret."""
    signing_input = b64(json.dumps(header).encode()) + "." + b64(payload)
    signature = b""
    if secret is not None:
        signature = hmac.new(
            secret.encode(), signing_input.encode(), hashlib.sha256
        ).digest()
    return signing_input + "." + b64(signature)


def claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {"sub": CHANNEL, "iat": now, "exp": now + 600}
    base.update(changes)
    return {name: value for name, value in base.items() if value is not ...}


def hs256(secret: str = SECRET, **changes: Any) -> str:
    return jwt.encode(claims(**changes), secret, algorithm="HS256")


def assert_refused(token: str | None, channel: str = CHANNEL) -> None:
    with pytest.raises(ConnectRefused) as caught:
        verify_token(token, SECRET, channel)
    assert caught.value.code == CloseCode.AUTH_FAILED
    assert caught.value.reason == AUTH_FAILED_TEXT
    assert caught.value.reason == "Authentication failed, provide valid jwt token."


def test_a_minted_token_is_accepted_with_its_user() -> None:
    before = time.time()
    grant = verify_token(mint_token(SECRET, CHANNEL, user="user1"), SECRET, CHANNEL)
    assert grant.user == "user1"
    assert grant.has_user
    assert before + 3590 <= grant.expires_at <= time.time() + 3601


def test_a_token_without_user_grants_no_identity() -> None:
    grant = verify_token(hs256(), SECRET, CHANNEL)
    assert not grant.has_user
    assert grant.user is None


def test_a_non_string_user_claim_is_kept_as_json() -> None:
    user = {"id": 7, "name": "Zoë"}
    assert verify_token(hs256(user=user), SECRET, CHANNEL).user == user


def test_iat_is_optional() -> None:
    assert verify_token(hs256(iat=...), SECRET, CHANNEL).expires_at > time.time()


@pytest.mark.parametrize(
    "other",
    [
        {"role": "admin"},
        {"aud": "someone"},
        {"aud": ["a", "b"]},
        {"aud": 5},
        {"iss": "https://issuer.example"},
        {"iss": 5},
        {"jti": 5},
        {"jti": "abc"},
    ],
)
def test_other_claims_are_ignored(other: dict[str, Any]) -> None:
    payload = json.dumps(claims(**other)).encode()
    token = craft({"alg": "HS256", "typ": "JWT"}, payload, SECRET)
    verify_token(token, SECRET, CHANNEL)


def test_nbf_in_the_past_is_fine() -> None:
    verify_token(hs256(nbf=int(time.time()) - 60), SECRET, CHANNEL)


def test_a_fractional_exp_is_a_valid_numeric_date() -> None:
    exp = time.time() + 60.5
    assert verify_token(hs256(exp=exp), SECRET, CHANNEL).expires_at == exp


@pytest.mark.parametrize("token", [None, ""])
def test_a_missing_token(token: str | None) -> None:
    assert_refused(token)


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
def test_alg_none_is_refused(alg: str) -> None:
    payload = json.dumps(claims()).encode()
    assert_refused(craft({"alg": alg, "typ": "JWT"}, payload, None))
    assert_refused(craft({"alg": alg, "typ": "JWT"}, payload, SECRET))


def test_pyjwt_unsigned_token_is_refused() -> None:
    assert_refused(jwt.encode(claims(), None, algorithm="none"))


@pytest.mark.parametrize("secret", [OTHER_SECRET, SECRET[:-1], SECRET + "x", ""])
def test_a_wrong_secret_is_refused(secret: str) -> None:
    payload = json.dumps(claims()).encode()
    assert_refused(craft({"alg": "HS256", "typ": "JWT"}, payload, secret))


def test_another_keys_secret_is_refused() -> None:
    assert_refused(hs256(OTHER_SECRET))


def test_hs512_with_the_right_secret_is_refused() -> None:
    assert_refused(jwt.encode(claims(), SECRET, algorithm="HS512"))


def test_hs384_with_the_right_secret_is_refused() -> None:
    assert_refused(jwt.encode(claims(), SECRET, algorithm="HS384"))


def test_rs256_is_refused() -> None:
    private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert_refused(jwt.encode(claims(), private_key, algorithm="RS256"))


def test_an_rs256_header_over_an_hmac_signature_is_refused() -> None:
    payload = json.dumps(claims()).encode()
    assert_refused(craft({"alg": "RS256", "typ": "JWT"}, payload, SECRET))


@pytest.mark.parametrize(
    "sub", ["other-room", "room", "private-room ", "Private-room", 123, None, ...]
)
def test_a_token_for_another_channel_is_refused(sub: Any) -> None:
    assert_refused(hs256(sub=sub))


def test_a_valid_token_for_one_channel_does_not_open_another() -> None:
    token = hs256()
    verify_token(token, SECRET, CHANNEL)
    assert_refused(token, "private-other")


@pytest.mark.parametrize("seconds_ago", [1, 60, 86400])
def test_an_expired_token_is_refused(seconds_ago: int) -> None:
    assert_refused(hs256(exp=int(time.time()) - seconds_ago))


def test_nbf_in_the_future_is_refused() -> None:
    assert_refused(hs256(nbf=int(time.time()) + 60))


def test_iat_in_the_future_is_refused() -> None:
    assert_refused(hs256(iat=int(time.time()) + 600))


@pytest.mark.parametrize(
    "exp",
    [
        ...,
        None,
        "9999999999",
        "soon",
        "",
        0,
        -1,
        -(10**12),
        True,
        [9999999999],
        {"t": 9999999999},
        10**400,
    ],
)
def test_exp_must_be_a_future_number(exp: Any) -> None:
    assert_refused(hs256(exp=exp))


@pytest.mark.parametrize("name", ["nbf", "iat"])
@pytest.mark.parametrize("value", ["0", "1700000000", True, None, [0], 10**400])
def test_nbf_and_iat_must_be_numbers_when_present(name: str, value: Any) -> None:
    assert_refused(hs256(**{name: value}))


@pytest.mark.parametrize(
    "payload",
    [
        b"not json",
        b"[1, 2]",
        b'"text"',
        b"null",
        b'{"sub": "private-room", "exp": NaN}',
        b'{"sub": "private-room", "exp": Infinity}',
        b'{"sub": "private-room", "exp": 1e400}',
        b'{"sub": "private-room", "exp": 9999999999, "x": '
        + b"[" * 100_000
        + b"]" * 100_000
        + b"}",
    ],
)
def test_odd_payloads_signed_with_the_right_secret_are_refused(
    payload: bytes,
) -> None:
    assert_refused(craft({"alg": "HS256", "typ": "JWT"}, payload, SECRET))


@pytest.mark.parametrize(
    "token",
    [
        "abc",
        "a.b.c",
        "..",
        "a.b",
        "a.b.c.d",
        "eyJhbGciOiJIUzI1NiJ9.e30.",
        "é.é.é",
        "\x00",
        "x" * 100_000,
    ],
)
def test_garbage_is_refused(token: str) -> None:
    assert_refused(token)


def test_a_header_that_is_not_an_object_is_refused() -> None:
    payload = b64(json.dumps(claims()).encode())
    for header in (b'"HS256"', b"[]", b"{", b'{"alg": ["HS256"]}'):
        signing_input = b64(header) + "." + payload
        signature = hmac.new(
            SECRET.encode(), signing_input.encode(), hashlib.sha256
        ).digest()
        assert_refused(signing_input + "." + b64(signature))


def test_a_non_ascii_secret_signs_and_verifies() -> None:
    secret = "sécrèt-ключ-秘密-" * 3
    token = mint_token(secret, CHANNEL, user="u")
    assert verify_token(token, secret, CHANNEL).user == "u"
    with pytest.raises(ConnectRefused):
        verify_token(token, secret.upper(), CHANNEL)
