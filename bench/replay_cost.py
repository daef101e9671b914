"""What a replay costs against what the log's audience indexes cost the sequencer, layout by layout.

A private server (relay.demo.pgserver.PgServer) gets a log of ``--hours`` at ``--rate`` events a
second among 10,000 users, written straight into relay.log with INSERT ... SELECT (a mix stated
in ``MIX``), then ``LIVE`` more events through the inbox and relay.sequence_batch, as the relay
sequences them (so each GIN holds the pending list live writes leave). Every index any layout
uses is built once; a layout is measured inside a transaction that drops the others and is
rolled back, so all layouts read the same rows, and rounds alternate the layouts.

* Replays: the relay's own read (relay.pg.replay_query.fetch_replay, every table, page of 500 as
  the relay pages by default) for one user (10,000 users: about 1,000 of the user's events a
  day) back from 1 min, 1 h and 24 h offline: the first page, and the whole catch-up page after
  page up to the head. Warm cache: each is timed after one untimed run; medians.
* The sequencer: the wall time of its INSERT into the log, 100 rows a batch, over ``BATCHES``
  batches per layout (p50, p99, max): with fastupdate on, the batch that overflows a GIN's
  pending list moves the whole list into the index.
* The write cost, exact: instructions per sequenced row of relay.sequence_batch, index by index,
  in a single-user backend under cachegrind (bench/cachegrind.py), on a log of 200,000 rows.

    python -m bench.replay_cost [--hours H] [--rate R] [--rounds N] [--quick] [--no-read]
                                [--no-sequencer] [--no-write] [--out FILE] [--region FILE]

Needs valgrind for the write cost. Writes Markdown to stdout (and to --out), progress to stderr.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import psycopg

from bench.cachegrind import instructions, per_unit, scratch_folder
from bench.regions import REPLAY_REGION, replace_region
from relay.demo.pgserver import PgServer
from relay.ops.datafiles import install_script
from relay.pg.replay_query import fetch_replay

__all__ = ["INDEXES", "LAYOUTS", "Layout", "main"]

USERS = 10_000
TEAM = 5  # members of a shared row's audience (the user's team)
MIX = "94 % one owner, 5 % shared with a team of 5, 1 % owner hand-overs (old audience)"
USER = "user-4242"
KEYS = (USER, "role:authenticated")  # what a signed-in connection is reached by
PAGE = 500  # the relay's default page (replay_batch, queue_max_messages / 2)
OFFLINE = (("1 min", 60), ("1 h", 3600), ("24 h", 86400))
LIVE = 60_000  # events sequenced through the inbox after the bulk load
BATCH, BATCHES = 100, 3000  # rows per timed batch, batches per layout
QUICK = {"hours": 0.02, "live": 2_000, "batches": 50, "rounds": 1}  # --quick: a smoke run
WRITE_LOG, SMALL, LARGE = 200_000, 20, 120  # cachegrind: log rows, sequence_batch(100) calls
CHUNK = 1_000_000

# One event per g (%% is SQL's modulo in a query with parameters): its kind by g % 100, its
# user by a hash of g.
_USER = "'user-' || (abs(hashint8(g)) %% 10000)"
_TEAM = "ARRAY[" + ", ".join(
    f"'user-' || (abs(hashint8(g)) %% 10000 - abs(hashint8(g)) %% {TEAM} + {i})"
    for i in range(TEAM)
) + "]"  # fmt: skip
_EVENT = f"""
SELECT 'public'::name AS table_schema,
       (CASE WHEN g %% 100 < 5 THEN 'docs' ELSE 'thumbnails' END)::name AS table_name,
       CASE WHEN g %% 100 = 99 OR g %% 3 <> 0 THEN 'UPDATE' ELSE 'INSERT' END AS op,
       jsonb_build_object('id', g %% 1000000) AS pk,
       jsonb_build_object('id', g %% 1000000, 'user_id', {_USER}, 'project_id', 'p-' || g %% 7,
                          'title', 'Thumbnail ' || g, 'share_click_count', g %% 1000) AS row_data,
       CASE WHEN g %% 3 <> 0 THEN ARRAY['share_click_count'] END AS changed,
       CASE WHEN g %% 100 < 5 THEN {_TEAM} ELSE ARRAY[{_USER}] END AS audience,
       CASE WHEN g %% 100 = 99 THEN jsonb_build_object('user_id', 'user-' || g %% 10000) END
           AS old_values,
       CASE WHEN g %% 100 = 99 THEN ARRAY['user-' || g %% 10000] END AS old_audience,
       g
  FROM generate_series(%(first)s::bigint, %(last)s::bigint) AS g
"""  # noqa: S608 (only constants are formatted in, here and below)
BULK = f"""
INSERT INTO relay.log (pos, table_schema, table_name, op, pk, row_data, changed, audience,
                       old_values, old_audience, captured_at, committed_at, sequenced_at)
SELECT g, table_schema, table_name, op, pk, row_data, changed, audience, old_values,
       old_audience, t, t, t
  FROM ({_EVENT}) AS e, LATERAL (SELECT %(start)s::timestamptz + g * %(step)s::interval) AS s(t)
"""  # noqa: S608
INBOX = f"""
INSERT INTO relay.inbox (table_schema, table_name, op, pk, row_data, changed, audience,
                         old_values, old_audience)
SELECT table_schema, table_name, op, pk, row_data, changed, audience, old_values, old_audience
  FROM ({_EVENT}) AS e
"""  # noqa: S608

INDEXES = {
    "log_sequenced_at": "CREATE INDEX log_sequenced_at ON relay.log (sequenced_at)",
    "log_audience": "CREATE INDEX log_audience ON relay.log USING gin (audience)",
    "log_audience_direct": "CREATE INDEX log_audience_direct ON relay.log USING gin (audience)"
    " WITH (fastupdate = off)",
    "log_old_audience": "CREATE INDEX log_old_audience ON relay.log USING gin (old_audience)"
    " WHERE old_audience IS NOT NULL",
    "log_old_audience_direct": "CREATE INDEX log_old_audience_direct ON relay.log"
    " USING gin (old_audience) WITH (fastupdate = off) WHERE old_audience IS NOT NULL",
    "log_audience_one": "CREATE INDEX log_audience_one ON relay.log ((audience[1]), pos)"
    " WHERE cardinality(audience) = 1",
    "log_audience_many": "CREATE INDEX log_audience_many ON relay.log USING gin (audience)"
    " WHERE cardinality(audience) > 1",
}
GIN_MATCH = "(audience && %(keys)s::text[] OR old_audience && %(keys)s::text[])"
ONE_MATCH = (
    "((cardinality(audience) = 1 AND audience[1] = ANY(%(keys)s::text[]))"
    " OR (cardinality(audience) > 1 AND audience && %(keys)s::text[])"
    " OR old_audience && %(keys)s::text[])"
)


Run = tuple[float, float, int, int]  # first page s, whole catch-up s, pages, rows


@dataclass(frozen=True)
class Layout:
    """The audience indexes a log has (besides its primary key) and the condition that uses them."""

    name: str
    indexes: tuple[str, ...]
    match: str


LAYOUTS = (
    Layout("GIN on audience, fastupdate on (schema v5)",
           ("log_audience", "log_old_audience", "log_sequenced_at"), GIN_MATCH),
    Layout("GINs with fastupdate off, no index on sequenced_at (schema v7)",
           ("log_audience_direct", "log_old_audience_direct"), GIN_MATCH),
    Layout("no audience index (primary key range, filtered)", ("log_sequenced_at",), GIN_MATCH),
    Layout("btree on the one owner, GIN on shared rows only",
           ("log_audience_one", "log_audience_many", "log_old_audience"), ONE_MATCH),
)  # fmt: skip
# Index sets whose write cost is counted, each against the primary key alone.
WRITE_SETS = (
    ("primary key only", ()),
    ("+ log_sequenced_at (btree on sequenced_at)", ("log_sequenced_at",)),
    ("+ GIN on audience, fastupdate on (pending list moved in, amortized)", ("log_audience",)),
    ("+ GIN on audience, fastupdate off", ("log_audience_direct",)),
    ("+ btree on the one owner", ("log_audience_one",)),
    ("+ GIN on shared rows only, fastupdate on (amortized)", ("log_audience_many",)),
    ("+ partial GIN on old_audience (amortized)", ("log_old_audience",)),
    ("+ partial GIN on old_audience, fastupdate off", ("log_old_audience_direct",)),
    ("schema v5: sequenced_at, GINs on audience and old_audience", LAYOUTS[0].indexes),
    ("schema v7: GINs on audience and old_audience, fastupdate off", LAYOUTS[1].indexes),
    ("one-owner layout: btree owner, GIN shared, GIN old_audience", LAYOUTS[3].indexes),
)  # fmt: skip


def _note(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def _build(dsn: str, rows: int, rate: float) -> None:
    """The schema, ``rows`` log rows written directly, every index in INDEXES, statistics."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(install_script())
        for name in ("log_audience", "log_old_audience", "log_sequenced_at"):
            conn.execute(f"DROP INDEX IF EXISTS relay.{name}")
        conn.execute("SET maintenance_work_mem = '512MB'")
        start = datetime.now(UTC) - timedelta(seconds=rows / rate)
        for first in range(1, rows + 1, CHUNK):
            last = min(rows, first + CHUNK - 1)
            params = {
                "first": first,
                "last": last,
                "start": start,
                "step": timedelta(seconds=1 / rate),
            }
            conn.execute(BULK, params)
            _note(f"log rows {last:,} of {rows:,} written")
        conn.execute("UPDATE relay.head SET pos = %s", (rows,))
        for statement in INDEXES.values():
            conn.execute(statement)
        conn.execute("VACUUM ANALYZE relay.log")


def _sequence(conn: psycopg.Connection[tuple[object, ...]], first: int, rows: int) -> None:
    """Writes ``rows`` events to the inbox and sequences them, BATCH at a time, as the relay
    does (each statement its own transaction)."""
    for low in range(first, first + rows, BATCH):
        conn.execute(INBOX, {"first": low, "last": low + BATCH - 1})
        conn.execute("SELECT relay.sequence_batch(%s)", (BATCH,))


def _drops(kept: tuple[str, ...]) -> list[str]:
    """The statements that leave only the ``kept`` indexes of INDEXES."""
    return [f"DROP INDEX relay.{name}" for name in INDEXES if name not in kept]


async def _catch_up(conn: psycopg.AsyncConnection[tuple[object, ...]], after: int, head: int,
                    match: str) -> Run:  # fmt: skip
    """The relay's replay from ``after`` to ``head``, page by page: seconds for the first page,
    seconds for all, pages, rows."""
    began = time.perf_counter()
    first, pages, rows = 0.0, 0, 0
    while after < head:
        page = await fetch_replay(
            conn, keys=KEYS, table="", schema=None, after=after, upto=head, limit=PAGE, match=match
        )
        pages, rows, after = pages + 1, rows + len(page.events), page.scanned_to
        first = first or time.perf_counter() - began
    return first, time.perf_counter() - began, pages, rows


async def _replays(
    dsn: str, head: int, rate: float, rounds: int
) -> dict[tuple[str, str], list[Run]]:
    """(layout, offline) -> [(first page s, catch-up s, pages, rows)], rounds alternating."""
    found: dict[tuple[str, str], list[Run]] = {}
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        for n in range(rounds):
            order = LAYOUTS if n % 2 == 0 else LAYOUTS[::-1]
            for layout in order:
                async with conn.transaction(force_rollback=True):
                    for statement in _drops(layout.indexes):
                        await conn.execute(statement)
                    for label, seconds in OFFLINE:
                        after = max(0, head - int(seconds * rate))
                        await _catch_up(conn, after, head, layout.match)  # warm
                        for _ in range(3):
                            run = await _catch_up(conn, after, head, layout.match)
                            found.setdefault((layout.name, label), []).append(run)
            _note(f"replay round {n + 1} of {rounds} done")
    return found


def _write_costs(rate: float) -> dict[str, float]:
    """Instructions per sequenced row of relay.sequence_batch(100), per index set (cachegrind)."""
    folder = Path(tempfile.mkdtemp(prefix="pgrelay-replay-cost-"))
    try:
        folder.chmod(0o755)
        server = PgServer(folder / "pg", settings={"fsync": "off"})
        with server.running():
            _build(server.dsn(), WRITE_LOG, rate)
            with psycopg.connect(server.dsn(), autocommit=True) as conn:
                conn.execute(INBOX, {"first": WRITE_LOG + 1, "last": WRITE_LOG + LARGE * BATCH})
                conn.execute("VACUUM ANALYZE")
                conn.execute("CHECKPOINT")
        scratch = scratch_folder(folder)
        costs: dict[str, float] = {}
        for name, kept in WRITE_SETS:
            setup = [f"{statement};" for statement in _drops(kept)]
            clean = [
                f"SELECT gin_clean_pending_list('relay.{index}');"
                for index in kept
                if " gin " in INDEXES[index] and "fastupdate" not in INDEXES[index]
            ]

            def count(
                n: int, setup: list[str] = setup, clean: list[str] = clean, name: str = name
            ) -> int:
                work = [*setup, *["SELECT relay.sequence_batch(100);"] * n, *clean]
                return instructions(server, "postgres", "\n".join(work), scratch, name)

            costs[name] = per_unit(count, SMALL, LARGE) / BATCH
            _note(f"write cost, {name}: {costs[name] / 1000:.1f} k instructions per row")
        return costs
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _sequencer(dsn: str, first: int, batches: int) -> dict[str, list[float]]:
    """Layout -> wall times of ``batches`` batch inserts into the log, BATCH rows each, as
    relay.sequence_batch inserts them; each layout in a transaction rolled back, from a vacuumed
    log (every GIN's pending list empty). Not through the inbox: in one open transaction each
    batch would walk past every inbox row the earlier ones deleted."""
    took: dict[str, list[float]] = {}
    with psycopg.connect(dsn, autocommit=True) as conn:
        for layout in LAYOUTS:
            conn.execute("VACUUM relay.log")
            times = took[layout.name] = []
            with conn.transaction(force_rollback=True):
                for statement in _drops(layout.indexes):
                    conn.execute(statement)
                for low in range(first, first + batches * BATCH, BATCH):
                    params = {"first": low, "last": low + BATCH - 1, "start": datetime.now(UTC),
                              "step": timedelta(0)}  # fmt: skip
                    began = time.perf_counter()
                    conn.execute(BULK, params)
                    times.append(time.perf_counter() - began)
            _note(f"sequencer, {layout.name}: done")
    return took


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:,.1f}" if seconds < 0.1 else f"{seconds * 1000:,.0f}"


def _render_reads(facts: list[str], replays: dict[tuple[str, str], list[Run]],
                  sequencer: dict[str, list[float]], batches: int) -> str:  # fmt: skip
    lines = [*facts, "", "Replay for one user (every table), first page / whole catch-up, ms"
             " (median; pages, rows):", "",
             "| layout | " + " | ".join(f"{label} offline" for label, _ in OFFLINE) + " |",
             "|---|" + "---:|" * len(OFFLINE)]  # fmt: skip
    for layout in LAYOUTS:
        cells = []
        for label, _ in OFFLINE:
            runs = replays[(layout.name, label)]
            first = statistics.median(run[0] for run in runs)
            whole = statistics.median(run[1] for run in runs)
            cells.append(f"{_ms(first)} / {_ms(whole)} ({runs[0][2]}; {runs[0][3]})")
        lines.append(f"| {layout.name} | " + " | ".join(cells) + " |")
    if sequencer:
        lines += [
            "",
            f"The sequencer's INSERT into the log, {BATCH} rows a batch, {batches:,} batches,"
            " wall time, ms:",
            "",
            "| layout | p50 | p99 | max | batches over 10 x p50 |",
            "|---|---:|---:|---:|---:|",
        ]
        for name, took in sequencer.items():
            ranked = sorted(took)
            p50, p99 = ranked[len(ranked) // 2], ranked[int(len(ranked) * 0.99)]
            slow = sum(t > 10 * p50 for t in took)
            lines.append(f"| {name} | {_ms(p50)} | {_ms(p99)} | {_ms(ranked[-1])} | {slow} |")
    return "\n".join(lines) + "\n"


def _render_writes(writes: dict[str, float]) -> str:
    base = next(iter(writes.values()))
    lines = ["", f"Instructions per sequenced row (cachegrind, single-user backend, a log of"
             f" {WRITE_LOG:,} rows, relay.sequence_batch({BATCH}) {SMALL} and {LARGE} times):", "",
             "| indexes on relay.log | per row | over the primary key alone |",
             "|---|---:|---:|"]  # fmt: skip
    for name, count in writes.items():
        lines.append(f"| {name} | {count / 1000:,.1f} k | {(count - base) / 1000:+,.1f} k |")
    return "\n".join(lines) + "\n"


def _read_side(rate: float, *, hours: float, rounds: int, live: int, batches: int) -> str:
    """Builds the big log and measures replays (and the sequencer's batches): Markdown."""
    rows = int(hours * 3600 * rate)
    load = os.getloadavg()[0]
    folder = Path(tempfile.mkdtemp(prefix="pgrelay-replay-cost-"))
    try:
        folder.chmod(0o755)
        server = PgServer(folder / "pg", settings={"shared_buffers": "1GB"})
        with server.running():
            dsn = server.dsn()
            _build(dsn, rows, rate)
            with psycopg.connect(dsn, autocommit=True) as conn:
                _sequence(conn, rows + 1, live)
                conn.execute("ANALYZE relay.log")
                conn.execute("CREATE EXTENSION IF NOT EXISTS pageinspect")
                pending = conn.execute(
                    "SELECT n_pending_tuples, n_pending_pages FROM gin_metapage_info("
                    "get_raw_page('relay.log_audience', 0))"
                ).fetchone()
                sizes = conn.execute(
                    "SELECT relname, pg_relation_size(oid) / 1048576 FROM pg_class"
                    " WHERE relnamespace = 'relay'::regnamespace AND relname LIKE 'log%'"
                    " ORDER BY relname"
                ).fetchall()
                mine = conn.execute(
                    "SELECT count(*) FROM relay.log WHERE audience && %s OR old_audience && %s",
                    (list(KEYS), list(KEYS)),
                ).fetchone()
            head = rows + live
            _note("replays")
            replays = anyio.run(_replays, dsn, head, rate, rounds)
            sequencer = _sequencer(dsn, head + 1, batches) if batches else {}
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    assert pending is not None and mine is not None
    facts = [
        f"Log: {head:,} rows ({hours:g} h at {rate:g} events/s, then {live:,} sequenced"
        f" through the inbox), {USERS:,} users; {MIX}. {USER} is in the audience of {mine[0]:,}"
        f" of them. The GIN on audience held {pending[0]:,} pending rows ({pending[1]} pages)"
        f" when read. Sizes, MB: " + ", ".join(f"{name} {size}" for name, size in sizes) + ".",
        f"Load average (1 min): {load:.2f} at the start, {os.getloadavg()[0]:.2f} at the end.",
    ]
    return _render_reads(facts, replays, sequencer, batches)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.replay_cost", description=__doc__)
    parser.add_argument("--hours", type=float, default=24.0, help="hours of log (default 24)")
    parser.add_argument("--rate", type=float, default=100.0, help="events a second (100)")
    parser.add_argument("--rounds", type=int, default=3, help="replay rounds (3)")
    parser.add_argument("--no-read", action="store_true", help="skip replays and batch timings")
    parser.add_argument("--no-sequencer", action="store_true", help="skip the batch timings")
    parser.add_argument("--no-write", action="store_true", help="skip the cachegrind counts")
    parser.add_argument("--quick", action="store_true", help="a smoke run: a small log, 1 round")
    parser.add_argument("--out", type=Path, help="also write the Markdown here")
    parser.add_argument(
        "--region", type=Path, help="also write it into this file's replay-cost region"
    )
    args = parser.parse_args(argv)
    scale = QUICK if args.quick else {"hours": args.hours, "live": LIVE, "batches": BATCHES,
                                      "rounds": args.rounds}  # fmt: skip
    if args.no_sequencer:
        scale["batches"] = 0
    if not args.no_write and shutil.which("valgrind") is None:
        print("valgrind is not on the PATH (or pass --no-write)", file=sys.stderr)
        return 2
    parts = []
    if not args.no_read:
        parts.append(
            _read_side(args.rate, hours=float(scale["hours"]), rounds=int(scale["rounds"]),
                       live=int(scale["live"]), batches=int(scale["batches"]))
        )  # fmt: skip
        sys.stdout.write(parts[-1])
        sys.stdout.flush()
    if not args.no_write:
        parts.append(_render_writes(_write_costs(args.rate)))
        sys.stdout.write(parts[-1])
    if args.out is not None:
        args.out.write_text("".join(parts))
    if args.region is not None:
        changed = {
            name: value
            for name, value in vars(args).items()
            if name not in ("out", "region") and value != parser.get_default(name)
        }
        flags = [f"--{name.replace('_', '-')}" + ("" if value is True else f" {value:g}")
                 for name, value in changed.items()]  # fmt: skip
        body = f"`{' '.join(['python -m bench.replay_cost', *flags])}`:\n\n" + "".join(parts)
        replace_region(args.region, REPLAY_REGION.wrap(body), REPLAY_REGION.start,
                       REPLAY_REGION.end)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
