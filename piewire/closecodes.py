"""The one table of WebSocket close codes that piewire sends.

Every SDK of PieSocket stops reconnecting once it sees a JSON frame with an
``error`` field, and reconnects at once after any other close.  So the codes
fall in two ranges:

* 4000-4099, "do not come back": always preceded by ``{"error": "..."}``.
* 4100-4199, "come back later": sent with no error frame, so clients retry.

Protocol violations use the standard RFC 6455 codes.
"""

from enum import IntEnum


class CloseCode(IntEnum):
    """Close codes sent by piewire, with the reason each one is used."""

    NORMAL = 1000
    """The peer closed normally, or asked for this code."""
    GOING_AWAY = 1001
    """The server is shutting down."""
    PROTOCOL_ERROR = 1002
    """Bad framing, a bad close code, or a reason longer than 123 bytes."""
    INVALID_DATA = 1007
    """A text message that is not valid UTF-8."""
    MESSAGE_TOO_BIG = 1009
    """A message over the maximum message size."""
    INTERNAL_ERROR = 1011
    """A bug in piewire; logged at ERROR."""

    BAD_REQUEST = 4000
    """A malformed connect URL: an unknown path form, a bad or repeated parameter."""
    INVALID_API_KEY = 4001
    """The API key is missing, unknown, or revoked."""
    INVALID_CHANNEL = 4002
    """The channel id breaks the channel-id rule."""
    AUTH_FAILED = 4003
    """A JWT is needed and is missing, invalid, or for another channel."""
    TOKEN_EXPIRED = 4004
    """The connection's JWT expired while it was connected."""
    ORIGIN_FORBIDDEN = 4005
    """The Origin header is not allowed for this key."""
    KEY_LIMIT_REACHED = 4006
    """The key has reached its maximum number of connections."""
    UUID_IN_USE = 4007
    """Another member with a different identity holds this uuid."""
    REPLACED = 4008
    """A newer connection of the same member took over this uuid."""

    SLOW_CONSUMER = 4100
    """The client did not read fast enough; its outbound buffer overflowed."""
    TRY_AGAIN_LATER = 4101
    """The server cannot take the connection now."""

    @property
    def final(self) -> bool:
        """True when clients must not reconnect: the close follows an error frame."""
        return 4000 <= self.value < 4100


def peer_close_code_is_valid(code: int) -> bool:
    """Whether a close code received from a peer is allowed on the wire (RFC 6455 7.4).

    1005, 1006 and 1015 are reserved for local use and must never be sent;
    1004 and everything below 1000 or from 1016 to 2999 are unassigned.
    """
    if 3000 <= code <= 4999:
        return True
    return code in {
        1000,
        1001,
        1002,
        1003,
        1007,
        1008,
        1009,
        1010,
        1011,
        1012,
        1013,
        1014,
    }
