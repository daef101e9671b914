"""Client input to subscriptions: every rule a request must meet, written once for all transports.

A websocket ``subscribe`` message, a long-poll's query string (``query_message`` turns it into
the same message) and an SSE request's subscriptions (``stream_messages``) are validated by
``parse_subscription`` into a not-yet-live ``Subscription`` and where to resume from. Every rule
raises ``ProtocolError`` with its code and a one-line message; no value a client sends is echoed
back unless it can be encoded (``short``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final

from relay.core.cursor import Cursor
from relay.core.events import OPS
from relay.core.filters import RowFilter
from relay.core.subscription import Subscription
from relay.errors import CursorError, ProtocolError

__all__ = [
    "MAX_COALESCE_MS",
    "MAX_ID_LENGTH",
    "Tracked",
    "parse_object",
    "parse_subscription",
    "query_message",
    "short",
    "stream_messages",
    "subscription_id",
]

MAX_ID_LENGTH: Final = 64
MAX_COALESCE_MS: Final = 60_000

# (schema, table) -> the columns its events carry (the whitelist, or every column) and its key.
Tracked = Mapping[tuple[str, str], frozenset[str]]


def parse_subscription(
    message: Mapping[str, Any],
    sub_id: str,
    *,
    tracked: Tracked,
    head: int,
    epoch: str,
) -> tuple[Subscription, Cursor | str | None]:
    """Validates a subscribe request (websocket message or long-poll query) into a not-yet-live
    Subscription standing at ``head``, and where to resume: None (from now), a Cursor (replay
    after it), or a reset reason for a cursor of another epoch."""
    table, schema = _table(message.get("table")), _schema(message.get("schema"))
    if schema == "relay":
        raise ProtocolError("forbidden", "the relay's own tables cannot be subscribed to")
    carried = [cols for (s, t), cols in tracked.items() if t == table and schema in (None, s)]
    if not carried:
        raise ProtocolError("unknown_table", f"table {short(table)} is not tracked")
    row_filter = RowFilter.parse(message.get("filter"))
    for column in row_filter.columns:
        if not any(column in cols for cols in carried):
            raise ProtocolError(
                "bad_message", f"filter column {short(column)} is not carried by {short(table)}"
            )
    sub = Subscription(
        id=sub_id,
        table=table,
        schema=schema,
        ops=_ops(message.get("ops")),
        filter=row_filter,
        after=head,
        coalesce_ms=_coalesce(message.get("coalesce_ms")),
    )
    return sub, _since(message.get("since"), epoch)


def parse_object(text: str) -> dict[str, Any]:
    """A client's text frame as a JSON object."""
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        raise ProtocolError("bad_message", "not valid JSON") from None
    if not isinstance(value, dict):
        raise ProtocolError("bad_message", "a message is a JSON object")
    return value


def short(value: object) -> str:
    """A client value quoted for an error message: at most 40 characters, '?' if not JSON."""
    text = value if isinstance(value, str) else json.dumps(value)[:40] if _jsonable(value) else "?"
    return repr(text[:40])


def _jsonable(value: object) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError, RecursionError):
        return False
    return True


def _utf8_length(value: object) -> int:
    """The UTF-8 length of a client string, or -1 when it is not one (a lone surrogate, which
    JSON's escapes allow, could not be echoed back in a frame)."""
    if not isinstance(value, str):
        return -1
    try:
        return len(value.encode("utf-8"))
    except UnicodeEncodeError:
        return -1


def subscription_id(value: object) -> str:
    """A subscription id: a string of 1 to MAX_ID_LENGTH bytes of UTF-8."""
    if not 0 < _utf8_length(value) <= MAX_ID_LENGTH:
        raise ProtocolError("bad_message", f"id must be a string of 1 to {MAX_ID_LENGTH} bytes")
    assert isinstance(value, str)
    return value


def _table(value: object) -> str:
    if not 0 < _utf8_length(value) <= 63:
        raise ProtocolError("bad_message", "table must be a table name")
    assert isinstance(value, str)
    return value


def _schema(value: object) -> str | None:
    if value is None:
        return None
    if not 0 < _utf8_length(value) <= 63:
        raise ProtocolError("bad_message", "schema must be a schema name")
    assert isinstance(value, str)
    return value


def _ops(value: object) -> frozenset[str]:
    if value is None:
        return OPS
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(op, str) and op in OPS for op in value)
    ):
        raise ProtocolError("bad_message", "ops must be a non-empty list of INSERT, UPDATE, DELETE")
    return frozenset(value)


def _coalesce(value: object) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_COALESCE_MS:
        raise ProtocolError(
            "bad_message", f"coalesce_ms must be an integer from 0 to {MAX_COALESCE_MS}"
        )
    return value


def _since(value: object, epoch: str) -> Cursor | str | None:
    """None: from now. A Cursor: replay after it. A str: the reset reason for a foreign epoch."""
    if value is None:
        return None
    try:
        cursor = Cursor.decode(value)
    except CursorError as exc:
        raise ProtocolError("bad_cursor", str(exc)) from None
    if cursor.epoch != epoch:
        return "epoch_changed"
    return cursor


def query_message(query: Mapping[str, str]) -> dict[str, Any]:
    """A long-poll's query string as a subscribe message, so both transports validate alike."""
    message: dict[str, Any] = {"table": query.get("table"), "schema": query.get("schema")}
    if query.get("since"):
        message["since"] = query["since"]
    if query.get("filter"):
        try:
            message["filter"] = json.loads(query["filter"])
        except (ValueError, RecursionError):
            raise ProtocolError("bad_message", "filter is not valid JSON") from None
    if query.get("ops"):
        message["ops"] = [op.strip() for op in query["ops"].split(",")]
    return message


def stream_messages(query: Mapping[str, str], since: str | None) -> list[dict[str, Any]]:
    """An SSE request's subscriptions as subscribe messages, each resuming from the stream's one
    cursor ``since`` (None: from now): ``subs``, a JSON array of subscription objects (``id``,
    ``table``, ``schema``, ``filter``, ``ops``; an id defaults to the object's index), or else
    the long-poll's parameters for one subscription (id ``0``). A stream has one position for
    all its subscriptions, so neither ``since`` nor ``coalesce_ms`` (which would hold one
    subscription's events behind another's) is taken per subscription."""
    if "subs" not in query:
        messages = [{**query_message({k: v for k, v in query.items() if k != "since"}), "id": "0"}]
    else:
        try:
            value = json.loads(query["subs"])
        except (ValueError, RecursionError):
            raise ProtocolError("bad_message", "subs is not valid JSON") from None
        if not isinstance(value, list) or not value or not all(isinstance(m, dict) for m in value):
            raise ProtocolError("bad_message", "subs must be a non-empty array of objects")
        messages = [{"id": str(index), **message} for index, message in enumerate(value)]
    for message in messages:
        for key in ("since", "coalesce_ms"):
            if key in message:
                raise ProtocolError(
                    "bad_message", f"{key} is not taken per subscription on a stream"
                )
        if since:
            message["since"] = since
    return messages
