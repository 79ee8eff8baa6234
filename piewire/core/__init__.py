"""The protocol core: pure logic, no sockets, no event loop."""
