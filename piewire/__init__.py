"""Piewire: a self-hosted WebSocket channels server speaking PieSocket Channels v3."""

__version__ = "0.1.0"
