"""The leader's handoff: the rows its sequencer just moved, taken by its own log reader in process.

Policy: the sequencer offers every batch it committed (its rows in position order, as
relay.sequence_log returns them), and the reader takes them instead of reading the log back, as
long as they continue its position: the rule "every position delivered once, in order, with no
gap" is kept by taking a batch only where it starts at ``last_pos + 1``. A batch the reader has
already read from the log is skipped, the part of one it has read is cut off, and a batch that
starts further on means something between was never handed (sequenced by another replica or by
hand, or lost with its connection): the reader then reads the log, the source of truth, as
every other replica does. Nothing is ever delivered from here that the log does not hold: a
batch is offered only after its transaction committed.

Bounded: at most ``max_batches`` batches and ``max_rows`` rows wait (the reader reads up to
``HANDOFF_ROWS`` rows per query, so a handed batch is never more than one read would be). An
offer past either bound drops everything held and tells the reader to read the log instead:
that batch and those before it reach it the usual way, one query later; nothing is lost. A
reader that stalls (its connection down, or busy) so costs at most that memory.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Final, Generic, Literal, TypeVar

__all__ = ["HANDOFF_BATCHES", "HANDOFF_ROWS", "READ_LOG", "WAIT", "Handoff"]

HANDOFF_BATCHES: Final = 4  # batches waiting for the reader
HANDOFF_ROWS: Final = 1000  # rows waiting for the reader (the reader's own read: READ_BATCH)
WAIT: Final = "wait"  # take(): nothing handed; wait for the next batch or doorbell
READ_LOG: Final = "read_log"  # take(): what comes next is not here: read the log

T = TypeVar("T")


class Handoff(Generic[T]):
    """Batches handed from the sequencer to the reader, each ``(first position, rows)``."""

    def __init__(self, max_batches: int = HANDOFF_BATCHES, max_rows: int = HANDOFF_ROWS) -> None:
        self.max_batches = max_batches
        self.max_rows = max_rows
        self._batches: deque[tuple[int, Sequence[T]]] = deque()
        self._rows = 0
        self._read_log = False
        self.dropped = 0  # batches dropped at a bound, the offered one included

    def offer(self, first: int, rows: Sequence[T]) -> bool:
        """Holds a committed batch whose first row is at position ``first``; False when it would
        pass a bound: then everything held is dropped and the reader is told to read the log."""
        if not rows:
            return True
        if len(self._batches) >= self.max_batches or self._rows + len(rows) > self.max_rows:
            self.dropped += len(self._batches) + 1
            self.clear()
            self._read_log = True
            return False
        self._batches.append((first, rows))
        self._rows += len(rows)
        return True

    def take(self, last_pos: int | None) -> Sequence[T] | Literal["wait", "read_log"]:
        """The rows continuing ``last_pos`` (the last position delivered), ``WAIT`` when none
        were handed, or ``READ_LOG`` when the next ones must come from the log."""
        if last_pos is None or self._read_log:
            self.clear()
            return READ_LOG
        while self._batches:
            first, rows = self._batches.popleft()
            self._rows -= len(rows)
            last = first + len(rows) - 1
            if last <= last_pos:
                continue  # read from the log already
            if first > last_pos + 1:
                self.clear()  # a gap: the log holds what was not handed, and these too
                return READ_LOG
            return rows if first == last_pos + 1 else rows[last_pos + 1 - first :]
        return WAIT

    def clear(self) -> None:
        """Forgets what is held (the reader reads the log from its position next)."""
        self._batches.clear()
        self._rows = 0
        self._read_log = False

    def __len__(self) -> int:
        return len(self._batches)
