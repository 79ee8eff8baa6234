"""The I/O layers: they move bytes and call the protocol core."""
