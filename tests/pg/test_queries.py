"""The relay's SQL (relay/pg/queries.py, replay_query.py) against a real server: replay pages are bounded by
scan and limit, and the replay pre-filter never drops a row the relay's filter matches."""

from __future__ import annotations

from decimal import Decimal

import anyio
import psycopg
import pytest

from relay.core.events import OPS
from relay.core.filters import RowFilter
from relay.core.prefilter import ColumnValues
from relay.pg.queries import read_catalog
from relay.pg.reader import rung_head
from relay.pg.replay_query import fetch_replay, replay_filter_sql
from tests.support.factories import make_event, make_sub

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
        conn.execute("SELECT relay.sequence_batch(100)")  # the limit applies when sequenced
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
                    conn, keys=["alice"], table="generations", schema=None, after=after,
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


Row = tuple[str, str | None, str, str | None, str | None]


def _rows() -> list[Row]:
    """(op, row_data, pk, old_key, old_values) as JSON texts: the value in the row, only in the
    key, in neither, or a truncated row (no row_data) with and without the column in its key;
    and UPDATEs whose value (or key) was it before and is another now (possible move-outs)."""
    rows: list[Row] = []
    for i, value in enumerate(ROW_VALUES):
        op = ("INSERT", "UPDATE", "DELETE")[i % 3]
        old = None if op == "INSERT" else f'{{"id": {i}}}'
        rows.append((op, f'{{"v": {value}, "id": {i}}}', f'{{"id": {i}}}', old, None))
        rows.append((op, f'{{"id": {i}}}', f'{{"v": {value}}}', old and f'{{"v": {value}}}', None))
        rows.append((op, None, f'{{"v": {value}}}', old and f'{{"v": {value}}}', None))
        gone = f'{{"v": {value}}}'
        rows.append(("UPDATE", f'{{"v": "gone", "id": {i}}}', f'{{"id": {i}}}', old, gone))
        rows.append(("UPDATE", f'{{"id": {i}}}', '{"v": "gone"}', gone, "{}"))
        rows.append(("UPDATE", None, '{"v": "gone"}', gone, None))
    rows.append(("INSERT", '{"id": 1}', '{"id": 1}', None, None))
    rows.append(("INSERT", None, '{"id": 1}', None, None))
    return rows


def _filters() -> list[tuple[frozenset[str], RowFilter]]:
    filters = [(OPS, RowFilter.parse({"v": value})) for value in FILTER_VALUES]
    filters.append((OPS, RowFilter.parse({"v": {"in": FILTER_VALUES}})))
    filters.append((frozenset({"UPDATE"}), RowFilter.parse({"v": {"in": ["x", 1]}, "id": 3})))
    filters.append((frozenset({"INSERT", "DELETE"}), RowFilter()))
    filters.append((frozenset({"DELETE"}), RowFilter.parse({"v": {"in": FILTER_VALUES}})))
    # Comparisons are not narrowed in SQL (the read fails open for them), beside a clause that is.
    filters.append((OPS, RowFilter.parse({"v": {"gt": 1, "neq": 5}})))
    filters.append((OPS, RowFilter.parse({"v": {"in": ["x", True], "not": {"eq": "x"}}})))
    return filters


def test_sql_prefilter_keeps_every_row_the_filter_matches(pg_admin_dsn: str) -> None:
    """Over rows of every JSON type (numbers at the float edges, truncated rows, values only in
    the key, values before an UPDATE), the SQL condition keeps every row the subscription is
    sent something of (the event, a move-out or an entry); strings, booleans and null are
    narrowed exactly to the rows whose values before or after match, of the ops read."""
    rows = _rows()
    with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TEMP TABLE r (i int, op text, row_data jsonb, pk jsonb NOT NULL,"
            " old_key jsonb, old_values jsonb)"
        )
        for i, row in enumerate(rows):
            conn.execute("INSERT INTO r VALUES (%s, %s, %s, %s, %s, %s)", (i, *row))
        decoded = conn.execute(
            "SELECT i, op, row_data, pk, old_key, old_values FROM r ORDER BY i"
        ).fetchall()
        events = [
            make_event(i + 1, op=op, pk=pk, row=row, truncated=row is None, old_key=old_key,
                       old_values=old_values)
            for i, op, row, pk, old_key, old_values in decoded
        ]  # fmt: skip
        narrowed = 0
        for ops, row_filter in _filters():
            condition, params = replay_filter_sql(ops, row_filter)
            kept = conn.execute(f"SELECT ({condition}) FROM r ORDER BY i", params).fetchall()
            sub = make_sub(ops=ops)
            sub.filter = row_filter
            read = ops | {"UPDATE"} if ops & {"INSERT", "DELETE"} else ops
            for event, (keep,) in zip(events, kept, strict=True):
                sent = sub.delivery(event, ("alice",)) is not None
                assert keep or not sent, (ops, row_filter, event)
                narrowed += not keep
                if not row_filter.conditions and not any(
                    isinstance(v, int | float | Decimal) for _, keys in row_filter.clauses
                    for v in keys):  # fmt: skip
                    before = event.op == "UPDATE" and row_filter.matched_before(event)
                    readable = event.op in read and (row_filter.matches(event) or before)
                    assert keep == readable, (ops, row_filter, event)
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
    assert {"ops": ["INSERT", "UPDATE"], "c0": "it's", "s0": ["a'b"]} == params


def test_catalog_names_a_renamed_whitelisted_column_as_it_is_now(relay_db: str) -> None:
    """read_catalog lists the whitelist by column, so a rename shows at once (filters on the new
    name are accepted), before the table is attached again; a column outside it never shows."""

    async def catalog() -> frozenset[str]:
        async with await psycopg.AsyncConnection.connect(relay_db, autocommit=True) as conn:
            return (await read_catalog(conn))["public", "thumbnails"]

    with psycopg.connect(relay_db, autocommit=True) as conn:
        conn.execute("ALTER TABLE thumbnails RENAME COLUMN title TO caption")
        conn.execute("ALTER TABLE thumbnails RENAME COLUMN created_at TO made_at")
    assert {"id", "user_id", "project_id", "caption", "share_click_count"} == anyio.run(catalog)


def test_a_relay_log_doorbell_carries_the_head_or_nothing() -> None:
    """rung_head reads the head a batch's doorbell carries; an empty or foreign payload is None."""
    assert (42, 0, None, None, None) == (
        rung_head("42"), rung_head("0"), rung_head(""), rung_head("-1"), rung_head("²"),
    )  # fmt: skip
