"""Direct SQL on the relay schema for the database tests: a connection, the sequencer run until
the inbox is empty, the log's rows, and a fingerprint of every object the schema installs."""

from __future__ import annotations

from typing import Any

import psycopg

__all__ = ["catalog_fingerprint", "connect", "log_rows", "sequence_all"]


def connect(dsn: str) -> psycopg.Connection[Any]:
    """An autocommit connection."""
    return psycopg.connect(dsn, autocommit=True)


def sequence_all(conn: psycopg.Connection[Any]) -> int:
    """Runs the sequencer until the inbox is empty; returns how many events it logged."""
    before = conn.execute("SELECT pos FROM relay.head").fetchone()[0]  # type: ignore[index]
    while conn.execute("SELECT relay.sequence_batch(1000)").fetchone()[0]:  # type: ignore[index]
        pass  # it returns the inbox rows it took, some of which may be no event
    after: int = conn.execute("SELECT pos FROM relay.head").fetchone()[0]  # type: ignore[index]
    return int(after - before)


def log_rows(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    """Every row of relay.log in position order (its columns the tests compare)."""
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
