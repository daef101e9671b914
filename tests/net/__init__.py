"""Tests of the network shell against a real relay: the hub, websockets, long-polling, handshakes, TLS."""
