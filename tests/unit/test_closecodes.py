"""The one close-code table: two ranges for clients, RFC codes for violations."""

from __future__ import annotations

import pytest

from piewire.closecodes import CloseCode, peer_close_code_is_valid


def test_codes_are_unique() -> None:
    values = [code.value for code in CloseCode]
    assert len(values) == len(set(values)) == len(CloseCode.__members__)


def test_each_code_has_its_documented_value() -> None:
    assert CloseCode.NORMAL == 1000
    assert CloseCode.GOING_AWAY == 1001
    assert CloseCode.PROTOCOL_ERROR == 1002
    assert CloseCode.INVALID_DATA == 1007
    assert CloseCode.MESSAGE_TOO_BIG == 1009
    assert CloseCode.BAD_REQUEST == 4000
    assert CloseCode.INVALID_API_KEY == 4001
    assert CloseCode.INVALID_CHANNEL == 4002
    assert CloseCode.AUTH_FAILED == 4003
    assert CloseCode.SLOW_CONSUMER == 4100


def test_every_private_code_is_in_one_of_the_two_ranges() -> None:
    for code in CloseCode:
        if code >= 4000:
            assert 4000 <= code < 4100 or 4100 <= code < 4200, code
        else:
            assert 1000 <= code < 1016, code


def test_final_means_do_not_come_back() -> None:
    for code in CloseCode:
        assert code.final is (4000 <= code < 4100), code
    assert CloseCode.AUTH_FAILED.final
    assert not CloseCode.SLOW_CONSUMER.final
    assert not CloseCode.TRY_AGAIN_LATER.final
    assert not CloseCode.GOING_AWAY.final


def test_every_code_the_server_sends_is_valid_on_the_wire() -> None:
    for code in CloseCode:
        assert peer_close_code_is_valid(code), code


@pytest.mark.parametrize(
    "code", [0, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000, 65535]
)
def test_codes_a_peer_may_not_send(code: int) -> None:
    assert not peer_close_code_is_valid(code)


@pytest.mark.parametrize(
    "code",
    [
        *(1000, 1001, 1002, 1003, 1007, 1008, 1009),
        *(1010, 1011, 1012, 1013, 1014, 3000, 3999, 4000, 4999),
    ],
)
def test_codes_a_peer_may_send(code: int) -> None:
    assert peer_close_code_is_valid(code)
