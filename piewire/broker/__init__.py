"""Brokers carry published messages to every node with members in the channel."""
