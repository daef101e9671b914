"""What capture records for move-outs and entries: an UPDATE's old values of the carried columns
it changed (old_values) and the old row's audience when it differs (old_audience); the replay
index on it; the upgrade from version 3."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest

from relay.core.events import OPS
from relay.core.filters import RowFilter
from relay.ops.datafiles import install_script, uninstall_script
from relay.pg.queries import SCHEMA_VERSION
from relay.pg.replay_query import replay_query
from tests.support.paths import FIXTURES, example_path
from tests.support.relaylog import catalog_fingerprint, connect, sequence_all

pytestmark = pytest.mark.pg


def moves(conn: psycopg.Connection[Any], table: str) -> list[tuple[Any, ...]]:
    """op, changed, old_values, audience, old_audience and truncated of the table's log rows."""
    sequence_all(conn)
    return conn.execute(
        "SELECT op, changed, old_values, audience, old_audience, truncated FROM relay.log"
        " WHERE table_name = %s ORDER BY pos",
        (table,),
    ).fetchall()


def test_update_carries_the_old_values_of_the_carried_columns_it_changed(relay_db: str) -> None:
    """With and without a whitelist: the old values of exactly the changed carried columns;
    INSERT and DELETE carry none."""
    with connect(relay_db) as conn:
        conn.execute("INSERT INTO thumbnails (user_id, project_id, title) VALUES ('u1', 'p1', 't')")
        conn.execute("UPDATE thumbnails SET project_id = 'p2', title = 'u', created_at = now()")
        conn.execute("UPDATE thumbnails SET share_click_count = 5")
        conn.execute("DELETE FROM thumbnails")
        conn.execute("INSERT INTO generations (user_id, project_id) VALUES ('u1', 'p1')")
        conn.execute("UPDATE generations SET status = 'running', url = 'https://x'")
        assert [
            ("INSERT", None, None, ["u1"], None, False),
            ("UPDATE", ["project_id", "title"], {"project_id": "p1", "title": "t"}, ["u1"], None,
             False),
            ("UPDATE", ["share_click_count"], {"share_click_count": 0}, ["u1"], None, False),
            ("DELETE", None, None, ["u1"], None, False),
        ] == moves(conn, "thumbnails")  # fmt: skip
        assert [
            ("INSERT", None, None, ["u1"], None, False),
            ("UPDATE", ["status", "url"], {"status": "queued", "url": None}, ["u1"], None, False),
        ] == moves(conn, "generations")


def test_owner_hand_over_keeps_the_old_owner_as_old_audience(relay_db: str) -> None:
    """An UPDATE of the owner column keeps the old owner (none: an empty audience); one that
    keeps the owner keeps none."""
    with connect(relay_db) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, owner text, v int)")
        conn.execute("SELECT relay.track('items', owner_column => 'owner')")
        conn.execute("INSERT INTO items VALUES (1, 'alice', 0)")
        conn.execute("UPDATE items SET owner = 'bob'")
        conn.execute("UPDATE items SET owner = NULL, v = 1")
        conn.execute("UPDATE items SET owner = 'alice'")
        conn.execute("UPDATE items SET v = 2")
        assert [
            ("INSERT", None, None, ["alice"], None, False),
            ("UPDATE", ["owner"], {"owner": "alice"}, ["bob"], ["alice"], False),
            ("UPDATE", ["owner", "v"], {"owner": "bob", "v": 0}, [], ["bob"], False),
            ("UPDATE", ["owner"], {"owner": None}, ["alice"], [], False),
            ("UPDATE", ["v"], {"v": 1}, ["alice"], None, False),
        ] == moves(conn, "items")


def test_hand_over_of_an_owner_column_outside_the_whitelist_is_an_event(relay_db: str) -> None:
    """An owner column the whitelist leaves out: its UPDATE alone is an event with nothing
    changed and the old audience; an UPDATE of neither stays without event."""
    with connect(relay_db) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, owner text, v int, note text)")
        conn.execute(
            "SELECT relay.track('items', owner_column => 'owner', columns => ARRAY['id', 'v'])"
        )
        conn.execute("INSERT INTO items VALUES (1, 'alice', 0, 'n')")
        conn.execute("UPDATE items SET owner = 'bob'")
        conn.execute("UPDATE items SET note = 'm'")
        conn.execute("UPDATE items SET owner = owner, v = v")
        assert [
            ("INSERT", None, None, ["alice"], None, False),
            ("UPDATE", [], {}, ["bob"], ["alice"], False),
        ] == moves(conn, "items")
        assert ({"id": 1, "v": 0},) == conn.execute(
            "SELECT row_data FROM relay.log WHERE op = 'UPDATE'"
        ).fetchone()


AUDIENCE_TABLES = """
CREATE TABLE teams (id int PRIMARY KEY, members text[]);
CREATE TABLE docs (id int PRIMARY KEY, team int, title text);
CREATE FUNCTION doc_readers(d docs) RETURNS text[] LANGUAGE sql STABLE
    AS 'SELECT coalesce((SELECT members FROM public.teams WHERE id = d.team), ''{}'')';
INSERT INTO teams VALUES (1, ARRAY['alice', 'carol']), (2, ARRAY['bob', 'carol']),
                         (3, ARRAY['bob', 'carol']);
"""


@pytest.mark.parametrize("whitelist", [None, ["id", "title"]])
def test_audience_function_answer_that_changes_keeps_the_old_answer(
    relay_db: str, whitelist: list[str] | None
) -> None:
    """The audience function runs on the old row too: a different answer is kept as old_audience,
    the same one is not; with the function's column outside the whitelist, its UPDATE alone is
    an event only when the answer changes."""
    with connect(relay_db) as conn:
        conn.execute(AUDIENCE_TABLES)
        conn.execute(
            "SELECT relay.track('docs', audience => 'doc_readers', columns => %s)", (whitelist,)
        )
        conn.execute("INSERT INTO docs VALUES (1, 1, 'a')")
        conn.execute("UPDATE docs SET team = 2")  # alice leaves, bob enters
        conn.execute("UPDATE docs SET team = 3")  # the same readers
        conn.execute("UPDATE docs SET title = 'b'")
        conn.execute("UPDATE docs SET team = team, title = title")  # nothing at all
        carried = whitelist is None
        assert [
            ("INSERT", None, None, ["alice", "carol"], None, False),
            ("UPDATE", ["team"] if carried else [], {"team": 1} if carried else {},
             ["bob", "carol"], ["alice", "carol"], False),
            *([("UPDATE", ["team"], {"team": 2}, ["bob", "carol"], None, False)] if carried else []),
            ("UPDATE", ["title"], {"title": "a"}, ["bob", "carol"], None, False),
        ] == moves(conn, "docs")  # fmt: skip


def test_truncated_update_keeps_its_audiences_and_drops_its_values(relay_db: str) -> None:
    """Over the size cap, by the new values or by the old values of the changed columns: the
    event is truncated, carries no values, old or new, and keeps both audiences."""
    with connect(relay_db) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, owner text, body text)")
        conn.execute("SELECT relay.track('items', owner_column => 'owner')")
        conn.execute("SELECT relay.configure(max_row_bytes => 200)")
        conn.execute("INSERT INTO items VALUES (1, 'alice', 'short')")
        conn.execute("UPDATE items SET owner = 'bob', body = repeat('x', 300)")  # new values
        conn.execute("UPDATE items SET owner = 'carol', body = 'short'")  # old values
        conn.execute("UPDATE items SET body = 'shorter'")
        assert [
            ("INSERT", None, None, ["alice"], None, False),
            ("UPDATE", ["body", "owner"], None, ["bob"], ["alice"], True),
            ("UPDATE", ["body", "owner"], None, ["carol"], ["bob"], True),
            ("UPDATE", ["body"], {"body": "short"}, ["carol"], None, False),
        ] == moves(conn, "items")
        assert [None, None] == [
            row for (row,) in conn.execute("SELECT row_data FROM relay.log WHERE truncated")
        ]


def test_unconvertible_row_keeps_its_audiences(relay_db: str) -> None:
    """A row to_jsonb refuses: key only, old values unknown (NULL), both audiences kept."""
    with connect(relay_db) as conn:
        conn.execute("CREATE TABLE docs (id int PRIMARY KEY, owner text, body json)")
        conn.execute("SELECT relay.track('docs', owner_column => 'owner')")
        conn.execute("""INSERT INTO docs VALUES (1, 'alice', '{"a": "\\u0000"}')""")
        conn.execute("UPDATE docs SET owner = 'bob'")
        assert [
            ("INSERT", None, None, ["alice"], None, True),
            ("UPDATE", None, None, ["bob"], ["alice"], True),
        ] == moves(conn, "docs")


def test_replay_finds_a_readers_rows_by_old_or_new_audience(relay_db: str) -> None:
    """One reader's rows of the log, whose audience or old audience overlaps its keys (user id,
    role key), come from the two GIN indexes (the old audience's holds only rows whose audience
    changed); the replay page's own query reads them."""
    with connect(relay_db) as conn:
        conn.execute(
            "INSERT INTO generations (user_id, project_id)"
            " SELECT 'u' || g, 'p' FROM generate_series(1, 5000) AS g"
        )
        conn.execute("UPDATE generations SET user_id = 'bob' WHERE id IN (7, 8)")
        sequence_all(conn)
        conn.execute("ANALYZE relay.log")
        keys = ["u7", "role:authenticated"]
        query = (
            "SELECT op, pk FROM relay.log WHERE table_name = 'generations'"
            " AND (audience && %(k)s::text[] OR old_audience && %(k)s::text[]) ORDER BY pos"
        )
        expected = [("INSERT", {"id": 7}), ("UPDATE", {"id": 7})]
        assert expected == conn.execute(query, {"k": keys}).fetchall()
        plan = "\n".join(row[0] for row in conn.execute("EXPLAIN " + query, {"k": keys}).fetchall())
        assert "Bitmap Index Scan on log_audience" in plan, plan
        assert "Bitmap Index Scan on log_old_audience" in plan, plan
        assert [(2,)] == conn.execute(
            "SELECT count(*) FROM relay.log WHERE old_audience IS NOT NULL"
        ).fetchall()
        page, params = replay_query(
            keys=keys, table="generations", schema=None, after=0, upto=10**9, limit=100,
            scan=1000, ops=OPS, row_filter=RowFilter(),
        )  # fmt: skip
        rows = conn.execute(page, params).fetchall()
        assert expected == [(row[5], json.loads(row[6])) for row in rows if row[0]]


def test_upgrade_from_version_3_keeps_data_and_captures_moves(empty_db: str) -> None:
    """Installing over version 3 keeps log, epoch and tracking; rows logged before carry no
    move columns; the whitelist is then kept by attribute number; the result is a fresh install."""
    with connect(empty_db) as conn:
        conn.execute((FIXTURES / "install-v3.sql").read_text())
        conn.execute(example_path().read_text())
        conn.execute("INSERT INTO thumbnails (user_id, project_id) VALUES ('alice', 'p1')")
        sequence_all(conn)
        conn.execute("UPDATE thumbnails SET user_id = 'bob'")  # in flight
        epoch = conn.execute("SELECT epoch FROM relay.settings").fetchone()

        conn.execute(install_script())

        assert (epoch[0] if epoch else None, SCHEMA_VERSION) == conn.execute(
            "SELECT epoch, schema_version FROM relay.settings"
        ).fetchone()
        assert [("generations", None), ("thumbnails", [1, 2, 3, 4, 5])] == conn.execute(
            "SELECT tbl::text, column_nums FROM relay.tracked ORDER BY tbl::text"
        ).fetchall()
        conn.execute("UPDATE thumbnails SET user_id = 'carol'")
        assert [
            ("INSERT", None, None, ["alice"], None, False),
            ("UPDATE", ["user_id"], None, ["bob"], None, False),
            ("UPDATE", ["user_id"], {"user_id": "bob"}, ["carol"], ["bob"], False),
        ] == moves(conn, "thumbnails")
        upgraded = catalog_fingerprint(conn)
    with connect(empty_db) as conn:
        conn.execute(uninstall_script())
        conn.execute(install_script())
        conn.execute(example_path().read_text())
        assert [row for row in upgraded if row[0] != "settings"] == [
            row for row in catalog_fingerprint(conn) if row[0] != "settings"
        ]
