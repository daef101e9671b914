"""Capture: what the writer's trigger records for each write, and the writers' doorbell."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from relay.ops.datafiles import install_script, uninstall_script
from tests.support.paths import FIXTURES
from tests.support.relaylog import connect, log_rows, sequence_all

pytestmark = pytest.mark.pg


def test_capture_insert_update_delete(relay_db: str) -> None:
    """Each op is captured with key, whitelisted values, changed columns, audience; DELETE keeps old values."""
    with connect(relay_db) as conn:
        conn.execute(
            "INSERT INTO thumbnails (user_id, project_id, title) VALUES ('u1', 'p1', 'cat')"
        )
        conn.execute("SELECT increment_thumbnail_share_click_count(1)")
        conn.execute("UPDATE thumbnails SET created_at = now() - interval '1 day'")  # not carried
        conn.execute("DELETE FROM thumbnails WHERE id = 1")
        assert 3 == sequence_all(conn)
        row = {"id": 1, "user_id": "u1", "project_id": "p1", "title": "cat"}
        assert [
            (1, "thumbnails", "INSERT", {"id": 1}, None, {**row, "share_click_count": 0}, None,
             ["u1"], False),
            (2, "thumbnails", "UPDATE", {"id": 1}, {"id": 1}, {**row, "share_click_count": 1},
             ["share_click_count"], ["u1"], False),
            (3, "thumbnails", "DELETE", {"id": 1}, {"id": 1}, {**row, "share_click_count": 1},
             None, ["u1"], False),
        ] == log_rows(conn)  # fmt: skip


def test_update_of_primary_key_carries_old_key(relay_db: str) -> None:
    """An UPDATE that changes the key names the row by its new key and carries the old one."""
    with connect(relay_db) as conn:
        conn.execute("CREATE TABLE items (k text PRIMARY KEY, owner text, v int)")
        conn.execute("SELECT relay.track('items', owner_column => 'owner')")
        conn.execute("INSERT INTO items VALUES ('a', 'u1', 1)")
        conn.execute("UPDATE items SET k = 'b'")
        sequence_all(conn)
        assert ({"k": "b"}, {"k": "a"}, ["k"]) == conn.execute(
            "SELECT pk, old_key, changed FROM relay.log WHERE op = 'UPDATE'"
        ).fetchone()


def test_rolled_back_writes_leave_no_event(relay_db: str) -> None:
    """A rolled-back transaction, or a rolled-back savepoint, leaves nothing in the log."""
    with connect(relay_db) as conn:
        with pytest.raises(psycopg.errors.RaiseException), conn.transaction():
            conn.execute("INSERT INTO generations (user_id, project_id) VALUES ('u1', 'p1')")
            conn.execute("DO $$ BEGIN RAISE EXCEPTION 'boom'; END $$")
        with conn.transaction():
            conn.execute("INSERT INTO generations (user_id, project_id) VALUES ('u1', 'kept')")
            with pytest.raises(psycopg.errors.RaiseException), conn.transaction():
                conn.execute("INSERT INTO generations (user_id, project_id) VALUES ('u1', 'gone')")
                conn.execute("DO $$ BEGIN RAISE EXCEPTION 'boom'; END $$")
        assert 1 == sequence_all(conn)
        assert [("kept",)] == conn.execute(
            "SELECT row_data ->> 'project_id' FROM relay.log"
        ).fetchall()


def test_audience_function_decides_who_sees_a_row(relay_db: str) -> None:
    """With an audience function, the event's audience is what it returns for the row."""
    with connect(relay_db) as conn:
        conn.execute(
            """
            CREATE TABLE projects (id int PRIMARY KEY, name text, members text[]);
            CREATE FUNCTION project_members(p projects) RETURNS text[]
              LANGUAGE sql STABLE AS 'SELECT p.members';
            SELECT relay.track('projects', audience => 'project_members');
            INSERT INTO projects VALUES (1, 'x', ARRAY['u1', 'u2']);
            DELETE FROM projects;
            """
        )
        sequence_all(conn)
        assert [(["u1", "u2"],), (["u1", "u2"],)] == conn.execute(
            "SELECT audience FROM relay.log ORDER BY pos"
        ).fetchall()


def test_writer_needs_no_privilege_on_relay_schema(relay_db: str) -> None:
    """A role that may only write its own table still commits; capture runs as the installer."""
    with connect(relay_db) as conn:
        conn.execute(
            """
            DO $$ BEGIN
              IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'relay_test_writer') THEN
                CREATE ROLE relay_test_writer;
              END IF;
            END $$;
            GRANT USAGE ON SCHEMA public TO relay_test_writer;
            GRANT INSERT, UPDATE, SELECT ON thumbnails TO relay_test_writer;
            """
        )
        with conn.transaction():
            conn.execute("SET LOCAL ROLE relay_test_writer")
            conn.execute("INSERT INTO thumbnails (user_id, project_id) VALUES ('u9', 'p1')")
        with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.transaction():
            conn.execute("SET LOCAL ROLE relay_test_writer")
            conn.execute("SELECT count(*) FROM relay.log")
        conn.execute("REVOKE ALL ON thumbnails FROM relay_test_writer")
        conn.execute("REVOKE ALL ON SCHEMA public FROM relay_test_writer")
        assert 1 == sequence_all(conn)


def test_one_megabyte_row_commits_and_its_event_is_truncated(relay_db: str) -> None:
    """A row over the size cap commits; its event carries the key only, flagged truncated."""
    with connect(relay_db) as conn:
        big = "x" * (1 << 20)
        conn.execute(
            "INSERT INTO generations (user_id, project_id, url) VALUES ('u1', 'p1', %s)", (big,)
        )
        assert 1 == sequence_all(conn)
        assert ({"id": 1}, None, True) == conn.execute(
            "SELECT pk, row_data, truncated FROM relay.log"
        ).fetchone()
        assert (len(big),) == conn.execute("SELECT length(url) FROM generations").fetchone()


def test_notify_is_off_by_default_and_a_constant_doorbell_when_on(relay_db: str) -> None:
    """Writers ring nothing by default; with notify on, one NOTIFY relay_inbox with an empty payload
    per transaction; relay.configure(notify => false) stops it again."""
    with connect(relay_db) as listener, connect(relay_db) as writer:
        listener.execute("LISTEN relay_inbox")
        writer.execute("INSERT INTO generations (user_id, project_id) VALUES ('u1', 'default')")
        writer.execute("SELECT relay.heartbeat('default')")
        assert [] == list(listener.notifies(timeout=0.5))
        assert [(False,)] == writer.execute("SELECT notify FROM relay.settings").fetchall()

        writer.execute("SELECT relay.configure(notify => true)")
        with writer.transaction():
            for i in range(3):
                writer.execute(
                    "INSERT INTO generations (user_id, project_id) VALUES ('u1', %s)", (str(i),)
                )
        heard = [(n.channel, n.payload) for n in listener.notifies(timeout=2.0, stop_after=5)]
        assert [("relay_inbox", "")] == heard  # folded: one per transaction

        writer.execute("SELECT relay.configure(notify => false)")
        writer.execute("INSERT INTO generations (user_id, project_id) VALUES ('u1', 'quiet')")
        assert [] == list(listener.notifies(timeout=0.5))
        assert 6 == sequence_all(writer)  # the events are captured all the same


EQUIVALENCE_TABLES = """
SET client_min_messages = warning;
DROP TABLE IF EXISTS eq_wl, eq_all, eq_multi, eq_aud CASCADE;
RESET client_min_messages;
CREATE TABLE eq_wl (id bigint PRIMARY KEY, owner text, a text, b int, n numeric, extra text,
                    note text);
CREATE TABLE eq_all (id int PRIMARY KEY, owner text, v jsonb, t timestamptz);
CREATE TABLE eq_multi (k1 text, k2 int, owner text, v int, PRIMARY KEY (k2, k1));
CREATE TABLE eq_aud (id int PRIMARY KEY, members text[], v int);
CREATE FUNCTION eq_members(r eq_aud) RETURNS text[] LANGUAGE sql STABLE AS 'SELECT r.members';
SELECT relay.track('eq_wl', owner_column => 'owner',
                   columns => ARRAY['n', 'id', 'a', 'b', 'owner', 'a']);
SELECT relay.track('eq_all', owner_column => 'owner');
SELECT relay.track('eq_multi', owner_column => 'owner', columns => ARRAY['v', 'k1']);
SELECT relay.track('eq_aud', audience => 'eq_members');
"""


# Every path of relay.capture, including columns added, renamed and dropped after relay.track.
EQUIVALENCE_WORKLOAD = """
INSERT INTO eq_wl VALUES (1, 'u1', 'x', 1, 1.0, 'e', 'n'), (2, NULL, 'y', 2, 2, 'e', 'n');
UPDATE eq_wl SET b = b + 1 WHERE id = 1;
UPDATE eq_wl SET a = 'z', b = 9, n = 3 WHERE id = 1;
UPDATE eq_wl SET extra = 'f';
UPDATE eq_wl SET n = 2.00 WHERE id = 2;
UPDATE eq_wl SET a = a;
UPDATE eq_wl SET id = 3 WHERE id = 2;
ALTER TABLE eq_wl ADD COLUMN secret text DEFAULT 's';
UPDATE eq_wl SET secret = 't', b = b + 1 WHERE id = 1;
INSERT INTO eq_wl (id, owner, a, secret) VALUES (5, 'u5', 'v', 'hidden');
ALTER TABLE eq_wl RENAME COLUMN note TO memo;
UPDATE eq_wl SET memo = 'm', b = b + 1 WHERE id = 1;
ALTER TABLE eq_wl RENAME COLUMN a TO alpha;
UPDATE eq_wl SET alpha = 'q' WHERE id = 1;
UPDATE eq_wl SET alpha = 'r', b = 0 WHERE id = 1;
ALTER TABLE eq_wl DROP COLUMN n;
UPDATE eq_wl SET b = 5 WHERE id = 3;
DELETE FROM eq_wl WHERE id = 3;
UPDATE eq_wl SET b = b + 10;
INSERT INTO eq_all VALUES (1, 'u1', '{"k": [1, 2]}', '2024-01-01T00:00:00Z');
UPDATE eq_all SET v = '{"k": [1, 2]}';
UPDATE eq_all SET v = '{"k": 3}', t = t + interval '1 s';
UPDATE eq_all SET owner = NULL;
DELETE FROM eq_all;
INSERT INTO eq_multi VALUES ('a', 1, 'u1', 10);
UPDATE eq_multi SET k1 = 'b', v = 11;
UPDATE eq_multi SET owner = 'u2';
DELETE FROM eq_multi;
INSERT INTO eq_aud VALUES (1, ARRAY['u1', 'u2'], 1);
UPDATE eq_aud SET members = ARRAY['u3'], v = 2;
DELETE FROM eq_aud;
SELECT relay.configure(max_row_bytes => 64);
INSERT INTO eq_all VALUES (2, 'u1', to_jsonb(repeat('x', 200)), '2024-01-01T00:00:00Z');
UPDATE eq_all SET v = '1' WHERE id = 2;
DELETE FROM eq_all WHERE id = 2;
SELECT relay.configure(max_row_bytes => 65536);
"""


def captured_by(dsn: str, script: str) -> list[tuple[Any, ...]]:
    """The events EQUIVALENCE_WORKLOAD logs with the given install script, each statement
    sequenced before the next (as the relay does, within milliseconds)."""
    with connect(dsn) as conn:
        conn.execute(uninstall_script())
        conn.execute(script)
        conn.execute(EQUIVALENCE_TABLES)
        for statement in EQUIVALENCE_WORKLOAD.strip().splitlines():
            conn.execute(statement)
            sequence_all(conn)
        return conn.execute(
            "SELECT table_name, op, pk, old_key, row_data, changed, audience, truncated"
            " FROM relay.log WHERE op <> 'HEARTBEAT' ORDER BY pos"
        ).fetchall()


def test_capture_writes_the_same_rows_as_version_1(empty_db: str) -> None:
    """relay.capture writes what version 1's did on every path and after schema changes, apart
    from version 4's two changes: a renamed whitelisted column stays carried, and an UPDATE of
    an owner column the whitelist leaves out is an event (its audience changed)."""
    v1 = captured_by(empty_db, (FIXTURES / "install-v1.sql").read_text())
    current = captured_by(empty_db, install_script())
    assert 25 == len(v1)
    renamed = [
        (row["alpha"], changed) for *_, row, changed, _, _ in current if "alpha" in (row or {})
    ]
    assert [("q", ["alpha"]), ("r", ["alpha", "b"]), ("y", ["b"]), ("y", None), ("r", ["b"])] == (
        renamed
    )
    key = {"k1": "b", "k2": 1}
    handed_over: tuple[Any, ...] = (
        "eq_multi",
        "UPDATE",
        key,
        key,
        {"v": 11, "k1": "b"},
        [],
        ["u2"],
        False,
    )
    assert 1 == current.count(handed_over)
    as_version_1 = []
    for table, op, pk, old_key, row, changed, audience, truncated in current:
        if "alpha" in (row or {}):
            row = {k: v for k, v in row.items() if k != "alpha"}
            changed = None if changed is None else [c for c in changed if c != "alpha"]
            if changed == []:
                continue  # version 1 no longer saw the renamed column: no event
        if (table, op, pk, old_key, row, changed, audience, truncated) != handed_over:
            as_version_1.append((table, op, pk, old_key, row, changed, audience, truncated))
    assert v1 == as_version_1


def test_trigger_carries_the_notify_setting_and_configure_reattaches(relay_db: str) -> None:
    """relay_capture's seventh argument is the notify setting; relay.configure re-attaches every
    tracked table when it changes, and a write then rings relay_inbox."""

    def notify_args(conn: psycopg.Connection[Any]) -> set[str]:
        rows = conn.execute(
            "SELECT encode(tgargs, 'escape') FROM pg_trigger WHERE tgname = 'relay_capture'"
        ).fetchall()
        return {args.split("\\000")[6] for (args,) in rows}

    with connect(relay_db) as conn, connect(relay_db) as listener:
        assert {"f"} == notify_args(conn)
        conn.execute("SELECT relay.configure(notify => true)")
        assert {"t"} == notify_args(conn)
        listener.execute("LISTEN relay_inbox")
        conn.execute("INSERT INTO thumbnails (user_id, project_id) VALUES ('u1', 'p1')")
        assert ["relay_inbox"] == [n.channel for n in listener.notifies(timeout=5, stop_after=1)]
        conn.execute("SELECT relay.configure(max_row_bytes => 100)")  # notify unchanged
        assert {"t"} == notify_args(conn)


def test_capture_with_version_1_arguments_is_shaped_by_the_tracking_row(relay_db: str) -> None:
    """A trigger still carrying version 1's four arguments captures the same events as one
    attached now: the sequencer shapes them by relay.tracked."""
    with connect(relay_db) as conn:
        conn.execute(
            """
            DROP TRIGGER relay_capture ON thumbnails;
            CREATE TRIGGER relay_capture AFTER INSERT OR UPDATE OR DELETE ON thumbnails
              FOR EACH ROW EXECUTE FUNCTION relay.capture('user_id', '', '{id,title}', '{id}');
            INSERT INTO thumbnails (user_id, project_id, title) VALUES ('u1', 'p1', 'cat');
            UPDATE thumbnails SET project_id = 'p2';
            UPDATE thumbnails SET created_at = now();
            UPDATE thumbnails SET title = 'dog';
            """
        )
        sequence_all(conn)
        row = {"id": 1, "user_id": "u1", "project_id": "p1", "share_click_count": 0, "title": "cat"}
        assert [
            ("INSERT", row, None),
            ("UPDATE", {**row, "project_id": "p2"}, ["project_id"]),
            ("UPDATE", {**row, "project_id": "p2", "title": "dog"}, ["title"]),
        ] == conn.execute("SELECT op, row_data, changed FROM relay.log ORDER BY pos").fetchall()
