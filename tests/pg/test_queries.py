"""The relay's SQL (relay/pg/queries.py) against a real server: replay pages are bounded by
scan and limit, and the replay pre-filter never drops a row the relay's filter matches."""

from __future__ import annotations

from decimal import Decimal

import anyio
import psycopg
import pytest

from relay.core.events import OPS
from relay.core.filters import ColumnValues, RowFilter
from relay.pg.queries import fetch_replay, replay_filter_sql
from relay.pg.reader import rung_head
from tests.support.factories import make_event

pytestmark = pytest.mark.pg


# --- fetch_replay's pages ------------------------------------------------------------------


def test_fetch_replay_pages_are_bounded_by_scan_and_limit(relay_db: str) -> None:
    """A page examines at most `scan` of the user's rows and returns at most `limit` that can
    match; scanned_to is the last row returned (full page), the last examined (scan bound), or
    upto; a truncated row is returned whatever its non-key values."""
    with psycopg.connect(relay_db, autocommit=True) as conn:
        for project in ["p1", "p2", "p3", "p4", "p5", "p6", "p7"]:
            conn.execute(
                "INSERT INTO generations (user_id, project_id) VALUES ('alice', %s)", (project,)
            )
        conn.execute("INSERT INTO generations (user_id, project_id) VALUES ('bob', 'p2')")
        conn.execute("SELECT relay.configure(max_row_bytes => 100)")
        conn.execute(
            "INSERT INTO generations (user_id, project_id, url) VALUES ('alice', 'p9', %s)",
            ("x" * 200,),
        )
        conn.execute("SELECT relay.sequence_batch(100)")
        head_row = conn.execute("SELECT pos FROM relay.head").fetchone()
    assert head_row is not None
    head = head_row[0]
    assert 9 == head
    row_filter = RowFilter.parse({"project_id": {"in": ["p2", "p6"]}})

    async def pages() -> list[tuple[list[int], int]]:
        got = []
        after = 0
        async with await psycopg.AsyncConnection.connect(relay_db, autocommit=True) as conn:
            while after < head:
                page = await fetch_replay(
                    conn, user="alice", table="generations", schema=None, after=after,
                    upto=head, limit=1, scan=3, ops=OPS, row_filter=row_filter,
                )  # fmt: skip
                got.append(([e.pos for e in page.events], page.scanned_to))
                after = page.scanned_to
        return got

    # alice's rows: positions 1-7 (p1..p7), bob's at 8, alice's truncated p9 at 9.
    assert [([2], 2), ([], 5), ([6], 6), ([9], 9)] == anyio.run(pages)


# --- the SQL pre-filter against RowFilter.matches ------------------------------------------

ROW_VALUES = [
    '"x"', '"X"', '""', '"1"', '"true"', '"null"', '"日本"', "1", "1.0", "1e0", "10", "-0",
    "0", "0.0", "1e-400", "0.1", "0.10000000000000000001", "0.1000000000000000055511151231257827",
    "100000000000000000000001", "100000000000000000000000", "1e23", "1e30",
    "1000000000000000000000000000000", "1e308", "1.7976931348623157e308", "1e400", "-1e400",
    "1" + "0" * 400, "true", "false", "null", "[1]", '{"a": 1}', "[]",
]  # fmt: skip
FILTER_VALUES: list[object] = [
    "x", "1", "日本", "", 1, 1.0, 0, -0.0, 0.1, 1e23, 10**23, 10**23 + 1, 1e30, 10**30, 1e308,
    1.7976931348623157e308, 10**400, True, False, None, "x\x00", "\ud800",
]  # fmt: skip


def _rows() -> list[tuple[str, str | None, str]]:
    """(op, row_data, pk) as JSON texts: the value in the row, only in the key, in neither, or
    a truncated row (no row_data) with and without the column in its key."""
    rows: list[tuple[str, str | None, str]] = []
    for i, value in enumerate(ROW_VALUES):
        op = ("INSERT", "UPDATE", "DELETE")[i % 3]
        rows.append((op, f'{{"v": {value}, "id": {i}}}', f'{{"id": {i}}}'))
        rows.append((op, f'{{"id": {i}}}', f'{{"v": {value}}}'))
        rows.append((op, None, f'{{"v": {value}}}'))
    rows.append(("INSERT", '{"id": 1}', '{"id": 1}'))
    rows.append(("INSERT", None, '{"id": 1}'))
    return rows


def _filters() -> list[tuple[frozenset[str], RowFilter]]:
    filters = [(OPS, RowFilter.parse({"v": value})) for value in FILTER_VALUES]
    filters.append((OPS, RowFilter.parse({"v": {"in": FILTER_VALUES}})))
    filters.append((frozenset({"UPDATE"}), RowFilter.parse({"v": {"in": ["x", 1]}, "id": 3})))
    filters.append((frozenset({"INSERT", "DELETE"}), RowFilter()))
    return filters


def test_sql_prefilter_keeps_every_row_the_filter_matches(pg_admin_dsn: str) -> None:
    """Over rows of every JSON type (numbers at the float edges, truncated rows, values only in
    the key), the SQL condition keeps every row Python matches; strings, booleans and null are
    narrowed exactly."""
    rows = _rows()
    with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
        conn.execute("CREATE TEMP TABLE r (i int, op text, row_data jsonb, pk jsonb NOT NULL)")
        for i, (op, row_data, pk) in enumerate(rows):
            conn.execute("INSERT INTO r VALUES (%s, %s, %s, %s)", (i, op, row_data, pk))
        decoded = conn.execute("SELECT i, op, row_data, pk FROM r ORDER BY i").fetchall()
        events = [
            make_event(i + 1, op=op, pk=pk, row=row, truncated=row is None)
            for i, op, row, pk in decoded
        ]
        narrowed = 0
        for ops, row_filter in _filters():
            condition, params = replay_filter_sql(ops, row_filter)
            kept = conn.execute(f"SELECT ({condition}) FROM r ORDER BY i", params).fetchall()
            for event, (keep,) in zip(events, kept, strict=True):
                matched = event.op in ops and row_filter.matches(event)
                assert keep or not matched, (ops, row_filter, event)
                narrowed += not keep
                if not any(isinstance(v, int | float | Decimal) for _, keys in row_filter.clauses
                           for v in keys):  # fmt: skip
                    assert keep == matched, (ops, row_filter, event)
        assert narrowed > len(rows) * len(FILTER_VALUES) // 2  # it does narrow


def test_by_type_splits_filter_values_for_sql() -> None:
    """by_type splits each column's values by JSON type, numbers as doubles, leaving out numbers
    beyond the double range."""
    row_filter = RowFilter.parse({"b": 2, "a": {"in": ["x", 1, 2.5, True, None, 10**400, "y"]}})
    assert (
        ColumnValues("a", ("x", "y"), (1.0, 2.5), (True,), True, beyond_doubles=True),
        ColumnValues("b", (), (2.0,), (), False),
    ) == row_filter.by_type()


def test_prefilter_sends_client_values_only_as_parameters() -> None:
    """Column names and values travel as parameters; values no database text can hold are left
    out; no filter and every op is no condition."""
    assert ("true", {}) == replay_filter_sql(OPS, RowFilter())
    condition, params = replay_filter_sql(
        frozenset({"INSERT"}), RowFilter.parse({"it's": {"in": ["a'b", "nul\x00", "\ud800"]}})
    )
    assert "it's" not in condition and "a'b" not in condition
    assert {"ops": ["INSERT"], "c0": "it's", "s0": ["a'b"]} == params


def test_a_relay_log_doorbell_carries_the_head_or_nothing() -> None:
    """rung_head reads the head a batch's doorbell carries; an empty or foreign payload is None."""
    assert (42, 0, None, None, None) == (
        rung_head("42"), rung_head("0"), rung_head(""), rung_head("-1"), rung_head("²"),
    )  # fmt: skip
