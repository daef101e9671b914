"""Catch-up under a hostile backlog: long-polls and replays share the pool fairly, a request's
database work is bounded, and long-polls count against RELAY_MAX_CONNECTIONS (the SQL pre-filter
itself: tests/pg/test_queries.py)."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import psycopg
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect as ws_connect

from relay.net.longpoll import MAX_PAGES
from relay.pg.replay_query import REPLAY_SCAN_ROWS
from tests.net.test_longpoll import insert
from tests.support.clients import Client, poll
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
        in_flight = 'transport="long_poll"'
        wait_until(
            lambda: relay.metric("relay_connections", in_flight) == 1.0, 10, "a long-poll in flight"
        )
        assert 1.0 == relay.metric("relay_connections", 'transport="websocket"')

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
        wait_until(
            lambda: relay.metric("relay_connections", in_flight) == 0.0, 10, "the poll counted out"
        )
        assert 200 == poll(relay, "carol", table="generations")[0]
        websocket.close()
