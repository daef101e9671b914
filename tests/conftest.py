"""Fixtures: a real, private PostgreSQL server for the test session (nothing mocks Postgres).

``RELAY_TEST_DSN`` points the tests at an existing server instead; tests that stop, restart or
crash a server always get a private one of their own (``private_pg``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from relay.devserver import PgServer
from relay.sqlfiles import install_script, uninstall_script

pytest.register_assert_rewrite("tests.helpers")


_session_server: PgServer | None = None


@pytest.fixture(scope="session")
def pg_admin_dsn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A DSN with the right to create databases: the session's private server, or RELAY_TEST_DSN."""
    global _session_server
    if external := os.environ.get("RELAY_TEST_DSN"):
        yield external
        return
    with _server_folder("session") as folder:
        server = PgServer(folder)
        with server.running():
            _session_server = server
            yield server.dsn()
            _session_server = None


@contextlib.contextmanager
def _server_folder(name: str) -> Iterator[Path]:
    """A data folder pytest does not manage: pytest prunes old temp folders when another session
    starts, which would delete a server's data under it while it runs."""
    folder = Path(tempfile.mkdtemp(prefix=f"pgrelay-{name}-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _server_gone() -> str:
    """Why the session's server stopped answering, when it did: its exit and its log's tail."""
    server = _session_server
    if server is None or server.returncode is None:
        return ""
    return (
        f"the session's PostgreSQL server exited with {server.returncode} (a negative number is "
        f"the signal that ended it):\n{server.log_tail()}"
    )


def _swap_dbname(dsn: str, dbname: str) -> str:
    return psycopg.conninfo.make_conninfo(dsn, dbname=dbname)


@pytest.fixture
def empty_db(pg_admin_dsn: str) -> Iterator[str]:
    """A fresh, empty database for one test; dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    try:
        with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError:
        if gone := _server_gone():
            pytest.fail(gone)
        raise
    try:
        yield _swap_dbname(pg_admin_dsn, name)
    finally:
        with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def relay_db(empty_db: str) -> str:
    """A fresh database with sql/install.sql and the example schema installed."""
    with psycopg.connect(empty_db, autocommit=True) as conn:
        conn.execute(install_script())
        conn.execute(Path(example_path()).read_text())
    return empty_db


def example_path() -> Path:
    from relay.sqlfiles import sql_dir

    return sql_dir() / "examples" / "thumbnails_generations.sql"


@pytest.fixture
def private_pg() -> Iterator[PgServer]:
    """A server of this test's own, which it may stop, restart or crash."""
    with _server_folder("private") as folder:
        server = PgServer(folder / "pg")
        with server.running():
            yield server


__all__ = ["install_script", "uninstall_script"]
