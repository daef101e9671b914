"""relay.sequence_log (the events a batch logged, as the reader reads them, over
relay.sequence_batch, which relays of the previous version call), the relay role's grant, the
upgrade from version 7."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from relay.ops.datafiles import install_script, uninstall_script
from relay.pg.queries import LOG_COLUMNS, SCHEMA_VERSION
from tests.support.paths import FIXTURES, example_path
from tests.support.relaylog import catalog_fingerprint, connect

pytestmark = pytest.mark.pg


def sequence_log(conn: psycopg.Connection[Any], max_rows: int) -> list[tuple[Any, ...]]:
    return conn.execute("SELECT * FROM relay.sequence_log(%s)", (max_rows,)).fetchall()


def read_log(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    """The whole log as the relay's reader reads it (LOG_COLUMNS, position order)."""
    return conn.execute(f"SELECT {LOG_COLUMNS} FROM relay.log ORDER BY pos").fetchall()


@pytest.fixture
def relay_role(empty_db: str) -> Iterator[str]:
    """A login-less role of this test's own, with no rights yet (in the test's database, the one
    relay_db installs into); dropped afterwards."""
    role = f"relay_{uuid.uuid4().hex[:8]}"
    with connect(empty_db) as conn:
        conn.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(role)))
    try:
        yield role
    finally:
        with connect(empty_db) as conn:
            conn.execute(sql.SQL("DROP OWNED BY {} CASCADE").format(sql.Identifier(role)))
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_sequence_log_returns_the_rows_it_moved_as_the_reader_reads_them(relay_db: str) -> None:
    """Each batch returns exactly its rows, in position order, equal to what a read of the log
    returns for them (every column, JSON as text, moves included); an empty inbox returns none."""
    with connect(relay_db) as conn:
        assert [] == sequence_log(conn, 1000)
        conn.execute(
            "INSERT INTO thumbnails (user_id, project_id, title) VALUES ('u1', 'p1', 'a'),"
            " ('u1', 'p2', 'b'), ('u2', 'p3', 'c')"
        )
        conn.execute("UPDATE thumbnails SET user_id = 'u3', title = 'd' WHERE project_id = 'p1'")
        conn.execute("DELETE FROM thumbnails WHERE project_id = 'p2'")
        conn.execute("SELECT relay.heartbeat('replica-1')")
        first, second = sequence_log(conn, 4), sequence_log(conn, 4)
        assert [] == sequence_log(conn, 4)
        assert ([1, 2, 3, 4], [5, 6]) == ([r[0] for r in first], [r[0] for r in second])
        assert read_log(conn) == first + second
        update = first[3]
        assert ("UPDATE", '{"title": "a", "user_id": "u1"}', ["u3"], ["u1"]) == (
            update[3], update[11], update[8], update[12],
        )  # fmt: skip


def test_sequence_log_rings_relay_log_once_per_batch_with_the_head(relay_db: str) -> None:
    """A batch that moved rows rings relay_log once with the new head; an empty one rings nothing."""
    with connect(relay_db) as listener, connect(relay_db) as conn:
        listener.execute("LISTEN relay_log")
        for i in range(3):
            conn.execute(
                "INSERT INTO generations (user_id, project_id) VALUES ('u1', %s)", (str(i),)
            )
        assert 2 == len(sequence_log(conn, 2))
        assert 1 == len(sequence_log(conn, 2))
        assert [] == sequence_log(conn, 2)
        assert [("relay_log", "2"), ("relay_log", "3")] == [
            (n.channel, n.payload) for n in listener.notifies(timeout=1.0, stop_after=3)
        ]


def test_sequence_log_takes_past_updates_that_change_nothing_carried(relay_db: str) -> None:
    """A batch of UPDATEs that change nothing carried is taken and logs nothing; sequence_log
    takes on until it has max_rows events or the inbox is empty, so a short result means
    nothing more waits."""
    with connect(relay_db) as conn:
        conn.execute("INSERT INTO thumbnails (user_id, project_id) VALUES ('u1', 'p1')")
        assert [1] == [row[0] for row in sequence_log(conn, 10)]
        for _ in range(3):  # created_at is not carried: three rows taken, no event
            conn.execute("UPDATE thumbnails SET created_at = created_at + interval '1 s'")
        for title in ("a", "b", "c"):
            conn.execute("UPDATE thumbnails SET title = %s", (title,))
        assert [2, 3] == [row[0] for row in sequence_log(conn, 2)]
        assert [4] == [row[0] for row in sequence_log(conn, 2)]
        assert (0,) == conn.execute("SELECT count(*) FROM relay.inbox").fetchone()


def test_sequence_batch_still_moves_rows_and_counts_them(relay_db: str) -> None:
    """The previous version's call, the sequencing rule itself: it moves rows and returns how
    many inbox rows it took."""
    with connect(relay_db) as conn:
        for i in range(5):
            conn.execute(
                "INSERT INTO generations (user_id, project_id) VALUES ('u1', %s)", (str(i),)
            )
        assert [(3,), (2,), (0,)] == [
            conn.execute("SELECT relay.sequence_batch(3)").fetchone() for _ in range(3)
        ]
        assert [1, 2, 3, 4, 5] == [row[0] for row in read_log(conn)]
        assert (5,) == conn.execute("SELECT pos FROM relay.head").fetchone()


def seq_scans(conn: psycopg.Connection[Any]) -> dict[str, int]:
    """Sequential scans of relay.inbox and relay.log so far, this session's included."""
    conn.execute("SELECT pg_stat_force_next_flush()")
    conn.execute("SELECT pg_stat_clear_snapshot()")
    rows = conn.execute(
        "SELECT relname, seq_scan FROM pg_stat_user_tables"
        " WHERE schemaname = 'relay' AND relname IN ('inbox', 'log')"
    ).fetchall()
    return {name: count for name, count in rows}


def test_the_sequencer_reads_the_inbox_and_the_log_by_their_keys(relay_db: str) -> None:
    """sequence_log and sequence_batch scan neither the inbox nor the log whole, whatever their
    statistics: on one connection whose plans are made while both look empty, through a log
    grown to 3,200 rows and more than the five calls after which a plan may be kept."""
    with connect(relay_db) as conn:
        before = seq_scans(conn)
        assert [] == sequence_log(conn, 100)
        for _ in range(8):
            conn.execute(
                "INSERT INTO generations (user_id, project_id)"
                " SELECT 'u1', g::text FROM generate_series(1, 400) AS g"
            )
            while len(sequence_log(conn, 150)) == 150:
                pass
            assert (0,) == conn.execute("SELECT relay.sequence_batch(100)").fetchone()
        assert (3200,) == conn.execute("SELECT pos FROM relay.head").fetchone()
        assert before == seq_scans(conn)


def test_grant_relay_lets_a_role_sequence_and_read_the_log(relay_db: str, relay_role: str) -> None:
    """A role with relay.grant_relay calls sequence_log and sequence_batch and reads what they
    moved; without it, sequence_log is refused."""
    with connect(relay_db) as conn:
        conn.execute("INSERT INTO generations (user_id, project_id) VALUES ('u1', 'p1')")
        with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.transaction():
            conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(relay_role)))
            sequence_log(conn, 10)
        conn.execute("SELECT relay.grant_relay(%s)", (relay_role,))
        conn.execute("INSERT INTO generations (user_id, project_id) VALUES ('u1', 'p2')")
        with conn.transaction():
            conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(relay_role)))
            moved = sequence_log(conn, 1)
            assert (1,) == conn.execute("SELECT relay.sequence_batch(10)").fetchone()
            assert ([1], [1, 2]) == ([r[0] for r in moved], [r[0] for r in read_log(conn)])
            assert read_log(conn)[:1] == moved


def test_upgrade_from_version_7_keeps_the_log_and_the_relay_roles_rights(
    empty_db: str, relay_role: str
) -> None:
    """Installing over version 7 keeps log, positions and epoch; a role granted the relay's
    rights on version 7 may call sequence_log without a new grant; the result is a fresh install."""
    with connect(empty_db) as conn:
        conn.execute((FIXTURES / "install-v7.sql").read_text())
        conn.execute(example_path().read_text())
        conn.execute("SELECT relay.grant_relay(%s)", (relay_role,))
        conn.execute("INSERT INTO thumbnails (user_id, project_id) VALUES ('u1', 'p1')")
        assert (1,) == conn.execute("SELECT relay.sequence_batch(1000)").fetchone()
        conn.execute("INSERT INTO thumbnails (user_id, project_id) VALUES ('u1', 'p2')")  # waits
        before = conn.execute("SELECT epoch, schema_version FROM relay.settings").fetchone()
        assert before is not None and 7 == before[1]

        conn.execute(install_script())

        assert (before[0], SCHEMA_VERSION) == conn.execute(
            "SELECT epoch, schema_version FROM relay.settings"
        ).fetchone()
        assert 9 == SCHEMA_VERSION
        conn.execute("SELECT increment_thumbnail_share_click_count(1)")
        with conn.transaction():
            conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(relay_role)))
            moved = sequence_log(conn, 1000)
        assert [(2, "INSERT"), (3, "UPDATE")] == [(row[0], row[3]) for row in moved]
        assert [1, 2, 3] == [row[0] for row in read_log(conn)]
        upgraded = [row for row in catalog_fingerprint(conn) if row[0] != "settings"]
        conn.execute(uninstall_script())
        conn.execute(install_script())
        conn.execute(example_path().read_text())
        assert upgraded == [row for row in catalog_fingerprint(conn) if row[0] != "settings"]
