"""Handing freed heap memory back to the operating system after client state is released.

CPython frees a closed connection's filters at once, but glibc's allocator keeps the freed
chunks that sit between chunks still in use, so the process's resident memory stays at its
high-water mark (measured: 40 connections holding 5 MiB of filters each, closed, left 238 of
266 MiB resident; trimmed, 145 MiB, the rest being CPython's own small-object arenas, which
later connections reuse). ``malloc_trim(0)`` returns those free pages. ``HeapTrim`` decides
when, from the filter bytes released (pure, time passed in); ``malloc_trim`` makes the call,
and is a no-op where the C library has none (musl, macOS).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Callable
from typing import Final

__all__ = ["TRIM_AFTER_BYTES", "TRIM_INTERVAL", "HeapTrim", "malloc_trim"]

TRIM_AFTER_BYTES: Final = 8 << 20  # estimated filter bytes released before a trim is worth it
TRIM_INTERVAL: Final = 10.0  # seconds between trims at most (one costs ~10 ms per 250 MiB)


class HeapTrim:
    """Counts released filter bytes; ``due`` says when to trim, at most every ``interval``."""

    def __init__(
        self, after_bytes: int = TRIM_AFTER_BYTES, interval: float = TRIM_INTERVAL
    ) -> None:
        self.after_bytes = after_bytes
        self.interval = interval
        self.pending = 0
        self._last = float("-inf")

    def released(self, nbytes: int) -> None:
        self.pending += nbytes

    def due(self, now: float) -> bool:
        """True (and the count restarts) when enough was released and the interval passed."""
        if self.pending < self.after_bytes or now - self._last < self.interval:
            return False
        self.pending = 0
        self._last = now
        return True


@functools.cache
def _libc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim: Callable[[int], int] = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    return trim


def malloc_trim() -> bool:
    """glibc's ``malloc_trim(0)``: True when memory was returned, False otherwise or where the
    C library has no such call. Blocking: run it in a worker thread (ctypes drops the GIL)."""
    trim = _libc_trim()
    return bool(trim(0)) if trim is not None else False
