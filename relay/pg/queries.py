"""Every SQL statement the relay runs, and the small functions that run them: one place to read.

Policy: each function runs its statements on the connection it is given and returns plain values;
it never retries and sets no deadline: the caller bounds it (``anyio.fail_after(query_timeout)``)
and decides what a failure means (reconnect, answer the client). Client values travel only as
parameters; only constants and generated placeholders are formatted into SQL. A missing or
outdated schema is raised as ``DatabaseError`` with the command that fixes it. The JSON columns of
the log are read as text and decoded by the relay (relay/pg/rows.py), so no stored value can make
the driver raise while a batch is fetched. The replay read, with its filter pre-selection, is in
relay/pg/replay_query.py.
"""

from __future__ import annotations

import math
import random
from typing import Any, Final

import anyio
import psycopg
from psycopg import sql
from psycopg.rows import TupleRow

from relay.core.log import LogState
from relay.core.phoenix import ColumnTypes
from relay.errors import DatabaseError

__all__ = [
    "ALL_OPS",
    "LOG_COLUMNS",
    "READ_BATCH",
    "SCHEMA_VERSION",
    "AsyncConn",
    "Catalog",
    "check_direct_connection",
    "check_listen_works",
    "connect",
    "listen",
    "ping",
    "preflight",
    "prune",
    "read_catalog",
    "read_column_types",
    "read_head",
    "read_log_after",
    "read_log_state",
    "sequence_log",
    "try_sequencer_lock",
    "unlisten",
    "write_heartbeat",
]

SCHEMA_VERSION: Final = 9  # the sql/install.sql version this relay speaks
SEQUENCER_LOCK_KEY: Final = 7236111260339318785
# The log's columns as the relay reads them; relay.sequence_log (sql/install.sql) returns the rows
# it moved in the same shape: change both together.
LOG_COLUMNS: Final = (
    "pos, table_schema, table_name, op, pk::text, row_data::text, old_key::text, changed,"
    " audience, committed_at, truncated, old_values::text, old_audience"
)
READ_BATCH: Final = 1000  # log rows the reader reads per query
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


async def unlisten(conn: AsyncConn, channel: str) -> None:
    """UNLISTEN ``channel``: its notifications stop coming to ``conn``."""
    await conn.execute(sql.SQL("UNLISTEN {}").format(sql.Identifier(channel)))


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


async def sequence_log(conn: AsyncConn, batch: int) -> list[tuple[Any, ...]]:
    """Moves up to ``batch`` committed inbox rows into the log; returns the events it logged,
    committed, in position order (LOG_COLUMNS): one per row taken, or none for an UPDATE that
    changed nothing an event carries."""
    cur = await conn.execute("SELECT * FROM relay.sequence_log(%s)", (batch,))
    return await cur.fetchall()


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
