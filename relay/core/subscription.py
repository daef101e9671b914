"""What a client subscribed to: a table, the ops, a filter, and where its stream stands.

A plain value shared by the router (which decides who gets an event), the catch-up (which replays
it) and the outbound queue (which applies the subscription's coalescing window). ``wants`` is the
one match: the router, the catch-up and the long-poll all ask it.
"""

from __future__ import annotations

from dataclasses import dataclass

from relay.core.events import Event
from relay.core.filters import RowFilter

__all__ = ["ANY_TABLE", "Subscription"]

ANY_TABLE = ""  # a subscription to every table (of its schema, or of all): no table has this name


@dataclass(slots=True, eq=False)
class Subscription:
    """One subscription of one connection.

    ``schema`` None matches the table name in any schema; ``table`` ANY_TABLE matches every
    table (the Supabase dialect's ``schema: "public"`` without a table, or ``schema: "*"``).
    ``after`` is the last position this subscription has been given (by replay or live), so the
    live stream starts strictly after it: the seam between replay and live has no gap and no
    duplicate. ``live`` is False while the subscription is still being replayed from the log
    (relay/core/catchup.py holds the replay's progress and sets ``after`` when it goes live); the
    router does not deliver to it until then, but while ``held`` is a list it appends there, in
    order, the events it wants past ``held_from`` (the router's head when holding began), up to
    the catch-up's bound, then gives up holding (``held`` None). The catch-up then needs the log
    only up to ``held_from``: a replay reaches a fixed target however fast the log grows
    (relay/core/catchup.py).
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
    held: list[Event] | None = None
    held_from: int = 0
    hold_max: int = 0

    def wants(self, event: Event) -> bool:
        """Whether the event is of this subscription's table (in its schema, if it names one),
        of one of its ops, and its row passes the filter. Positions are the caller's concern."""
        return (
            (event.table == self.table or self.table == ANY_TABLE)
            and (self.schema is None or self.schema == event.schema)
            and event.op in self.ops
            and self.filter.matches(event)
        )
