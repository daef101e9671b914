"""Write-path overhead of change capture, in durable commits per second.

The load is ``UPDATE thumbnails SET share_click_count = share_click_count + 1 WHERE id = <random
id>``, one durable commit per UPDATE (fsync, full_page_writes and synchronous_commit on). By
default pgbench (PostgreSQL's benchmark client, from the server's own bin folder) generates it:
a custom script, ``-M prepared``, one connection and one thread per writer, for ``-T`` seconds.
It costs far less client CPU than Python writers, so on a small machine the database's own cost
decides the result; ``--client python`` runs the earlier Python writer processes instead.

The modes compare the untracked table with the same table under ``relay.capture``, NOTIFY on
and off. While a tracked mode runs, the relay's own sequencer (``relay.pg.sequencer``, with the
relay's default settings, in a process of its own) moves the inbox into the log exactly as in
production: it polls the inbox adaptively, ``RELAY_BATCH_WINDOW`` (1 ms; ``--batch-window``) after
a batch that moved rows, doubling up to ``RELAY_POLL_INTERVAL`` (20 ms) while it finds none; with
notify on a ``relay_inbox`` doorbell ends the wait; it loops at once while a batch is full. "bare
outbox trigger" is a diagnostic: a minimal trigger appending to the same inbox (no NOTIFY, so
the sequencer polls), to tell the cost of the extra durable row from the capture function's.

Besides throughput, each run records the CPU time of every process involved, from the kernel's
per-process counters, in microseconds per commit: server backends (those that exit at the end
of the run, pgbench's, are counted through the postmaster's reaped-children counters), the
server's background processes, the load generator and the sequencer process; and how much CPU
other processes on the machine used meanwhile.

    python -m bench.write_overhead [--seconds N] [--repeats N] [--client pgbench|python]
                                   [--out FILE] [--short | --quick] [--batch-window S]

Writes Markdown to stdout (and to --out), progress to stderr. Exits 1 when a run's counts do
not add up (commits against increments and captured events), never because of speed.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from multiprocessing.context import ForkServerContext, ForkServerProcess
from multiprocessing.synchronize import Semaphore
from pathlib import Path

import anyio
import psycopg
import structlog
from psycopg import sql

from bench.regions import WRITE_REGION, replace_region
from bench.write_load import Load, measure_pgbench, measure_python
from bench.write_plan import (
    BARE,
    CLIENTS,
    CONNECT_TIMEOUT,
    MODES,
    NOTIFY_OFF,
    NOTIFY_ON,
    RELAY,
    ROWS,
    SEQUENCED,
    SEQUENCER_APP,
    SERVER_PARTS,
    WRITERS,
    BenchError,
    Cell,
    Run,
    Setup,
)
from bench.write_report import render
from relay.demo.pgserver import PgServer
from relay.ops.datafiles import install_script
from relay.pg.sequencer import Sequencer

__all__ = ["main", "run_all", "run_cell"]

# Commits must reach the disk: the devserver defaults turn fsync off for speed.
DURABLE_SETTINGS = {"fsync": "on", "full_page_writes": "on", "synchronous_commit": "on"}
DRAIN_TIMEOUT = 60.0


PGBENCH_SCRIPT = """\\set id random(1, 10000)
UPDATE public.thumbnails SET share_click_count = share_click_count + 1 WHERE id = :id;
"""  # ids 1 to ROWS
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


# -- the sequencer process (it opens its own connection) ----------------------------------


def _sequencer(dsn: str, ready: Semaphore, batch_window: float) -> None:
    """The relay's sequencer with its default settings (but ``batch_window``), until terminated."""
    structlog.configure(logger_factory=structlog.ReturnLoggerFactory())  # no log lines
    sequencer = Sequencer(
        dsn,
        on_leader=lambda leader: ready.release() if leader else None,
        query_timeout=RELAY.query_timeout,
        poll_interval=max(RELAY.poll_interval, batch_window),
        batch_window=batch_window,
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


def _start_sequencer(ctx: ForkServerContext, dsn: str, batch_window: float) -> ForkServerProcess:
    ready = ctx.Semaphore(0)
    proc = ctx.Process(target=_sequencer, args=(dsn, ready, batch_window), daemon=True)
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


def run_cell(
    ctx: ForkServerContext,
    dsn: str,
    postmaster: int,
    mode: str,
    writers: int,
    seconds: float,
    load: Load,
    batch_window: float = RELAY.batch_window,
) -> Run:
    """Measures one run of one cell in the database at dsn (prepared for mode)."""
    seq_proc = _start_sequencer(ctx, dsn, batch_window) if mode in SEQUENCED else None
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            sequencer = [seq_proc.pid] if seq_proc and seq_proc.pid else []
            if load.client == "pgbench":
                commits, elapsed, cpu, others = measure_pgbench(
                    dsn, postmaster, conn, sequencer, writers, int(seconds), load.script
                )
            else:
                commits, elapsed, cpu, others = measure_python(
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
    batch_window: float = RELAY.batch_window,
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
            run = run_cell(ctx, dsn, postmaster, mode, writers, seconds, load, batch_window)
            cell.runs.append(run)
            done += 1
            progress(
                f"[{done}/{total}] {mode}, {writers} writer(s): {run.tps:,.0f} tps, "
                f"server CPU {sum(run.cpu_us(p) for p in SERVER_PARTS):,.0f} µs/commit, "
                f"others {run.others:.2f} cores, load {loads[-1]:.2f}, "
                f"backlog at stop {run.backlog}, drained {run.drained}"
            )
    return list(cells.values())


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
    parser.add_argument(
        "--region",
        type=Path,
        help="also write it into this Markdown file's write-bench region (BENCHMARKS.md)",
    )
    speed = parser.add_mutually_exclusive_group()
    speed.add_argument("--short", action="store_true", help="2 s per run")
    speed.add_argument("--quick", action="store_true", help="smoke test: 1 s per run, 1 repeat")
    parser.add_argument(
        "--install-sql",
        type=Path,
        help="install this script instead of sql/install.sql (to measure a candidate trigger)",
    )
    parser.add_argument(
        "--batch-window",
        type=float,
        default=RELAY.batch_window,
        help=f"the sequencer's RELAY_BATCH_WINDOW in seconds (default {RELAY.batch_window:g})",
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
    if args.batch_window != RELAY.batch_window:
        words.append(f"--batch-window {args.batch_window:g}")
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
                cells = run_all(
                    server, args.seconds, args.repeats, script, load, progress, loads,
                    args.batch_window,
                )  # fmt: skip
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
    if args.region:
        region = WRITE_REGION.wrap(report)
        replace_region(args.region, region, WRITE_REGION.start, WRITE_REGION.end)
    return 0


if __name__ == "__main__":
    sys.exit(main())
