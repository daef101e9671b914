"""The database side under attack: privilege boundaries of capture, and values capture cannot convert.

Every attack runs as non-superuser roles created in the test database's server; the install and
relay.track run as the superuser of the admin DSN (the setting docs/operations.md allows).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from relay.ops.datafiles import install_script
from relay.pg.queries import SCHEMA_VERSION
from tests.support.paths import FIXTURES
from tests.support.relaylog import connect, sequence_all

pytestmark = pytest.mark.pg


class Roles:
    """Non-superuser login-less roles with names unique to one test, dropped afterwards."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.suffix = uuid.uuid4().hex[:8]
        self.made: list[str] = []

    def name(self, base: str) -> str:
        return f"{base}_{self.suffix}"

    def make(self, base: str) -> str:
        role = self.name(base)
        with connect(self.dsn) as conn:
            conn.execute(
                sql.SQL("CREATE ROLE {} NOSUPERUSER NOCREATEROLE").format(sql.Identifier(role))
            )
            conn.execute(
                sql.SQL("GRANT USAGE, CREATE ON SCHEMA public TO {}").format(sql.Identifier(role))
            )
        self.made.append(role)
        return role

    def exists(self, role: str) -> bool:
        with connect(self.dsn) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_roles WHERE rolname = %s", (role,)
            ).fetchone()
        return row == (1,)

    def drop_all(self) -> None:
        with connect(self.dsn) as conn:
            for role in reversed(self.made):
                conn.execute(sql.SQL("DROP OWNED BY {} CASCADE").format(sql.Identifier(role)))
                conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
            for base in ("pwned", "pwned_cast"):  # only there if an attack succeeded
                conn.execute(
                    sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(self.name(base)))
                )


@pytest.fixture
def roles(relay_db: str) -> Iterator[Roles]:
    made = Roles(relay_db)
    try:
        yield made
    finally:
        made.drop_all()


def as_role(conn: psycopg.Connection[Any], role: str, statement: str, params: Any = None) -> None:
    """Runs one statement as role, in a transaction of its own (SET LOCAL ROLE)."""
    with conn.transaction():
        conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(role)))
        conn.execute(statement, params)


def log_events(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    sequence_all(conn)
    return conn.execute(
        "SELECT table_name, op, pk, old_key, row_data, changed, audience, truncated"
        " FROM relay.log WHERE op <> 'HEARTBEAT' ORDER BY pos"
    ).fetchall()


# -- issue 10.2: no application code runs as the schema owner ----------------------------


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("EXECUTE 'CREATE ROLE {pwned}'; RETURN r.members;", "permission denied to create role"),
        ("INSERT INTO relay.inbox (table_schema, table_name, op, pk, audience)"
         " VALUES ('public', 'docs', 'INSERT', '{{\"id\": 9}}', ARRAY['victim']); RETURN r.members;",
         "permission denied for table inbox"),
    ],
    ids=["create-role", "forge-inbox-row"],
)  # fmt: skip
def test_redefined_audience_function_runs_with_the_writers_rights(
    relay_db: str, roles: Roles, body: str, message: str
) -> None:
    """An audience function redefined by its (non-superuser) owner runs as the writer: no role, no forged row."""
    app, mallory = roles.make("app"), roles.make("mallory")
    pwned = roles.name("pwned")
    with connect(relay_db) as conn:
        as_role(conn, app, "CREATE TABLE docs (id int PRIMARY KEY, members text[])")
        as_role(
            conn, mallory,
            "CREATE FUNCTION doc_members(r docs) RETURNS text[] LANGUAGE sql STABLE AS 'SELECT r.members'",
        )  # fmt: skip
        conn.execute("SELECT relay.track('docs', audience => 'doc_members')")
        as_role(conn, app, "INSERT INTO docs VALUES (1, ARRAY['u1'])")
        as_role(
            conn, mallory,
            "CREATE OR REPLACE FUNCTION doc_members(r docs) RETURNS text[] LANGUAGE plpgsql AS $$"
            f" BEGIN {body.format(pwned=pwned)} END $$",
        )  # fmt: skip
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as raised:
            as_role(conn, app, "INSERT INTO docs VALUES (2, ARRAY['u2'])")
        assert message in str(raised.value)
        assert not roles.exists(pwned)
        assert [("docs", "INSERT", {"id": 1}, None, {"id": 1, "members": ["u1"]}, None, ["u1"],
                 False)] == log_events(conn)  # fmt: skip


@pytest.mark.parametrize(
    "action",
    [
        "EXECUTE 'CREATE ROLE {pwned}'",
        "INSERT INTO relay.inbox (table_schema, table_name, op, pk, audience)"
        " VALUES ('public', 'notes', 'INSERT', '{{\"id\": 9}}', ARRAY['victim'])",
    ],
    ids=["create-role", "forge-inbox-row"],
)
def test_cast_to_json_of_a_column_type_runs_with_the_writers_rights(
    relay_db: str, roles: Roles, action: str
) -> None:
    """A column added later whose type's cast to json attempts privileged work: the write commits,
    nothing privileged happens, the event is captured with its key, truncated."""
    app = roles.make("app")
    pwned = roles.name("pwned_cast")
    with connect(relay_db) as conn:
        as_role(conn, app, "CREATE TABLE notes (id int PRIMARY KEY, owner text)")
        conn.execute("SELECT relay.track('notes', owner_column => 'owner')")
        for statement in (
            "CREATE TYPE mood AS ENUM ('calm')",
            "CREATE FUNCTION mood_json(m mood) RETURNS json LANGUAGE plpgsql AS $$"
            f" BEGIN {action.format(pwned=pwned)}; RETURN '\"calm\"'; END $$",
            "CREATE CAST (mood AS json) WITH FUNCTION mood_json(mood)",
            "ALTER TABLE notes ADD COLUMN m mood",
            "INSERT INTO notes VALUES (1, 'u1', 'calm')",
        ):
            as_role(conn, app, statement)
        assert not roles.exists(pwned)
        assert [(1, "calm")] == conn.execute("SELECT id, m::text FROM notes").fetchall()
        assert [("notes", "INSERT", {"id": 1}, None, None, None, ["u1"], True)] == log_events(conn)


def test_writer_cannot_forge_an_event(relay_db: str, roles: Roles) -> None:
    """A writer of a tracked table cannot write relay.inbox, run or attach the append trigger
    function, or smuggle an event through the hand-over setting: the log holds its real writes only."""
    writer = roles.make("writer")
    with connect(relay_db) as conn:
        row = conn.execute(
            """SELECT ROW('{"id": 7}', NULL, '{"id": 7, "user_id": "victim"}', NULL,"""
            " ARRAY['victim'], false, NULL, ARRAY['victim'])::relay.handover::text"
        ).fetchone()
        assert row is not None
        forged = row[0]
        conn.execute(sql.SQL("GRANT SELECT, INSERT, UPDATE ON generations TO {}").format(
            sql.Identifier(writer)))  # fmt: skip
        attempts: list[tuple[str, type[psycopg.Error], str]] = [
            ("INSERT INTO relay.inbox (table_schema, table_name, op, pk, audience)"
             " VALUES ('public', 'generations', 'INSERT', '{\"id\": 7}', ARRAY['victim'])",
             psycopg.errors.InsufficientPrivilege, r"permission denied for table inbox$"),
            ("SELECT relay.append_captured()", psycopg.errors.InsufficientPrivilege,
             r"permission denied for function (relay\.)?append_captured$"),
            ("CREATE TABLE decoy (id int); CREATE TRIGGER t AFTER INSERT ON decoy FOR EACH ROW"
             " EXECUTE FUNCTION relay.append_captured()", psycopg.errors.InsufficientPrivilege,
             r"permission denied for function (relay\.)?append_captured$"),
            ("CREATE TABLE decoy (id int); CREATE TRIGGER t AFTER INSERT ON decoy FOR EACH ROW"
             " EXECUTE FUNCTION relay.capture('user_id', '', '', '{id}')",
             psycopg.errors.InsufficientPrivilege, r"permission denied for function (relay\.)?capture$"),
        ]  # fmt: skip
        for statement, error, message in attempts:
            with pytest.raises(error) as raised:
                as_role(conn, writer, statement)
            assert re.search(message, str(raised.value)), str(raised.value)
        with conn.transaction():
            conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(writer)))
            conn.execute("SELECT set_config('relay.captured', %s, true)", (forged,))
            conn.execute("INSERT INTO generations (user_id, project_id) VALUES ('u1', 'p1')")
            conn.execute("SELECT set_config('relay.captured', %s, true)", (forged,))
            conn.execute("UPDATE generations SET created_at = created_at")  # nothing carried
            conn.execute("SELECT set_config('relay.captured', %s, true)", (forged,))
        assert [("INSERT", {"id": 1}, ["u1"])] == [
            (op, pk, audience) for _, op, pk, _, _, _, audience, _ in log_events(conn)
        ]
        assert (0,) == conn.execute(
            "SELECT count(*) FROM relay.log"
            " WHERE 'victim' = ANY (audience) OR 'victim' = ANY (old_audience)"
        ).fetchone()


def test_superuser_cannot_call_the_append_trigger_function_outside_a_trigger(relay_db: str) -> None:
    """relay.append_captured is a trigger function: called directly, even by its owner, it refuses."""
    with connect(relay_db) as conn, pytest.raises(psycopg.errors.FeatureNotSupported) as raised:
        conn.execute("SELECT relay.append_captured()")
    assert "trigger functions can only be called as triggers" in str(raised.value)


def test_upgrade_from_version_2_closes_the_audience_function_attack(empty_db: str) -> None:
    """Installing over version 2 keeps log, epoch and tracking, and the audience function then
    runs with the writer's rights."""
    suffix = uuid.uuid4().hex[:8]
    app, pwned = f"app_{suffix}", f"pwned_{suffix}"
    with connect(empty_db) as conn:
        conn.execute((FIXTURES / "install-v2.sql").read_text())
        conn.execute(f"CREATE ROLE {app}; GRANT USAGE, CREATE ON SCHEMA public TO {app}")
        try:
            as_role(conn, app, "CREATE TABLE docs (id int PRIMARY KEY, members text[])")
            as_role(conn, app, "CREATE FUNCTION doc_members(r docs) RETURNS text[] LANGUAGE sql"
                               " STABLE AS 'SELECT r.members'")  # fmt: skip
            conn.execute("SELECT relay.track('docs', audience => 'doc_members')")
            as_role(conn, app, "INSERT INTO docs VALUES (1, ARRAY['u1'])")
            sequence_all(conn)
            as_role(conn, app, "INSERT INTO docs VALUES (2, ARRAY['u2'])")  # in flight
            epoch = conn.execute("SELECT epoch FROM relay.settings").fetchone()

            conn.execute(install_script())

            assert (epoch[0] if epoch else None, SCHEMA_VERSION) == conn.execute(
                "SELECT epoch, schema_version FROM relay.settings"
            ).fetchone()
            as_role(conn, app, "CREATE OR REPLACE FUNCTION doc_members(r docs) RETURNS text[]"
                               f" LANGUAGE plpgsql AS $$ BEGIN EXECUTE 'CREATE ROLE {pwned}';"
                               " RETURN r.members; END $$")  # fmt: skip
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                as_role(conn, app, "INSERT INTO docs VALUES (3, ARRAY['u3'])")
            assert (0,) == conn.execute(
                "SELECT count(*) FROM pg_roles WHERE rolname = %s", (pwned,)
            ).fetchone()
            as_role(conn, app, "CREATE OR REPLACE FUNCTION doc_members(r docs) RETURNS text[]"
                               " LANGUAGE sql STABLE AS 'SELECT r.members'")  # fmt: skip
            as_role(conn, app, "UPDATE docs SET members = ARRAY['u9'] WHERE id = 1")
            sequence_all(conn)
            assert [(1, "INSERT", ["u1"]), (2, "INSERT", ["u2"]), (3, "UPDATE", ["u9"])] == [
                (pos, op, audience)
                for pos, op, audience in conn.execute(
                    "SELECT pos, op, audience FROM relay.log ORDER BY pos"
                )
            ]
        finally:
            conn.execute(f"DROP OWNED BY {app} CASCADE; DROP ROLE {app}")
            conn.execute(f"DROP ROLE IF EXISTS {pwned}")


# -- issue 10.7: tracking never changes what writers may store ---------------------------

POISON = {
    "nul": '{"a": "\\u0000"}',
    "lone-surrogate": '{"a": "\\ud800"}',
}


@pytest.mark.parametrize("value", list(POISON.values()), ids=list(POISON))
def test_json_jsonb_refuses_is_written_and_captured_truncated(relay_db: str, value: str) -> None:
    """json jsonb cannot hold: INSERT, UPDATE, DELETE commit; each event carries its key, truncated."""
    with connect(relay_db) as conn:
        conn.execute("CREATE TABLE docs (id int PRIMARY KEY, owner text, body json, n int)")
        conn.execute("SELECT relay.track('docs', owner_column => 'owner')")
        conn.execute("INSERT INTO docs VALUES (1, 'u1', %s, 0)", (value,))
        conn.execute("UPDATE docs SET n = 1")
        conn.execute("UPDATE docs SET id = 2")
        conn.execute("DELETE FROM docs")
        assert [
            ("docs", "INSERT", {"id": 1}, None, None, None, ["u1"], True),
            ("docs", "UPDATE", {"id": 1}, {"id": 1}, None, None, ["u1"], True),
            ("docs", "UPDATE", {"id": 2}, {"id": 1}, None, None, ["u1"], True),
            ("docs", "DELETE", {"id": 2}, {"id": 2}, None, None, ["u1"], True),
        ] == log_events(conn)


@pytest.mark.parametrize("value", list(POISON.values()), ids=list(POISON))
def test_row_stored_before_tracking_can_still_be_updated_and_deleted(
    relay_db: str, value: str
) -> None:
    """A row holding such a value before relay.track stays writable; its events carry the key."""
    with connect(relay_db) as conn:
        conn.execute("CREATE TABLE docs (id int PRIMARY KEY, owner text, body json, n int)")
        conn.execute("INSERT INTO docs VALUES (1, 'u1', %s, 0)", (value,))
        conn.execute("SELECT relay.track('docs', owner_column => 'owner')")
        conn.execute("UPDATE docs SET n = 1")
        conn.execute("DELETE FROM docs")
        assert [
            ("docs", "UPDATE", {"id": 1}, {"id": 1}, None, None, ["u1"], True),
            ("docs", "DELETE", {"id": 1}, {"id": 1}, None, None, ["u1"], True),
        ] == log_events(conn)
        assert (0,) == conn.execute("SELECT count(*) FROM docs").fetchone()


def test_whitelist_leaving_the_bad_column_out_keeps_events_whole(relay_db: str) -> None:
    """With a whitelist, a bad value outside it costs nothing: events carry the whitelisted columns."""
    with connect(relay_db) as conn:
        conn.execute("CREATE TABLE docs (id int PRIMARY KEY, owner text, body json, n int)")
        conn.execute(
            "SELECT relay.track('docs', owner_column => 'owner', columns => ARRAY['id', 'n'])"
        )
        conn.execute("INSERT INTO docs VALUES (1, 'u1', %s, 0)", (POISON["nul"],))
        conn.execute("UPDATE docs SET n = 1")
        conn.execute("UPDATE docs SET body = '{}'")  # not carried: no event
        conn.execute("UPDATE docs SET body = %s, n = 2", (POISON["lone-surrogate"],))
        conn.execute("DELETE FROM docs")
        assert [
            ("docs", "INSERT", {"id": 1}, None, {"id": 1, "n": 0}, None, ["u1"], False),
            ("docs", "UPDATE", {"id": 1}, {"id": 1}, {"id": 1, "n": 1}, ["n"], ["u1"], False),
            ("docs", "UPDATE", {"id": 1}, {"id": 1}, {"id": 1, "n": 2}, ["n"], ["u1"], False),
            ("docs", "DELETE", {"id": 1}, {"id": 1}, {"id": 1, "n": 2}, None, ["u1"], False),
        ] == log_events(conn)


def test_whitelisted_bad_column_makes_the_event_key_only(relay_db: str) -> None:
    """A bad value in a whitelisted column: the event carries the key, truncated."""
    with connect(relay_db) as conn:
        conn.execute("CREATE TABLE docs (id int PRIMARY KEY, owner text, body json)")
        conn.execute(
            "SELECT relay.track('docs', owner_column => 'owner', columns => ARRAY['id', 'body'])"
        )
        conn.execute("INSERT INTO docs VALUES (1, 'u1', %s)", (POISON["nul"],))
        assert [("docs", "INSERT", {"id": 1}, None, None, None, ["u1"], True)] == log_events(conn)


def test_key_that_cannot_be_converted_still_lets_the_write_commit(
    relay_db: str, roles: Roles
) -> None:
    """A key column whose cast to json raises: the write commits, the key's values are null,
    the owner column still gives the audience."""
    with connect(relay_db) as conn:
        conn.execute(
            """
            CREATE TYPE shade AS ENUM ('red', 'blue');
            CREATE FUNCTION shade_json(s shade) RETURNS json LANGUAGE plpgsql AS $$
              BEGIN RAISE EXCEPTION 'no json for %', s; END $$;
            CREATE CAST (shade AS json) WITH FUNCTION shade_json(shade);
            CREATE TABLE paints (k shade PRIMARY KEY, owner text);
            SELECT relay.track('paints', owner_column => 'owner');
            INSERT INTO paints VALUES ('red', 'u1');
            UPDATE paints SET k = 'blue';
            DELETE FROM paints;
            """
        )
        assert [
            ("paints", "INSERT", {"k": None}, None, None, None, ["u1"], True),
            ("paints", "UPDATE", {"k": None}, {"k": None}, None, None, ["u1"], True),
            ("paints", "DELETE", {"k": None}, {"k": None}, None, None, ["u1"], True),
        ] == log_events(conn)


def test_text_over_the_jsonb_limit_is_written_and_captured_truncated(relay_db: str) -> None:
    """A text one byte over jsonb's 256 MiB limit (built on the server, stored compressed to 3 MB):
    INSERT, UPDATE, DELETE commit; events carry the key, truncated."""
    limit = (1 << 28) - 1  # jsonb's 268435455 bytes
    with connect(relay_db) as conn:
        conn.execute("CREATE TABLE blobs (id int PRIMARY KEY, owner text, body text, n int)")
        conn.execute("SELECT relay.track('blobs', owner_column => 'owner')")
        conn.execute("INSERT INTO blobs VALUES (1, 'u1', repeat('x', %s), 0)", (limit + 1,))
        conn.execute("UPDATE blobs SET n = 1")
        conn.execute("DELETE FROM blobs")
        assert [
            ("blobs", "INSERT", {"id": 1}, None, None, None, ["u1"], True),
            ("blobs", "UPDATE", {"id": 1}, {"id": 1}, None, None, ["u1"], True),
            ("blobs", "DELETE", {"id": 1}, {"id": 1}, None, None, ["u1"], True),
        ] == log_events(conn)


def test_handover_that_is_not_json_is_dropped_and_the_batch_moves_on(relay_db: str) -> None:
    """With relay_capture disabled (only a table's owner can), text put into relay.captured
    reaches the inbox; the sequencer drops each row that is no hand-over (or holds what JSON
    functions cannot read), keeps valid JSON jsonb refuses to its key, and moves the rest."""
    with connect(relay_db) as conn:
        conn.execute("INSERT INTO generations (user_id, project_id) VALUES ('u1', 'p1')")
        with conn.transaction():
            conn.execute("ALTER TABLE generations DISABLE TRIGGER relay_capture")
            for forged in (
                "not json at all",
                '[{"id": 1}, null, "not an array literal"]',
                "[1, 2]",
                '[{"id": 1, "user_id": "u2", "project_id": "\\u0000"}, null, null, null]',
                '[{"id": 9, "user_id": "u9", "project_id": 1e999999}, null, null, null]',
            ):
                conn.execute("SELECT set_config('relay.captured', %s, true)", (forged,))
                conn.execute("INSERT INTO generations (user_id, project_id) VALUES ('u2', 'p2')")
            conn.execute("ALTER TABLE generations ENABLE TRIGGER relay_capture")
        conn.execute("INSERT INTO generations (user_id, project_id) VALUES ('u3', 'p3')")
        assert (7,) == conn.execute("SELECT count(*) FROM relay.inbox").fetchone()
        taken = conn.execute("SELECT relay.sequence_batch()").fetchone()
        assert (7,) == taken  # every row taken, three of them events
        assert [
            (1, {"id": 1}, ["u1"], False),
            (2, {"id": 9}, ["u9"], True),
            (3, {"id": 7}, ["u3"], False),
        ] == conn.execute(
            "SELECT pos, pk, audience, truncated FROM relay.log ORDER BY pos"
        ).fetchall()
        assert (0,) == conn.execute("SELECT count(*) FROM relay.inbox").fetchone()
