"""Maintenance (relay/pg/maintenance.py) against a real server: it reports through callbacks."""

from __future__ import annotations

import anyio
import psycopg
import pytest
from structlog.testing import capture_logs

from relay.pg.maintenance import Maintenance
from relay.pg.queries import Catalog

pytestmark = pytest.mark.pg


def test_reports_catalog_and_head_writes_heartbeats_and_survives_its_backend_killed(
    relay_db: str,
) -> None:
    """Each round hands the tracked tables and the log's head to its callbacks and writes a
    heartbeat; with its backend killed it logs maintenance_failed once and goes on."""
    with psycopg.connect(relay_db, autocommit=True) as conn:
        conn.execute("INSERT INTO generations (user_id, project_id) VALUES ('alice', 'p1')")
        conn.execute("SELECT relay.sequence_batch(100)")
    catalogs: list[Catalog] = []
    heads: list[int] = []
    killed: list[bool] = []

    async def main() -> None:
        second, fourth = anyio.Event(), anyio.Event()

        def on_head(pos: int) -> None:
            heads.append(pos)
            (second if len(heads) == 2 else fourth if len(heads) == 4 else anyio.Event()).set()

        maintenance = Maintenance(
            relay_db,
            replica_id="replica-7",
            heartbeat_interval=0.05,
            query_timeout=5,
            on_catalog=catalogs.append,
            on_head=on_head,
        )
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(maintenance.run)
                await second.wait()
                async with await psycopg.AsyncConnection.connect(relay_db) as killer:
                    cur = await killer.execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                        " WHERE application_name = 'pgrelay-maintenance'"
                    )
                    killed.extend(row[0] for row in await cur.fetchall())
                await fourth.wait()
                tasks.cancel_scope.cancel()

    with capture_logs() as logs:
        anyio.run(main)
    with psycopg.connect(relay_db, autocommit=True) as conn:
        sources = conn.execute(
            "SELECT DISTINCT pk->>'source' FROM relay.inbox WHERE op = 'HEARTBEAT'"
        ).fetchall()
        tracked = conn.execute("SELECT count(*) FROM relay.tracked").fetchone()
    assert [True] == killed
    assert {("public", "generations"), ("public", "thumbnails")} == set(catalogs[0])
    assert "project_id" in catalogs[0][("public", "generations")]
    assert tracked is not None and len(catalogs[0]) == tracked[0]
    assert len(catalogs) == len(heads) == 4
    assert [1, 1, 1, 1] == heads
    assert [("replica-7",)] == sources
    assert 1 == sum(entry["event"] == "maintenance_failed" for entry in logs)
