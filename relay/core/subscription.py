"""What a client subscribed to: a table, the ops, a filter, and where its stream stands.

A plain value shared by the router (which decides who gets an event), the catch-up (which replays
it) and the outbound queue (which applies the subscription's coalescing window). ``delivery`` is
the one match: the router, the catch-up and the long-poll all ask it, so a replay gives the
answers live delivery gives, move-outs and entries included (relay/core/moves.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from relay.core.events import Event
from relay.core.filters import RowFilter
from relay.core.moves import seen_as

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
    order, what it is sent (``delivery``) past ``held_from`` (the router's head when holding
    began), up to the catch-up's bound, then gives up holding (``held`` None). The catch-up then
    needs the log only up to ``held_from``: a replay reaches a fixed target however fast the log
    grows (relay/core/catchup.py).
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

    def delivery(self, event: Event, keys: tuple[str, ...]) -> Event | None:
        """What this subscription of a connection with these audience ``keys`` is sent for the
        event, or None: the event of its table (any table for ANY_TABLE; in its schema, if it
        names one) as the connection sees it through the filter (itself, its move-out or its
        entry: relay/core/moves.py), if that form's op is one of its ops. Positions are the
        caller's concern."""
        if (event.table != self.table and self.table != ANY_TABLE) or (
            self.schema is not None and self.schema != event.schema
        ):
            return None
        form = seen_as(event, keys, self.filter)
        return form if form is not None and form.op in self.ops else None
