"""The one supervised reconnect loop (relay/pg/supervise.py) against a real server."""

from __future__ import annotations

import anyio
import psycopg
import pytest
from structlog.testing import capture_logs

from relay.pg.queries import AsyncConn
from relay.pg.supervise import DB_BACKOFF_CAP, DB_BACKOFF_INITIAL, Supervisor
from tests.support.processes import free_port

pytestmark = pytest.mark.pg


async def backend_pid(conn: AsyncConn) -> int:
    row = await (await conn.execute("SELECT pg_backend_pid()")).fetchone()
    assert row is not None
    return int(row[0])


def test_a_killed_backend_is_reported_down_logged_once_and_served_again(relay_db: str) -> None:
    """pg_terminate_backend under a body: on_down once, one line under the role's event name
    (first retry within DB_BACKOFF_INITIAL), then the body runs again on a new backend."""
    pids: list[int] = []
    downs: list[int] = []

    async def main() -> None:
        supervisor = Supervisor(
            relay_db,
            application_name="pgrelay-test-role",
            timeout=5,
            lost_event="test_role_lost",
            on_down=lambda: downs.append(len(pids)),
        )

        async def serve(conn: AsyncConn) -> None:
            pids.append(await backend_pid(conn))
            supervisor.up()
            if len(pids) == 1:
                async with await psycopg.AsyncConnection.connect(relay_db) as killer:
                    await killer.execute("SELECT pg_terminate_backend(%s)", (pids[0],))
                await conn.execute("SELECT 1")  # the killed backend's error ends this body

        with anyio.fail_after(30):
            await supervisor.run(serve)

    with capture_logs() as logs:
        anyio.run(main)
    assert 2 == len(pids) and pids[0] != pids[1]
    assert [1] == downs
    lost = [entry for entry in logs if entry["event"] == "test_role_lost"]
    assert 1 == len(lost)
    assert {"event", "error", "retry_in", "log_level"} == set(lost[0])
    assert "\n" not in lost[0]["error"]
    assert 0 <= lost[0]["retry_in"] <= DB_BACKOFF_INITIAL


def test_an_unreachable_database_is_retried_with_growing_capped_delays(empty_db: str) -> None:
    """Connections refused: every attempt is reported down and logged, and the delays' ceilings
    double from DB_BACKOFF_INITIAL (full jitter: each delay at most its ceiling)."""
    refused = psycopg.conninfo.make_conninfo(empty_db, host="127.0.0.1", port=free_port())
    downs: list[None] = []

    async def main() -> None:
        enough = anyio.Event()

        def down() -> None:
            downs.append(None)
            if len(downs) == 5:
                enough.set()

        supervisor = Supervisor(
            refused,
            application_name="pgrelay-test-role",
            timeout=2,
            lost_event="test_role_lost",
            on_down=down,
        )

        async def serve(conn: AsyncConn) -> None:
            raise AssertionError("no connection can be made")

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(supervisor.run, serve)
                await enough.wait()
                tasks.cancel_scope.cancel()

    with capture_logs() as logs:
        anyio.run(main)
    delays = [entry["retry_in"] for entry in logs if entry["event"] == "test_role_lost"]
    assert len(downs) == len(delays) >= 5
    for attempt, delay in enumerate(delays):
        assert 0 <= delay <= min(DB_BACKOFF_CAP, DB_BACKOFF_INITIAL * 2**attempt)


def test_an_error_that_is_not_the_databases_ends_the_loop(relay_db: str) -> None:
    """A bug in a body (here a ValueError) is not retried: it propagates out of run()."""
    calls: list[None] = []

    async def main() -> None:
        supervisor = Supervisor(
            relay_db, application_name="pgrelay-test-role", timeout=5, lost_event="test_role_lost"
        )

        async def serve(conn: AsyncConn) -> None:
            calls.append(None)
            raise ValueError("a bug")

        await supervisor.run(serve)

    with pytest.raises(ValueError, match="a bug"):
        anyio.run(main)
    assert 1 == len(calls)
