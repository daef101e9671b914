"""The router: which of this replica's connections get an event, and for which subscriptions.

Connections are indexed by audience key: the authenticated user id, and the keys of the roles the
connection's token holds (``role:anon``, ``role:authenticated``: relay/core/audience.py), each
registered at ``add``. An event names its audience (every key allowed to see the row; an UPDATE
that changed it, the old audience too), so routing walks the keys that are both in the audience
and connected here: whichever of the two sets is smaller is iterated, and the cost per event is
``O(min(audience, connected keys))`` plus the deliveries, never a pass over every connection and
never a database call. A connection holding no key of either audience is never looked at,
whatever its filters; one holding several is offered the event once per subscription (``after``
moves past it on the first offer). One whose keys are only in the old audience is sent at most
the move-out, which carries the row's old key and nothing else (relay/core/moves.py).

Per connection, subscriptions are indexed by id (for the protocol: the router's index is the one
record of a connection's subscriptions) and by table name (for routing). A subscription gets an
event when it is live, the event is past its ``after``, and its ``delivery`` of the event for
the connection's audience keys is not None (schema, audience, row filter, op: the event itself,
or an UPDATE's move-out or entry); a subscription still catching up may hold that form instead
(bounded; see ``Subscription.held``), handed over by the catch-up when it goes live. Delivering
offers the form to the connection (``Target.offer``: it writes the frame at once or queues it on
its bounded queue, never blocks) and advances ``after``, so each subscription sees each position
at most once and in order. ``route`` returns what it delivered (``Routed``): the caller counts
the frames written at once, the connection those it queued.

Positions strictly increase: ``head`` is the last routed position and an event at or below it has
already been routed (a poll and a doorbell can both fetch it) and is ignored.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from relay.core.events import Event
from relay.core.subscription import ANY_TABLE, Subscription

__all__ = ["Routed", "Router", "Target"]


class Target(Protocol):
    """A connection as the router sees it."""

    @property
    def user(self) -> str:
        """The authenticated user id."""
        ...

    @property
    def conn_id(self) -> str:
        """Unique per connection on this replica."""
        ...

    def offer(self, sub: Subscription, event: Event, now: float) -> bool:
        """Hands the event to the connection for the subscription; never blocks. True when its
        frame was written to the socket at once, False when it was queued (or held)."""
        ...


class Routed(NamedTuple):
    """What routing one event did: ``delivered`` offers made, ``written`` of them at once."""

    delivered: int
    written: int


NOTHING: Routed = Routed(0, 0)


@dataclass(slots=True, eq=False)
class _Conn:
    target: Target
    keys: tuple[str, ...]  # as indexed at add(): removal finds them even if the target changes
    by_id: dict[str, Subscription] = field(default_factory=dict)
    by_table: dict[str, dict[str, Subscription]] = field(default_factory=dict)
    wild: int = 0  # subscriptions to any table (indexed under ANY_TABLE)


class Router:
    """User id -> connections -> subscriptions, and the routing of each event through them."""

    __slots__ = ("_by_id", "_head", "_users")

    def __init__(self, head: int = 0) -> None:
        self._users: dict[str, dict[str, _Conn]] = {}  # audience key -> conn_id -> connection
        self._by_id: dict[str, _Conn] = {}
        self._head = head

    @property
    def head(self) -> int:
        """The position of the last event routed (or the starting position)."""
        return self._head

    @property
    def connection_count(self) -> int:
        return len(self._by_id)

    @property
    def user_count(self) -> int:
        """Audience keys with a connection here (user ids and role keys)."""
        return len(self._users)

    def _conn(self, target: Target) -> _Conn | None:
        conn = self._by_id.get(target.conn_id)
        # Another object under the same conn_id is not this connection.
        return conn if conn is not None and conn.target is target else None

    def add(self, target: Target, keys: Iterable[str] | None = None) -> None:
        """Registers a connection with no subscriptions under its audience ``keys`` (default:
        its user id); adding it again is a no-op.

        Raises ValueError if a different target is registered under the same conn_id.
        """
        existing = self._by_id.get(target.conn_id)
        if existing is not None:
            if existing.target is not target:
                raise ValueError(f"connection id {target.conn_id!r} is already registered")
            return
        conn = _Conn(target, tuple(dict.fromkeys((target.user,) if keys is None else keys)))
        self._by_id[target.conn_id] = conn
        for key in conn.keys:
            self._users.setdefault(key, {})[target.conn_id] = conn

    def remove(self, target: Target) -> None:
        """Unregisters a connection and its subscriptions; a no-op if it is not registered.

        A key goes with its last connection, so the index does not grow with every user ever
        seen.
        """
        conn = self._conn(target)
        if conn is None:
            return
        del self._by_id[target.conn_id]
        for key in conn.keys:
            conns = self._users[key]
            del conns[target.conn_id]
            if not conns:
                del self._users[key]
        # Drop references so a target still holding this _Conn cannot keep subscriptions alive.
        conn.by_id.clear()
        conn.by_table.clear()

    def subscribe(self, target: Target, sub: Subscription) -> None:
        """Adds a subscription to a registered connection, replacing one with the same id.

        Raises KeyError if the connection is not registered.
        """
        conn = self._conn(target)
        if conn is None:
            raise KeyError(f"connection {target.conn_id!r} is not registered")
        self._drop(conn, sub.id)
        conn.by_id[sub.id] = sub
        conn.by_table.setdefault(sub.table, {})[sub.id] = sub
        if sub.table == ANY_TABLE:
            conn.wild += 1

    def unsubscribe(self, target: Target, sub_id: str) -> bool:
        """Removes a subscription; False if there was none with that id."""
        conn = self._conn(target)
        return conn is not None and self._drop(conn, sub_id)

    @staticmethod
    def _drop(conn: _Conn, sub_id: str) -> bool:
        sub = conn.by_id.pop(sub_id, None)
        if sub is None:
            return False
        table = conn.by_table[sub.table]
        del table[sub_id]
        if not table:
            del conn.by_table[sub.table]
        if sub.table == ANY_TABLE:
            conn.wild -= 1
        return True

    def keys(self, target: Target) -> tuple[str, ...]:
        """The audience keys the connection is registered under; empty if not registered."""
        conn = self._conn(target)
        return () if conn is None else conn.keys

    def subscription(self, target: Target, sub_id: str) -> Subscription | None:
        """The connection's subscription with that id; None if there is none."""
        conn = self._conn(target)
        return None if conn is None else conn.by_id.get(sub_id)

    def subscriptions(self, target: Target) -> list[Subscription]:
        """The connection's subscriptions in the order they were made; empty if not registered."""
        conn = self._conn(target)
        return [] if conn is None else list(conn.by_id.values())

    def go_live(self, target: Target, sub_id: str, after: int) -> bool:
        """Switches a subscription from replay to live, its stream standing at ``after``.

        The caller's replay must have covered the log through ``head`` (``after`` is the last
        position it gave, which may be lower if nothing later matched), read ``head`` and call
        this with no await in between: every event past ``head`` is then routed to the
        subscription, and none at or below ``after`` is. False if the subscription is gone.
        """
        conn = self._conn(target)
        sub = None if conn is None else conn.by_id.get(sub_id)
        if sub is None:
            return False
        sub.after = after
        sub.live = True
        return True

    def route(self, event: Event, now: float) -> Routed:
        """Offers the event to every matching live subscription; returns the deliveries made and
        how many of them were written at once.

        An event at or below ``head`` was already routed and is ignored (delivers nothing).
        """
        pos = event.pos
        if pos <= self._head:
            return NOTHING
        self._head = pos

        users = self._users
        audience = event.audience
        if event.old_audience is not None:  # the old audience is sent its move-outs
            audience = audience | event.old_audience
        if len(audience) <= len(users):
            matched = [conns for user in audience if (conns := users.get(user)) is not None]
        else:
            matched = [conns for user, conns in users.items() if user in audience]

        table = event.table
        delivered = written = 0
        for conns in matched:
            # Snapshots: an offer may close a connection or drop a subscription (an overflow
            # reset, say), and a dict must not change size while it is iterated.
            for conn in tuple(conns.values()):
                subs = conn.by_table.get(table)
                if conn.wild:
                    subs = {**(subs or {}), **conn.by_table[ANY_TABLE]}
                if subs is None:
                    continue
                for sub in tuple(subs.values()):
                    if (
                        sub.live
                        and pos > sub.after
                        and (form := sub.delivery(event, conn.keys)) is not None
                        and conn.by_id.get(sub.id) is sub  # not dropped by an earlier offer
                    ):
                        if conn.target.offer(sub, form, now):
                            written += 1
                        sub.after = pos
                        delivered += 1
                    elif (
                        (held := sub.held) is not None
                        and not sub.live
                        # Once: a connection under two keys of the audience is visited twice.
                        and not (held and held[-1].pos == pos)
                        and (form := sub.delivery(event, conn.keys)) is not None
                    ):
                        # Catching up: held for the catch-up, in order, up to its bound; past
                        # it, holding stops and the catch-up reads these from the log.
                        if len(held) < sub.hold_max:
                            held.append(form)
                        else:
                            sub.held = None
        return Routed(delivered, written) if delivered else NOTHING
