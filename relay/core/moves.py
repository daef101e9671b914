"""What a row change is to one subscriber: the one decision between an UPDATE, a move-out, an
entry and nothing, which live routing, replays and long-polls all ask (docs/protocol.md, 5.4).

A subscriber (a connection's audience keys, a row filter) *sees* a row when one of its keys (its
user id, its role keys: relay/core/audience.py) is in the row's audience and the row matches the
filter. INSERT and DELETE are delivered as they are to the subscribers that see
the row. An UPDATE is decided by whether the subscriber saw the row before it (the old audience,
the old values: ``Event.audience_before``, ``RowFilter.matched_before``) and sees it after:

    before  after  delivered
    yes     yes    the UPDATE; nothing when no carried column changed and the key did not (only
                   the audience changed, and the subscriber is in both)
    yes     no     the move-out (``Event.moved_out``): a DELETE under the old key, nothing else
    no      yes    the entry (``Event.moved_in``): an INSERT with the new values
    no      no     nothing

A subscriber with no key in the new audience (one that was in the old audience by a role key,
say, and is in the new one by none) is only ever given the move-out, which carries the row's old
key and nothing of its new values. Both forms are built once per event and cached on it, so a
fan-out encodes each once.
"""

from __future__ import annotations

from relay.core.events import Event
from relay.core.filters import RowFilter

__all__ = ["seen_as"]


def seen_as(event: Event, keys: tuple[str, ...], row_filter: RowFilter) -> Event | None:
    """The form in which a subscriber (its audience ``keys``, ``row_filter``) is sent the event,
    or None. It is in an audience when any of its keys is."""
    reader = not event.audience.isdisjoint(keys)
    after = reader and row_filter.matches(event)
    if event.op != "UPDATE":
        return event if after else None
    old_audience = event.old_audience
    if old_audience is None and row_filter.empty:
        return event if after else None  # the same audience, no filter: the same view
    was_reader = reader if old_audience is None else not old_audience.isdisjoint(keys)
    before = was_reader and row_filter.matched_before(event)
    if not before:
        return event.moved_in() if after else None
    if not after:
        return event.moved_out()
    if event.old_values is not None and not event.old_values and event.old_key == event.pk:
        return None  # only the audience changed, and this user is in both
    return event
