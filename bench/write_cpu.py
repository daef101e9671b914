"""CPU accounting of a PostgreSQL server's processes (Linux), from the kernel's per-process
counters, the postmaster's reaped children, and the machine's busy time: every process of a
write-overhead run by part (bench/write_overhead.py), and a whole server over a window
(bench/measure.py: the relay benchmark's Postgres CPU per event)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import psycopg

from bench.write_plan import CPU_PARTS, SEQUENCER_APP, WRITER_APP

__all__ = [
    "CpuSnapshot",
    "ServerSnapshot",
    "cpu_between",
    "server_cpu_between",
    "server_snapshot",
    "snapshot",
]

_TICK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of one process, or None once it is gone."""
    fields = _stat_fields(pid)
    return None if fields is None else (int(fields[11]) + int(fields[12])) / _TICK


def _reaped_seconds(pid: int) -> float:
    """CPU time of the children a process has waited for (cutime + cstime): the postmaster's
    counts every backend that has exited, with all its CPU."""
    fields = _stat_fields(pid)
    return 0.0 if fields is None else (int(fields[13]) + int(fields[14])) / _TICK


def _children(parent: int) -> list[int]:
    """The live processes whose parent is ``parent`` (every /proc entry, its ppid field)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None and int(fields[1]) == parent:
                found.append(int(entry.name))
    return found


def _machine_busy() -> float:
    """CPU seconds the whole machine has spent busy since boot (all cores)."""
    try:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq = values[:7]
    return (user + nice + system + irq + softirq) / _TICK


@dataclass
class CpuSnapshot:
    at: float
    busy: float
    reaped: float  # the postmaster's exited children, CPU seconds
    parts: dict[str, dict[int, float]]  # part -> pid -> CPU seconds


def snapshot(
    admin: psycopg.Connection[tuple[object, ...]],
    postmaster: int,
    load: Iterable[int],
    sequencer: Iterable[int],
) -> CpuSnapshot:
    """Every live process of the run, by part: the server's (from pg_stat_activity), clients'."""
    rows = admin.execute(
        "SELECT pid, application_name, backend_type FROM pg_stat_activity"
        " WHERE pid <> pg_backend_pid()"
    ).fetchall()
    pids: dict[str, list[int]] = {part: [] for part in CPU_PARTS}
    pids["server background"].append(postmaster)
    for pid, app, kind in rows:
        assert isinstance(pid, int)
        if app == WRITER_APP:
            pids["writer backends"].append(pid)
        elif app == SEQUENCER_APP:
            pids["sequencer backend"].append(pid)
        elif kind != "client backend":
            pids["server background"].append(pid)
    pids["load generator"].extend(load)
    pids["sequencer process"].extend(sequencer)
    parts = {
        part: {pid: cpu for pid in members if (cpu := _cpu_seconds(pid)) is not None}
        for part, members in pids.items()
    }
    return CpuSnapshot(
        at=time.monotonic(), busy=_machine_busy(), reaped=_reaped_seconds(postmaster), parts=parts
    )


def cpu_between(
    start: CpuSnapshot, end: CpuSnapshot, exited: dict[str, float]
) -> tuple[dict[str, float], float]:
    """CPU seconds per part between two snapshots, and the other processes' load in cores.

    Server processes that exited in between (pgbench's backends when it disconnects, and any
    short-lived autovacuum worker) are in the postmaster's reaped-children time: it goes to the
    writer backends. ``exited`` adds parts measured otherwise (pgbench's own rusage).
    """
    used = {
        part: sum(cpu - start.parts[part].get(pid, 0.0) for pid, cpu in end.parts[part].items())
        for part in CPU_PARTS
    }
    used["writer backends"] += end.reaped - start.reaped
    for part, seconds in exited.items():
        used[part] += seconds
    elapsed = max(end.at - start.at, 1e-9)
    others = max(0.0, (end.busy - start.busy - sum(used.values())) / elapsed)
    return used, others


@dataclass
class ServerSnapshot:
    """One PostgreSQL server's CPU seconds at a moment: the postmaster's and each live child's
    (backends, walwriter, checkpointer, autovacuum, I/O workers), and its reaped children's."""

    reaped: float
    processes: dict[int, float]  # pid -> CPU seconds, the postmaster included


def server_snapshot(postmaster: int) -> ServerSnapshot:
    """The whole server's counters now, from /proc alone (no connection: taking the snapshot
    starts no backend)."""
    pids = [postmaster, *_children(postmaster)]
    processes = {pid: cpu for pid in pids if (cpu := _cpu_seconds(pid)) is not None}
    return ServerSnapshot(reaped=_reaped_seconds(postmaster), processes=processes)


def server_cpu_between(
    start: ServerSnapshot,
    end: ServerSnapshot,
    part_of: Mapping[int, str | None],
    *,
    default: str,
    exited: str,
) -> dict[str, float]:
    """CPU seconds the server used between two snapshots, by part: a process alive at the end
    goes to ``part_of[pid]`` (``default`` if absent; skipped if None: another database's
    backend), counted from zero if it started in between; a process that exited in between is
    in the postmaster's reaped-children time, ``exited``, whatever it worked for."""
    used = {exited: end.reaped - start.reaped}
    for pid, cpu in end.processes.items():
        part = part_of.get(pid, default)
        if part is not None:
            used[part] = used.get(part, 0.0) + cpu - start.processes.get(pid, 0.0)
    return used
