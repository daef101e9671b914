"""Hostile input: seeded, fuzzed protocol frames against a live relay.

Every frame is built with the answer docs/protocol.md promises for it (sections 4, 8 and 9): an
``error`` with its code (and the ``id`` when the id itself was valid), a ``pong``, ``subscribed``
or ``unsubscribed``, or a close code. Categories: invalid JSON, JSON that is not an object, wrong
types, deep nesting, huge numbers, invalid UTF-8, binary frames, oversized frames, unknown types,
frames before authentication, 10,000 subscribe messages, and filter values (and ids, tables,
schemas, columns, cursors) made of SQL fragments. Each hostile string carries a unique marker;
PostgreSQL runs with ``log_statement = 'all'`` and no marker may appear in its log, as SQL text or
as a parameter. Meanwhile a well-behaved client keeps receiving its events, exactly once and in
order. Tokens and refused handshakes are covered in tests/net/test_ws.py, test_handshake.py
and test_longpoll.py.

Short run (make test): 2,000 fuzzed frames and 1,000 subscribes; full run (make chaos): 12,000
fuzzed frames and 10,000 subscribes. ``RELAY_FUZZ_SEED`` replays a run.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from relay.demo.pgserver import PgServer
from tests.chaos.cluster import ChaosRun
from tests.chaos.fuzz_cases import MARKER, Script, build_scripts, to_json
from tests.chaos.fuzz_client import Outcome, run_script, subscribe_storm
from tests.chaos.results import machine_info, record
from tests.support.paths import private_folder
from tests.support.tokens import token

pytestmark = pytest.mark.pg


@pytest.fixture(scope="module")
def workspace() -> Iterator[Path]:
    with private_folder("pgrelay-chaos-") as folder:
        yield folder


@pytest.fixture(scope="module")
def logged_pg(workspace: Path) -> Iterator[PgServer]:
    """A private server that logs every statement with its parameters."""
    server = PgServer(workspace / "pg", settings={"log_statement": "all"})
    with server.running():
        yield server


class Steady:
    """A well-behaved client of user "steady" and a writer of its rows, during the fuzzing."""

    def __init__(self, url: str, dsn: str) -> None:
        self.url = url
        self.dsn = dsn
        self.received: list[tuple[float, int, str]] = []
        self.written: list[str] = []
        self.stop = threading.Event()

    def write(self, max_rows: int) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            for n in range(max_rows):
                if self.stop.wait(0.025):
                    return
                marker = f"steady-{n}"
                conn.execute("INSERT INTO generations (user_id, project_id) VALUES ('steady', %s)",
                             (marker,))  # fmt: skip
                self.written.append(marker)

    async def listen(self, done: asyncio.Event) -> None:
        headers = {"Authorization": f"Bearer {token('steady')}"}
        async with connect(
            self.url, additional_headers=headers, compression=None, proxy=None
        ) as ws:
            await ws.send(to_json({"type": "subscribe", "id": "s", "table": "generations"}))
            while not done.is_set():
                try:
                    raw = await asyncio.wait_for(ws.recv(), 0.2)
                except TimeoutError:
                    continue
                frame = json.loads(raw)
                if frame["type"] == "event":
                    self.received.append((time.time(), int(frame["cursor"].rsplit(".", 1)[1]),
                                          frame["row"]["project_id"]))  # fmt: skip


async def fuzz(
    url: str, scripts: list[Script], storm: int, steady: Steady
) -> tuple[Outcome, float, float]:
    outcome = Outcome()
    done = asyncio.Event()
    listener = asyncio.create_task(steady.listen(done))
    await asyncio.sleep(0.5)  # subscribed before the writer starts
    writer = threading.Thread(target=steady.write, args=(40 * 600,), daemon=True)
    writer.start()
    await asyncio.sleep(0.5)
    started = time.time()
    limit = asyncio.Semaphore(6)

    async def one(script: Script) -> None:
        async with limit:
            try:
                await run_script(url, script, outcome)
            except (ConnectionClosed, OSError, TimeoutError) as exc:
                outcome.mismatches.append(f"connection failed: {exc!r}")

    await asyncio.gather(
        *(one(script) for script in scripts),
        subscribe_storm(url, storm, outcome, unsubscribe_each=True),
        subscribe_storm(url, storm, outcome, unsubscribe_each=False),
    )
    ended = time.time()
    await asyncio.sleep(0.5)
    steady.stop.set()
    writer.join(10)
    deadline = time.monotonic() + 30
    while len(steady.received) < len(steady.written) and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.1)
    done.set()
    await listener
    return outcome, started, ended


@pytest.mark.parametrize(
    "frames, storm",
    [pytest.param(2_000, 1_000, id="short"),
     pytest.param(12_000, 10_000, id="full", marks=[pytest.mark.slow, pytest.mark.timeout(900)])],
)  # fmt: skip
def test_fuzzed_frames_get_documented_answers(
    logged_pg: PgServer, workspace: Path, frames: int, storm: int
) -> None:
    """Fuzzed frames each get their documented error or close code; a steady client keeps its events; no marker reaches Postgres."""
    started_at = time.monotonic()
    seed = int(os.environ.get("RELAY_FUZZ_SEED", "20250502"))
    scripts = build_scripts(random.Random(seed), frames)
    size = "short" if frames < 10_000 else "full"
    with ChaosRun(logged_pg.dsn(), workspace, "fuzz") as run:
        # The storms send frames faster than a client may (RELAY_INBOUND_*_RATE, tested in
        # tests/net/test_hostile_limits.py): here every frame must get its own answer.
        relay = run.add_replica(
            {"RELAY_INBOUND_FRAME_RATE": "1000000", "RELAY_INBOUND_BYTE_RATE": "1000000000"}
        )
        log_offset = logged_pg.logfile.stat().st_size
        steady = Steady(relay.url, run.dsn)
        outcome, started, ended = asyncio.run(fuzz(relay.url, scripts, storm, steady))
        # The process still serves: health, a fresh connection.
        assert (200, "ok\n") == relay.current.http("/healthz")
        relay.sample_rss()
        alive = relay.alive
        relay.stop()
        with logged_pg.logfile.open("rb") as log:
            log.seek(log_offset)
            pg_log = log.read().decode("utf-8", "replace")
    leaked_markers = sorted(set(MARKER.findall(pg_log)))
    received = [marker for _, _, marker in steady.received]
    positions = [pos for _, pos, _ in steady.received]
    quarters = [0, 0, 0, 0]
    for at, _, _ in steady.received:
        if started <= at < ended:
            quarters[min(3, int(4 * (at - started) / max(ended - started, 1e-9)))] += 1
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(steady.received)]
    figures = {
        "title": "Fuzzed protocol frames",
        "size": size,
        "seed": seed,
        "frames": outcome.frames,
        "connections": len(scripts) + 2,
        "answers_matched": outcome.matched,
        "mismatches": len(outcome.mismatches),
        "mismatch_examples": outcome.mismatches[:10],
        "categories": dict(sorted(outcome.categories.items())),
        "closes": dict(sorted(outcome.closes.items())),
        "markers_in_postgres_log": len(leaked_markers),
        "statements_logged": pg_log.count("statement: ") + pg_log.count("execute "),
        "steady_written": len(steady.written),
        "steady_received": len(received),
        "steady_lost": len(set(steady.written) - set(received)),
        "steady_duplicated": len(received) - len(set(received)),
        "steady_out_of_order": sum(b <= a for a, b in itertools.pairwise(positions)),
        "steady_events_per_quarter": quarters,
        "steady_max_gap_s": round(max(gaps, default=0.0), 3),
        "fuzz_seconds": round(ended - started, 1),
        "peak_rss_mib": round(relay.peak_rss, 1),
        "test_seconds": round(time.monotonic() - started_at, 1),
    }
    violations = [f"{key}={figures[key]}" for key in ("mismatches", "markers_in_postgres_log",
                  "steady_lost", "steady_duplicated", "steady_out_of_order") if figures[key]]  # fmt: skip
    if not alive:
        violations.append("the relay process died")
    if 0 in quarters:
        violations.append(
            f"the steady client went without events for a quarter of the run: {quarters}"
        )
    if "steady-1" not in pg_log:
        violations.append(
            "the Postgres log does not show statement parameters: the check is vacuous"
        )
    figures["bar_met"] = not violations
    figures["violations"] = violations
    record(f"8_fuzz/{size}", figures, machine_info(logged_pg.dsn()))
    assert frames <= outcome.frames
    assert [] == violations, outcome.mismatches[:10]
