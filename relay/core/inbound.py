"""The per-connection inbound budget: frames and bytes a client may send per second.

Pure: the shell passes each frame's payload size and the (monotonic) time. Two token buckets
start full: frames refill at ``frame_rate`` per second up to twice that (the burst), bytes at
``byte_rate`` per second up to twice that, and never less than one largest frame
(``max_frame_bytes``), so a client may always send one frame the size limit allows. Every frame
counts, whatever its kind: text, binary, continuation, ping, pong, close.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["InboundBudget", "InboundLimits"]


@dataclass(frozen=True, slots=True)
class InboundLimits:
    """``frame_rate`` frames and ``byte_rate`` payload bytes per second per connection."""

    frame_rate: float = 100.0
    byte_rate: float = 256 * 1024
    max_frame_bytes: int = 65536

    @property
    def frame_burst(self) -> float:
        return 2 * self.frame_rate

    @property
    def byte_burst(self) -> float:
        return max(2 * self.byte_rate, float(self.max_frame_bytes))


class InboundBudget:
    """One connection's buckets. ``take`` says whether a frame of that many bytes fits now."""

    __slots__ = ("_bytes", "_frames", "_updated", "limits")

    def __init__(self, limits: InboundLimits, now: float) -> None:
        self.limits = limits
        self._frames = limits.frame_burst
        self._bytes = limits.byte_burst
        self._updated = now

    def take(self, size: int, now: float) -> bool:
        """Spends one frame and ``size`` bytes; False (nothing spent) when either is short."""
        limits = self.limits
        elapsed = max(0.0, now - self._updated)
        self._updated = now
        self._frames = min(limits.frame_burst, self._frames + elapsed * limits.frame_rate)
        self._bytes = min(limits.byte_burst, self._bytes + elapsed * limits.byte_rate)
        if self._frames < 1.0 or self._bytes < size:
            return False
        self._frames -= 1.0
        self._bytes -= size
        return True
