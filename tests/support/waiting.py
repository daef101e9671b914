"""Waiting for a condition in tests, with a bound and a message naming what did not happen."""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["wait_until"]


def wait_until(predicate: Callable[[], object], timeout: float, what: str) -> None:
    """Polls predicate every 50 ms until it is true; fails naming what did not happen in time."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.05)
