"""Builders for the routing tests: events, subscriptions and a Target that records what it gets."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from relay.core.events import OPS, Event, JSONValue, Op
from relay.core.filters import RowFilter
from relay.core.subscription import Subscription

__all__ = ["COMMITTED_AT", "RecordingTarget", "make_event", "make_sub"]

COMMITTED_AT = datetime(2026, 1, 1, tzinfo=UTC)


def make_event(
    pos: int,
    *,
    audience: Iterable[str] = ("alice",),
    table: str = "items",
    schema: str = "public",
    op: Op = "INSERT",
    pk: Mapping[str, JSONValue] | None = None,
    row: Mapping[str, JSONValue] | None = None,
    truncated: bool = False,
    old_key: Mapping[str, JSONValue] | None = None,
    old_values: Mapping[str, JSONValue] | None = None,
    old_audience: Iterable[str] | None = None,
) -> Event:
    """An event at ``pos``; pk defaults to {"id": pos}, row to the pk, row is None if truncated;
    old_key (UPDATE, DELETE) to the pk. An UPDATE's ``changed`` lists its ``old_values`` when
    given (else every column of the row); a truncated UPDATE carries no old values."""
    key = dict(pk) if pk is not None else {"id": pos}
    values = None if truncated else (dict(row) if row is not None else dict(key))
    before = None if truncated or old_values is None else dict(old_values)
    if op != "UPDATE" or values is None:
        changed: tuple[str, ...] = ()
    else:
        changed = tuple(sorted(values if before is None else before))
    return Event(
        pos=pos,
        schema=schema,
        table=table,
        op=op,
        pk=key,
        row=values,
        old_key=(dict(old_key) if old_key is not None else dict(key)) if op != "INSERT" else None,
        changed=changed,
        audience=frozenset(audience),
        committed_at=COMMITTED_AT,
        truncated=truncated,
        old_values=before,
        old_audience=None if old_audience is None else frozenset(old_audience),
    )


def make_sub(
    sub_id: str = "s1",
    *,
    table: str = "items",
    schema: str | None = None,
    ops: Iterable[str] = OPS,
    filter: object = None,
    after: int = 0,
    live: bool = True,
) -> Subscription:
    """A subscription; ``filter`` is the raw JSON form, parsed with RowFilter.parse."""
    return Subscription(
        id=sub_id,
        table=table,
        schema=schema,
        ops=frozenset(ops),
        filter=RowFilter.parse(filter),
        after=after,
        live=live,
    )


@dataclass(eq=False)
class RecordingTarget:
    """A connection that records every offer as (sub id, event position), and the form offered
    (``events``); with ``writes`` it says each was written at once, else that it was queued."""

    user: str
    conn_id: str
    received: list[tuple[str, int]] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    writes: bool = False
    events: list[Event] = field(default_factory=list)

    def offer(self, sub: Subscription, event: Event, now: float) -> bool:
        self.received.append((sub.id, event.pos))
        self.events.append(event)
        self.times.append(now)
        return self.writes
