"""A chaos run, driven by the test process: relays, the load processes, faults, the end.

Besides PostgreSQL and the relays (``Replica``: ``tests.support.processes.RelayProcess`` on a fixed
port across restarts), a chaos run has the writer (tests.chaos.writer) and the swarm
(tests.chaos.swarm), each a process of its own started with ``python -m tests.chaos``. The test
process (``ChaosRun``) starts everything, injects faults and records when, and at the end stops
the writer, waits until the clients have every committed row, and hands both to the checker
(tests.chaos.checker). Both load processes stop by themselves at a deadline, or earlier when the
test creates their stop file, and write a JSON result file.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg

from tests.chaos.checker import Fault, check
from tests.chaos.results import relay_code_digest
from tests.chaos.swarm import ClientSpec, SwarmConfig
from tests.chaos.writer import WriterConfig
from tests.support.databases import create_database, drop_database, install_example
from tests.support.paths import REPO
from tests.support.processes import (
    RelayProcess,
    cpu_seconds,
    free_port,
    peak_rss_mib,
    raise_nofile,
)
from tests.support.waiting import wait_until

__all__ = ["ChaosRun", "Replica", "committed_rows", "start_cursor", "users"]


class Replica:
    """One relay replica on a fixed port, which it keeps across restarts."""

    def __init__(self, name: str, dsn: str, env: dict[str, str]) -> None:
        self.name = name
        self.port = free_port()
        self.env = {**env, "RELAY_PORT": str(self.port), "RELAY_REPLICA_ID": name,
                    "RELAY_LOG_LEVEL": "info"}  # fmt: skip
        self.dsn = dsn
        self.processes: list[RelayProcess] = []
        self.peak_rss = 0.0
        self.cpu = 0.0  # CPU seconds of the processes that ended

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/ws"

    @property
    def current(self) -> RelayProcess:
        return self.processes[-1]

    @property
    def alive(self) -> bool:
        return bool(self.processes) and self.current.running

    def start(self, timeout: float = 30.0) -> Replica:
        self.processes.append(RelayProcess(self.dsn, self.env))
        self.current.start(timeout)
        return self

    def sample_rss(self) -> None:
        if self.alive:
            self.peak_rss = max(self.peak_rss, peak_rss_mib(self.current.pid))

    def cpu_seconds(self) -> float:
        """CPU seconds of every process of this replica so far."""
        return self.cpu + (cpu_seconds(self.current.pid) if self.alive else 0.0)

    def _ending(self) -> None:
        self.sample_rss()
        self.cpu += cpu_seconds(self.current.pid)

    def kill(self) -> None:
        self._ending()
        self.current.kill()

    def stop(self, timeout: float = 15.0) -> None:
        if self.alive:
            self._ending()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.current.stop(timeout=timeout)

    def metric(self, name: str, labels: str = "") -> float:
        return float(self.current.metric(name, labels)) if self.alive else 0.0

    def count(self, event: str) -> int:
        """How many log lines of this event the current process wrote."""
        return sum(line.get("event") == event for line in self.current.lines)

    def log_times(self, event: str) -> list[float]:
        """The wall-clock times of the current process's log lines of this event."""
        return [
            datetime.fromisoformat(line["timestamp"]).timestamp()
            for line in list(self.current.lines)
            if line.get("event") == event and "timestamp" in line
        ]

    def wait_count(self, event: str, at_least: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.count(event) < at_least:
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name}: fewer than {at_least} {event!r} lines")
            time.sleep(0.02)


def start_cursor(dsn: str) -> str:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT replace(s.epoch::text, '-', ''), h.pos FROM relay.settings s, relay.head h"
        ).fetchone()
    assert row is not None
    return f"{row[0]}.{row[1]}"


def users(prefix: str, count: int) -> list[str]:
    return [f"{prefix}{i:04d}" for i in range(count)]


class ChaosRun:
    """One run: a fresh database, relays, the swarm, the writer, faults, then the check.

    Use as a context manager: every process it started is stopped on the way out.
    """

    def __init__(self, admin_dsn: str, workdir: Path, name: str) -> None:
        raise_nofile()
        self.admin_dsn = admin_dsn
        self.workdir = workdir / f"{name}-{uuid.uuid4().hex[:6]}"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.dsn = create_database(admin_dsn, "chaos_")
        install_example(self.dsn)
        self.since = start_cursor(self.dsn)
        self.replicas: list[Replica] = []
        self.faults: list[Fault] = []
        self.specs: list[ClientSpec] = []
        self.swarm: subprocess.Popen[bytes] | None = None
        self.writer: subprocess.Popen[bytes] | None = None
        self.writer_cfg: WriterConfig | None = None
        self.swarm_started = 0.0
        self.metrics: dict[str, float] = {}
        self.started = time.monotonic()
        self.wall_started = time.time()
        self.code_at_start = relay_code_digest()

    # -- processes -------------------------------------------------------------------------

    def add_replica(self, env: dict[str, str] | None = None) -> Replica:
        # Every client comes from 127.0.0.1: the per-address limits would throttle them together.
        env = {"RELAY_MAX_CONNECTIONS_PER_IP": "100000", "RELAY_CONNECT_RATE_PER_IP": "100000",
               "RELAY_MAX_HANDSHAKES": "100000", "RELAY_MAX_HANDSHAKES_PER_IP": "100000",
               **(env or {})}  # fmt: skip
        replica = Replica(f"r{len(self.replicas)}", self.dsn, env)
        self.replicas.append(replica.start())
        return replica

    def _spawn(self, role: str, config: WriterConfig | SwarmConfig) -> subprocess.Popen[bytes]:
        path = self.workdir / f"{role}.json"
        path.write_text(json.dumps(asdict(config)))
        out = (self.workdir / f"{role}.log").open("wb")
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        try:
            return subprocess.Popen(
                [sys.executable, "-m", "tests.chaos", role, str(path)],
                cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        finally:
            out.close()

    def start_swarm(self, specs: list[ClientSpec], max_seconds: float) -> None:
        self.specs = specs
        cfg = SwarmConfig(
            clients=specs,
            since=self.since,
            max_seconds=max_seconds,
            stop_file=str(self.workdir / "swarm.stop"),
            status_file=str(self.workdir / "swarm.status"),
            result_file=str(self.workdir / "swarm.result"),
        )
        self.swarm_started = time.time()
        self.swarm = self._spawn("swarm", cfg)

    def start_writer(self, cfg: WriterConfig) -> None:
        cfg.dsn = self.dsn
        cfg.stop_file = str(self.workdir / "writer.stop")
        cfg.result_file = str(self.workdir / "writer.result")
        self.writer_cfg = cfg
        self.writer = self._spawn("writer", cfg)

    def status(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads((self.workdir / "swarm.status").read_text())
        except (OSError, ValueError):
            return {
                "live": 0,
                "ever": 0,
                "unique": 0,
                "sessions": 0,
                "t": 0.0,
                "oldest_subscribed": 0.0,
            }
        return data

    @property
    def normal_count(self) -> int:
        return sum(spec.kind == "normal" for spec in self.specs)

    def wait_live(self, timeout: float, since: float | None = None) -> float:
        """Waits until every normal client is subscribed (each again since `since`, a wall time,
        when given); returns the seconds it took."""
        started = time.monotonic()

        def all_live() -> bool:
            assert self.swarm is not None and self.swarm.poll() is None, "the swarm exited"
            status = self.status()
            if since is not None and status.get("oldest_subscribed", 0.0) <= since:
                return False
            return bool(status["live"] == self.normal_count)

        wait_until(all_live, timeout, f"{self.normal_count} clients subscribed")
        return time.monotonic() - started

    def wait_flowing(self, timeout: float, events: int = 1) -> None:
        """Waits until clients have received `events` more events than now."""
        before = self.status()["unique"]
        wait_until(lambda: self.status()["unique"] >= before + events, timeout, "events flowing")

    @contextlib.contextmanager
    def fault(self, name: str, **extra: Any) -> Iterator[Fault]:
        fault = Fault(name, time.time(), extra=extra)
        self.faults.append(fault)
        yield fault
        fault.t1 = time.time()

    def sample_metrics(self, names: Sequence[tuple[str, str]]) -> None:
        """Sums these metrics over the live replicas (e.g. drops of slow clients) into figures."""
        for name, labels in names:
            key = f"{name}{{{labels}}}" if labels else name
            self.metrics[key] = sum(r.metric(name, labels) for r in self.replicas)

    # -- the end ---------------------------------------------------------------------------

    def finish(self, drain_timeout: float = 60.0) -> dict[str, Any]:
        """Stops the writer, waits until the clients have everything, then checks."""
        assert self.writer is not None and self.swarm is not None
        load_ended = time.time()
        (self.workdir / "writer.stop").touch()
        self.writer.wait(60)
        writer = json.loads((self.workdir / "writer.result").read_text())
        committed = committed_rows(self.dsn)
        rows_of: dict[str, int] = {}
        for _, user in committed:
            rows_of[user] = rows_of.get(user, 0) + 1
        expected = sum(rows_of.get(s.user, 0) for s in self.specs if s.kind == "normal")
        drained_in: float | None = None
        drain_started = time.monotonic()
        with contextlib.suppress(AssertionError):
            wait_until(lambda: self.status()["unique"] >= expected, drain_timeout, "drain")
            drained_in = time.monotonic() - drain_started
        for replica in self.replicas:
            replica.sample_rss()
        cpu_by_replica = {r.name: r.cpu_seconds() for r in self.replicas}
        relay_cpu = sum(cpu_by_replica.values())
        wall = max(1e-9, time.time() - self.wall_started)
        (self.workdir / "swarm.stop").touch()
        self.swarm.wait(60)
        swarm = json.loads((self.workdir / "swarm.result").read_text())
        for replica in self.replicas:
            replica.stop()
        figures = check(swarm, committed, self.faults, load_ended)
        cfg = self.writer_cfg
        assert cfg is not None
        active = max(1e-9, writer["ended"] - writer["started"])
        figures.update(
            rate_target=cfg.rate,
            rate_achieved=round(len(committed) / active, 1),
            writers=cfg.writers,
            writer_errors=writer["errors"],
            drained_in_s=None if drained_in is None else round(drained_in, 2),
            peak_rss_mib=round(max((r.peak_rss for r in self.replicas), default=0.0), 1),
            relay_cpu_percent=round(100 * relay_cpu / wall),
            relay_cpu_percent_by_replica={
                k: round(100 * v / wall) for k, v in cpu_by_replica.items()
            },
            replicas=len(self.replicas),
            relay_processes=sum(len(r.processes) for r in self.replicas),
            metrics=self.metrics,
            run_seconds=round(time.monotonic() - self.started, 1),
            relay_log=self.relay_log_summary(),
            relay_raw_lines=[
                line["text"][:300]
                for replica in self.replicas
                for process in replica.processes
                for line in list(process.lines)
                if line.get("event") == "raw"
            ][:20],
            relay_code=self.code_at_start,
            relay_code_changed_during_run=relay_code_digest() != self.code_at_start,
        )
        return figures

    def relay_log_summary(self) -> dict[str, int]:
        """The relays' own log lines, counted by event (and replay failures by error)."""
        counts: dict[str, int] = {}
        for replica in self.replicas:
            for process in replica.processes:
                for line in list(process.lines):
                    key = str(line.get("event"))
                    if key == "replay_failed":
                        key += f" ({line.get('error')})"
                    counts[key] = counts.get(key, 0) + 1
        return dict(sorted(counts.items()))

    def close(self) -> None:
        for process in (self.swarm, self.writer):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait(10)
        for replica in self.replicas:
            if replica.alive:
                replica.kill()
        with contextlib.suppress(psycopg.Error):
            drop_database(self.admin_dsn, self.dsn)

    def __enter__(self) -> ChaosRun:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def committed_rows(dsn: str) -> list[tuple[str, str]]:
    """(marker, user) of every row the writer committed."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute("SELECT project_id, user_id FROM generations").fetchall()
    return [(str(marker), str(user)) for marker, user in rows]
