"""What the relay's heartbeats cost the database, per replica per hour.

Each replica writes a heartbeat every ``RELAY_HEARTBEAT_INTERVAL`` (5 s by default) through the
same path as row events: ``relay.heartbeat`` into the inbox, the sequencer's batch into the log,
and every replica's log reader reads it. On an idle log each heartbeat is a batch of its own, the
case measured here: a private server (relay.demo.pgserver.PgServer, the default settings) runs
``HEARTBEATS`` rounds of the relay's own calls (``write_heartbeat``, ``sequence_log``, one
``read_log_after``: another replica's read), and the WAL written is read from
``pg_current_wal_lsn()`` before and after.
Not counted: the catalog and head reads of each maintenance round, which run every 5 s with
heartbeats off too.

    python -m bench.heartbeat_cost [--replicas N] [--interval S]

Writes Markdown to stdout.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import anyio
import psycopg

from relay.demo.pgserver import PgServer
from relay.ops.datafiles import install_script
from relay.pg.queries import READ_BATCH, read_log_after, sequence_log, write_heartbeat

__all__ = ["main", "measure"]

HEARTBEATS = 1000


async def _wal_bytes(conn: psycopg.AsyncConnection[tuple[object, ...]]) -> tuple[int, int]:
    """WAL bytes written and log row bytes (with their index entries) per heartbeat, alone."""
    lsn = "SELECT pg_current_wal_lsn()::text"
    size = "SELECT pg_total_relation_size('relay.log') + pg_total_relation_size('relay.inbox')"
    before = (await (await conn.execute(lsn)).fetchone() or ("",))[0]
    empty = await (await conn.execute(size)).fetchone()
    for n in range(HEARTBEATS):
        await write_heartbeat(conn, "replica-1")
        assert 1 == len(await sequence_log(conn, 1000))
        assert 1 == len(await read_log_after(conn, n, READ_BATCH))
    after = (await (await conn.execute(lsn)).fetchone() or ("",))[0]
    wal = await (await conn.execute("SELECT %s::pg_lsn - %s::pg_lsn", (after, before))).fetchone()
    stored = await (await conn.execute(size)).fetchone()
    assert wal is not None and stored is not None and empty is not None
    return int(str(wal[0])) // HEARTBEATS, int(str(stored[0])) - int(str(empty[0]))


def measure() -> tuple[int, int]:
    """(WAL bytes per heartbeat, bytes the log and inbox grew by over HEARTBEATS of them)."""
    folder = Path(tempfile.mkdtemp(prefix="pgrelay-heartbeat-cost-"))
    try:
        folder.chmod(0o755)
        server = PgServer(folder / "pg")
        with server.running():
            with psycopg.connect(server.dsn(), autocommit=True) as conn:
                conn.execute(install_script())

            async def run() -> tuple[int, int]:
                async with await psycopg.AsyncConnection.connect(
                    server.dsn(), autocommit=True
                ) as conn:
                    return await _wal_bytes(conn)

            return anyio.run(run)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.heartbeat_cost", description=__doc__)
    parser.add_argument("--replicas", type=int, default=3, help="replicas (3)")
    parser.add_argument("--interval", type=float, default=5.0, help="heartbeat interval, s (5)")
    args = parser.parse_args(argv)
    wal, stored = measure()
    per_hour = 3600 / args.interval  # heartbeats one replica writes an hour
    r = args.replicas
    rows = [
        ("log rows", f"{per_hour:,.0f}", f"{per_hour * r:,.0f}"),
        ("WAL", f"{wal * per_hour / 1e6:,.2f} MB ({wal:,} bytes each)",
         f"{wal * per_hour * r / 1e6:,.2f} MB"),
        ("log and inbox growth over 24 h (the retention)",
         f"{stored / HEARTBEATS * per_hour * 24 / 1e6:,.1f} MB",
         f"{stored / HEARTBEATS * per_hour * 24 * r / 1e6:,.1f} MB"),
        ("heartbeat writes (relay.heartbeat)", f"{per_hour:,.0f}", f"{per_hour * r:,.0f}"),
        ("sequencer transactions (idle: one per heartbeat)", f"{per_hour:,.0f}",
         f"{per_hour * r:,.0f}"),
        ("log reads (every replica reads every heartbeat)", f"{per_hour * r:,.0f}",
         f"{per_hour * r * r:,.0f}"),
    ]  # fmt: skip
    lines = [
        f"Heartbeats every {args.interval:g} s on an idle log, {r} replicas"
        f" (WAL measured over {HEARTBEATS:,} heartbeats, each sequenced and read alone):",
        "",
        "| per hour | one replica's heartbeats | all replicas |",
        "|---|---:|---:|",
        *(f"| {name} | {one} | {every} |" for name, one, every in rows),
    ]
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
