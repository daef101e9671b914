"""Test databases: created fresh on a server, with the relay schema and the example tables."""

from __future__ import annotations

import uuid

import psycopg

from relay.ops.datafiles import install_script
from tests.support.paths import example_path

__all__ = ["create_database", "drop_database", "install_example", "write"]


def create_database(admin_dsn: str, prefix: str) -> str:
    """A fresh, empty database named `prefix` and 12 random hex digits; returns its DSN."""
    name = f"{prefix}{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return psycopg.conninfo.make_conninfo(admin_dsn, dbname=name)


def drop_database(admin_dsn: str, dsn: str) -> None:
    """Drops the database of `dsn`, closing its sessions (it may not exist any more)."""
    name = psycopg.conninfo.conninfo_to_dict(dsn)["dbname"]
    with psycopg.connect(admin_dsn, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def install_example(dsn: str) -> None:
    """sql/install.sql, then the example schema: what a relay under test reads."""
    write(dsn, install_script(), example_path().read_text())


def write(dsn: str, *statements: str, params: tuple[object, ...] = ()) -> None:
    """Runs the statements in autocommit, each with `params` if given."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement, params or None)
