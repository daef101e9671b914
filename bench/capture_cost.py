"""What change capture costs a writing transaction, in CPU instructions, path by path.

Each case is a one-row write transaction of one kind (an UPDATE of a carried column, an owner
hand-over, an INSERT, ...). A single-user backend (``postgres --single``, no client, no other
process) runs it 200 times and 1,200 times under valgrind's cachegrind, each time from a copy of
the same data folder (bench/cachegrind.py); the difference divided by 1,000 is the count per
transaction, start-up and shut-down cancelled out. An instruction count is exact: the neighbours
of a shared machine cannot disturb it, where they swing throughput by a factor of 3
(BENCHMARKS.md). It says nothing about waits (fsync, locks, NOTIFY): bench/write_overhead.py
measures those.

    python -m bench.capture_cost [--baseline FILE] [--case WORDS ...] [--wal] [--out FILE]

``--wal`` also counts the WAL bytes per transaction, the writer's and the sequencer's (moving the
event into the log, with its indexes), on a server with full_page_writes off, each case run
``WAL_COUNT`` times: exact for a given PostgreSQL version and data, like the instructions.

``--baseline`` measures an earlier install script too (tests/support/fixtures/install-v3.sql,
say) and prints both side by side. Needs valgrind on the PATH. Writes Markdown to stdout (and to
--out), progress to stderr.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import psycopg

from bench.cachegrind import instructions, per_unit, scratch_folder
from bench.regions import CAPTURE_REGION, replace_region
from relay.demo.pgserver import PgServer
from relay.ops.datafiles import install_script

__all__ = ["CASES", "Case", "main", "measure", "measure_wal"]

SMALL, LARGE = 200, 1200
ROWS = 2000

SCHEMA = """
CREATE TABLE public.thumbnails (
    id bigint PRIMARY KEY, user_id text NOT NULL, project_id text NOT NULL,
    title text NOT NULL DEFAULT '', share_click_count bigint NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE public.plain (LIKE public.thumbnails INCLUDING ALL);
CREATE TABLE public.generations (LIKE public.thumbnails INCLUDING ALL);
CREATE TABLE public.teams (id int PRIMARY KEY, members text[] NOT NULL);
CREATE TABLE public.docs (LIKE public.thumbnails INCLUDING ALL);
CREATE FUNCTION public.doc_readers(d public.docs) RETURNS text[] LANGUAGE sql STABLE
    AS 'SELECT members FROM public.teams WHERE id = length(d.project_id)';
INSERT INTO public.teams SELECT g, ARRAY['user-' || g, 'user-0'] FROM generate_series(1, 20) AS g;
"""
FILL = """
INSERT INTO public.{table} (id, user_id, project_id, title)
SELECT g, 'user-' || (g % 500), 'p-' || (g % 7), 'Thumbnail ' || g
  FROM generate_series(1, {rows}) AS g
"""
TRACK = """
SELECT relay.track('public.thumbnails', owner_column => 'user_id',
                   columns => ARRAY['id', 'user_id', 'project_id', 'title', 'share_click_count']);
SELECT relay.track('public.generations', owner_column => 'user_id');
SELECT relay.track('public.docs', audience => 'public.doc_readers',
                   columns => ARRAY['id', 'project_id', 'title', 'share_click_count']);
"""


@dataclass(frozen=True)
class Case:
    """One kind of write transaction; ``{i}`` in ``sql`` is the transaction's number."""

    name: str
    sql: str


# Rows cycle through ids 1..ROWS, so an UPDATE never meets a row it changed in the same run.
CASES = (
    Case("untracked UPDATE", "UPDATE plain SET share_click_count = share_click_count + 1 "
         "WHERE id = {row}"),
    Case("whitelist, owner: UPDATE of a carried column", "UPDATE thumbnails SET "
         "share_click_count = share_click_count + 1 WHERE id = {row}"),
    Case("whitelist, owner: UPDATE of a column not carried", "UPDATE thumbnails SET "
         "created_at = created_at + interval '1 s' WHERE id = {row}"),
    Case("whitelist, owner: UPDATE handing the row to another owner", "UPDATE thumbnails SET "
         "user_id = 'other-' || {i} WHERE id = {row}"),
    Case("whitelist, owner: INSERT", "INSERT INTO thumbnails (id, user_id, project_id) "
         "VALUES ({i} + 1000000, 'user-1', 'p-1')"),
    Case("whitelist, owner: DELETE", "DELETE FROM thumbnails WHERE id = {row}"),
    Case("no whitelist, owner: UPDATE", "UPDATE generations SET "
         "share_click_count = share_click_count + 1 WHERE id = {row}"),
    Case("audience function: UPDATE of a carried column", "UPDATE docs SET "
         "share_click_count = share_click_count + 1 WHERE id = {row}"),
    Case("audience function: UPDATE changing its answer", "UPDATE docs SET "
         "project_id = project_id || 'x' WHERE id = {row}"),
    Case("audience function: UPDATE of a column not carried", "UPDATE docs SET "
         "created_at = created_at + interval '1 s' WHERE id = {row}"),
)  # fmt: skip


def prepare(folder: Path, script: str) -> PgServer:
    """A stopped server whose database ``bench`` holds the tables, tracked with ``script``."""
    server = PgServer(folder, settings={"fsync": "off"})
    with server.running():
        with psycopg.connect(server.dsn(), autocommit=True) as conn:
            conn.execute("CREATE DATABASE bench")
        with psycopg.connect(server.dsn("bench"), autocommit=True) as conn:
            conn.execute(script)
            conn.execute(SCHEMA)
            for table in ("plain", "thumbnails", "generations", "docs"):
                conn.execute(FILL.format(table=table, rows=ROWS))
            conn.execute(TRACK)
            conn.execute("VACUUM ANALYZE")
            conn.execute("CHECKPOINT")
    return server


def _workload(case: Case, count: int) -> str:
    """``count`` transactions of the case: one statement, one transaction, per line."""
    return "\n".join(case.sql.format(i=i, row=i % ROWS + 1) + ";" for i in range(count))


def measure(script: str, cases: tuple[Case, ...]) -> dict[str, float]:
    """Instructions per transaction of each case, with the given install script."""
    folder = Path(tempfile.mkdtemp(prefix="pgrelay-capture-cost-"))
    try:
        folder.chmod(0o755)
        server = prepare(folder / "pg", script)
        scratch = scratch_folder(folder)
        per_transaction: dict[str, float] = {}
        for case in cases:

            def count(n: int, case: Case = case) -> int:
                return instructions(server, "bench", _workload(case, n), scratch, case.name)

            per_transaction[case.name] = per_unit(count, SMALL, LARGE)
            print(f"{case.name}: {per_transaction[case.name] / 1000:.0f} k", file=sys.stderr)
        return per_transaction
    finally:
        shutil.rmtree(folder, ignore_errors=True)


WAL_COUNT = 500  # transactions per case, for the WAL bytes
WAL_BATCH = 100  # rows per relay.sequence_batch, about what the relay batches under load


def _lsn(conn: psycopg.Connection[tuple[object, ...]]) -> int:
    row = conn.execute("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn").fetchone()
    assert row is not None
    return int(str(row[0]))


def measure_wal(script: str, cases: tuple[Case, ...]) -> dict[str, tuple[float, float]]:
    """WAL bytes per transaction of each case: (the writer's, the sequencer's)."""
    folder = Path(tempfile.mkdtemp(prefix="pgrelay-wal-cost-"))
    try:
        folder.chmod(0o755)
        server = prepare(folder / "pg", script)
        result: dict[str, tuple[float, float]] = {}
        with server.running(), psycopg.connect(server.dsn("bench"), autocommit=True) as conn:
            for number, case in enumerate(cases):
                base = (number + 1) * 10 * WAL_COUNT  # distinct ids for each case's INSERTs
                start = _lsn(conn)
                for i in range(WAL_COUNT):
                    conn.execute(case.sql.format(i=base + i, row=(base + i) % ROWS + 1))
                written = _lsn(conn)
                while True:
                    moved = conn.execute("SELECT relay.sequence_batch(%s)", (WAL_BATCH,)).fetchone()
                    if not moved or not moved[0]:
                        break
                sequenced = _lsn(conn)
                result[case.name] = (
                    (written - start) / WAL_COUNT,
                    (sequenced - written) / WAL_COUNT,
                )
        return result
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def render_wal(results: dict[str, dict[str, tuple[float, float]]]) -> str:
    """A Markdown table: one row per case; per script, the writer's and the sequencer's bytes."""
    names = list(results)
    head = "| case | " + " | ".join(f"{name}: writer | sequencer" for name in names) + " |"
    lines = [head, "|---|" + "---:|---:|" * len(names)]
    for case in next(iter(results.values())):
        cells = [f"{w:,.0f} | {s:,.0f}" for w, s in (results[name][case] for name in names)]
        lines.append(f"| {case} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def render(results: dict[str, dict[str, float]]) -> str:
    """A Markdown table: one row per case, one column per script, in thousands."""
    names = list(results)
    head = "| case | " + " | ".join(names) + (" | difference |" if len(names) == 2 else " |")
    lines = [head, "|---|" + "---:|" * (len(names) + (len(names) == 2))]
    for case in next(iter(results.values())):
        counts = [results[name][case] for name in names]
        cells = [f"{count / 1000:,.0f} k" for count in counts]
        if len(counts) == 2:
            cells.append(f"{(counts[1] - counts[0]) / 1000:+,.0f} k")
        lines.append(f"| {case} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.capture_cost", description=__doc__)
    parser.add_argument("--baseline", type=Path, help="an earlier install script to compare")
    parser.add_argument(
        "--case", action="append", help="only the cases whose name contains this (repeatable)"
    )
    parser.add_argument("--out", type=Path, help="also write the Markdown here")
    parser.add_argument(
        "--wal", action="store_true", help="also count the WAL bytes per transaction"
    )
    parser.add_argument(
        "--region",
        type=Path,
        help="also write it into this Markdown file's capture-cost region (BENCHMARKS.md)",
    )
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None:
        print("valgrind is not on the PATH", file=sys.stderr)
        return 2
    cases = tuple(
        case for case in CASES if not args.case or any(words in case.name for words in args.case)
    )
    scripts = {args.baseline.name: args.baseline.read_text()} if args.baseline else {}
    scripts["sql/install.sql"] = install_script()
    results = {name: measure(script, cases) for name, script in scripts.items()}
    text = render(results)
    if args.wal:
        wal = {name: measure_wal(script, cases) for name, script in scripts.items()}
        text += (
            "\nWAL bytes per transaction, the writer's and the sequencer's (batches of "
            f"{WAL_BATCH}), full_page_writes off:\n\n" + render_wal(wal)
        )
    sys.stdout.write(text)
    if args.out is not None:
        args.out.write_text(text)
    if args.region is not None:
        command = (
            "python -m bench.capture_cost"
            + (f" --baseline {args.baseline.name}" if args.baseline is not None else "")
            + (" --wal" if args.wal else "")
        )
        region = CAPTURE_REGION.wrap(f"`{command}`, instructions per transaction:\n\n{text}")
        replace_region(args.region, region, CAPTURE_REGION.start, CAPTURE_REGION.end)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
