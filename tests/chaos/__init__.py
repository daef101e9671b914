"""Chaos and hostile-input suite: the relay under faults and load (RELIABILITY.md)."""
