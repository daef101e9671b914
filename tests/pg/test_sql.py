"""The relay schema installed: install, upgrade from earlier versions, uninstall, psql, the example."""

from __future__ import annotations

import psycopg
import pytest

from relay.ops.datafiles import install_script, uninstall_script
from relay.pg.queries import SCHEMA_VERSION
from tests.support.paths import FIXTURES, example_path
from tests.support.relaylog import catalog_fingerprint, connect, sequence_all

pytestmark = pytest.mark.pg


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


def test_example_schema_is_installable_over_itself(relay_db: str) -> None:
    """The example schema is idempotent like the install script."""
    with psycopg.connect(relay_db, autocommit=True) as conn:
        conn.execute(example_path().read_text())


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
