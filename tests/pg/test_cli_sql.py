"""`relay sql install|uninstall|show` as a DBA runs it."""

from __future__ import annotations

import subprocess
import sys

import psycopg
import pytest

from relay.ops.datafiles import install_script

pytestmark = pytest.mark.pg


def relay(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relay.cli", *args], capture_output=True, text=True, check=False
    )


def test_sql_show_prints_the_install_script() -> None:
    """`relay sql show` prints exactly sql/install.sql."""
    result = relay("sql", "show")
    assert (0, install_script()) == (result.returncode, result.stdout)


def test_sql_install_then_uninstall(empty_db: str) -> None:
    """install creates the schema at the current version; uninstall removes it; both say so."""
    installed = relay("sql", "install", "--dsn", empty_db)
    assert 0 == installed.returncode, installed.stderr
    assert installed.stdout.startswith("relay schema installed: version ")
    with psycopg.connect(empty_db) as conn:
        assert conn.execute("SELECT to_regnamespace('relay') IS NOT NULL").fetchone() == (True,)
    removed = relay("sql", "uninstall", "--dsn", empty_db)
    assert (0, "relay schema removed; application tables untouched\n") == (
        removed.returncode,
        removed.stdout,
    )


def test_sql_install_without_a_dsn_says_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without --dsn or an environment variable, the command fails with one clear line."""
    result = subprocess.run(
        [sys.executable, "-m", "relay.cli", "sql", "install"],
        capture_output=True, text=True, check=False,
        env={"PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert (2, "relay: no database: pass --dsn or set RELAY_DSN / DATABASE_URL\n") == (
        result.returncode,
        result.stderr,
    )
