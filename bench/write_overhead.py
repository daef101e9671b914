"""Write-path overhead of change capture, in durable commits per second.

The load is ``UPDATE thumbnails SET share_click_count = share_click_count + 1 WHERE id = <random
id>``, one durable commit per UPDATE (fsync, full_page_writes and synchronous_commit on). By
default pgbench (PostgreSQL's benchmark client, from the server's own bin folder) generates it:
a custom script, ``-M prepared``, one connection and one thread per writer, for ``-T`` seconds.
It costs far less client CPU than Python writers, so on a small machine the database's own cost
decides the result; ``--client python`` runs the earlier Python writer processes instead.

The modes compare the untracked table with the same table under ``relay.capture``, NOTIFY on
and off. While a tracked mode runs, the relay's own sequencer (``relay.db.Sequencer``, with the
relay's default settings, in a process of its own) moves the inbox into the log exactly as in
production: with notify on it runs a batch on each ``relay_inbox`` doorbell; with notify off it
polls every ``RELAY_POLL_INTERVAL`` (50 ms); either way it loops while a batch is full. "bare
outbox trigger" is a diagnostic: a minimal trigger appending to the same inbox (no NOTIFY, so
the sequencer polls), to tell the cost of the extra durable row from the capture function's.

Besides throughput, each run records the CPU time of every process involved, from the kernel's
per-process counters, in microseconds per commit: server backends (those that exit at the end
of the run, pgbench's, are counted through the postmaster's reaped-children counters), the
server's background processes, the load generator and the sequencer process; and how much CPU
other processes on the machine used meanwhile.

    python -m bench.write_overhead [--seconds N] [--repeats N] [--client pgbench|python]
                                   [--out FILE] [--short | --quick]

Writes Markdown to stdout (and to --out), progress to stderr. Exits 1 when a run's counts do
not add up (commits against increments and captured events), never because of speed.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import queue
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from multiprocessing.context import ForkServerContext, ForkServerProcess
from multiprocessing.queues import Queue
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Event, Semaphore
from pathlib import Path

import anyio
import psycopg
import structlog
from psycopg import sql

from relay.config import Settings
from relay.db import Sequencer
from relay.devserver import PgServer, find_bindir
from relay.sqlfiles import install_script

__all__ = ["CLIENTS", "MODES", "WRITERS", "main"]

# Commits must reach the disk: the devserver defaults turn fsync off for speed.
DURABLE_SETTINGS = {"fsync": "on", "full_page_writes": "on", "synchronous_commit": "on"}
ROWS = 10_000
WRITERS = (1, 4)
TARGET = 0.75  # from the issue: notify off keeps 75 % of untracked throughput, 4 writers
DRAIN_TIMEOUT = 60.0
CONNECT_TIMEOUT = 60.0
RELAY = Settings()  # the relay's defaults: poll interval, batch size, listen window

UNTRACKED = "untracked"
NOTIFY_ON = "tracked, notify on"
NOTIFY_OFF = "tracked, notify off"
BARE = "bare outbox trigger"
MODES = (UNTRACKED, NOTIFY_ON, NOTIFY_OFF, BARE)
SEQUENCED = frozenset({NOTIFY_ON, NOTIFY_OFF, BARE})
CLIENTS = ("pgbench", "python")

WRITER_APP = "bench-writer"
SEQUENCER_APP = "bench-sequencer"
UPDATE = "UPDATE public.thumbnails SET share_click_count = share_click_count + 1 WHERE id = %s"
PGBENCH_SCRIPT = """\\set id random(1, 10000)
UPDATE public.thumbnails SET share_click_count = share_click_count + 1 WHERE id = :id;
"""  # ids 1 to ROWS
PGBENCH_WORKLOAD = (
    "- Workload: pgbench (the server's own), `-M prepared`, `-c N -j N` for N writers, ",
    ", custom script `\\set id random(1, 10000)` then `UPDATE thumbnails SET share_click_count"
    " = share_click_count + 1 WHERE id = :id`: one durable commit per UPDATE",
)
TABLE = """
CREATE TABLE public.thumbnails (
    id                bigint PRIMARY KEY,
    user_id           text   NOT NULL,
    project_id        text   NOT NULL,
    title             text   NOT NULL DEFAULT '',
    share_click_count bigint NOT NULL DEFAULT 0
);
CREATE INDEX thumbnails_user_id ON public.thumbnails (user_id);
"""
FILL = """
INSERT INTO public.thumbnails (id, user_id, project_id, title)
SELECT g, 'user-' || (g %% 500), 'project-' || (g %% 2000), 'Thumbnail ' || g
  FROM generate_series(1, %s) AS g
"""
RESET = """
SET client_min_messages = warning;
DROP TABLE IF EXISTS public.thumbnails;
DROP FUNCTION IF EXISTS public.bench_bare_outbox();
DROP SCHEMA IF EXISTS relay CASCADE;
RESET client_min_messages;
"""
# As sql/examples/thumbnails_generations.sql tracks it: owner column and a column whitelist.
TRACK = """
SELECT relay.track('public.thumbnails', owner_column => 'user_id',
                   columns => ARRAY['id', 'user_id', 'project_id', 'title', 'share_click_count'])
"""
# The least a trigger-based outbox can do: one inbox row per change, no payload, no NOTIFY.
BARE_TRIGGER = """
CREATE FUNCTION public.bench_bare_outbox() RETURNS trigger LANGUAGE plpgsql AS $bare$
BEGIN
    INSERT INTO relay.inbox (table_schema, table_name, op, pk, audience)
    VALUES (TG_TABLE_SCHEMA, TG_TABLE_NAME, TG_OP, jsonb_build_object('id', NEW.id),
            ARRAY[NEW.user_id]);
    RETURN NULL;
END
$bare$;
CREATE TRIGGER bench_bare_outbox AFTER UPDATE ON public.thumbnails
    FOR EACH ROW EXECUTE FUNCTION public.bench_bare_outbox();
"""

# Where CPU time goes, per commit. "others" is the rest of the machine, in cores.
CPU_PARTS = (
    "writer backends",
    "sequencer backend",
    "server background",
    "load generator",
    "sequencer process",
)
SERVER_PARTS = CPU_PARTS[:3]


@dataclass
class Run:
    """One measured run of one cell."""

    commits: int
    seconds: float
    backlog: int  # inbox rows left when the writers stopped
    drained: bool  # the sequencer emptied the inbox afterwards
    cpu: dict[str, float]  # CPU seconds per part over the measured window
    others: float  # cores used by everything else on the machine meanwhile

    @property
    def tps(self) -> float:
        return self.commits / self.seconds

    def cpu_us(self, part: str) -> float:
        return self.cpu[part] / self.commits * 1e6 if self.commits else 0.0


@dataclass
class Cell:
    mode: str
    writers: int
    runs: list[Run] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(run.tps for run in self.runs)

    def median_cpu_us(self, *parts: str) -> float:
        return statistics.median(sum(run.cpu_us(p) for p in parts) for run in self.runs)


class BenchError(Exception):
    """A run could not be measured, or its counts do not add up: the numbers would mean nothing."""


# -- CPU accounting (Linux) ------------------------------------------------------------------

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


def _snapshot(
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


def _cpu_between(
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


# -- child processes (each opens its own connection) --------------------------------------


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


def _sequencer(dsn: str, ready: Semaphore) -> None:
    """The relay's sequencer with its default settings, until terminated."""
    structlog.configure(logger_factory=structlog.ReturnLoggerFactory())  # no log lines
    sequencer = Sequencer(
        dsn,
        on_leader=lambda leader: ready.release() if leader else None,
        query_timeout=RELAY.query_timeout,
        listen_window=RELAY.listen_window,
        poll_interval=RELAY.poll_interval,
        batch=RELAY.sequencer_batch,
        retention=RELAY.retention,
        prune_interval=RELAY.prune_interval,
        application_name=SEQUENCER_APP,
    )
    anyio.run(sequencer.run)


# -- one run ------------------------------------------------------------------------------


def _scalar(conn: psycopg.Connection[tuple[object, ...]], query: str) -> int:
    row = conn.execute(query).fetchone()
    assert row is not None
    value = row[0]
    assert isinstance(value, int)
    return value


def _prepare(dsn: str, mode: str, script: str) -> None:
    """A fresh start: the previous run's table, trigger and relay schema go, then all anew."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(RESET)
        conn.execute(script)
        conn.execute(TABLE)
        conn.execute(FILL, (ROWS,))
        if mode in (NOTIFY_ON, NOTIFY_OFF):
            conn.execute(TRACK)
        elif mode == BARE:
            conn.execute(BARE_TRIGGER)
        # The bare trigger rings no doorbell: its sequencer polls, as with notify off.
        conn.execute("SELECT relay.configure(notify => %s)", (mode == NOTIFY_ON,))
        conn.execute("VACUUM ANALYZE public.thumbnails")
        conn.execute("CHECKPOINT")  # every run starts from the same WAL state


def _wait_drained(conn: psycopg.Connection[tuple[object, ...]]) -> bool:
    deadline = time.monotonic() + DRAIN_TIMEOUT
    while time.monotonic() < deadline:
        if conn.execute("SELECT EXISTS (SELECT FROM relay.inbox)").fetchone() == (False,):
            return True
        time.sleep(0.05)
    return False


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


def _start_sequencer(ctx: ForkServerContext, dsn: str) -> ForkServerProcess:
    ready = ctx.Semaphore(0)
    proc = ctx.Process(target=_sequencer, args=(dsn, ready), daemon=True)
    proc.start()
    if not ready.acquire(timeout=CONNECT_TIMEOUT):
        _stop(proc)
        raise BenchError(f"the sequencer did not take its role within {CONNECT_TIMEOUT:g} s")
    return proc


def _stop(proc: ForkServerProcess) -> None:
    if proc.is_alive():
        proc.terminate()
    proc.join(timeout=10)
    if proc.is_alive():
        proc.kill()
        proc.join()


def _measure_pgbench(
    dsn: str,
    postmaster: int,
    conn: psycopg.Connection[tuple[object, ...]],
    sequencer: list[int],
    writers: int,
    seconds: int,
    script: Path,
) -> tuple[int, float, dict[str, float], float]:
    before = _snapshot(conn, postmaster, (), sequencer)
    commits, client_cpu = _run_pgbench(conn, dsn, writers, seconds, script)
    after = _snapshot(conn, postmaster, (), sequencer)
    cpu, others = _cpu_between(before, after, {"load generator": client_cpu})
    return commits, float(seconds), cpu, others  # -T: how long it ran, once connected


def _measure_python(
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
        before = _snapshot(conn, postmaster, clients, sequencer)
        try:
            commits = sum(results.get(timeout=seconds + 60) for _ in range(writers))
        except queue.Empty:
            raise BenchError("a writer died (see its traceback above)") from None
        after = _snapshot(conn, postmaster, clients, sequencer)
    finally:
        go.set()
        release.set()
        for proc in procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
                proc.join()
    cpu, others = _cpu_between(before, after, {})
    return commits, seconds, cpu, others


def run_cell(
    ctx: ForkServerContext,
    dsn: str,
    postmaster: int,
    mode: str,
    writers: int,
    seconds: float,
    load: Load,
) -> Run:
    """Measures one run of one cell in the database at dsn (prepared for mode)."""
    seq_proc = _start_sequencer(ctx, dsn) if mode in SEQUENCED else None
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            sequencer = [seq_proc.pid] if seq_proc and seq_proc.pid else []
            if load.client == "pgbench":
                commits, elapsed, cpu, others = _measure_pgbench(
                    dsn, postmaster, conn, sequencer, writers, int(seconds), load.script
                )
            else:
                commits, elapsed, cpu, others = _measure_python(
                    ctx, dsn, postmaster, conn, sequencer, writers, seconds
                )
            backlog = _scalar(conn, "SELECT count(*) FROM relay.inbox")
            drained = _wait_drained(conn) if mode in SEQUENCED else backlog == 0
            increments = _scalar(
                conn, "SELECT sum(share_click_count)::bigint FROM public.thumbnails"
            )
            logged = _scalar(conn, "SELECT count(*) FROM relay.log")
            left = _scalar(conn, "SELECT count(*) FROM relay.inbox")
    finally:
        if seq_proc is not None:
            _stop(seq_proc)
    if increments != commits:
        raise BenchError(f"{mode}: {commits} commits counted but {increments} increments stored")
    if mode in SEQUENCED and logged + left != commits:
        raise BenchError(
            f"{mode}: {commits} commits, {logged} events sequenced, {left} left in the inbox"
        )
    return Run(commits, elapsed, backlog, drained, cpu, others)


# -- the whole benchmark ------------------------------------------------------------------


@dataclass
class Setup:
    server_version: str
    settings: dict[str, str]
    cpus: int
    filesystem: str
    seconds: float
    repeats: int
    client: str
    command: str
    script: str
    load: list[float]  # 1-minute load average before each run


def _filesystem(folder: Path) -> str:
    """The type of the filesystem holding folder (the server's data and WAL), or 'unknown'."""
    best, kind = "", "unknown"
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return kind
    target = str(folder.resolve())
    for line in mounts:
        parts = line.split()
        if len(parts) < 3 or len(parts[1]) <= len(best):
            continue
        if target == parts[1] or target.startswith(parts[1].rstrip("/") + "/"):
            best, kind = parts[1], parts[2]
    return kind


def run_all(
    server: PgServer,
    seconds: float,
    repeats: int,
    script: str,
    load: Load,
    progress: Callable[[str], None],
    loads: list[float],
) -> list[Cell]:
    """Every cell, repeats interleaved (round robin) so slow drift hits every mode alike."""
    # Children fork from a clean server process that has imported psycopg once: quick to
    # start, and nothing of this process (its connections) is inherited.
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])
    postmaster = server.pid
    if postmaster is None:
        raise BenchError("the server is not running")
    cells = {(mode, writers): Cell(mode, writers) for writers in WRITERS for mode in MODES}
    total = len(cells) * repeats
    done = 0
    with psycopg.connect(server.dsn(), autocommit=True) as admin:
        admin.execute("CREATE DATABASE bench")
    dsn = psycopg.conninfo.make_conninfo(server.dsn(), dbname="bench")
    for _ in range(repeats):
        for (mode, writers), cell in cells.items():
            _prepare(dsn, mode, script)
            loads.append(os.getloadavg()[0])
            run = run_cell(ctx, dsn, postmaster, mode, writers, seconds, load)
            cell.runs.append(run)
            done += 1
            progress(
                f"[{done}/{total}] {mode}, {writers} writer(s): {run.tps:,.0f} tps, "
                f"server CPU {sum(run.cpu_us(p) for p in SERVER_PARTS):,.0f} µs/commit, "
                f"others {run.others:.2f} cores, load {loads[-1]:.2f}, "
                f"backlog at stop {run.backlog}, drained {run.drained}"
            )
    return list(cells.values())


def _base(cell: Cell, cells: Sequence[Cell]) -> Cell:
    return next(c for c in cells if c.mode == UNTRACKED and c.writers == cell.writers)


def _ratio(cell: Cell, cells: Sequence[Cell]) -> float:
    """Median throughput against the untracked median."""
    return cell.median / _base(cell, cells).median


def _paired(cell: Cell, cells: Sequence[Cell]) -> float:
    """The median, over rounds, of each run against the untracked run of the same round: the
    runs of a round are minutes apart at most, so drift in the machine's load cancels out."""
    base = _base(cell, cells)
    return statistics.median(run.tps / b.tps for run, b in zip(cell.runs, base.runs, strict=True))


def target_line(cells: Sequence[Cell]) -> str:
    """Whether notify off keeps the issue's share of untracked throughput with the most writers."""
    off = next(c for c in cells if c.mode == NOTIFY_OFF and c.writers == max(WRITERS))
    paired, ratio = _paired(off, cells), _ratio(off, cells)
    verdict = "**met**" if paired >= TARGET else "**not met**"
    return (
        f"Target (from the issue): {NOTIFY_OFF} at {TARGET:.0%} or more of {UNTRACKED} with "
        f"{max(WRITERS)} writers: {verdict} ({paired:.0%} paired by round; medians {ratio:.0%})."
    )


def render(cells: Sequence[Cell], setup: Setup) -> str:
    settings = ", ".join(f"{name}={value}" for name, value in setup.settings.items())
    if setup.client == "pgbench":
        workload = "".join((PGBENCH_WORKLOAD[0], f"`-T {int(setup.seconds)}`", PGBENCH_WORKLOAD[1]))
    else:
        workload = (
            "- Workload: each writer (one Python process, one connection) loops `UPDATE "
            "thumbnails SET share_click_count = share_click_count + 1 WHERE id = <random id>` "
            "in autocommit: one durable commit per UPDATE"
        )
    lines = [
        "Setup:",
        "",
        f"- PostgreSQL {setup.server_version} (`SHOW server_version`), a private server on "
        "127.0.0.1 (`relay.devserver.PgServer`), clients over TCP",
        f"- CPUs: {setup.cpus}; Python {platform.python_version()}; data folder on "
        f"{setup.filesystem}",
        f"- Durable commits: {settings}",
        f"- {setup.seconds:g} s per run, {setup.repeats} repeat(s) per cell, interleaved; each "
        f"run on a fresh table: {ROWS:,} rows, VACUUM ANALYZE, CHECKPOINT",
        workload,
        "- Tracked modes and the bare trigger: the relay's sequencer (`relay.db.Sequencer`, "
        f"batches of {RELAY.sequencer_batch}, looping while a batch is full) in a process of "
        "its own: with notify on, a batch per `relay_inbox` doorbell; with notify off and for "
        f"the bare trigger, a poll every {RELAY.poll_interval * 1000:g} ms",
        f"- Load average (1 min) before the runs: {min(setup.load):.2f} to "
        f"{max(setup.load):.2f}, median {statistics.median(setup.load):.2f}",
        f"- Install script: {setup.script}",
        f"- Command: `{setup.command}`",
        "",
        "| mode | writers | median tps | vs untracked | paired by round | runs (tps) "
        "| inbox at the end |",
        "|---|---:|---:|---:|---:|---|---|",
    ]
    for cell in cells:
        runs = ", ".join(f"{run.tps:,.0f}" for run in cell.runs)
        if cell.mode in SEQUENCED:
            backlog = max(run.backlog for run in cell.runs)
            state = "drained" if all(run.drained for run in cell.runs) else "**not drained**"
            inbox = f"{state} (≤ {backlog:,} rows left when the writers stopped)"
        else:
            inbox = "n/a"
        lines.append(
            f"| {cell.mode} | {cell.writers} | {cell.median:,.0f} | {_ratio(cell, cells):.0%} "
            f"| {_paired(cell, cells):.0%} | {runs} | {inbox} |"
        )
    lines += [
        "",
        "`vs untracked`: median against median; `paired by round`: the median of each run "
        "against the untracked run of the same round.",
        "",
        target_line(cells),
        "",
        "CPU time per commit in µs (median of the runs); `others` is the CPU the "
        "rest of the machine used during the runs, in cores (highest of the runs):",
        "",
        "| mode | writers | " + " | ".join(CPU_PARTS) + " | server total | all measured | others |",
        "|---|---:|" + "---:|" * (len(CPU_PARTS) + 3),
    ]
    for cell in cells:
        parts = " | ".join(f"{cell.median_cpu_us(part):,.0f}" for part in CPU_PARTS)
        server = cell.median_cpu_us(*SERVER_PARTS)
        measured = cell.median_cpu_us(*CPU_PARTS)
        others = max(run.others for run in cell.runs)
        lines.append(
            f"| {cell.mode} | {cell.writers} | {parts} | {server:,.0f} | {measured:,.0f} "
            f"| {others:.2f} |"
        )
    lines.append("")
    return "\n".join(lines)


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.write_overhead",
        description="Write-path overhead of change capture, in durable commits per second.",
    )
    parser.add_argument("--seconds", type=int, default=10, help="per run (default 10)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per cell (default 3)")
    parser.add_argument(
        "--client",
        choices=CLIENTS,
        default="pgbench",
        help="load generator: pgbench (default) or Python writer processes",
    )
    parser.add_argument("--out", type=Path, help="also write the Markdown to this file")
    speed = parser.add_mutually_exclusive_group()
    speed.add_argument("--short", action="store_true", help="2 s per run")
    speed.add_argument("--quick", action="store_true", help="smoke test: 1 s per run, 1 repeat")
    parser.add_argument(
        "--install-sql",
        type=Path,
        help="install this script instead of sql/install.sql (to measure a candidate trigger)",
    )
    args = parser.parse_args(argv)
    if args.short:
        args.seconds = 2
    if args.quick:
        args.seconds, args.repeats = 1, 1
    if args.seconds <= 0 or args.repeats < 1:
        parser.error("--seconds must be > 0 and --repeats >= 1")
    return args


def _command(args: argparse.Namespace) -> str:
    words = ["python -m bench.write_overhead"]
    if args.quick:
        words.append("--quick")
    else:
        words += [f"--seconds {args.seconds}", f"--repeats {args.repeats}"]
    if args.client != "pgbench":
        words.append(f"--client {args.client}")
    if args.install_sql:
        words.append(f"--install-sql {args.install_sql.name}")
    return " ".join(words)


def _show(conn: psycopg.Connection[tuple[object, ...]], name: str) -> str:
    row = conn.execute(sql.SQL("SHOW {}").format(sql.Identifier(name))).fetchone()
    return str(row[0]) if row else ""


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    script = args.install_sql.read_text() if args.install_sql else install_script()

    def progress(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    loads: list[float] = []
    with tempfile.TemporaryDirectory(prefix="pgrelay-bench-") as folder:
        pgbench_script = Path(folder) / "update.sql"
        pgbench_script.write_text(PGBENCH_SCRIPT)
        load = Load(client=args.client, script=pgbench_script)
        server = PgServer(Path(folder) / "pg", settings=DURABLE_SETTINGS)
        with server.running():
            with psycopg.connect(server.dsn(), autocommit=True) as conn:
                version = _show(conn, "server_version")
                shown = {name: _show(conn, name) for name in (*DURABLE_SETTINGS, "wal_sync_method")}
            if any(shown[name] != value for name, value in DURABLE_SETTINGS.items()):
                progress(f"the server did not take the durable settings: {shown}")
                return 1
            progress(
                f"PostgreSQL {version}; {args.seconds} s per run, {args.repeats} repeat(s), "
                f"client {args.client}"
            )
            try:
                cells = run_all(server, args.seconds, args.repeats, script, load, progress, loads)
            except BenchError as exc:
                progress(f"bench: {exc}")
                return 1
        filesystem = _filesystem(Path(folder))
    setup = Setup(
        server_version=version,
        settings=shown,
        cpus=os.cpu_count() or 0,
        filesystem=filesystem,
        seconds=args.seconds,
        repeats=args.repeats,
        client=args.client,
        command=_command(args),
        script=f"{args.install_sql.name} (candidate)" if args.install_sql else "sql/install.sql",
        load=loads,
    )
    report = render(cells, setup)
    print(report)
    if args.out:
        args.out.write_text(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
