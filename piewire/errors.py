"""Every exception piewire raises on purpose, under one base class."""

from piewire.closecodes import CloseCode


class PiewireError(Exception):
    """Base class of piewire's own errors."""


class ConfigError(PiewireError):
    """A setting has a value piewire cannot use."""


class ConnectRefused(PiewireError):
    """A WebSocket connection is refused: an error frame, then ``code``."""

    def __init__(self, code: CloseCode, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class ApiError(PiewireError):
    """A REST request is refused with ``status`` and a JSON ``{"error": message}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class FrameRejected(PiewireError):
    """A client frame is not relayed; its sender gets a ``system:error`` event."""


class KeyStoreError(PiewireError):
    """The key store cannot do what was asked (unknown key, storage failure)."""


class BrokerUnavailable(PiewireError):
    """The message bus is down: publishing cannot be promised."""
