"""The load generator: writer processes committing row changes at a target rate.

Each writer is its own process with one autocommit connection. It inserts ``generations`` rows
(the example schema's table) on a fixed schedule, open loop: event ``n`` is due at
``start + n / rate``; a writer that falls behind catches up without sleeping and reports how far
behind it fell. Every row is stamped by the writing statement itself, ``url =
extract(epoch from clock_timestamp())::text``, and carries a unique sequence number in
``shot_id``; the clients read both from the event and measure latency against the same machine
clock. Users take turns: event ``seq`` belongs to user ``users[seq % len(users)]``.

``--per-commit K`` writes K rows (K events) per transaction, one statement; ``--mode update``
updates existing rows instead (the limits run); ``--rate 0`` writes as fast as it can.

    python -m bench.loadgen --dsn DSN --rate 1000 --seconds 10 --users 1000 [--writers 4]

Prints one JSON object on stdout: events committed, transactions, seconds, how far behind the
schedule the writers fell (``behind_max``) and whether they kept the rate (``kept_rate``).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import sys
import time
from multiprocessing.queues import Queue
from typing import Any

import psycopg

__all__ = ["INSERT_MANY", "INSERT_ONE", "main", "writers_for"]

INSERT_ONE = (
    "INSERT INTO public.generations (user_id, project_id, shot_id, status, url)"
    " VALUES (%s, 'bench', %s, 'queued', extract(epoch FROM clock_timestamp())::text)"
)
INSERT_MANY = (
    "INSERT INTO public.generations (user_id, project_id, shot_id, status, url)"
    " SELECT u, 'bench', s, 'queued', extract(epoch FROM clock_timestamp())::text"
    " FROM unnest(%s::text[], %s::text[]) AS t(u, s)"
)
UPDATE_ONE = (
    "UPDATE public.generations SET url = extract(epoch FROM clock_timestamp())::text,"
    " shot_id = %s WHERE id = %s"
)
START_DELAY = 0.5  # writers connect, then all start on the same clock
KEPT_RATE = 0.97  # a run keeps its rate when it commits this share of the schedule
PER_WRITER = 250  # commits per second one writer is asked for, at most (durable commits)
MAX_WRITERS = 8


def writers_for(rate: float, per_commit: int = 1) -> int:
    """Enough writers for the rate on this kind of machine (a durable commit can stall for a
    while on a shared disk; the others keep the schedule), few enough not to crowd it."""
    if rate <= 0:
        return 4
    return max(2, min(MAX_WRITERS, math.ceil(rate / per_commit / PER_WRITER)))


def _writer(
    index: int, args: argparse.Namespace, start: float, results: Queue[dict[str, Any]]
) -> None:
    writers, per_commit = args.writers, args.per_commit
    users = [
        f"{args.user_prefix}{u}" for u in range(args.user_offset, args.user_offset + args.users)
    ]
    rate = args.rate / writers if args.rate > 0 else 0.0
    committed = transactions = 0
    behind_max = 0.0
    with psycopg.connect(args.dsn, autocommit=True, application_name="bench-loadgen") as conn:
        cur = conn.cursor()
        cur.execute("SELECT 1")
        delay = start - time.time()
        if delay > 0:
            time.sleep(delay)
        end = start + args.seconds
        n = 0  # events this writer has written
        while True:
            now = time.time()
            if now >= end:
                break
            if rate:
                due = start + n / rate
                if due > now:
                    if due >= end:
                        break
                    time.sleep(due - now)
                else:
                    behind_max = max(behind_max, now - due)
            seqs = [args.seq_start + (n + i) * writers + index for i in range(per_commit)]
            n += per_commit
            if args.mode == "update":
                cur.execute(UPDATE_ONE, (str(seqs[0]), seqs[0] % args.rows + 1), prepare=True)
            elif per_commit == 1:
                cur.execute(INSERT_ONE, (users[seqs[0] % len(users)], str(seqs[0])), prepare=True)
            else:
                cur.execute(
                    INSERT_MANY,
                    ([users[s % len(users)] for s in seqs], [str(s) for s in seqs]),
                    prepare=True,
                )
            committed += per_commit
            transactions += 1
    results.put({"committed": committed, "transactions": transactions, "behind_max": behind_max})


def run(args: argparse.Namespace) -> dict[str, Any]:
    ctx = mp.get_context("fork")
    results: Queue[dict[str, Any]] = ctx.Queue()
    start = time.time() + START_DELAY
    procs = [
        ctx.Process(target=_writer, args=(i, args, start, results), daemon=True)
        for i in range(args.writers)
    ]
    for proc in procs:
        proc.start()
    parts = [results.get(timeout=args.seconds + 60) for _ in procs]
    for proc in procs:
        proc.join(10)
    elapsed = max(args.seconds, time.time() - start) if args.rate <= 0 else args.seconds
    committed = sum(p["committed"] for p in parts)
    out = {
        "committed": committed,
        "transactions": sum(p["transactions"] for p in parts),
        "seconds": elapsed,
        "rate": committed / elapsed,
        "target": args.rate,
        "writers": args.writers,
        "per_commit": args.per_commit,
        "behind_max": max(p["behind_max"] for p in parts),
        "seq_start": args.seq_start,
    }
    out["kept_rate"] = args.rate <= 0 or committed >= KEPT_RATE * args.rate * args.seconds
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--rate", type=float, required=True, help="events/s in all; 0: flat out")
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--users", type=int, default=1)
    parser.add_argument("--user-prefix", default="")
    parser.add_argument("--user-offset", type=int, default=0)
    parser.add_argument("--writers", type=int, default=0, help="default: from the rate")
    parser.add_argument("--per-commit", type=int, default=1)
    parser.add_argument("--seq-start", type=int, default=0)
    parser.add_argument("--mode", choices=("insert", "update"), default="insert")
    parser.add_argument("--rows", type=int, default=10_000, help="rows to update (update mode)")
    args = parser.parse_args(argv)
    if args.writers <= 0:
        args.writers = writers_for(args.rate, args.per_commit)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(args)
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    os._exit(0)  # the writers' queue feeder threads are done: exit without waiting on them


if __name__ == "__main__":
    sys.exit(main())
