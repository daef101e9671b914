"""What a client subscribed to: a table, the ops, a filter, and where its stream stands.

A plain value shared by the router (which decides who gets an event), the catch-up (which replays
it) and the outbound queue (which applies the subscription's coalescing window). ``wants`` is the
one match: the router, the catch-up and the long-poll all ask it.
"""

from __future__ import annotations

from dataclasses import dataclass

from relay.core.events import Event
from relay.core.filters import RowFilter

__all__ = ["Subscription"]


@dataclass(slots=True, eq=False)
class Subscription:
    """One subscription of one connection.

    ``schema`` None matches the table name in any schema. ``after`` is the last position this
    subscription has been given (by replay or live), so the live stream starts strictly after it:
    the seam between replay and live has no gap and no duplicate. ``live`` is False while the
    subscription is still being replayed from the log (relay/core/catchup.py holds the replay's
    progress and sets ``after`` when it goes live); the router skips it until then.
    ``coalesce_ms`` > 0 batches UPDATEs of one row within that window into one delivery.
    """

    id: str
    table: str
    schema: str | None
    ops: frozenset[str]
    filter: RowFilter
    after: int
    live: bool = False
    coalesce_ms: int = 0

    def wants(self, event: Event) -> bool:
        """Whether the event is of this subscription's table (in its schema, if it names one),
        of one of its ops, and its row passes the filter. Positions are the caller's concern."""
        return (
            event.table == self.table
            and (self.schema is None or self.schema == event.schema)
            and event.op in self.ops
            and self.filter.matches(event)
        )
