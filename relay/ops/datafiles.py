"""The SQL a DBA installs, found wherever pgrelay is installed from.

In a source checkout (and the container image) the scripts live in ``sql/`` beside the package;
a wheel installs them under ``<prefix>/share/pgrelay/sql``. ``RELAY_SQL_DIR`` overrides both.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from relay.errors import ConfigError

__all__ = ["install_script", "sql_dir", "uninstall_script"]


def sql_dir() -> Path:
    candidates = []
    if env := os.environ.get("RELAY_SQL_DIR"):
        candidates.append(Path(env))
    candidates.append(Path(__file__).resolve().parents[2] / "sql")
    candidates.append(Path(sys.prefix) / "share" / "pgrelay" / "sql")
    for candidate in candidates:
        if (candidate / "install.sql").is_file():
            return candidate
    raise ConfigError("sql/install.sql not found: set RELAY_SQL_DIR to the folder that holds it")


def install_script() -> str:
    return (sql_dir() / "install.sql").read_text()


def uninstall_script() -> str:
    return (sql_dir() / "uninstall.sql").read_text()
