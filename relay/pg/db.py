"""The Postgres shell: log reader, sequencer, replay queries. All the relay's SQL is here.

Each long-lived role is a supervised loop on a connection of its own:

* ``LogReader`` LISTENs on ``relay_log`` and reads ``relay.log`` by position. It waits for the
  doorbell in windows (``notifies(timeout=listen_window)``); between windows it reads the log,
  which doubles as the heartbeat query. Every database call runs under ``query_timeout``, so a
  backend that hangs (SIGSTOP, a dead network path) is detected in about one window plus one
  timeout; a killed backend or a restart fails at once. On any failure it reconnects with
  capped, jittered backoff, LISTENs again and reads from its last position: nothing committed
  during the gap is lost.
* ``Sequencer`` competes for an advisory lock; the holder moves committed inbox rows into the
  log (``relay.sequence_batch``) whenever the inbox doorbell rings, or on ``poll_interval`` when
  the database has notify off. The lock is a session lock: if the holder dies, its backend goes,
  the lock is released and another replica takes over within ``takeover_interval``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from typing import Any, Final

import anyio
import psycopg
import structlog
from psycopg.rows import TupleRow

from relay.core.backoff import Backoff
from relay.core.events import Event, Uncarriable, decode_json, decode_key
from relay.core.filters import ColumnValues, RowFilter
from relay.core.log import LogState, ReplayPage
from relay.errors import DatabaseError

__all__ = [
    "LogReader",
    "Sequencer",
    "check_direct_connection",
    "check_listen_works",
    "connect",
    "decode_event",
    "event_from_row",
    "fetch_replay",
    "read_catalog",
    "read_log_state",
    "replay_filter_sql",
    "replay_query",
]

SCHEMA_VERSION: Final = 3  # the sql/install.sql version this relay speaks
SEQUENCER_LOCK_KEY: Final = 7236111260339318785
# The JSON columns come as text: the relay decodes them itself (relay/core/events.py
# decode_json), so no value can make the driver raise while fetching a batch.
LOG_COLUMNS: Final = (
    "pos, table_schema, table_name, op, pk::text, row_data::text, old_key::text, changed,"
    " audience, committed_at, truncated"
)
# The same columns as stored (jsonb), for SQL that still has to look inside the values.
LOG_STORED_COLUMNS: Final = (
    "pos, table_schema, table_name, op, pk, row_data, old_key, changed, audience, committed_at,"
    " truncated"
)
READ_BATCH: Final = 1000
# One replay query (websocket replay or long-poll catch-up) examines at most this many of the
# user's log rows of the table, however few match the subscription's ops and filter: its
# database time stays bounded, and a never-matching filter moves on a page at a time.
REPLAY_SCAN_ROWS: Final = 5000
ALL_OPS: Final = frozenset({"INSERT", "UPDATE", "DELETE"})
TAKEOVER_INTERVAL: Final = 1.0
# Reconnecting one connection per replica cannot overload Postgres: retry fast, cap low, and
# call a connection healthy again once it stayed up a few seconds. (A 60 s reset made repeated
# kills within a minute look like flapping: recovery grew to 30 s with nothing delivered.)
DB_BACKOFF_INITIAL: Final = 0.1
DB_BACKOFF_CAP: Final = 5.0
DB_BACKOFF_RESET_AFTER: Final = 5.0


def _db_backoff(rng: random.Random | None) -> Backoff:
    return Backoff(
        initial=DB_BACKOFF_INITIAL, cap=DB_BACKOFF_CAP, reset_after=DB_BACKOFF_RESET_AFTER, rng=rng
    )


# What a supervised loop survives by reconnecting: any database error (a dropped connection, a
# restart, the schema dropped and reinstalled under it), a timeout (a hung backend), the network.
SUPERVISED_ERRORS: Final = (psycopg.Error, DatabaseError, TimeoutError, OSError)

log = structlog.get_logger("relay.pg.db")
AsyncConn = psycopg.AsyncConnection[TupleRow]


def decode_event(row: Sequence[Any]) -> tuple[Event, str | None]:
    """A relay.log row (in LOG_COLUMNS order) as an Event, and None; never raises for a value.

    A row whose values cannot be carried as JSON (nested past MAX_DEPTH, or anything else that
    fails to decode or encode) becomes the documented truncated event: ``row`` None,
    ``truncated`` set, its key and old key carried (a member that cannot be is sent as a string
    of its JSON text); the second item then names the reason (UNCARRIABLE_REASONS). The event is
    encoded here, once, so routing and every transport send the same text.
    """
    pos, schema, table, op, pk, row_data, old_key, changed, audience, committed_at, truncated = row
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
    )
    event.encoded()
    return event, reason


def event_from_row(row: Sequence[Any]) -> Event:
    """A relay.log row (in LOG_COLUMNS order) as an Event (see decode_event)."""
    return decode_event(row)[0]


async def connect(dsn: str, application_name: str, timeout: float) -> AsyncConn:
    """An autocommit connection, tagged so operators can find it in pg_stat_activity."""
    with anyio.fail_after(timeout + 1):
        return await psycopg.AsyncConnection.connect(
            dsn,
            autocommit=True,
            application_name=application_name,
            connect_timeout=max(1, math.ceil(timeout)),
        )


async def read_log_state(conn: AsyncConn) -> LogState:
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


async def read_catalog(conn: AsyncConn) -> dict[tuple[str, str], frozenset[str]]:
    """Every tracked table with the columns its events carry: the whitelist (or every column)
    and the primary key, which events always carry."""
    cur = await conn.execute(
        "SELECT n.nspname, c.relname, t.pk_columns::text[] || coalesce(t.columns::text[], ARRAY("
        "  SELECT a.attname::text FROM pg_attribute AS a"
        "   WHERE a.attrelid = t.tbl AND a.attnum > 0 AND NOT a.attisdropped))"
        " FROM relay.tracked AS t"
        " JOIN pg_class AS c ON c.oid = t.tbl JOIN pg_namespace AS n ON n.oid = c.relnamespace"
    )
    return {(str(s), str(t)): frozenset(cols) for s, t, cols in await cur.fetchall()}


LISTEN_PROBE_TIMEOUT: Final = 3.0


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
        await listener.execute(f"LISTEN {channel}")
        async with await connect(dsn, "pgrelay-preflight", timeout) as sender:
            await sender.execute("SELECT pg_notify(%s, 'probe')", (channel,))
        async for _ in listener.notifies(timeout=LISTEN_PROBE_TIMEOUT, stop_after=1):
            return
    raise DatabaseError(
        "NOTIFY does not reach a LISTENing connection through this DSN: it goes through a "
        "connection pooler in transaction mode (PgBouncer?); point the relay at Postgres "
        "directly or at a session-mode pool"
    )


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
    key columns are checked and the others pass. It may keep a row Python then rejects (numbers
    compare as doubles), never the other way round. Client values travel only as parameters.
    """
    conditions: list[str] = []
    params: dict[str, Any] = {}
    if ops != ALL_OPS:
        conditions.append("op = ANY(%(ops)s::text[])")
        params["ops"] = sorted(ops)
    for n, values in enumerate(row_filter.by_type()):
        if not _sendable(values.column, encoding):  # no row or key can have this column
            conditions.append("jsonb_typeof(row_data) IS DISTINCT FROM 'object'")
            continue
        params[f"c{n}"] = values.column
        in_row, row_params = _value_matches(
            f"coalesce(row_data -> %(c{n})s, pk -> %(c{n})s)", values, n, encoding
        )
        in_key, _ = _value_matches(f"pk -> %(c{n})s", values, n, encoding)
        params.update(row_params)
        conditions.append(
            f"CASE WHEN jsonb_typeof(row_data) = 'object' THEN {in_row}"
            f" ELSE NOT pk ? %(c{n})s OR {in_key} END"
        )
    return " AND ".join(f"({c})" for c in conditions) or "true", params


def replay_query(
    *,
    user: str,
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
    sql = (
        f"SELECT keep, k, {LOG_COLUMNS} FROM ("  # noqa: S608
        f" SELECT s.*, ({condition}) AS keep, row_number() OVER (ORDER BY s.pos) AS k FROM ("
        f"  SELECT {LOG_STORED_COLUMNS} FROM relay.log"
        "   WHERE pos > %(after)s AND pos <= %(upto)s AND table_name = %(table)s"
        "   AND (%(schema)s::text IS NULL OR table_schema = %(schema)s)"
        "   AND audience @> ARRAY[%(user)s]::text[]"
        "   ORDER BY pos LIMIT %(scan)s) AS s"
        ") AS w WHERE keep OR k = %(scan)s ORDER BY pos LIMIT %(limit)s"
    )
    params.update(
        after=after, upto=upto, table=table, schema=schema, user=user,
        scan=max(scan, limit), limit=limit,
    )  # fmt: skip
    return sql, params


async def fetch_replay(
    conn: AsyncConn,
    *,
    user: str,
    table: str,
    schema: str | None,
    after: int,
    upto: int,
    limit: int,
    ops: frozenset[str] = ALL_OPS,
    row_filter: RowFilter | None = None,
    scan: int = REPLAY_SCAN_ROWS,
) -> ReplayPage:
    """One page of the log between two positions, for one user and table, in position order.

    Audience and table are filtered in SQL (the GIN index on audience keeps one user's replay
    from scanning everyone's events). The query examines at most ``scan`` of those rows (at least
    ``limit``) and returns at most ``limit`` of them: the ones the subscription's ops and filter
    can match (``replay_filter_sql``), which the caller still matches exactly. ``scanned_to``
    says where the next page starts: after the last row returned when the page is full, after
    the last row examined when the scan bound was hit, else ``upto``.
    """
    sql, params = replay_query(
        user=user, table=table, schema=schema, after=after, upto=upto, limit=limit, scan=scan,
        ops=ops, row_filter=row_filter or RowFilter(), encoding=conn.info.encoding,
    )  # fmt: skip
    cur = await conn.execute(sql, params)
    rows = await cur.fetchall()
    events = [event_from_row(row[2:]) for row in rows if row[0]]
    if len(events) == limit:
        scanned_to = events[-1].pos  # full: more may match right after
    elif rows and rows[-1][1] == params["scan"]:
        scanned_to = rows[-1][2]  # the scan bound: the last row examined
    else:
        scanned_to = upto
    return ReplayPage(events, scanned_to)


class LogReader:
    """Tails relay.log and hands each batch of events, in position order, to ``deliver``.

    ``deliver`` is synchronous and must not block: it routes into bounded queues.
    ``on_state`` is told when the reader connects (with the log state) and disconnects (None).
    ``on_uncarriable`` is told of each event read whose row could not be carried (it travels
    truncated), with the reason: once per event, as the reader reads each position once.
    """

    def __init__(
        self,
        dsn: str,
        *,
        start_after: int | None,
        deliver: Callable[[list[Event]], None],
        on_state: Callable[[LogState | None], None],
        listen_window: float,
        query_timeout: float,
        on_reconnect: Callable[[], None] = lambda: None,
        on_caught_up: Callable[[], None] = lambda: None,
        on_uncarriable: Callable[[Event, str], None] = lambda event, reason: None,
        application_name: str = "pgrelay-listener",
        rng: random.Random | None = None,
    ) -> None:
        self.dsn = dsn
        self.last_pos = start_after
        self.deliver = deliver
        self.on_state = on_state
        self.on_reconnect = on_reconnect
        self.on_caught_up = on_caught_up
        self.on_uncarriable = on_uncarriable
        self.listen_window = listen_window
        self.query_timeout = query_timeout
        self.application_name = application_name
        self.backoff = _db_backoff(rng)
        self.epoch: str | None = None
        self._started = False  # task_status.started() was called

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        while True:
            try:
                async with await connect(
                    self.dsn, self.application_name, self.query_timeout
                ) as conn:
                    await self._serve(conn, task_status)
            except SUPERVISED_ERRORS as exc:
                self.on_state(None)
                self.backoff.failed(anyio.current_time())
                delay = self.backoff.next_delay()
                log.warning("listener_lost", error=_one_line(exc), retry_in=round(delay, 3))
                self.on_reconnect()
                await anyio.sleep(delay)
            else:  # pragma: no cover - _serve only returns by raising
                return

    async def _serve(self, conn: AsyncConn, task_status: anyio.abc.TaskStatus[None]) -> None:
        with anyio.fail_after(self.query_timeout):
            await check_direct_connection(conn)
            await conn.execute("LISTEN relay_log")
            state = await read_log_state(conn)
        if self.epoch is not None and state.epoch != self.epoch:
            # Reinstalled or restored under us: positions of the old epoch mean nothing now.
            log.warning("epoch_changed", old=self.epoch, new=state.epoch)
            self.last_pos = None
        self.epoch = state.epoch
        if self.last_pos is None or not state.pruned_through <= self.last_pos <= state.head:
            # From now: a head behind us means a restore, a horizon past us that events we
            # never read were pruned. The hub resets its clients in both cases.
            self.last_pos = state.head
        self.backoff.succeeded(anyio.current_time())
        self.on_state(state)
        log.info("listener_up", head=state.head, notify=state.notify)
        # The sequencer rings relay_log after every batch whatever the notify setting (that
        # setting only spares the writers' commits), so the reader always waits a full window.
        window = self.listen_window
        while True:
            await self._read_all(conn)
            if not self._started:  # ready once the log was read up to its head
                self._started = True
                task_status.started()
            async for _ in conn.notifies(timeout=window, stop_after=1):
                pass

    async def _read_all(self, conn: AsyncConn) -> None:
        while True:
            assert self.last_pos is not None
            with anyio.fail_after(self.query_timeout):
                cur = await conn.execute(
                    f"SELECT {LOG_COLUMNS} FROM relay.log WHERE pos > %s ORDER BY pos LIMIT %s",  # noqa: S608
                    (self.last_pos, READ_BATCH),
                )
                rows = await cur.fetchall()
            if rows:
                events = []
                for row in rows:
                    event, problem = decode_event(row)
                    if problem is not None:
                        self.on_uncarriable(event, problem)
                    events.append(event)
                self.last_pos = events[-1].pos
                self.deliver(events)
            if len(rows) < READ_BATCH:
                self.on_caught_up()
                return


class Sequencer:
    """Competes for the sequencer lock; while held, moves inbox rows into the log.

    ``on_leader`` is told True when this replica takes the role and False when it loses it.
    ``maintenance`` runs on the leader's connection after batches, at most every
    ``prune_interval`` seconds (the log's retention).
    """

    def __init__(
        self,
        dsn: str,
        *,
        on_leader: Callable[[bool], None],
        query_timeout: float,
        listen_window: float,
        poll_interval: float,
        batch: int,
        retention: float,
        prune_interval: float,
        application_name: str = "pgrelay-sequencer",
        rng: random.Random | None = None,
    ) -> None:
        self.dsn = dsn
        self.on_leader = on_leader
        self.query_timeout = query_timeout
        self.listen_window = listen_window
        self.poll_interval = poll_interval
        self.batch = batch
        self.retention = retention
        self.prune_interval = prune_interval
        self.application_name = application_name
        self.backoff = _db_backoff(rng)
        self.leader = False
        self._next_prune = 0.0

    async def run(self) -> None:
        while True:
            try:
                async with await connect(
                    self.dsn, self.application_name, self.query_timeout
                ) as conn:
                    await self._serve(conn)
            except SUPERVISED_ERRORS as exc:
                self._set_leader(False)
                self.backoff.failed(anyio.current_time())
                delay = self.backoff.next_delay()
                log.warning("sequencer_lost", error=_one_line(exc), retry_in=round(delay, 3))
                await anyio.sleep(delay)

    def _set_leader(self, leader: bool) -> None:
        if leader != self.leader:
            self.leader = leader
            log.info("sequencer_leader" if leader else "sequencer_follower")
            self.on_leader(leader)

    async def _query(self, conn: AsyncConn, sql: str, params: Sequence[Any] = ()) -> Any:
        with anyio.fail_after(self.query_timeout):
            cur = await conn.execute(sql, params)
            row = None if cur.description is None else await cur.fetchone()
        return None if row is None else row[0]

    async def _serve(self, conn: AsyncConn) -> None:
        await self._query(conn, "SELECT 1")
        self.backoff.succeeded(anyio.current_time())
        # Polling, not blocking: a blocked pg_advisory_lock would hide a dead connection.
        while not await self._query(  # noqa: ASYNC110
            conn, "SELECT pg_try_advisory_lock(%s)", (SEQUENCER_LOCK_KEY,)
        ):
            await anyio.sleep(TAKEOVER_INTERVAL)
        await self._query(conn, "LISTEN relay_inbox")
        self._set_leader(True)
        while True:
            while (
                await self._query(conn, "SELECT relay.sequence_batch(%s)", (self.batch,))
                >= self.batch
            ):
                pass  # a full batch: more is waiting
            await self._maybe_prune(conn)
            # Read each time: a DBA may switch notify off (or on) while the relay runs. Without
            # the writers' doorbell the inbox is polled every poll_interval.
            notify = bool(await self._query(conn, "SELECT notify FROM relay.settings"))
            window = self.listen_window if notify else min(self.listen_window, self.poll_interval)
            async for _ in conn.notifies(timeout=window, stop_after=1):
                pass

    async def _maybe_prune(self, conn: AsyncConn) -> None:
        now = anyio.current_time()
        if now < self._next_prune:
            return
        self._next_prune = now + self.prune_interval
        total = 0
        while True:
            deleted = await self._query(
                conn, "SELECT relay.prune(make_interval(secs => %s), 10000)", (self.retention,)
            )
            total += deleted
            if deleted < 10000:
                break
        if total:
            log.info("log_pruned", deleted=total)


async def write_heartbeat(conn: AsyncConn, source: str, timeout: float) -> None:
    with anyio.fail_after(timeout):
        await conn.execute("SELECT relay.heartbeat(%s)", (source,))


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"
