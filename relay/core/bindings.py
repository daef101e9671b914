"""A ``postgres_changes`` binding of a Supabase channel join, validated into a subscription.

realtime-js sends each ``.on('postgres_changes', {event, schema, table, filter}, cb)`` of a
channel verbatim in its join (``config.postgres_changes``). ``parse_binding`` reads one entry as
Supabase Realtime does (docs/supabase.md): ``event`` ``*``, ``INSERT``, ``UPDATE`` or ``DELETE``
(any other value is ``*``); ``schema`` and ``table`` with ``*`` for every one; only a schema
means every table of it, only a table means schema ``public``; a ``filter`` in the text syntax
(relay/core/postgrest.py). The result is the same ``Subscription`` a protocol v1 ``subscribe``
makes (relay/core/requests.py), so matching, routing and replay are shared. ``binding_id`` is
the deterministic id the join reply gives it.

An entry may also carry ``cursor`` (pgrelay's opt-in resume): a cursor to replay after, or
null to start now; either way its pushes then carry their cursor. Entries are bounded like v1
subscriptions (names of 1 to 63 bytes, the filter's limits); errors say what Supabase would
say where it says something, prefixed as its system messages are.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from relay.core.cursor import Cursor
from relay.core.events import OPS, dumps
from relay.core.phoenix import ColumnTypes, sub_id
from relay.core.postgrest import parse_filter
from relay.core.requests import Tracked, short
from relay.core.session import Limits
from relay.core.subscription import ANY_TABLE, Subscription
from relay.errors import AuthError, CursorError, ProtocolError

__all__ = [
    "BindingSpec",
    "assign_ids",
    "auth_reason",
    "binding_id",
    "parse_binding",
    "parse_bindings",
]

_ID_BITS: Final = 0x7FFFFFF  # the range of Erlang's phash2, as Supabase's ids have
_NO_PARAMS: Final = (
    "No subscription params provided. Please provide at least a `schema` or `table` to subscribe to"
)


@dataclass(frozen=True, slots=True)
class BindingSpec:
    """A validated binding: what to subscribe to, and where to resume (``resume``: pushes carry
    cursors; ``since``: the cursor to replay after, or a reset reason for another epoch's)."""

    table: str
    schema: str | None
    ops: frozenset[str]
    subscription: Subscription
    resume: bool
    since: Cursor | str | None


def binding_id(entry: Mapping[str, Any]) -> int:
    """A truthy, deterministic id for a binding, from its event, schema, table and filter."""
    key = dumps([entry.get(name) for name in ("event", "schema", "table", "filter")])
    return (zlib.crc32(key.encode("utf-8", "surrogatepass")) & _ID_BITS) or 1


def assign_ids(entries: list[dict[str, Any]]) -> list[int]:
    """Each entry's id: identical bindings share one (Supabase collapses them too), distinct
    ones never do (a rare crc collision moves to the next free id)."""
    given: dict[str, int] = {}
    ids = []
    for entry in entries:
        key = dumps([entry.get(name) for name in ("event", "schema", "table", "filter")])
        if key not in given:
            chosen = binding_id(entry)
            while chosen in given.values():
                chosen = chosen % _ID_BITS + 1
            given[key] = chosen
        ids.append(given[key])
    return ids


def auth_reason(exc: AuthError) -> str:
    """A refused join token as Supabase words the join error's reason."""
    if exc.reason == "expired":
        return "InvalidJWTToken: Token has expired"
    if exc.reason in ("missing_exp", "missing_role"):
        return "InvalidJWTToken: Fields `role` and `exp` are required in JWT"
    if exc.reason == "malformed":
        return "MalformedJWT: The token provided is not a valid JWT"
    return f"Unauthorized: {exc}"


def _name(value: object, what: str) -> str:
    if not isinstance(value, str) or not 0 < len(value.encode("utf-8", "surrogatepass")) <= 63:
        raise ProtocolError("bad_message", f"{what} must be a name of 1 to 63 bytes")
    return value


def _ops(event: object) -> frozenset[str]:
    upper = event.upper() if isinstance(event, str) else "*"
    return frozenset({upper}) if upper in OPS else OPS


def _scope(entry: Mapping[str, Any]) -> tuple[str, str]:
    """(schema, table) as Supabase reads them; ``*`` for every one."""
    schema, table, flt = entry.get("schema"), entry.get("table"), entry.get("filter")
    has_filter = flt is not None
    if schema is not None and table is not None:
        return _name(schema, "schema"), _name(table, "table")
    if schema is not None and not has_filter:
        return _name(schema, "schema"), "*"
    if table is not None and not has_filter:
        return "public", _name(table, "table")
    raise ProtocolError("bad_message", _NO_PARAMS)


def parse_binding(
    entry: Mapping[str, Any], sid: str, *, tracked: Tracked, types: ColumnTypes, head: int,
    epoch: str,
) -> BindingSpec:  # fmt: skip
    """Validates one join entry into a not-yet-live Subscription standing at ``head``.

    Raises ProtocolError with the message the channel's system error carries."""
    schema, table = _scope(entry)
    if schema == "relay":
        raise ProtocolError("forbidden", "the relay's own tables cannot be subscribed to")
    flt = entry.get("filter")
    if flt is not None and not isinstance(flt, str):
        raise ProtocolError("bad_message", "Error parsing `filter` params: a filter is a string")
    any_schema = None if schema == "*" else schema
    any_table = ANY_TABLE if table == "*" else table
    if any_table != ANY_TABLE:
        carried = [
            columns for (s, t), columns in tracked.items()
            if t == table and any_schema in (None, s)
        ]  # fmt: skip
        if not carried:
            raise ProtocolError("unknown_table", f"table {short(schema)}.{short(table)} is not "
                                "tracked by pgrelay")  # fmt: skip
    else:
        carried = [
            columns for (s, _), columns in tracked.items() if any_schema in (None, s)
        ]  # fmt: skip
    column_types = dict(types.get((schema, table), ())) if any_schema and any_table else None
    row_filter = parse_filter(flt or "", column_types or None)
    for column in row_filter.columns:
        if not any(column in columns for columns in carried):
            raise ProtocolError(
                "bad_message",
                f"Error parsing `filter` params: invalid column for filter {short(column)}",
            )
    resume = "cursor" in entry
    since: Cursor | str | None = None
    if resume and entry["cursor"] is not None:
        try:
            cursor = Cursor.decode(entry["cursor"])
        except CursorError as exc:
            raise ProtocolError("bad_cursor", str(exc)) from None
        since = cursor if cursor.epoch == epoch else "epoch_changed"
    ops = _ops(entry.get("event"))
    sub = Subscription(
        id=sid, table=any_table, schema=any_schema, ops=ops, filter=row_filter, after=head
    )
    return BindingSpec(any_table, any_schema, ops, sub, resume, since)


def parse_bindings(
    topic: str, entries: list[dict[str, Any]], ids: list[int], *, tracked: Tracked,
    types: ColumnTypes, head: int, epoch: str, held: list[Subscription], limits: Limits,
    on_limit: Callable[[str], None],
) -> list[BindingSpec]:  # fmt: skip
    """A join's distinct bindings validated, within the socket's limits beside the ``held``
    subscriptions, or ProtocolError for the first that is not (``on_limit`` names a limit hit)."""
    specs: dict[str, BindingSpec] = {}
    for entry, id_ in zip(entries, ids, strict=True):
        sid = sub_id(topic, id_)
        if sid not in specs:
            specs[sid] = parse_binding(entry, sid, tracked=tracked, types=types, head=head,
                                       epoch=epoch)  # fmt: skip
    if len(held) + len(specs) > limits.max_subscriptions:
        on_limit("subscriptions")
        raise ProtocolError(
            "too_many_subscriptions",
            f"TooManyBindings: at most {limits.max_subscriptions} bindings per connection",
        )
    cost = sum(spec.subscription.filter.cost for spec in specs.values())
    if sum(sub.filter.cost for sub in held) + cost > limits.max_filter_bytes:
        on_limit("filter_bytes")
        raise ProtocolError(
            "filter_budget_exceeded",
            "FilterBudgetExceeded: the connection's filters would pass RELAY_MAX_FILTER_BYTES",
        )
    return list(specs.values())
