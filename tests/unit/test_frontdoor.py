"""The upgrade handshake's pure parts."""

from piewire.transport.frontdoor import accept_key


def test_accept_key_is_the_rfc_example() -> None:
    # RFC 6455 section 1.3.
    assert accept_key(b"dGhlIHNhbXBsZSBub25jZQ==") == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
