"""The database side: install, upgrade, uninstall, track, capture, sequencing, prune."""

from __future__ import annotations

import random
import threading
import time
from typing import Any

import psycopg
import pytest

from relay.ops.datafiles import install_script, uninstall_script
from relay.pg.queries import SCHEMA_VERSION
from tests.support.paths import FIXTURES, example_path

pytestmark = pytest.mark.pg


def connect(dsn: str) -> psycopg.Connection[Any]:
    return psycopg.connect(dsn, autocommit=True)


def sequence_all(conn: psycopg.Connection[Any]) -> int:
    """Runs the sequencer until the inbox is empty; returns how many events it logged."""
    before = conn.execute("SELECT pos FROM relay.head").fetchone()[0]  # type: ignore[index]
    while conn.execute("SELECT relay.sequence_batch(1000)").fetchone()[0]:  # type: ignore[index]
        pass  # it returns the inbox rows it took, some of which may be no event
    after: int = conn.execute("SELECT pos FROM relay.head").fetchone()[0]  # type: ignore[index]
    return int(after - before)


def log_rows(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT pos, table_name, op, pk, old_key, row_data, changed, audience, truncated"
        " FROM relay.log ORDER BY pos"
    ).fetchall()


def catalog_fingerprint(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    """Every object of the relay schema with its definition (an index's with its options), and
    every trigger it attached."""
    return conn.execute(
        """
        SELECT 'rel', c.relname, c.relkind::text,
               CASE WHEN c.relkind = 'i' THEN pg_get_indexdef(c.oid) END FROM pg_class c
         WHERE c.relnamespace = 'relay'::regnamespace
        UNION ALL
        SELECT 'fn', p.proname, pg_get_function_identity_arguments(p.oid), p.prosrc FROM pg_proc p
         WHERE p.pronamespace = 'relay'::regnamespace
        UNION ALL
        SELECT 'tg', t.tgrelid::regclass::text, t.tgname, encode(t.tgargs, 'hex') FROM pg_trigger t
         WHERE t.tgname = 'relay_capture'
        UNION ALL
        SELECT 'settings', epoch::text, schema_version::text, notify::text FROM relay.settings
        ORDER BY 1, 2, 3
        """
    ).fetchall()


def test_install_twice_changes_nothing(relay_db: str) -> None:
    """Running install.sql again leaves every object, trigger, setting and the epoch as they were."""
    with connect(relay_db) as conn:
        before = catalog_fingerprint(conn)
        conn.execute(install_script())
        assert before == catalog_fingerprint(conn)


def test_uninstall_removes_schema_and_triggers_and_keeps_app_data(relay_db: str) -> None:
    """uninstall.sql drops the relay schema and the capture triggers; app rows stay, and writes work."""
    with connect(relay_db) as conn:
        conn.execute("INSERT INTO thumbnails (user_id, project_id, title) VALUES ('u1', 'p1', 'a')")
        conn.execute(uninstall_script())
        conn.execute(uninstall_script())  # idempotent
        assert conn.execute("SELECT to_regnamespace('relay')").fetchone() == (None,)
        assert (
            []
            == conn.execute(
                "SELECT tgname FROM pg_trigger WHERE tgname = 'relay_capture'"
            ).fetchall()
        )
        assert [("a",)] == conn.execute("SELECT title FROM thumbnails").fetchall()
        conn.execute("UPDATE thumbnails SET title = 'b'")
        assert [("b",)] == conn.execute("SELECT title FROM thumbnails").fetchall()


def test_reinstall_after_uninstall_gets_a_new_epoch(relay_db: str) -> None:
    """A reinstall is detectable: the epoch that travels in cursors changes."""
    with connect(relay_db) as conn:
        first = conn.execute("SELECT epoch FROM relay.settings").fetchone()
        conn.execute(uninstall_script())
        conn.execute(install_script())
        assert first != conn.execute("SELECT epoch FROM relay.settings").fetchone()


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


def test_sequencer_rings_relay_log_once_per_batch_with_the_head(relay_db: str) -> None:
    """A batch that moved rows rings relay_log once with the new head as the payload; an empty
    batch rings nothing."""
    with connect(relay_db) as listener, connect(relay_db) as conn:
        listener.execute("LISTEN relay_log")
        conn.execute("INSERT INTO generations (user_id, project_id) VALUES ('u1', 'p1')")
        conn.execute("SELECT relay.sequence_batch()")
        conn.execute("SELECT relay.sequence_batch()")
        for i in range(3):
            conn.execute(
                "INSERT INTO generations (user_id, project_id) VALUES ('u1', %s)", (str(i),)
            )
        conn.execute("SELECT relay.sequence_batch()")
        assert [("relay_log", "1"), ("relay_log", "4")] == [
            (n.channel, n.payload) for n in listener.notifies(timeout=1.0, stop_after=3)
        ]


def test_prune_deletes_old_rows_and_records_the_horizon(relay_db: str) -> None:
    """prune deletes log rows older than the interval, in bounded chunks, and records pruned_through."""
    with connect(relay_db) as conn:
        for i in range(5):
            conn.execute(
                "INSERT INTO generations (user_id, project_id) VALUES ('u1', %s)", (str(i),)
            )
        sequence_all(conn)
        conn.execute("UPDATE relay.log SET sequenced_at = now() - interval '2 days' WHERE pos <= 3")
        assert (2,) == conn.execute("SELECT relay.prune(interval '1 day', 2)").fetchone()
        assert (1,) == conn.execute("SELECT relay.prune(interval '1 day', 2)").fetchone()
        assert (0,) == conn.execute("SELECT relay.prune(interval '1 day', 2)").fetchone()
        assert [(4,), (5,)] == conn.execute("SELECT pos FROM relay.log ORDER BY pos").fetchall()
        assert (5, 3) == conn.execute("SELECT pos, pruned_through FROM relay.head").fetchone()


def test_prune_bisects_to_the_end_of_the_expired_prefix(relay_db: str) -> None:
    """prune deletes exactly the rows sequenced before the horizon, found by bisection over the
    positions (each age boundary from 0 to 40 of 40 rows), at most max_rows a call."""
    with connect(relay_db) as conn:
        conn.execute(
            "INSERT INTO generations (user_id, project_id) SELECT 'u1', g::text"
            " FROM generate_series(1, 40) AS g"
        )
        assert 40 == sequence_all(conn)
        for expired in range(41):
            with conn.transaction(force_rollback=True):
                conn.execute(
                    "UPDATE relay.log SET sequenced_at = now() - (100 - pos) * interval '1 hour'"
                    " - CASE WHEN pos <= %s THEN interval '1000 hours' ELSE interval '0' END",
                    (expired,),
                )  # older the lower the position; the first `expired` ones past 200 h
                calls = []
                while deleted := conn.execute(
                    "SELECT relay.prune(interval '200 hours', 7)"
                ).fetchone()[0]:  # type: ignore[index]
                    calls.append(deleted)
                assert sum(calls) == expired and all(n <= 7 for n in calls)
                assert [7] * (expired // 7) == calls[: expired // 7]
                assert (40, expired) == conn.execute(
                    "SELECT pos, pruned_through FROM relay.head"
                ).fetchone()
                assert list(range(expired + 1, 41)) == [
                    pos for (pos,) in conn.execute("SELECT pos FROM relay.log ORDER BY pos")
                ]


def test_long_open_transaction_does_not_hold_back_other_events(relay_db: str) -> None:
    """A transaction open for 10 s delays only its own event; others are sequenced meanwhile."""
    with connect(relay_db) as slow, connect(relay_db) as fast:
        slow.execute("BEGIN")
        slow.execute("INSERT INTO generations (user_id, project_id) VALUES ('u1', 'slow')")
        deadline = time.monotonic() + 10.0
        seen: list[str] = []
        while time.monotonic() < deadline:
            fast.execute("INSERT INTO generations (user_id, project_id) VALUES ('u1', 'fast')")
            sequence_all(fast)
            seen = [r[0] for r in fast.execute(
                "SELECT row_data ->> 'project_id' FROM relay.log ORDER BY pos").fetchall()]  # fmt: skip
            time.sleep(0.5)
        assert ["fast"] * len(seen) == seen and len(seen) >= 15
        slow.execute("COMMIT")
        sequence_all(fast)
        assert ("slow",) == fast.execute(
            "SELECT row_data ->> 'project_id' FROM relay.log ORDER BY pos DESC LIMIT 1"
        ).fetchone()


def test_concurrent_writers_gap_free_exactly_once(relay_db: str) -> None:
    """16 writers committing out of order, some rolling back: the log holds each committed event once,
    and a reader tailing it concurrently sees all of them with strictly increasing positions."""
    writers, target_events = 16, 10_000
    committed: list[list[int]] = [[] for _ in range(writers)]
    stop = threading.Event()
    errors: list[BaseException] = []
    counter = iter(range(10**9))
    counter_lock = threading.Lock()
    produced = [0]

    def write(index: int) -> None:
        rng = random.Random(index)
        with connect(relay_db) as conn:
            while True:
                with counter_lock:
                    if produced[0] >= target_events:
                        return
                    size = min(rng.randint(1, 8), target_events - produced[0])
                    batch = [next(counter) for _ in range(size)]
                    produced[0] += len(batch)
                rollback = rng.random() < 0.15
                try:
                    with conn.transaction():
                        for marker in batch:
                            conn.execute(
                                "INSERT INTO generations (user_id, project_id, shot_id)"
                                " VALUES (%s, 'p', %s)",
                                (f"u{marker % 7}", str(marker)),
                            )
                        time.sleep(rng.random() * 0.01)
                        if rollback:
                            raise _Rollback
                except _Rollback:
                    with counter_lock:
                        produced[0] -= len(batch)
                    continue
                committed[index].extend(batch)

    def sequence() -> None:
        with connect(relay_db) as conn:
            while not stop.is_set():
                if not conn.execute("SELECT relay.sequence_batch(500)").fetchone()[0]:  # type: ignore[index]
                    time.sleep(0.002)

    tailed: list[tuple[int, int]] = []

    def tail() -> None:
        last = 0
        with connect(relay_db) as conn:
            while not stop.is_set() or last < target_events:
                rows = conn.execute(
                    "SELECT pos, (row_data ->> 'shot_id')::int FROM relay.log"
                    " WHERE pos > %s ORDER BY pos LIMIT 1000",
                    (last,),
                ).fetchall()
                tailed.extend(rows)
                if rows:
                    last = rows[-1][0]
                else:
                    time.sleep(0.002)
                if stop.is_set() and not rows:
                    return

    def guarded(fn: Any, *args: Any) -> None:
        try:
            fn(*args)
        except BaseException as exc:  # surfaced to the test below
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(write, i)) for i in range(writers)]
    background = [threading.Thread(target=guarded, args=(fn,)) for fn in (sequence, tail)]
    for thread in threads + background:
        thread.start()
    for thread in threads:
        thread.join(120)
    with connect(relay_db) as conn:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(tailed) < target_events:
            time.sleep(0.05)
    stop.set()
    for thread in background:
        thread.join(30)
    assert [] == errors

    expected = sorted(m for per_writer in committed for m in per_writer)
    assert target_events == len(expected)
    positions = [pos for pos, _ in tailed]
    assert list(range(1, target_events + 1)) == positions  # gap-free, strictly increasing
    assert expected == sorted(marker for _, marker in tailed)  # each committed event exactly once
    with connect(relay_db) as conn:
        assert [(target_events,)] == conn.execute("SELECT count(*) FROM relay.log").fetchall()
        assert [(0,)] == conn.execute("SELECT count(*) FROM relay.inbox").fetchall()


class _Rollback(Exception):
    """Raised inside a writer's transaction to roll it back on purpose."""


def test_psql_can_run_the_scripts(relay_db: str) -> None:
    """install.sql and uninstall.sql run with plain psql -f (no psycopg-only features)."""
    import shutil
    import subprocess

    psql = shutil.which("psql")
    if psql is None:
        from relay.demo.pgserver import find_bindir

        psql = str(find_bindir() / "psql")
    for script in ("install.sql", "uninstall.sql", "install.sql"):
        from relay.ops.datafiles import sql_dir

        result = subprocess.run(
            [psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", str(sql_dir() / script), relay_db],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert (0, "") == (result.returncode, result.stderr)


def test_upgrade_from_version_1_keeps_data_epoch_and_tracking(empty_db: str) -> None:
    """Installing over version 1 migrates in place: log, positions, epoch and tracked tables survive."""
    with connect(empty_db) as conn:
        conn.execute((FIXTURES / "install-v1.sql").read_text())
        conn.execute(example_path().read_text())
        conn.execute("INSERT INTO thumbnails (user_id, project_id) VALUES ('u1', 'p1')")
        sequence_all(conn)
        conn.execute(
            "INSERT INTO thumbnails (user_id, project_id) VALUES ('u1', 'p2')"
        )  # in flight
        before = conn.execute("SELECT epoch, schema_version FROM relay.settings").fetchone()
        assert before is not None and 1 == before[1]

        conn.execute(install_script())

        assert (before[0], SCHEMA_VERSION) == conn.execute(
            "SELECT epoch, schema_version FROM relay.settings"
        ).fetchone()
        conn.execute("SELECT relay.heartbeat('upgrade-test')")
        conn.execute("SELECT increment_thumbnail_share_click_count(1)")
        assert 3 == sequence_all(conn)
        assert [
            (1, "INSERT", ["u1"]),
            (2, "INSERT", ["u1"]),
            (3, "HEARTBEAT", []),
            (4, "UPDATE", ["u1"]),
        ] == conn.execute("SELECT pos, op, audience FROM relay.log ORDER BY pos").fetchall()
        fresh = catalog_fingerprint(conn)
    with connect(empty_db) as conn:
        conn.execute(uninstall_script())
        conn.execute(install_script())
        conn.execute(example_path().read_text())
        # Apart from the epoch, an upgraded install is the same as a fresh one.
        strip = [row for row in fresh if row[0] != "settings"]
        assert strip == [row for row in catalog_fingerprint(conn) if row[0] != "settings"]


def test_upgrade_from_version_5_moves_pending_entries_in_and_drops_the_sequenced_at_index(
    empty_db: str,
) -> None:
    """Installing over version 5 keeps log, positions and epoch, turns fastupdate off on both GINs
    with nothing left pending, drops log_sequenced_at, and prunes and replays as before."""
    with connect(empty_db) as conn:
        conn.execute((FIXTURES / "install-v5.sql").read_text())
        conn.execute(example_path().read_text())
        conn.execute(
            "INSERT INTO thumbnails (user_id, project_id) SELECT 'u' || g % 3, 'p' || g"
            " FROM generate_series(1, 30) AS g"
        )
        assert 30 == sequence_all(conn)
        before = conn.execute("SELECT epoch, schema_version FROM relay.settings").fetchone()
        assert before is not None and 5 == before[1]
        pending = "SELECT n_pending_tuples FROM gin_metapage_info(get_raw_page(%s, 0))"
        conn.execute("CREATE EXTENSION pageinspect")
        assert (
            conn.execute("SELECT count(*) FROM relay.log").fetchone()
            == conn.execute(pending, ("relay.log_audience",)).fetchone()
        )  # every row's entries are pending
        conn.execute("UPDATE relay.log SET sequenced_at = now() - interval '2 days' WHERE pos <= 4")

        conn.execute(install_script())

        assert (before[0], SCHEMA_VERSION) == conn.execute(
            "SELECT epoch, schema_version FROM relay.settings"
        ).fetchone()
        assert [(0,), (0,)] == [
            conn.execute(pending, (index,)).fetchone()
            for index in ("relay.log_audience", "relay.log_old_audience")
        ]
        assert [
            ("log_audience", ["fastupdate=off"]),
            ("log_old_audience", ["fastupdate=off"]),
            ("log_pkey", None),
        ] == conn.execute(
            "SELECT relname::text, reloptions FROM pg_class WHERE relkind = 'i'"
            " AND relnamespace = 'relay'::regnamespace AND relname LIKE 'log%' ORDER BY 1"
        ).fetchall()
        assert (4,) == conn.execute("SELECT relay.prune(interval '1 day')").fetchone()
        assert [(pos,) for pos in range(7, 29, 3)] == conn.execute(
            "SELECT pos FROM relay.log WHERE audience && ARRAY['u1'] ORDER BY pos"
        ).fetchall()


def test_upgrade_from_version_3_switches_the_writers_doorbell_off(empty_db: str) -> None:
    """Installing over version 3 keeps log, positions, epoch and tracking, turns notify off once
    (and leaves it as a DBA sets it after), and rings relay_log with the head from then on."""
    with connect(empty_db) as conn, connect(empty_db) as listener:
        conn.execute((FIXTURES / "install-v3.sql").read_text())
        conn.execute(example_path().read_text())
        conn.execute("INSERT INTO thumbnails (user_id, project_id) VALUES ('u1', 'p1')")
        sequence_all(conn)
        conn.execute("INSERT INTO thumbnails (user_id, project_id) VALUES ('u1', 'p2')")
        before = conn.execute("SELECT epoch, schema_version, notify FROM relay.settings").fetchone()
        assert before is not None and (3, True) == before[1:]

        conn.execute(install_script())

        assert (before[0], SCHEMA_VERSION, False) == conn.execute(
            "SELECT epoch, schema_version, notify FROM relay.settings"
        ).fetchone()
        listener.execute("LISTEN relay_log")
        conn.execute("SELECT increment_thumbnail_share_click_count(1)")
        assert 2 == sequence_all(conn)
        assert [("relay_log", "3")] == [
            (n.channel, n.payload) for n in listener.notifies(timeout=1.0, stop_after=2)
        ]
        assert [(1, "INSERT"), (2, "INSERT"), (3, "UPDATE")] == conn.execute(
            "SELECT pos, op FROM relay.log ORDER BY pos"
        ).fetchall()
        conn.execute("SELECT relay.configure(notify => true)")
        conn.execute(install_script())  # again: the DBA's choice stays
        assert (True,) == conn.execute("SELECT notify FROM relay.settings").fetchone()


def test_upgrade_from_version_5_moves_events_captured_before_it_unchanged(empty_db: str) -> None:
    """Installing over version 5 keeps log, positions, epoch and tracking; the events its
    triggers left in the inbox are moved as they were captured, in order with those the new
    triggers hand over, and both kinds come out alike."""
    with connect(empty_db) as conn:
        conn.execute((FIXTURES / "install-v5.sql").read_text())
        conn.execute(example_path().read_text())
        conn.execute("INSERT INTO thumbnails (user_id, project_id) VALUES ('u1', 'p1')")
        sequence_all(conn)
        conn.execute("UPDATE thumbnails SET title = 'before', user_id = 'u2'")  # in flight
        epoch = conn.execute("SELECT epoch FROM relay.settings").fetchone()

        conn.execute(install_script())

        assert (epoch[0] if epoch else None, SCHEMA_VERSION) == conn.execute(
            "SELECT epoch, schema_version FROM relay.settings"
        ).fetchone()
        assert (0,) == conn.execute(
            "SELECT count(*) FROM relay.inbox WHERE captured IS NOT NULL"
        ).fetchone()
        conn.execute("UPDATE thumbnails SET title = 'after', user_id = 'u3'")
        assert 2 == sequence_all(conn)
        events = conn.execute(
            "SELECT pos, op, row_data ->> 'title', changed, old_values, audience, old_audience"
            " FROM relay.log ORDER BY pos"
        ).fetchall()
        assert [
            (1, "INSERT", "", None, None, ["u1"], None),
            (2, "UPDATE", "before", ["title", "user_id"], {"title": "", "user_id": "u1"},
             ["u2"], ["u1"]),
            (3, "UPDATE", "after", ["title", "user_id"], {"title": "before", "user_id": "u2"},
             ["u3"], ["u2"]),
        ] == events  # fmt: skip


def test_heartbeat_travels_the_event_path_to_nobody(relay_db: str) -> None:
    """relay.heartbeat() rings the inbox doorbell with notify on and lands in the log with an
    empty audience."""
    with connect(relay_db) as listener, connect(relay_db) as conn:
        listener.execute("LISTEN relay_inbox")
        conn.execute("SELECT relay.configure(notify => true)")
        conn.execute("SELECT relay.heartbeat('replica-1')")
        assert ["relay_inbox"] == [n.channel for n in listener.notifies(timeout=1.0, stop_after=1)]
        assert 1 == sequence_all(conn)
        assert [("relay", "heartbeat", "HEARTBEAT", {"source": "replica-1"}, [])] == conn.execute(
            "SELECT table_schema, table_name, op, pk, audience FROM relay.log"
        ).fetchall()


# -- relay.capture's fast paths against the version 1 trigger ----------------------------

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


def test_example_schema_is_installable_over_itself(relay_db: str) -> None:
    """The example schema is idempotent like the install script."""
    with psycopg.connect(relay_db, autocommit=True) as conn:
        conn.execute(example_path().read_text())
