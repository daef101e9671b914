"""The write-overhead benchmark's load: pgbench (the server's own, by default) or Python writer
processes, each measured with the CPU of every process of the run around it."""

from __future__ import annotations

import os
import queue
import random
import re
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass
from multiprocessing.context import ForkServerContext
from multiprocessing.queues import Queue
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Event, Semaphore
from pathlib import Path

import psycopg

from bench.write_cpu import cpu_between, snapshot
from bench.write_plan import CONNECT_TIMEOUT, ROWS, WRITER_APP, BenchError
from relay.demo.pgserver import find_bindir

__all__ = ["Load", "measure_pgbench", "measure_python"]

UPDATE = "UPDATE public.thumbnails SET share_click_count = share_click_count + 1 WHERE id = %s"


def _writer(
    dsn: str,
    seed: int,
    seconds: float,
    ready: Semaphore,
    go: Event,
    release: Event,
    start_at: Synchronized[float],
    results: Queue[int],
) -> None:
    """One Python writer (--client python): autocommit UPDATEs in a loop for `seconds`."""
    rng = random.Random(seed)
    with psycopg.connect(dsn, autocommit=True, application_name=WRITER_APP) as conn:
        cur = conn.cursor()
        cur.execute(UPDATE, (0,), prepare=True)  # no such row: prepares the plan, writes nothing
        ready.release()
        go.wait()
        begin = start_at.value
        deadline = begin + seconds
        while time.monotonic() < begin:
            time.sleep(0.001)
        commits = 0
        while time.monotonic() < deadline:
            cur.execute(UPDATE, (rng.randint(1, ROWS),), prepare=True)
            commits += 1
        results.put(commits)
        release.wait(CONNECT_TIMEOUT)  # the backend stays until its CPU time has been read


def _writer_pids(conn: psycopg.Connection[tuple[object, ...]]) -> set[int]:
    rows = conn.execute(
        "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (WRITER_APP,)
    ).fetchall()
    return {int(str(row[0])) for row in rows}


def _wait_reaped(pids: Iterable[int]) -> None:
    """Until these server processes are gone for good: reaped by the postmaster (a zombie still
    has its /proc entry), so their CPU time is in its reaped-children counters."""
    deadline = time.monotonic() + CONNECT_TIMEOUT
    while any(Path(f"/proc/{pid}").exists() for pid in pids):
        if time.monotonic() > deadline:
            raise BenchError("pgbench's backends did not go away")
        time.sleep(0.01)


_PROCESSED = re.compile(r"^number of transactions actually processed: (\d+)", re.MULTILINE)


_FAILED = re.compile(r"^number of failed transactions: (\d+)", re.MULTILINE)


def _pgbench_argv(dsn: str, writers: int, seconds: int, script: Path) -> list[str]:
    conninfo = psycopg.conninfo.make_conninfo(dsn, application_name=WRITER_APP)
    return [
        str(find_bindir() / "pgbench"), "-n", "-M", "prepared", "-c", str(writers),
        "-j", str(writers), "-T", str(seconds), "-f", str(script), conninfo,
    ]  # fmt: skip


def _run_pgbench(
    conn: psycopg.Connection[tuple[object, ...]], dsn: str, writers: int, seconds: int, script: Path
) -> tuple[int, float]:
    """Runs pgbench to its end: (transactions processed, its own CPU seconds). Returns once
    its backends have exited and been reaped."""
    proc = subprocess.Popen(
        _pgbench_argv(dsn, writers, seconds, script),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    backends: set[int] = set()
    deadline = time.monotonic() + CONNECT_TIMEOUT
    while len(backends) < writers and proc.poll() is None and time.monotonic() < deadline:
        backends |= _writer_pids(conn)
        time.sleep(0.005)
    _, status, usage = os.wait4(proc.pid, 0)  # its output is small: the pipes never fill
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.stdout is not None and proc.stderr is not None
    out, err = proc.stdout.read(), proc.stderr.read()
    proc.stdout.close()
    proc.stderr.close()
    processed, failed = _PROCESSED.search(out), _FAILED.search(out)
    if proc.returncode != 0 or processed is None or (failed and int(failed.group(1))):
        raise BenchError(f"pgbench failed (exit {proc.returncode}): {(err or out)[-2000:]}")
    if len(backends) < writers:
        raise BenchError(f"saw {len(backends)} of pgbench's {writers} connections")
    _wait_reaped(backends)
    return int(processed.group(1)), usage.ru_utime + usage.ru_stime


@dataclass
class Load:
    """How the writers are run: pgbench (default) or Python processes."""

    client: str
    script: Path  # pgbench's custom script


def measure_pgbench(
    dsn: str,
    postmaster: int,
    conn: psycopg.Connection[tuple[object, ...]],
    sequencer: list[int],
    writers: int,
    seconds: int,
    script: Path,
) -> tuple[int, float, dict[str, float], float]:
    before = snapshot(conn, postmaster, (), sequencer)
    commits, client_cpu = _run_pgbench(conn, dsn, writers, seconds, script)
    after = snapshot(conn, postmaster, (), sequencer)
    cpu, others = cpu_between(before, after, {"load generator": client_cpu})
    return commits, float(seconds), cpu, others  # -T: how long it ran, once connected


def measure_python(
    ctx: ForkServerContext,
    dsn: str,
    postmaster: int,
    conn: psycopg.Connection[tuple[object, ...]],
    sequencer: list[int],
    writers: int,
    seconds: float,
) -> tuple[int, float, dict[str, float], float]:
    ready = ctx.Semaphore(0)
    go, release = ctx.Event(), ctx.Event()
    start_at = ctx.Value("d", 0.0)
    results: Queue[int] = ctx.Queue()
    shared = (ready, go, release, start_at, results)
    procs = [
        ctx.Process(target=_writer, args=(dsn, random.randrange(1 << 30), seconds, *shared))
        for _ in range(writers)
    ]
    for proc in procs:
        proc.start()
    try:
        for _ in procs:
            if not ready.acquire(timeout=CONNECT_TIMEOUT):
                raise BenchError(f"a writer did not connect within {CONNECT_TIMEOUT:g} s")
        clients = [proc.pid for proc in procs if proc.pid is not None]
        start_at.value = time.monotonic() + 0.05
        go.set()
        time.sleep(max(0.0, start_at.value - time.monotonic()))
        before = snapshot(conn, postmaster, clients, sequencer)
        try:
            commits = sum(results.get(timeout=seconds + 60) for _ in range(writers))
        except queue.Empty:
            raise BenchError("a writer died (see its traceback above)") from None
        after = snapshot(conn, postmaster, clients, sequencer)
    finally:
        go.set()
        release.set()
        for proc in procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
                proc.join()
    cpu, others = cpu_between(before, after, {})
    return commits, seconds, cpu, others
