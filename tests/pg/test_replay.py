"""Replays and long-polls across database faults (relay/pg/replay.py), end to end: a real relay,
real PostgreSQL, real clients. A read that meets a dead pooled connection is retried on a live
one; 1011 ``replay_unavailable`` is answered only while the database is really unreachable."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from websockets.exceptions import ConnectionClosed

from relay.demo.pgserver import PgServer
from tests.support.clients import Client, close_of, poll
from tests.support.databases import create_database, install_example
from tests.support.processes import RelayProcess, relay_process
from tests.support.waiting import wait_until

pytestmark = pytest.mark.pg

ROWS = 3


def relay_backends(dsn: str) -> list[int]:
    """The pids of every backend of a relay on this database (reader, sequencer, maintenance,
    replay pool)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name LIKE 'pgrelay-%%'"
            " AND datname = current_database()"
        ).fetchall()
    return [int(row[0]) for row in rows]


def kill_relay_backends(dsn: str) -> list[int]:
    """pg_terminate_backend on every relay backend of this database; returns once they are gone."""
    pids = relay_backends(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        for pid in pids:
            conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
    wait_until(lambda: not set(pids) & set(relay_backends(dsn)), 10, "the backends to end")
    return pids


def start_cursor_and_rows(relay: RelayProcess, dsn: str) -> str:
    """alice's cursor before ROWS generations of hers, which the relay has delivered."""
    client = Client(relay.url, "alice")
    client.ready()
    cursor = str(client.subscribe("g", "generations")["cursor"])
    with psycopg.connect(dsn, autocommit=True) as conn:
        for i in range(ROWS):
            conn.execute("INSERT INTO generations (user_id, project_id) VALUES ('alice', %s)",
                         (f"p{i}",))  # fmt: skip
    assert [f"p{i}" for i in range(ROWS)] == [e["row"]["project_id"] for e in client.events(ROWS)]
    client.close()
    return cursor


def resume(client: Client, sub_id: str, cursor: str) -> list[str]:
    """Subscribes with `since`; the projects replayed before `subscribed`."""
    start = len(client.frames)
    client.subscribe(sub_id, "generations", since=cursor)
    replayed = client.frames[start:-1]
    assert all(frame["type"] == "event" for frame in replayed), replayed
    return [frame["row"]["project_id"] for frame in replayed]


def ready(relay: RelayProcess) -> bool:
    return relay.http("/readyz", relay.metrics_port)[0] == 200


def events_of(relay: RelayProcess) -> list[str]:
    return [str(line.get("event")) for line in relay.lines]


def test_resumes_after_every_relay_backend_is_killed_are_answered(relay_db: str) -> None:
    """pg_terminate_backend of every relay backend, the replay pool's idle connections too: the
    next resumes (websocket and long-poll) meet dead connections, retry on live ones and replay
    every row; none is closed with 1011."""
    with relay_process(relay_db) as relay:
        cursor = start_cursor_and_rows(relay, relay_db)
        wait_until(lambda: len(relay_backends(relay_db)) >= 4, 10, "a pooled replay connection")
        kill_relay_backends(relay_db)
        wait_until(lambda: ready(relay), 20, "the log reader back")
        expected = [f"p{i}" for i in range(ROWS)]
        client = Client(relay.url, "alice")
        client.ready()
        assert [expected, expected] == [resume(client, "a", cursor), resume(client, "b", cursor)]
        status, body = poll(relay, "alice", table="generations", since=cursor, wait=0)
        assert (200, expected) == (status, [e["row"]["project_id"] for e in body["events"]])
        client.close()
        assert 1 <= events_of(relay).count("replay_retried")
        assert 0 == events_of(relay).count("replay_failed")


def test_a_kill_during_a_resume_storm_refuses_no_resume(relay_db: str) -> None:
    """Twenty clients resume at once right after every relay backend was killed (the pool grown
    to several connections first): every one gets its rows, none a 1011."""
    clients: list[Client] = []
    with relay_process(relay_db, {"RELAY_REPLAY_POOL_SIZE": "4"}) as relay:
        cursor = start_cursor_and_rows(relay, relay_db)
        expected = [f"p{i}" for i in range(ROWS)]
        for _ in range(20):
            client = Client(relay.url, "alice")
            client.ready()
            clients.append(client)
        for client in clients:  # all at once: the pool grows to serve them
            client.send({"type": "subscribe", "id": "w", "table": "generations", "since": cursor})
        for client in clients:
            assert expected == [e["row"]["project_id"] for e in client.events(ROWS)]
        kill_relay_backends(relay_db)
        wait_until(lambda: ready(relay), 20, "the log reader back")
        for client in clients:
            client.send({"type": "subscribe", "id": "r", "table": "generations", "since": cursor})
        outcomes = []
        for client in clients:
            try:
                outcomes.append([e["row"]["project_id"] for e in client.events(ROWS)])
            except ConnectionClosed as closed:
                outcomes.append([str(close_of(closed))])
        assert [expected] * 20 == outcomes
        assert 0 == events_of(relay).count("replay_failed")
        for client in clients:
            client.close()


@pytest.fixture
def restartable_db(private_pg: PgServer) -> Iterator[tuple[PgServer, str]]:
    """A database with the relay schema on a server of the test's own, which it may stop."""
    dsn = create_database(private_pg.dsn(), "t_")
    install_example(dsn)
    yield private_pg, dsn


def test_resumes_are_refused_while_postgres_is_down_and_answered_once_it_is_back(
    restartable_db: tuple[PgServer, str],
) -> None:
    """Postgres stopped for 8 s: a resume waits RELAY_REPLAY_WAIT (2 s), then 1011 (the database
    really is unreachable). Started again: every resume from then on is answered, on open sockets
    at once (the pool reconnected within the 2 s wait; psycopg_pool's own 1, 2, 4, 8 s steps would
    leave it empty for seconds) and on new ones once the relay is ready, none with 1011."""
    server, dsn = restartable_db
    env = {"RELAY_REPLAY_WAIT": "2s"}
    with relay_process(dsn, env) as relay:
        cursor = start_cursor_and_rows(relay, dsn)
        expected = [f"p{i}" for i in range(ROWS)]
        down_client, open_client = Client(relay.url, "alice"), Client(relay.url, "alice")
        down_client.ready()
        open_client.ready()
        server.stop("fast")
        stopped = time.monotonic()
        down_client.send({"type": "subscribe", "id": "d", "table": "generations", "since": cursor})
        with pytest.raises(ConnectionClosed) as refused:
            down_client.recv(20)  # no frame: the replay cannot start
        assert (1011, "replay_unavailable") == close_of(refused.value)
        time.sleep(max(0.0, stopped + 8 - time.monotonic()))
        server.start()
        with psycopg.connect(dsn, connect_timeout=5):
            pass  # Postgres answers again: from here on no resume may be refused
        outcomes: list[Any] = [resume(open_client, f"o{n}", cursor) for n in range(3)]
        wait_until(lambda: ready(relay), 30, "the relay ready again")
        fresh = Client(relay.url, "alice")
        fresh.ready()
        outcomes.append(resume(fresh, "f", cursor))
        status, body = poll(relay, "alice", table="generations", since=cursor, wait=0)
        outcomes.append(
            [e["row"]["project_id"] for e in body["events"]] if status == 200 else status
        )
        assert [expected] * 5 == outcomes
        assert 1 == events_of(relay).count("replay_failed")
        for client in (open_client, fresh):
            client.close()
