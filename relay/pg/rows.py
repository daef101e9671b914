"""Log rows as Events: the one place a row read from ``relay.log`` becomes an ``Event``.

Policy: no value may stop the stream. A row whose values cannot be carried as JSON becomes the
documented truncated event (its key carried, its values not) and the reason is returned for the
caller to count; the event is encoded here, once, so routing and every transport send the same
text. The JSON and number decoding itself is pure and lives in relay/core/events.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from relay.core.events import Event, Uncarriable, decode_json, decode_key

__all__ = ["decode_event", "event_from_row"]


def decode_event(row: Sequence[Any]) -> tuple[Event, str | None]:
    """A relay.log row (in LOG_COLUMNS order) as an Event, and None; never raises for a value.

    A row whose values cannot be carried as JSON (nested past MAX_DEPTH, or anything else that
    fails to decode or encode) becomes the documented truncated event: ``row`` None,
    ``truncated`` set, its key and old key carried (a member that cannot be is sent as a string
    of its JSON text); the second item then names the reason (UNCARRIABLE_REASONS). The event is
    encoded here, once, so routing and every transport send the same text.
    """
    (pos, schema, table, op, pk, row_data, old_key, changed, audience, committed_at, truncated,
     old_values, old_audience) = row  # fmt: skip
    # Never sent, only matched: a member that cannot be decoded becomes text, which no filter
    # value equals (as an object or array in it would not).
    before = decode_key(old_values)
    audience_before = None if old_audience is None else frozenset(old_audience)
    try:
        event = Event(
            pos=pos,
            schema=schema,
            table=table,
            op=op,
            pk=decode_json(pk),
            row=decode_json(row_data),
            old_key=decode_json(old_key),
            changed=tuple(changed or ()),
            audience=frozenset(audience),
            committed_at=committed_at,
            truncated=truncated,
            old_values=before,
            old_audience=audience_before,
        )
        event.encoded()
        return event, None
    except Exception as exc:  # no value may stop the stream
        reason = exc.reason if isinstance(exc, Uncarriable) else "invalid"
    event = Event(
        pos=pos,
        schema=schema,
        table=table,
        op=op,
        pk=decode_key(pk) or {},
        row=None,
        old_key=decode_key(old_key),
        changed=tuple(changed or ()),
        audience=frozenset(audience),
        committed_at=committed_at,
        truncated=True,
        old_audience=audience_before,
    )
    event.encoded()
    return event, reason


def event_from_row(row: Sequence[Any]) -> Event:
    """A relay.log row (in LOG_COLUMNS order) as an Event (see decode_event)."""
    return decode_event(row)[0]
