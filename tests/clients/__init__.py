"""Tests of the clients shipped beside the relay (clients/js, clients/react)."""
