"""The sequencer's inbox poll: how long to wait before looking again, from what the last look found.

The default doorbell (docs/operations.md, "The doorbell"): writers ring nothing, the sequencer
looks at the inbox on its own. Right after a look that moved rows it looks again after ``window``
(a millisecond by default): whatever commits meanwhile is gathered into the next batch, one
transaction and one ``relay_log`` notification for all of it. Under heavy load the window
stretches: a look that moved more than ``BUSY_ROWS`` rows waits in proportion (twice the rows,
twice the window), up to ``BUSY_FACTOR`` windows, so the sequencer's transactions (each a durable
commit, whatever its size) stop multiplying with the write rate; below about ``BUSY_ROWS`` rows
per window (some 3,000 events a second with the defaults) the window stays as set. Each look that
finds nothing doubles the wait, up to ``idle``: an idle database costs one cheap query per
``idle`` seconds, and the first event after a quiet spell waits at most ``idle`` to be sequenced.
A look that filled its batch is followed at once (``0.0``): more is waiting.
"""

from __future__ import annotations

from typing import Final

__all__ = ["BUSY_FACTOR", "BUSY_ROWS", "DEFAULT_IDLE", "DEFAULT_WINDOW", "PollPacer"]

DEFAULT_WINDOW: Final = 0.001  # seconds after a look that moved rows
DEFAULT_IDLE: Final = 0.02  # seconds: the longest wait, reached after a few empty looks
BUSY_ROWS: Final = 4  # rows per look past which the window stretches in proportion
BUSY_FACTOR: Final = 5  # the window stretches to at most this many windows (and at most idle)


class PollPacer:
    """The wait before the next look at the inbox: ``0`` after a full batch, ``window`` after one
    that moved rows (stretched in proportion past ``BUSY_ROWS`` rows, to at most ``BUSY_FACTOR``
    windows or ``idle``), doubling from there with every empty look up to ``idle``."""

    def __init__(self, window: float = DEFAULT_WINDOW, idle: float = DEFAULT_IDLE) -> None:
        if not 0 < window <= idle:
            raise ValueError(f"need 0 < window <= idle, got window={window}, idle={idle}")
        self.window = window
        self.idle = idle
        self.busy = min(idle, window * BUSY_FACTOR)
        self._wait = idle  # until the first event, the database is idle

    def after(self, moved: int, batch: int) -> float:
        """The wait after a look that moved ``moved`` rows with a batch limit of ``batch``."""
        if moved >= batch:
            self._wait = self.window
            return 0.0
        if moved > 0:
            self._wait = min(self.busy, self.window * max(1.0, moved / BUSY_ROWS))
        else:
            self._wait = min(self.idle, self._wait * 2)
        return self._wait
