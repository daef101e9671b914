"""Instruction counts of a single-user PostgreSQL backend under valgrind's cachegrind.

A single-user backend (``postgres --single``: no client, no other process) runs a workload, one
statement per line, from a fresh copy of a prepared data folder, under cachegrind. The count is
exact: the neighbours of a shared machine cannot disturb it. Run the same workload at two sizes
and divide the difference by the difference in size: start-up, shut-down and any set-up lines
the two share cancel out (``per_unit``). Used by bench/capture_cost.py (what a writer's
transaction costs) and bench/replay_cost.py (what the sequencer pays per log row).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from relay.demo.pgserver import SERVER_USER, PgServer

__all__ = ["instructions", "per_unit", "scratch_folder"]


def scratch_folder(parent: Path) -> Path:
    """An empty folder the backend's copies of the data folder go in, writable by the server's
    user (the backend runs as that user when this process is root)."""
    scratch = parent / "scratch"
    scratch.mkdir()
    if os.geteuid() == 0:
        shutil.chown(scratch, SERVER_USER, SERVER_USER)
    return scratch


def instructions(server: PgServer, dbname: str, workload: str, scratch: Path, what: str) -> int:
    """Instructions a single-user backend executes for ``workload`` (one statement per line) in
    database ``dbname``, from a copy of the stopped ``server``'s data folder; RuntimeError naming
    ``what`` when the backend fails or reports an error."""
    data = scratch / "data"
    if data.exists():
        shutil.rmtree(data)
    subprocess.run(["cp", "-a", str(server.pgdata), str(data)], check=True)
    argv = ["valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null",
            str(server.bindir / "postgres"), "--single", "-D", str(data), "-c", "fsync=off",
            dbname]  # fmt: skip
    user = {"user": SERVER_USER, "group": SERVER_USER} if os.geteuid() == 0 else {}
    result = subprocess.run(
        argv, input=workload + "\n", capture_output=True, text=True, check=False, **user
    )  # type: ignore[call-overload]
    found = re.search(r"I\s+refs:\s+([\d,]+)", result.stderr)
    if result.returncode != 0 or found is None or "ERROR" in result.stdout + result.stderr:
        raise RuntimeError(f"{what}: the backend failed:\n{result.stderr[-3000:]}")
    return int(found.group(1).replace(",", ""))


def per_unit(count: Callable[[int], int], small: int, large: int) -> float:
    """Instructions per unit of work: ``count(n)`` runs a workload of ``n`` units."""
    return (count(large) - count(small)) / (large - small)
