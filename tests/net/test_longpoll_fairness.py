"""Catch-up under a hostile backlog: long-polls and replays share the pool fairly, a request's
database work is bounded, the SQL pre-filter never drops what the relay's filter matches, and
long-polls count against RELAY_MAX_CONNECTIONS."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from decimal import Decimal
from typing import Any

import anyio
import psycopg
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect as ws_connect

from relay.core.events import OPS
from relay.core.filters import ColumnValues, RowFilter
from relay.net.longpoll import MAX_PAGES
from relay.pg.db import REPLAY_SCAN_ROWS, fetch_replay, replay_filter_sql
from tests.net.test_longpoll import insert
from tests.support.clients import Client, poll
from tests.support.factories import make_event
from tests.support.processes import relay_process
from tests.support.tokens import token
from tests.support.waiting import wait_until

pytestmark = pytest.mark.pg

NEVER = json.dumps({"project_id": "never"})
# More of one user's rows than one long-poll may examine: no single request can cross them.
BACKLOG = MAX_PAGES * REPLAY_SCAN_ROWS + 10_000
OTHERS = [f"o{i}" for i in range(20)]


def build_backlog(dsn: str, attacker_rows: int, other_rows: list[str]) -> str:
    """Logs `attacker_rows` generations of 'attacker' at positions 1.., then 'other' rows; the
    epoch's cursor at position 0 (before all of them)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO generations (user_id, project_id)"
            " SELECT 'attacker', 'p' || i FROM generate_series(1, %s) AS i",
            (attacker_rows,),
        )
        for project in other_rows:
            conn.execute(
                "INSERT INTO generations (user_id, project_id) VALUES ('other', %s)", (project,)
            )
        conn.execute("SELECT relay.sequence_batch(%s)", (attacker_rows + len(other_rows),))
        conn.execute("ANALYZE relay.log")
        row = conn.execute("SELECT replace(epoch::text, '-', '') FROM relay.settings").fetchone()
    assert row is not None
    return f"{row[0]}.0"


def position(cursor: str) -> int:
    return int(cursor.rsplit(".", 1)[1])


def raw_poll(port: int, user: str, **params: str) -> tuple[int, str]:
    """A long-poll whose answer may be plain text (the handshake refusals)."""
    query = urllib.parse.urlencode(params)
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/poll?{query}",
        headers={"Authorization": f"Bearer {token(user)}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


# --- against a real relay ----------------------------------------------------------------------


def test_never_matching_long_polls_over_a_big_backlog_do_not_starve_others(relay_db: str) -> None:
    """12 long-polls hammering a 60,000-row backlog with a never-matching filter: another user's
    catch-up polls answer 200 with their events and their websocket resume completes, promptly;
    a websocket replay with that filter reaches `subscribed` with no events."""
    c0 = build_backlog(relay_db, BACKLOG, OTHERS)
    env = {"RELAY_CONNECT_RATE_PER_IP": "100000", "RELAY_MAX_CONNECTIONS_PER_IP": "100000"}
    with relay_process(relay_db, env) as relay:
        stop = threading.Event()
        answers: list[tuple[int, int]] = []

        def attack() -> None:
            while not stop.is_set():  # always from the old cursor: the worst case
                status, body = poll(relay, "attacker", table="generations", since=c0,
                                    filter=NEVER, wait=25)  # fmt: skip
                answers.append((status, len(body.get("events", []))))

        attackers = [threading.Thread(target=attack, daemon=True) for _ in range(12)]
        for thread in attackers:
            thread.start()
        try:
            wait_until(lambda: len(answers) >= 12, 30, "the attackers' first answers")
            for _ in range(3):
                started = time.monotonic()
                status, body = poll(relay, "other", table="generations", since=c0, wait=5)
                took = time.monotonic() - started
                assert (200, OTHERS) == (
                    status,
                    [e["row"]["project_id"] for e in body.get("events", [])],
                )
                assert took < 5.0, took
            other = Client(relay.url, "other")
            other.ready()
            started = time.monotonic()
            other.subscribe("s", "generations", since=c0)
            took = time.monotonic() - started
            replayed = [f["row"]["project_id"] for f in other.frames if f["type"] == "event"]
            assert OTHERS == replayed
            assert took < 5.0, took
            other.close()
            # A websocket replay with a never-matching filter crosses the whole backlog too.
            attacker = Client(relay.url, "attacker")
            attacker.ready()
            attacker.subscribe("s", "generations", since=c0, filter={"project_id": "never"})
            assert ["ready", "subscribed"] == [f["type"] for f in attacker.frames]
            attacker.close()
        finally:
            stop.set()
            for thread in attackers:
                thread.join(30)
        assert {(200, 0)} == set(answers)


def test_wait_zero_with_an_old_cursor_moves_on_until_caught_up(relay_db: str) -> None:
    """wait=0 reads one page: each answer moves the cursor on by at most REPLAY_SCAN_ROWS of the
    user's rows until it is caught up; with wait=25 a request stops at its page budget
    (MAX_PAGES pages) and answers at once with the cursor where it stopped."""
    c0 = build_backlog(relay_db, BACKLOG, [])
    budget = MAX_PAGES * REPLAY_SCAN_ROWS
    with relay_process(relay_db) as relay:
        positions: list[int] = []
        cursor = c0
        while not positions or positions[-1] < BACKLOG:
            status, body = poll(relay, "attacker", table="generations", since=cursor,
                                filter=NEVER, wait=0)  # fmt: skip
            assert (200, []) == (status, body["events"])
            cursor = body["cursor"]
            positions.append(position(cursor))
        pages = BACKLOG // REPLAY_SCAN_ROWS
        assert [REPLAY_SCAN_ROWS * i for i in range(1, pages + 1)] == positions

        started = time.monotonic()
        status, waited = poll(relay, "attacker", table="generations", since=c0, filter=NEVER,
                              wait=25)  # fmt: skip
        assert (200, [], budget) == (status, waited["events"], position(waited["cursor"]))
        assert time.monotonic() - started < 10.0  # the budget, not the wait, ended it

        # A matching filter: each answer ends where its reading ended; nothing is skipped.
        answers: list[tuple[list[str], int]] = []
        cursor = c0
        for _ in range(3):
            _, body = poll(relay, "attacker", table="generations", since=cursor, wait=5,
                           filter=json.dumps({"project_id": {"in": ["p7", "p55555"]}}))  # fmt: skip
            cursor = body["cursor"]
            answers.append(([e["row"]["project_id"] for e in body["events"]], position(cursor)))
        assert [(["p7"], REPLAY_SCAN_ROWS), ([], budget + REPLAY_SCAN_ROWS),
                (["p55555"], BACKLOG)] == answers  # fmt: skip


def test_long_polls_count_against_max_connections(relay_db: str) -> None:
    """A long-poll in flight takes a RELAY_MAX_CONNECTIONS slot like a websocket: at the limit
    both are refused with the same 503, counted, and shown in relay_connections."""
    with relay_process(relay_db, {"RELAY_MAX_CONNECTIONS": "2"}) as relay:
        _, start = poll(relay, "alice", table="generations")
        websocket = Client(relay.url, "bob")
        websocket.ready()
        waiting: list[tuple[int, dict[str, Any]]] = []
        thread = threading.Thread(
            target=lambda: waiting.append(
                poll(relay, "alice", table="generations", since=start["cursor"], wait=20)
            )
        )
        thread.start()
        wait_until(lambda: relay.metric("relay_long_polls") == 1.0, 10, "a long-poll in flight")
        assert 2.0 == relay.metric("relay_connections")

        assert (503, "too many connections\n") == raw_poll(relay.port, "carol", table="generations")
        with pytest.raises(InvalidStatus) as refused:
            ws_connect(relay.url, open_timeout=5, legacy=True)
        assert 503 == refused.value.response.status_code
        assert 2.0 == relay.metric("relay_handshakes_refused_total", 'reason="max_connections"')

        insert(relay_db, "alice", "live")  # answers the waiting long-poll
        thread.join(10)
        assert [(200, ["live"])] == [
            (status, [e["row"]["project_id"] for e in body["events"]]) for status, body in waiting
        ]
        wait_until(lambda: relay.metric("relay_long_polls") == 0.0, 10, "the long-poll counted out")
        assert 200 == poll(relay, "carol", table="generations")[0]
        websocket.close()


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
