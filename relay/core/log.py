"""The log as the core sees it: its state, and the one rule for resuming from a cursor.

The log is an ordered sequence of events with gap-free positions, numbered within an *epoch* (one
install of the schema) and pruned from the front (``pruned_through``: every position at or below
it may be gone). Where it lives (PostgreSQL today, another engine later) is the shells' business;
the core only needs ``LogState`` and the rule below, which every transport and the log reader use.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from relay.core.cursor import Cursor
from relay.core.events import Event
from relay.core.subscription import Subscription

__all__ = ["LogSource", "LogState", "ReplayPage"]


@dataclass(frozen=True, slots=True)
class LogState:
    """What the log says about itself: its epoch, head and pruning horizon."""

    epoch: str  # 32 hex digits
    head: int
    pruned_through: int
    notify: bool

    def problem(self, since: Cursor) -> str | None:
        """Why the log cannot resume after ``since``, as a reset reason, or None."""
        if since.epoch != self.epoch or since.pos > self.head:
            return "epoch_changed"  # another install, or the database went back in time (restore)
        if since.pos < self.pruned_through:
            return "cursor_expired"
        return None


@dataclass(frozen=True, slots=True)
class ReplayPage:
    """One page of a replay: the events a source pre-selected, and where the next page starts."""

    events: list[Event]  # the rows the source kept; the caller still matches exactly
    scanned_to: int  # the highest position this page covered: the next page reads after it


class LogSource(Protocol):
    """Where catch-ups (relay/core/catchup.py) read the log from (relay/pg/replay.py for
    PostgreSQL).

    Both methods raise ``relay.errors.LogUnavailable`` when the log cannot be read now (the
    client may retry with the same cursor); no other error of the store escapes.
    """

    async def state(self) -> LogState:
        """The log's epoch, head and pruning horizon, as of now."""
        ...

    async def page(
        self, keys: Sequence[str], sub: Subscription, after: int, upto: int, limit: int
    ) -> ReplayPage:
        """Events in (after, upto] of ``sub``'s table (every table for ANY_TABLE) whose audience
        holds one of ``keys`` (the reader's: relay/core/audience.py), in position order: at most
        ``limit`` of them, pre-selected by ``sub``'s ops and filter where the store can (the caller
        matches exactly); the examined range is bounded by the source."""
        ...
