"""The replay read: one page of one subscription's log rows for a connection's audience keys.

Policy as in relay/pg/queries.py (statements run on the connection given, values as parameters,
the caller bounds the time). Audience and table are narrowed in SQL by the GIN indexes on
``audience`` and ``old_audience``; the subscription's ops and equality clauses pre-select rows in
SQL, a narrowing only (the caller still decides exactly, relay/core/moves.py); one query examines
at most ``REPLAY_SCAN_ROWS`` rows, so its database time stays bounded.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from relay.core.filters import RowFilter
from relay.core.log import ReplayPage
from relay.core.prefilter import ColumnValues
from relay.pg.queries import ALL_OPS, LOG_COLUMNS, AsyncConn
from relay.pg.rows import event_from_row

__all__ = [
    "AUDIENCE_MATCH",
    "REPLAY_SCAN_ROWS",
    "fetch_replay",
    "replay_filter_sql",
    "replay_query",
]

# The same columns as stored (jsonb), for SQL that still has to look inside the values.
LOG_STORED_COLUMNS: Final = (
    "pos, table_schema, table_name, op, pk, row_data, old_key, changed, audience, committed_at,"
    " truncated, old_values, old_audience"
)
# The frames an UPDATE can be delivered as besides itself: a move-out is a DELETE, an entry an
# INSERT (relay/core/moves.py). A replay for either reads the UPDATEs too.
MOVE_OPS: Final = frozenset({"INSERT", "DELETE"})
# One replay query (websocket replay or long-poll catch-up) examines at most this many of the
# user's log rows of the table, however few match the subscription's ops and filter: its
# database time stays bounded, and a never-matching filter moves on a page at a time.
REPLAY_SCAN_ROWS: Final = 5000
# The rows a reader with the audience keys %(keys)s may see, written for the indexes of
# sql/install.sql: its audience or, an UPDATE's move-out, its old audience holds one of them.
AUDIENCE_MATCH: Final = "(audience && %(keys)s::text[] OR old_audience && %(keys)s::text[])"


# -- replay pages ---------------------------------------------------------------------------------


def _sendable(text: str, encoding: str) -> bool:
    """Whether a string can be a query parameter: PostgreSQL text holds no NUL, and the
    connection's encoding must be able to carry it. A string that cannot be sent cannot
    equal any stored value either (those all came through that encoding)."""
    if "\x00" in text:
        return False
    try:
        text.encode(encoding)
    except (UnicodeEncodeError, LookupError):
        return False
    return True


def _value_matches(
    value: str, values: ColumnValues, n: int, encoding: str
) -> tuple[str, dict[str, Any]]:
    """SQL true when the jsonb ``value`` could equal one of the column's filter values.

    The same JSON types as RowFilter.matches; strings and booleans compare exactly. Numbers
    compare as doubles, the way Python's ``json`` reads them (RowFilter's float caveat), so
    the SQL never rejects a number Python would match; past the double range (and below 1e-300,
    where PostgreSQL's cast to double fails) every number passes on to Python.
    """
    params: dict[str, Any] = {}
    branches = []
    strings = [text for text in values.strings if _sendable(text, encoding)]
    if strings:
        params[f"s{n}"] = strings
        branches.append(f"WHEN 'string' THEN {value} #>> '{{}}' = ANY(%(s{n})s::text[])")
    if values.numbers or values.beyond_doubles:
        params[f"n{n}"] = list(values.numbers)
        number = f"({value})::numeric"
        branches.append(
            f"WHEN 'number' THEN CASE WHEN abs({number}) >= 1e308"
            f" OR ({number} <> 0 AND abs({number}) < 1e-300) THEN true"
            f" ELSE ({number})::float8 = ANY(%(n{n})s::float8[]) END"
        )
    if values.booleans:
        params[f"b{n}"] = list(values.booleans)
        branches.append(f"WHEN 'boolean' THEN ({value})::boolean = ANY(%(b{n})s::boolean[])")
    if values.null:
        branches.append("WHEN 'null' THEN true")
    if not branches:
        return "false", params
    return f"CASE jsonb_typeof({value}) {' '.join(branches)} ELSE false END", params


def replay_filter_sql(
    ops: frozenset[str], row_filter: RowFilter, encoding: str = "utf-8"
) -> tuple[str, dict[str, Any]]:
    """A condition on relay.log rows (named parameters) keeping every row the subscription's
    ops and filter can match: the filter narrows what a replay reads, in the database.

    It mirrors RowFilter.matches: a column is looked up in ``row_data``, else in ``pk``; when
    ``row_data`` is not an object (a truncated event, its values unknown) only conditions on
    key columns are checked and the others pass. An UPDATE is also kept when the row before it
    matches (RowFilter.matched_before: ``old_values``, else ``row_data``, else ``old_key``): it
    may be a move-out, and with INSERT or DELETE among the ops every UPDATE is read (an entry or
    a move-out is delivered as one). It may keep a row Python then rejects (numbers compare as
    doubles), never the other way round. Client values travel only as parameters.
    """
    conditions: list[str] = []
    params: dict[str, Any] = {}
    read_ops = ops | {"UPDATE"} if ops & MOVE_OPS else ops
    if read_ops != ALL_OPS:
        conditions.append("op = ANY(%(ops)s::text[])")
        params["ops"] = sorted(read_ops)
    after: list[str] = []
    before: list[str] = []
    for n, values in enumerate(row_filter.by_type()):
        if not _sendable(values.column, encoding):  # no row or key can have this column
            after.append("jsonb_typeof(row_data) IS DISTINCT FROM 'object'")
            before.append(after[-1])
            continue
        params[f"c{n}"] = values.column
        c = f"%(c{n})s"
        in_row, row_params = _value_matches(
            f"coalesce(row_data -> {c}, pk -> {c})", values, n, encoding
        )
        in_key, _ = _value_matches(f"pk -> {c}", values, n, encoding)
        was_in_row, _ = _value_matches(
            f"coalesce(old_values -> {c}, row_data -> {c}, old_key -> {c})", values, n, encoding
        )
        was_in_key, _ = _value_matches(f"old_key -> {c}", values, n, encoding)
        params.update(row_params)
        after.append(
            f"CASE WHEN jsonb_typeof(row_data) = 'object' THEN {in_row}"
            f" ELSE NOT pk ? {c} OR {in_key} END"
        )
        before.append(
            f"CASE WHEN jsonb_typeof(row_data) = 'object' THEN {was_in_row}"
            f" ELSE NOT old_key ? {c} OR {was_in_key} END"
        )
    if after:
        now = " AND ".join(f"({c})" for c in after)
        then = " AND ".join(f"({c})" for c in before)
        conditions.append(f"({now}) OR (op = 'UPDATE' AND {then})")
    return " AND ".join(f"({c})" for c in conditions) or "true", params


def replay_query(
    *,
    keys: Sequence[str],
    table: str,
    schema: str | None,
    after: int,
    upto: int,
    limit: int,
    scan: int,
    ops: frozenset[str],
    row_filter: RowFilter,
    encoding: str = "utf-8",
    match: str = AUDIENCE_MATCH,
) -> tuple[str, dict[str, Any]]:
    """The SQL of one replay page and its parameters (see ``fetch_replay``); ``match`` is the
    audience condition (bench/replay_cost.py compares index layouts with it)."""
    condition, params = replay_filter_sql(ops, row_filter, encoding)
    # Streams: the index scan stops once `limit` rows were kept, or after `scan` rows, the last
    # of which (k = scan) comes back too, kept or not, to say how far the page reached.
    # Only constants and generated placeholders are formatted in: values travel as parameters.
    query = (
        f"SELECT keep, k, {LOG_COLUMNS} FROM ("  # noqa: S608
        f" SELECT s.*, ({condition}) AS keep, row_number() OVER (ORDER BY s.pos) AS k FROM ("
        f"  SELECT {LOG_STORED_COLUMNS} FROM relay.log"
        "   WHERE pos > %(after)s AND pos <= %(upto)s"
        "   AND (%(table)s = '' OR table_name = %(table)s)"  # '': every table (ANY_TABLE)
        "   AND (%(schema)s::text IS NULL OR table_schema = %(schema)s)"
        f"   AND {match}"
        "   ORDER BY pos LIMIT %(scan)s) AS s"
        ") AS w WHERE keep OR k = %(scan)s ORDER BY pos LIMIT %(limit)s"
    )
    params.update(
        after=after, upto=upto, table=table, schema=schema, keys=list(keys),
        scan=max(scan, limit), limit=limit,
    )  # fmt: skip
    return query, params


async def fetch_replay(
    conn: AsyncConn,
    *,
    keys: Sequence[str],
    table: str,
    schema: str | None,
    after: int,
    upto: int,
    limit: int,
    ops: frozenset[str] = ALL_OPS,
    row_filter: RowFilter | None = None,
    scan: int = REPLAY_SCAN_ROWS,
    match: str = AUDIENCE_MATCH,
) -> ReplayPage:
    """One page of the log between two positions, for one reader and table (every table for
    ANY_TABLE), in position order.

    Audience and table are filtered in SQL: rows whose audience or old audience (an UPDATE's
    move-out goes to the old audience) holds one of the reader's ``keys`` (its user id and role
    key: relay/core/audience.py; the GIN index on audience and the partial one on old audience
    keep one user's replay from scanning everyone's events). The query examines at most ``scan``
    of those rows (at least ``limit``) and returns at most ``limit`` of them: the ones the
    subscription's ops and filter can match (``replay_filter_sql``), which the caller still
    decides exactly (``Subscription.delivery``). ``scanned_to`` says where the next page starts:
    after the last row returned when the page is full, after the last row examined when the scan
    bound was hit, else ``upto``.
    """
    query, params = replay_query(
        keys=keys, table=table, schema=schema, after=after, upto=upto, limit=limit, scan=scan,
        ops=ops, row_filter=row_filter or RowFilter(), encoding=conn.info.encoding, match=match,
    )  # fmt: skip
    # Never prepared: after a few runs of one query text a prepared statement may get a generic
    # plan, blind to the user and the positions, which scanned the whole log: about 100 times
    # slower on a log of a million rows (BENCHMARKS.md).
    cur = await conn.execute(query, params, prepare=False)
    rows = await cur.fetchall()
    events = [event_from_row(row[2:]) for row in rows if row[0]]
    if len(events) == limit:
        scanned_to = events[-1].pos  # full: more may match right after
    elif rows and rows[-1][1] == params["scan"]:
        scanned_to = rows[-1][2]  # the scan bound: the last row examined
    else:
        scanned_to = upto
    return ReplayPage(events, scanned_to)
