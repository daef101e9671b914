"""Fixtures: a real, private PostgreSQL server for the test session (nothing mocks Postgres).

``RELAY_TEST_DSN`` points the tests at an existing server instead; tests that stop, restart or
crash a server always get a private one of their own (``private_pg``). Helpers the tests import
live in tests/support; this file holds fixtures only.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import psycopg
import pytest

pytest.register_assert_rewrite("tests.support")

from relay.demo.pgserver import PgServer  # noqa: E402
from tests.support.databases import create_database, drop_database, install_example  # noqa: E402
from tests.support.paths import private_folder  # noqa: E402
from tests.support.processes import RelayProcess, relay_process  # noqa: E402

_session_server: PgServer | None = None


@pytest.fixture(scope="session")
def pg_admin_dsn() -> Iterator[str]:
    """A DSN with the right to create databases: the session's private server, or RELAY_TEST_DSN."""
    global _session_server
    if external := os.environ.get("RELAY_TEST_DSN"):
        yield external
        return
    with private_folder("pgrelay-session-") as folder:
        server = PgServer(folder)
        with server.running():
            _session_server = server
            yield server.dsn()
            _session_server = None


def _server_gone() -> str:
    """Why the session's server stopped answering, when it did: its exit and its log's tail."""
    server = _session_server
    if server is None or server.returncode is None:
        return ""
    return (
        f"the session's PostgreSQL server exited with {server.returncode} (a negative number is "
        f"the signal that ended it):\n{server.log_tail()}"
    )


@pytest.fixture
def empty_db(pg_admin_dsn: str) -> Iterator[str]:
    """A fresh, empty database for one test; dropped afterwards."""
    try:
        dsn = create_database(pg_admin_dsn, "t_")
    except psycopg.OperationalError:
        if gone := _server_gone():
            pytest.fail(gone)
        raise
    try:
        yield dsn
    finally:
        drop_database(pg_admin_dsn, dsn)


@pytest.fixture
def relay_db(empty_db: str) -> str:
    """A fresh database with sql/install.sql and the example schema installed."""
    install_example(empty_db)
    return empty_db


@pytest.fixture
def relay(relay_db: str) -> Iterator[RelayProcess]:
    """`relay serve` with the test settings on relay_db."""
    with relay_process(relay_db) as process:
        yield process


@pytest.fixture
def private_pg() -> Iterator[PgServer]:
    """A server of this test's own, which it may stop, restart or crash."""
    with private_folder("pgrelay-private-") as folder:
        server = PgServer(folder / "pg")
        with server.running():
            yield server
