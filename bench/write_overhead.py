"""Write-path overhead of change capture, in durable commits per second.

Each writer process loops ``UPDATE thumbnails SET share_click_count = share_click_count + 1
WHERE id = <random id>`` in autocommit, so every UPDATE is one durable commit (fsync,
full_page_writes and synchronous_commit on). The modes compare the untracked table with the
same table under ``relay.capture``, NOTIFY on and off; while a tracked mode runs, a sequencer
process drains the inbox with ``relay.sequence_batch(1000)`` as the relay does in production.
"bare outbox trigger" is a diagnostic: a minimal trigger appending to the same inbox, to tell
the cost of the extra durable row from the cost of the capture function's work.

Besides throughput, each run records the CPU time of every process involved (server backends,
the server's background processes, the Python clients) from the kernel's per-process counters,
in microseconds per commit, and how much CPU other processes on the machine used meanwhile: on
a small shared machine throughput moves with the neighbours, CPU per commit much less.

    python -m bench.write_overhead [--seconds N] [--repeats N] [--out FILE] [--short | --quick]

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
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from multiprocessing.context import ForkServerContext
from multiprocessing.queues import Queue
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Event, Semaphore
from pathlib import Path

import psycopg
from psycopg import sql

from relay.devserver import PgServer
from relay.sqlfiles import install_script

__all__ = ["MODES", "WRITERS", "main"]

# Commits must reach the disk: the devserver defaults turn fsync off for speed.
DURABLE_SETTINGS = {"fsync": "on", "full_page_writes": "on", "synchronous_commit": "on"}
ROWS = 10_000
WRITERS = (1, 4)
TARGET = 0.75  # from the issue: notify off keeps 75 % of untracked throughput, 4 writers
BATCH = 1000
SEQUENCER_IDLE_SLEEP = 0.02
DRAIN_TIMEOUT = 60.0
CONNECT_TIMEOUT = 60.0

UNTRACKED = "untracked"
NOTIFY_ON = "tracked, notify on"
NOTIFY_OFF = "tracked, notify off"
BARE = "bare outbox trigger"
MODES = (UNTRACKED, NOTIFY_ON, NOTIFY_OFF, BARE)
SEQUENCED = frozenset({NOTIFY_ON, NOTIFY_OFF, BARE})

WRITER_APP = "bench-writer"
SEQUENCER_APP = "bench-sequencer"
UPDATE = "UPDATE public.thumbnails SET share_click_count = share_click_count + 1 WHERE id = %s"
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
CPU_PARTS = ("writer backends", "sequencer backend", "server background", "Python clients")
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


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of one process, or None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime


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
    parts: dict[str, dict[int, float]]  # part -> pid -> CPU seconds


def _snapshot(
    admin: psycopg.Connection[tuple[object, ...]], postmaster: int, clients: Iterable[int]
) -> CpuSnapshot:
    """Every process of the run, by part: the server's (from pg_stat_activity), the clients."""
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
    pids["Python clients"].extend(clients)
    parts = {
        part: {pid: cpu for pid in members if (cpu := _cpu_seconds(pid)) is not None}
        for part, members in pids.items()
    }
    return CpuSnapshot(at=time.monotonic(), busy=_machine_busy(), parts=parts)


def _cpu_between(start: CpuSnapshot, end: CpuSnapshot) -> tuple[dict[str, float], float]:
    """CPU seconds per part, and the other processes' load in cores, between two snapshots."""
    used = {
        part: sum(cpu - start.parts[part].get(pid, 0.0) for pid, cpu in end.parts[part].items())
        for part in CPU_PARTS
    }
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


def _sequencer(dsn: str, ready: Semaphore, stop: Event, results: Queue[int]) -> None:
    """What the relay's sequencer does: LISTEN relay_inbox, move batches, idle when empty."""
    with psycopg.connect(dsn, autocommit=True, application_name=SEQUENCER_APP) as conn:
        conn.add_notify_handler(lambda _notify: None)  # drop doorbells instead of queueing them
        conn.execute("LISTEN relay_inbox")
        ready.release()
        moved = 0
        while not stop.is_set():
            row = conn.execute("SELECT relay.sequence_batch(%s)", (BATCH,)).fetchone()
            batch = int(row[0]) if row else 0
            moved += batch
            if batch == 0:
                time.sleep(SEQUENCER_IDLE_SLEEP)
    results.put(moved)


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
            conn.execute("SELECT relay.configure(notify => %s)", (mode == NOTIFY_ON,))
        elif mode == BARE:
            conn.execute(BARE_TRIGGER)
        conn.execute("VACUUM ANALYZE public.thumbnails")
        conn.execute("CHECKPOINT")  # every run starts from the same WAL state


def _wait_drained(conn: psycopg.Connection[tuple[object, ...]]) -> bool:
    deadline = time.monotonic() + DRAIN_TIMEOUT
    while time.monotonic() < deadline:
        if conn.execute("SELECT EXISTS (SELECT FROM relay.inbox)").fetchone() == (False,):
            return True
        time.sleep(0.05)
    return False


def run_cell(
    ctx: ForkServerContext, dsn: str, postmaster: int, mode: str, writers: int, seconds: float
) -> Run:
    """Measures one run of one cell in the database at dsn (prepared for mode)."""
    ready = ctx.Semaphore(0)
    go, release, stop = ctx.Event(), ctx.Event(), ctx.Event()
    start_at = ctx.Value("d", 0.0)
    writer_results: Queue[int] = ctx.Queue()
    sequencer_results: Queue[int] = ctx.Queue()
    shared = (ready, go, release, start_at, writer_results)
    procs = [
        ctx.Process(target=_writer, args=(dsn, random.randrange(1 << 30), seconds, *shared))
        for _ in range(writers)
    ]
    if mode in SEQUENCED:
        procs.append(ctx.Process(target=_sequencer, args=(dsn, ready, stop, sequencer_results)))
    for proc in procs:
        proc.start()
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            for _ in procs:
                if not ready.acquire(timeout=CONNECT_TIMEOUT):
                    raise BenchError(f"a client did not connect within {CONNECT_TIMEOUT:g} s")
            clients = [proc.pid for proc in procs if proc.pid is not None]
            start_at.value = time.monotonic() + 0.05
            go.set()
            time.sleep(max(0.0, start_at.value - time.monotonic()))
            before = _snapshot(conn, postmaster, clients)
            try:
                commits = sum(writer_results.get(timeout=seconds + 60) for _ in range(writers))
            except queue.Empty:
                raise BenchError(f"{mode}: a writer died (see its traceback above)") from None
            after = _snapshot(conn, postmaster, clients)
            release.set()
            cpu, others = _cpu_between(before, after)
            backlog = _scalar(conn, "SELECT count(*) FROM relay.inbox")
            drained = _wait_drained(conn) if mode in SEQUENCED else backlog == 0
            stop.set()
            try:
                moved = sequencer_results.get(timeout=60) if mode in SEQUENCED else 0
            except queue.Empty:
                raise BenchError(f"{mode}: the sequencer died (see its traceback above)") from None
            increments = _scalar(
                conn, "SELECT sum(share_click_count)::bigint FROM public.thumbnails"
            )
            logged = _scalar(conn, "SELECT count(*) FROM relay.log")
            left = _scalar(conn, "SELECT count(*) FROM relay.inbox")
    finally:
        for event in (go, release, stop):
            event.set()
        for proc in procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
                proc.join()
    if increments != commits:
        raise BenchError(f"{mode}: {commits} commits counted but {increments} increments stored")
    if mode in SEQUENCED and (logged + left != commits or logged != moved):
        raise BenchError(
            f"{mode}: {commits} commits, {logged} events sequenced ({moved} by the sequencer),"
            f" {left} left in the inbox"
        )
    return Run(commits, seconds, backlog, drained, cpu, others)


# -- the whole benchmark ------------------------------------------------------------------


@dataclass
class Setup:
    server_version: str
    settings: dict[str, str]
    cpus: int
    filesystem: str
    seconds: float
    repeats: int
    command: str
    script: str


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
    progress: Callable[[str], None],
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
            run = run_cell(ctx, dsn, postmaster, mode, writers, seconds)
            cell.runs.append(run)
            done += 1
            progress(
                f"[{done}/{total}] {mode}, {writers} writer(s): {run.tps:,.0f} tps, "
                f"server CPU {sum(run.cpu_us(p) for p in SERVER_PARTS):,.0f} µs/commit, "
                f"others {run.others:.2f} cores, backlog at stop {run.backlog}, "
                f"drained {run.drained}"
            )
    return list(cells.values())


def _ratio(cell: Cell, cells: Sequence[Cell]) -> float:
    base = next(c for c in cells if c.mode == UNTRACKED and c.writers == cell.writers)
    return cell.median / base.median


def target_line(cells: Sequence[Cell]) -> str:
    """Whether notify off keeps the issue's share of untracked throughput with the most writers."""
    off = next(c for c in cells if c.mode == NOTIFY_OFF and c.writers == max(WRITERS))
    ratio = _ratio(off, cells)
    verdict = "**met**" if ratio >= TARGET else "**not met**"
    return (
        f"Target (from the issue): {NOTIFY_OFF} at {TARGET:.0%} or more of {UNTRACKED} with "
        f"{max(WRITERS)} writers: {verdict} ({ratio:.0%})."
    )


def render(cells: Sequence[Cell], setup: Setup) -> str:
    settings = ", ".join(f"{name}={value}" for name, value in setup.settings.items())
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
        "- Workload: each writer (one process, one connection) loops `UPDATE thumbnails SET "
        "share_click_count = share_click_count + 1 WHERE id = <random id>` in autocommit: "
        "one durable commit per UPDATE",
        f"- Tracked modes and the bare trigger: a sequencer process runs `relay.sequence_batch("
        f"{BATCH})` in a loop (LISTEN relay_inbox; sleeps {SEQUENCER_IDLE_SLEEP * 1000:g} ms "
        "when the inbox is empty)",
        f"- Install script: {setup.script}",
        f"- Command: `{setup.command}`",
        "",
        "| mode | writers | median tps | vs untracked | runs (tps) | inbox at the end |",
        "|---|---:|---:|---:|---|---|",
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
            f"| {runs} | {inbox} |"
        )
    lines += [
        "",
        target_line(cells),
        "",
        "CPU time per commit in µs (median of the runs); `others` is the CPU the "
        "rest of the machine used during the runs, in cores (highest of the runs):",
        "",
        "| mode | writers | " + " | ".join(CPU_PARTS) + " | server total | others |",
        "|---|---:|" + "---:|" * (len(CPU_PARTS) + 2),
    ]
    for cell in cells:
        parts = " | ".join(f"{cell.median_cpu_us(part):,.0f}" for part in CPU_PARTS)
        server = cell.median_cpu_us(*SERVER_PARTS)
        others = max(run.others for run in cell.runs)
        lines.append(f"| {cell.mode} | {cell.writers} | {parts} | {server:,.0f} | {others:.2f} |")
    lines.append("")
    return "\n".join(lines)


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.write_overhead",
        description="Write-path overhead of change capture, in durable commits per second.",
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="per run (default 10)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per cell (default 3)")
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
        args.seconds = 2.0
    if args.quick:
        args.seconds, args.repeats = 1.0, 1
    if args.seconds <= 0 or args.repeats < 1:
        parser.error("--seconds must be > 0 and --repeats >= 1")
    return args


def _command(args: argparse.Namespace) -> str:
    words = ["python -m bench.write_overhead"]
    if args.quick:
        words.append("--quick")
    else:
        words += [f"--seconds {args.seconds:g}", f"--repeats {args.repeats}"]
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

    with tempfile.TemporaryDirectory(prefix="pgrelay-bench-") as folder:
        server = PgServer(Path(folder) / "pg", settings=DURABLE_SETTINGS)
        with server.running():
            with psycopg.connect(server.dsn(), autocommit=True) as conn:
                version = _show(conn, "server_version")
                shown = {name: _show(conn, name) for name in (*DURABLE_SETTINGS, "wal_sync_method")}
            if any(shown[name] != value for name, value in DURABLE_SETTINGS.items()):
                progress(f"the server did not take the durable settings: {shown}")
                return 1
            progress(f"PostgreSQL {version}; {args.seconds:g} s per run, {args.repeats} repeat(s)")
            try:
                cells = run_all(server, args.seconds, args.repeats, script, progress)
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
        command=_command(args),
        script=f"{args.install_sql.name} (candidate)" if args.install_sql else "sql/install.sql",
    )
    report = render(cells, setup)
    print(report)
    if args.out:
        args.out.write_text(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
