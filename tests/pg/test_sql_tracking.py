"""Tracking: relay.track and untrack, the column whitelist, columns added or renamed."""

from __future__ import annotations

import psycopg
import pytest

from relay.ops.datafiles import install_script
from tests.support.relaylog import connect, sequence_all

pytestmark = pytest.mark.pg


@pytest.mark.parametrize(
    ("call", "message", "hint"),
    [
        ("relay.track('nopk', owner_column => 'owner')", "has no primary key", "ADD PRIMARY KEY"),
        ("relay.track('items', owner_column => 'nope')", "unknown column(s) nope",
         "The columns of public.items are: k, owner, v."),
        ("relay.track('items', owner_column => 'owner', columns => ARRAY['v', 'zz'])",
         "unknown column(s) zz", "The columns of public.items are"),
        ("relay.track('items')", "give exactly one of owner_column or audience", "owner_column names"),
        ("relay.track('items', owner_column => 'owner', audience => 'project_members')",
         "give exactly one of owner_column or audience", "audience is a function"),
        ("relay.track('items', audience => 'wrong_shape')", "must take a public.items row and return text[]",
         "CREATE FUNCTION"),
        ("relay.track('items', owner_column => 'owner', columns => ARRAY[]::text[])",
         "columns is empty", "Pass NULL"),
        ("relay.track('item_view', owner_column => 'owner')", "only tables can be tracked", None),
    ],
)  # fmt: skip
def test_track_refuses_with_message_and_hint(
    relay_db: str, call: str, message: str, hint: str | None
) -> None:
    """track refuses a table without a key, unknown columns, both/neither owner and audience, a bad function."""
    with connect(relay_db) as conn:
        conn.execute(
            """
            CREATE TABLE nopk (owner text);
            CREATE TABLE items (k text PRIMARY KEY, owner text, v int);
            CREATE VIEW item_view AS SELECT * FROM items;
            CREATE FUNCTION project_members(i items) RETURNS text[] LANGUAGE sql AS 'SELECT NULL::text[]';
            CREATE FUNCTION wrong_shape(i int) RETURNS text[] LANGUAGE sql AS 'SELECT NULL::text[]';
            """
        )
        with pytest.raises(psycopg.errors.Error) as raised:
            conn.execute(f"SELECT {call}")
        diag = raised.value.diag
        assert message in (diag.message_primary or "")
        if hint is not None:
            assert hint in (diag.message_hint or "")
        assert [] == conn.execute("SELECT tbl FROM relay.tracked WHERE tbl::text <> ALL "
                                  "(ARRAY['thumbnails', 'generations'])").fetchall()  # fmt: skip


def test_untrack_detaches_and_track_again_reattaches(relay_db: str) -> None:
    """untrack stops capture (and says so when the table was not tracked); track attaches it again."""
    with connect(relay_db) as conn:
        assert (True,) == conn.execute("SELECT relay.untrack('generations')").fetchone()
        assert (False,) == conn.execute("SELECT relay.untrack('generations')").fetchone()
        conn.execute("INSERT INTO generations (user_id, project_id) VALUES ('u1', 'p1')")
        assert 0 == sequence_all(conn)
        conn.execute("SELECT relay.track('generations', owner_column => 'user_id')")
        conn.execute("INSERT INTO generations (user_id, project_id) VALUES ('u1', 'p2')")
        assert 1 == sequence_all(conn)


def test_update_touching_no_whitelisted_column_emits_nothing(relay_db: str) -> None:
    """Only changes to whitelisted columns make events; a no-op UPDATE of an untracked-columns table too."""
    with connect(relay_db) as conn:
        conn.execute("INSERT INTO thumbnails (user_id, project_id) VALUES ('u1', 'p1')")
        conn.execute("INSERT INTO generations (user_id, project_id) VALUES ('u1', 'p1')")
        sequence_all(conn)
        conn.execute("UPDATE thumbnails SET created_at = created_at - interval '1 hour'")
        conn.execute("UPDATE generations SET status = status")
        assert 0 == sequence_all(conn)


def test_column_added_after_track_is_not_carried(relay_db: str) -> None:
    """A column added to a whitelisted table after relay.track never reaches an event."""
    with connect(relay_db) as conn:
        conn.execute("ALTER TABLE thumbnails ADD COLUMN secret text DEFAULT 'hidden'")
        conn.execute("INSERT INTO thumbnails (user_id, project_id) VALUES ('u1', 'p1')")
        conn.execute("UPDATE thumbnails SET secret = 'still hidden', title = 'new'")
        conn.execute("UPDATE thumbnails SET secret = 'only this'")
        assert 2 == sequence_all(conn)
        for row_data, changed in conn.execute("SELECT row_data, changed FROM relay.log"):
            assert "secret" not in row_data and "secret" not in (changed or [])


def test_renamed_whitelisted_column_stays_carried_under_its_new_name(relay_db: str) -> None:
    """A whitelisted column renamed after relay.track is carried under its new name, before and
    after the table is attached again; relay.tracked names it anew once it is."""
    with connect(relay_db) as conn:
        conn.execute("INSERT INTO thumbnails (user_id, project_id) VALUES ('u1', 'p1')")
        assert 1 == sequence_all(conn)
        conn.execute("ALTER TABLE thumbnails RENAME COLUMN title TO caption")
        conn.execute("ALTER TABLE thumbnails RENAME COLUMN created_at TO made_at")
        conn.execute("UPDATE thumbnails SET caption = 'a', share_click_count = 1")
        conn.execute("UPDATE thumbnails SET made_at = now()")  # still not carried
        conn.execute(install_script())  # re-attaches every tracked table
        conn.execute("UPDATE thumbnails SET caption = 'b'")
        conn.execute("DELETE FROM thumbnails")
        assert 3 == sequence_all(conn)
        row = {"id": 1, "user_id": "u1", "project_id": "p1", "share_click_count": 1}
        assert [
            ("INSERT", {**row, "title": "", "share_click_count": 0}, None, None),
            ("UPDATE", {**row, "caption": "a"}, ["caption", "share_click_count"],
             {"caption": "", "share_click_count": 0}),
            ("UPDATE", {**row, "caption": "b"}, ["caption"], {"caption": "a"}),
            ("DELETE", {**row, "caption": "b"}, None, None),
        ] == conn.execute(
            "SELECT op, row_data, changed, old_values FROM relay.log ORDER BY pos"
        ).fetchall()  # fmt: skip
        assert (["id", "user_id", "project_id", "caption", "share_click_count"],) == (
            conn.execute(
                "SELECT columns FROM relay.tracked WHERE tbl = 'thumbnails'::regclass"
            ).fetchone()
        )


def test_several_changed_columns_are_listed_once_in_name_order(relay_db: str) -> None:
    """An UPDATE of several carried columns lists each once, sorted by name."""
    with connect(relay_db) as conn:
        conn.execute(
            "SELECT relay.track('thumbnails', owner_column => 'user_id', columns => "
            "ARRAY['title', 'id', 'project_id', 'title', 'share_click_count', 'user_id'])"
        )
        conn.execute("INSERT INTO thumbnails (user_id, project_id) VALUES ('u1', 'p1')")
        conn.execute(
            "UPDATE thumbnails SET title = 't', share_click_count = 2, project_id = 'p2',"
            " created_at = now() - interval '1 day'"
        )
        sequence_all(conn)
        assert (["project_id", "share_click_count", "title"],) == conn.execute(
            "SELECT changed FROM relay.log WHERE op = 'UPDATE'"
        ).fetchone()


def test_column_renamed_before_its_write_is_sequenced_is_left_out(relay_db: str) -> None:
    """An event written before a whitelisted column's rename and sequenced after it leaves that
    column out (its events are shaped by the tracking of now), and carries no other column."""
    with connect(relay_db) as conn:
        conn.execute("INSERT INTO thumbnails (user_id, project_id) VALUES ('u1', 'p1')")
        conn.execute("ALTER TABLE thumbnails RENAME COLUMN title TO caption")
        conn.execute("ALTER TABLE thumbnails RENAME COLUMN created_at TO title")
        assert 1 == sequence_all(conn)
        assert [({"id": 1, "user_id": "u1", "project_id": "p1", "share_click_count": 0},)] == (
            conn.execute("SELECT row_data FROM relay.log").fetchall()
        )
