"""The chaos writer process (``python -m tests.chaos writer CONFIG``).

N connections insert rows into ``generations`` at a target rate, one to three rows per
transaction. Each row's ``project_id`` is a unique marker, its ``user_id`` one of a fixed set of
users, its ``url`` the statement's ``clock_timestamp()``; a share of the rows may go to slow users,
padded. It survives a database outage by reconnecting, and stops at its deadline or when its stop
file appears, writing its JSON result file (rows, errors, rows per second).
"""

from __future__ import annotations

import contextlib
import os
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import psycopg

from tests.chaos.results import write_json

__all__ = ["INSERT", "WriterConfig", "run_writer"]

INSERT = (
    "INSERT INTO generations (user_id, project_id, shot_id, url)"
    " SELECT u, p, s, clock_timestamp()::text"
    " FROM unnest(%s::text[], %s::text[], %s::text[]) AS t(u, p, s)"
)


@dataclass
class WriterConfig:
    dsn: str
    rate: float  # rows per second, all writers together
    writers: int
    users: list[str]  # rows go to these users (clients' users and users nobody connects as)
    slow_users: list[str] = field(default_factory=list)
    slow_share: float = 0.0  # the fraction of rows that go to slow_users
    slow_padding: int = 0  # characters of padding (shot_id) in the slow users' rows
    max_rows_per_txn: int = 3
    max_seconds: float = 600.0
    stop_file: str = ""
    result_file: str = ""
    seed: int = 1


def run_writer(cfg: WriterConfig) -> None:
    stop = threading.Event()
    deadline = time.monotonic() + cfg.max_seconds

    def watch() -> None:
        while not stop.is_set():
            if os.path.exists(cfg.stop_file) or time.monotonic() > deadline:
                stop.set()
            time.sleep(0.05)

    stats = [{"txns": 0, "rows": 0, "errors": 0} for _ in range(cfg.writers)]
    per_second: dict[int, int] = {}
    lock = threading.Lock()
    padding = "x" * cfg.slow_padding

    def work(index: int) -> None:
        rng = random.Random(cfg.seed * 1000 + index)
        per_writer = cfg.rate / cfg.writers
        next_at = time.monotonic()
        seq = 0
        conn: psycopg.Connection[Any] | None = None
        mine = stats[index]
        while not stop.is_set():
            now = time.monotonic()
            if now < next_at:
                stop.wait(min(next_at - now, 0.05))
                continue
            if now - next_at > 1.0:
                next_at = now  # after an outage: carry on at the rate, no burst to catch up
            count = rng.randint(1, cfg.max_rows_per_txn)
            users: list[str] = []
            markers: list[str] = []
            pads: list[str | None] = []
            for _ in range(count):
                seq += 1
                if cfg.slow_users and rng.random() < cfg.slow_share:
                    users.append(rng.choice(cfg.slow_users))
                    pads.append(padding)
                else:
                    users.append(rng.choice(cfg.users))
                    pads.append(None)
                markers.append(f"w{index}-{seq}")
            next_at += count / per_writer
            try:
                if conn is None:
                    conn = psycopg.connect(
                        cfg.dsn,
                        autocommit=True,
                        connect_timeout=2,
                        application_name="chaos-writer",
                        options="-c statement_timeout=5000",
                    )
                conn.execute(INSERT, (users, markers, pads))
            except psycopg.Error:
                mine["errors"] += 1
                if conn is not None:
                    with contextlib.suppress(psycopg.Error):
                        conn.close()
                conn = None
                stop.wait(0.1)
                continue
            mine["txns"] += 1
            mine["rows"] += count
            second = int(time.time())
            with lock:
                per_second[second] = per_second.get(second, 0) + count
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.close()

    started = time.time()
    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(cfg.writers)]
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ended = time.time()
    write_json(
        cfg.result_file,
        {
            "started": started,
            "ended": ended,
            "writers": stats,
            "rows": sum(s["rows"] for s in stats),
            "errors": sum(s["errors"] for s in stats),
            "per_second": sorted(per_second.items()),
        },
    )
