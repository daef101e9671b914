"""Every SQL statement the relay runs, and the small functions that run them: one place to read.

Policy: each function runs its statements on the connection it is given and returns plain values;
it never retries and sets no deadline: the caller bounds it (``anyio.fail_after(query_timeout)``)
and decides what a failure means (reconnect, answer the client). Client values travel only as
parameters; only constants and generated placeholders are formatted into SQL. A missing or
outdated schema is raised as ``DatabaseError`` with the command that fixes it. The JSON columns of
the log are read as text and decoded by the relay (relay/pg/rows.py), so no stored value can make
the driver raise while a batch is fetched.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any, Final

import anyio
import psycopg
from psycopg import sql
from psycopg.rows import TupleRow

from relay.core.filters import ColumnValues, RowFilter
from relay.core.log import LogState, ReplayPage
from relay.core.phoenix import ColumnTypes
from relay.errors import DatabaseError
from relay.pg.rows import event_from_row

__all__ = [
    "ALL_OPS",
    "LOG_COLUMNS",
    "READ_BATCH",
    "REPLAY_SCAN_ROWS",
    "SCHEMA_VERSION",
    "AsyncConn",
    "Catalog",
    "check_direct_connection",
    "check_listen_works",
    "connect",
    "fetch_replay",
    "listen",
    "ping",
    "preflight",
    "prune",
    "read_catalog",
    "read_column_types",
    "read_head",
    "read_log_after",
    "read_log_state",
    "replay_filter_sql",
    "replay_query",
    "sequence_batch",
    "try_sequencer_lock",
    "write_heartbeat",
]

SCHEMA_VERSION: Final = 5  # the sql/install.sql version this relay speaks
SEQUENCER_LOCK_KEY: Final = 7236111260339318785
LOG_COLUMNS: Final = (
    "pos, table_schema, table_name, op, pk::text, row_data::text, old_key::text, changed,"
    " audience, committed_at, truncated, old_values::text, old_audience"
)
# The same columns as stored (jsonb), for SQL that still has to look inside the values.
LOG_STORED_COLUMNS: Final = (
    "pos, table_schema, table_name, op, pk, row_data, old_key, changed, audience, committed_at,"
    " truncated, old_values, old_audience"
)
# The frames an UPDATE can be delivered as besides itself: a move-out is a DELETE, an entry an
# INSERT (relay/core/moves.py). A replay for either reads the UPDATEs too.
MOVE_OPS: Final = frozenset({"INSERT", "DELETE"})
READ_BATCH: Final = 1000  # log rows the reader reads per query
# One replay query (websocket replay or long-poll catch-up) examines at most this many of the
# user's log rows of the table, however few match the subscription's ops and filter: its
# database time stays bounded, and a never-matching filter moves on a page at a time.
REPLAY_SCAN_ROWS: Final = 5000
ALL_OPS: Final = frozenset({"INSERT", "UPDATE", "DELETE"})
LISTEN_PROBE_TIMEOUT: Final = 3.0

AsyncConn = psycopg.AsyncConnection[TupleRow]
# Every tracked table, (schema, table), with the columns its events carry.
Catalog = dict[tuple[str, str], frozenset[str]]


async def connect(dsn: str, application_name: str, timeout: float) -> AsyncConn:
    """An autocommit connection, tagged so operators can find it in pg_stat_activity."""
    with anyio.fail_after(timeout + 1):
        return await psycopg.AsyncConnection.connect(
            dsn,
            autocommit=True,
            application_name=application_name,
            connect_timeout=max(1, math.ceil(timeout)),
        )


# -- the log's state, the catalog, preflight ---------------------------------------------------


async def read_log_state(conn: AsyncConn) -> LogState:
    """The log's epoch, head, pruning horizon and notify setting; DatabaseError when the schema
    is missing or older than SCHEMA_VERSION."""
    try:
        cur = await conn.execute(
            "SELECT replace(s.epoch::text, '-', ''), h.pos, h.pruned_through, s.notify,"
            " s.schema_version FROM relay.settings AS s, relay.head AS h"
        )
    except psycopg.errors.UndefinedTable:
        raise DatabaseError(
            "the relay schema is not installed: run `relay sql install` (or psql -f install.sql)"
        ) from None
    row = await cur.fetchone()
    assert row is not None
    if row[4] < SCHEMA_VERSION:
        raise DatabaseError(
            f"the relay schema is version {row[4]}, this relay needs {SCHEMA_VERSION}: "
            "run `relay sql install` to upgrade it in place"
        )
    return LogState(epoch=row[0], head=row[1], pruned_through=row[2], notify=row[3])


async def read_head(conn: AsyncConn) -> int | None:
    """The log's head position (None if the head row is missing)."""
    row = await (await conn.execute("SELECT pos FROM relay.head")).fetchone()
    return None if row is None else int(row[0])


async def read_catalog(conn: AsyncConn) -> Catalog:
    """Every tracked table with the columns its events carry: the whitelist (or every column)
    and the primary key, which events always carry. The whitelist is kept by attribute number,
    so a whitelisted column is named as it is now, renamed or not (as capture carries it)."""
    cur = await conn.execute(
        "SELECT n.nspname, c.relname, t.pk_columns::text[] || ARRAY("
        "  SELECT a.attname::text FROM pg_attribute AS a"
        "   WHERE a.attrelid = t.tbl AND a.attnum > 0 AND NOT a.attisdropped"
        "     AND (t.column_nums IS NULL OR a.attnum = ANY (t.column_nums)))"
        " FROM relay.tracked AS t"
        " JOIN pg_class AS c ON c.oid = t.tbl JOIN pg_namespace AS n ON n.oid = c.relnamespace"
    )
    return {(str(s), str(t)): frozenset(cols) for s, t, cols in await cur.fetchall()}


async def read_column_types(conn: AsyncConn, catalog: Catalog) -> ColumnTypes:
    """The carried columns of every tracked table (``catalog``) with their type names
    (pg_type.typname: ``int8``, ``_text``...), in column order: what the Supabase dialect's
    changes list in ``columns`` (relay/core/phoenix.py)."""
    cur = await conn.execute(
        "SELECT n.nspname, c.relname, a.attname::text, ty.typname::text FROM relay.tracked AS t"
        " JOIN pg_class AS c ON c.oid = t.tbl JOIN pg_namespace AS n ON n.oid = c.relnamespace"
        " JOIN pg_attribute AS a ON a.attrelid = t.tbl AND a.attnum > 0 AND NOT a.attisdropped"
        " JOIN pg_type AS ty ON ty.oid = a.atttypid"
        " ORDER BY n.nspname, c.relname, a.attnum"
    )
    types: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for schema, table, column, type_name in await cur.fetchall():
        if column in catalog.get((schema, table), ()):
            types.setdefault((schema, table), []).append((column, type_name))
    return {table: tuple(columns) for table, columns in types.items()}


async def check_direct_connection(conn: AsyncConn) -> None:
    """Refuses a pooler in transaction mode, where LISTEN silently never works.

    Two autocommit statements on one client connection run on the same backend unless a pooler
    (PgBouncer with pool_mode=transaction) hands each transaction to another server connection.
    """
    pids = set()
    for _ in range(3):
        cur = await conn.execute("SELECT pg_backend_pid()")
        row = await cur.fetchone()
        assert row is not None
        pids.add(row[0])
    if len(pids) > 1:
        raise DatabaseError(
            "the DSN goes through a connection pooler in transaction mode (PgBouncer?): LISTEN "
            "cannot work there; point the relay at Postgres directly or at a session-mode pool"
        )


async def check_listen_works(dsn: str, timeout: float) -> None:
    """Proves that NOTIFY reaches a LISTENing connection made with this DSN.

    Through PgBouncer in transaction mode a LISTEN lands on whichever server connection serves
    that one statement, and notifications never come back to the client: the relay would wait
    forever, silently. Comparing backend pids catches that only when the pooler happens to hand
    out another server connection, so this asks the question that matters directly.
    """
    channel = f"relay_probe_{random.getrandbits(48):x}"
    async with await connect(dsn, "pgrelay-preflight", timeout) as listener:
        await check_direct_connection(listener)
        await listen(listener, channel)
        async with await connect(dsn, "pgrelay-preflight", timeout) as sender:
            await sender.execute("SELECT pg_notify(%s, 'probe')", (channel,))
        async for _ in listener.notifies(timeout=LISTEN_PROBE_TIMEOUT, stop_after=1):
            return
    raise DatabaseError(
        "NOTIFY does not reach a LISTENing connection through this DSN: it goes through a "
        "connection pooler in transaction mode (PgBouncer?); point the relay at Postgres "
        "directly or at a session-mode pool"
    )


async def preflight(dsn: str, timeout: float) -> Catalog:
    """Fails at start, with one line, on a database the relay cannot work with (no schema, an
    old one, a pooler that loses notifications); returns the tracked-table catalog."""
    async with await connect(dsn, "pgrelay-preflight", timeout) as conn:
        await read_log_state(conn)
        catalog = await read_catalog(conn)
    await check_listen_works(dsn, timeout)
    return catalog


# -- the reader, the sequencer, maintenance ------------------------------------------------------


async def listen(conn: AsyncConn, channel: str) -> None:
    """LISTEN on ``channel``: its notifications arrive through ``conn.notifies()``."""
    await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))


async def ping(conn: AsyncConn) -> None:
    """One round trip: proves the connection answers."""
    await conn.execute("SELECT 1")


async def read_log_after(conn: AsyncConn, after: int, limit: int) -> list[tuple[Any, ...]]:
    """Up to ``limit`` log rows after position ``after``, in position order (LOG_COLUMNS)."""
    cur = await conn.execute(
        f"SELECT {LOG_COLUMNS} FROM relay.log WHERE pos > %s ORDER BY pos LIMIT %s",  # noqa: S608
        (after, limit),
    )
    return await cur.fetchall()


async def try_sequencer_lock(conn: AsyncConn) -> bool:
    """Takes the sequencer's session lock if no other session holds it; never waits."""
    cur = await conn.execute("SELECT pg_try_advisory_lock(%s)", (SEQUENCER_LOCK_KEY,))
    row = await cur.fetchone()
    return bool(row and row[0])


async def sequence_batch(conn: AsyncConn, batch: int) -> int:
    """Moves up to ``batch`` committed inbox rows into the log; returns how many it moved."""
    row = await (await conn.execute("SELECT relay.sequence_batch(%s)", (batch,))).fetchone()
    assert row is not None
    return int(row[0])


async def prune(conn: AsyncConn, retention: float, limit: int) -> int:
    """Deletes up to ``limit`` log rows older than ``retention`` seconds; returns how many."""
    cur = await conn.execute(
        "SELECT relay.prune(make_interval(secs => %s), %s)", (retention, limit)
    )
    row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def write_heartbeat(conn: AsyncConn, source: str) -> None:
    """A heartbeat row into the inbox: it travels inbox, sequencer, log, every replica."""
    await conn.execute("SELECT relay.heartbeat(%s)", (source,))


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
) -> tuple[str, dict[str, Any]]:
    """The SQL of one replay page and its parameters (see ``fetch_replay``)."""
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
        "   AND (audience && %(keys)s::text[] OR old_audience && %(keys)s::text[])"
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
        ops=ops, row_filter=row_filter or RowFilter(), encoding=conn.info.encoding,
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
