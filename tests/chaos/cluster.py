"""Chaos harness: load in separate processes, faults injected by the test, an exact checker.

Besides PostgreSQL and the relays (``tests.helpers.RelayProcess``), a chaos run has:

* the test process, which starts everything, injects faults and records when, and at the end
  checks what every client received against what the database committed;
* the writer (``python -m tests.chaos.harness writer CONFIG``): N connections inserting rows into
  ``generations`` at a target rate, one to three rows per transaction. Each row's ``project_id``
  is a unique marker, its ``user_id`` one of a fixed set of users, its ``url`` the statement's
  ``clock_timestamp()``; it survives a database outage by reconnecting;
* the swarm (``python -m tests.chaos.harness swarm CONFIG``): one asyncio websocket client per
  user behaving as the real client does: it subscribes to ``generations`` with ``since``, keeps
  its last cursor, and on any disconnect reconnects with capped, jittered backoff and resumes.
  Slow clients subscribe and never read.

Both load processes stop by themselves at a deadline, or earlier when the test creates their stop
file, and write a JSON result file. The checker's truth is the database: the rows of
``generations`` at the end are exactly what was committed (a commit that failed with an unknown
outcome does not matter: the row is there or it is not).

Every client's first subscription resumes from one cursor taken before the writer starts, so every
row committed afterwards must reach the client of its user, whenever and wherever it connects:
lost, duplicated, out of order and leaked (a row of another user) are exact counts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import random
import resource
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

REPO = Path(__file__).resolve().parents[2]
RESULTS_FILE = Path(__file__).resolve().parent / "results" / "last-run.json"
MIB = 1024 * 1024
# The memory bound every scenario is held to: the relay's container limit in deploy/k8s.
RSS_LIMIT_MIB = 512

INSERT = (
    "INSERT INTO generations (user_id, project_id, shot_id, url)"
    " SELECT u, p, s, clock_timestamp()::text"
    " FROM unnest(%s::text[], %s::text[], %s::text[]) AS t(u, p, s)"
)


def raise_nofile() -> None:
    """Lifts the soft open-files limit to the hard one (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def position(cursor: str) -> int:
    return int(cursor.rsplit(".", 1)[1])


def _write_json(path: str | Path, data: object) -> None:
    """Atomically: readers never see half a file."""
    tmp = Path(f"{path}.tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)


# -- the writer process ----------------------------------------------------------------------


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
    _write_json(
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


# -- the swarm process -----------------------------------------------------------------------


@dataclass
class ClientSpec:
    user: str
    urls: list[str]
    kind: str = "normal"  # "slow": subscribes, then never reads
    policy: str = "sticky"  # "roam": after a disconnect, try the next URL of the list
    group: str = ""  # latencies are also reported per group


@dataclass
class SwarmConfig:
    clients: list[ClientSpec]
    since: str  # every normal client's first subscription resumes from here
    max_seconds: float = 600.0
    stop_file: str = ""
    status_file: str = ""
    result_file: str = ""
    backoff_initial: float = 0.5  # the browser client's default first delay
    backoff_cap: float = 5.0
    slow_rcvbuf: int = 4096
    slow_ping_every: float = 5.0
    seed: int = 1


class _ClientState:
    def __init__(self, spec: ClientSpec, since: str) -> None:
        self.spec = spec
        self.cursor = since
        self.events: list[list[Any]] = []  # [pos, marker, row user, received, committed]
        self.seen: set[str] = set()
        self.sessions: list[dict[str, Any]] = []
        self.resets: list[list[Any]] = []  # [received, reason, pos]
        self.errors: list[dict[str, Any]] = []
        self.live = False

    def result(self) -> dict[str, Any]:
        return {
            "user": self.spec.user,
            "kind": self.spec.kind,
            "group": self.spec.group,
            "events": self.events,
            "sessions": self.sessions,
            "resets": self.resets,
            "errors": self.errors,
        }


def _session(url: str) -> dict[str, Any]:
    return {"url": url, "start": time.time(), "open": None, "subscribed": None, "end": None,
            "code": None, "reason": None, "error": None}  # fmt: skip


def _handshake_error(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    return f"http {status}" if status is not None else type(exc).__name__


async def _run_normal(
    client: _ClientState, cfg: SwarmConfig, stopping: asyncio.Event, rng: random.Random
) -> None:
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed, InvalidHandshake

    from relay.backoff import Backoff
    from tests.helpers import token

    spec = client.spec
    backoff = Backoff(
        initial=cfg.backoff_initial, cap=cfg.backoff_cap, reset_after=cfg.backoff_cap, rng=rng
    )
    headers = {"Authorization": f"Bearer {token(spec.user)}"}
    index = 0
    while not stopping.is_set():
        url = spec.urls[index % len(spec.urls)]
        session = _session(url)
        client.sessions.append(session)
        try:
            async with connect(
                url, additional_headers=headers, open_timeout=10, compression=None, proxy=None,
                close_timeout=2, max_size=None,
            ) as ws:  # fmt: skip
                session["open"] = time.time()
                await ws.send(
                    json.dumps(
                        {
                            "type": "subscribe",
                            "id": "g",
                            "table": "generations",
                            "since": client.cursor,
                        }
                    )
                )
                try:
                    async for raw in ws:
                        now = time.time()
                        frame = json.loads(raw)
                        kind = frame.get("type")
                        if kind == "event":
                            row = frame["row"]
                            ts = datetime.fromisoformat(frame["ts"]).timestamp()
                            marker = row["project_id"]
                            client.events.append(
                                [position(frame["cursor"]), marker, row["user_id"], now, ts]
                            )
                            client.seen.add(marker)
                            client.cursor = frame["cursor"]
                        elif kind == "subscribed":
                            session["subscribed"] = now
                            client.cursor = frame["cursor"]
                            client.live = True
                            backoff.succeeded(time.monotonic())
                        elif kind == "reset":
                            client.resets.append([now, frame["reason"], position(frame["cursor"])])
                            client.cursor = frame["cursor"]
                        elif kind == "error":
                            client.errors.append(frame)
                except ConnectionClosed:
                    pass
                session["code"] = ws.close_code
                session["reason"] = ws.close_reason
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            session["error"] = _handshake_error(exc)
        finally:
            session["end"] = time.time()
            client.live = False
        if stopping.is_set():
            break
        if spec.policy == "roam":
            index += 1
        backoff.failed(time.monotonic())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), backoff.next_delay())


async def _run_slow(client: _ClientState, cfg: SwarmConfig, stopping: asyncio.Event) -> None:
    """Connects, subscribes and never reads a frame, as a stuck tab would; its timer still sends
    a ping every few seconds, which is how it notices that the relay cut it off (the write
    fails), and then it comes back a second later."""
    from urllib.parse import urlsplit

    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidHandshake

    from tests.helpers import token

    spec = client.spec
    headers = {"Authorization": f"Bearer {token(spec.user)}"}
    loop = asyncio.get_running_loop()
    index = 0
    while not stopping.is_set():
        url = spec.urls[index % len(spec.urls)]
        parts = urlsplit(url)
        session = _session(url)
        client.sessions.append(session)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            # A small receive window: the relay's sends stall after a few frames.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, cfg.slow_rcvbuf)
            sock.setblocking(False)
            await asyncio.wait_for(loop.sock_connect(sock, (parts.hostname, parts.port)), 10)
            async with connect(
                url, sock=sock, additional_headers=headers, open_timeout=10, compression=None,
                proxy=None, max_queue=1, ping_interval=None, close_timeout=2,
            ) as ws:  # fmt: skip
                session["open"] = time.time()
                await ws.send(json.dumps({"type": "subscribe", "id": "g", "table": "generations"}))
                while True:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(ws.wait_closed(), cfg.slow_ping_every)
                        break
                    await ws.send('{"type":"ping"}')
                session["code"] = ws.close_code
                session["reason"] = ws.close_reason
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            session["error"] = _handshake_error(exc)
        finally:
            session["end"] = time.time()
            sock.close()
        if spec.policy == "roam":
            index += 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), 1.0)


def _status(clients: Sequence[_ClientState]) -> dict[str, Any]:
    normal = [c for c in clients if c.spec.kind == "normal"]
    return {
        "t": time.time(),
        "live": sum(c.live for c in normal),
        "ever": sum(any(s["subscribed"] for s in c.sessions) for c in normal),
        "unique": sum(len(c.seen) for c in normal),
        "sessions": sum(len(c.sessions) for c in clients),
    }


def _exists(path: str) -> bool:
    return os.path.exists(path)


async def run_swarm(cfg: SwarmConfig) -> None:
    raise_nofile()
    stopping = asyncio.Event()
    clients = [_ClientState(spec, cfg.since) for spec in cfg.clients]
    rng = random.Random(cfg.seed)
    started = time.time()
    tasks = [
        asyncio.create_task(
            _run_normal(c, cfg, stopping, random.Random(rng.random()))
            if c.spec.kind == "normal"
            else _run_slow(c, cfg, stopping)
        )
        for c in clients
    ]
    deadline = time.monotonic() + cfg.max_seconds
    next_status = 0.0
    while time.monotonic() < deadline and not _exists(cfg.stop_file):
        if time.monotonic() >= next_status:
            _write_json(cfg.status_file, _status(clients))
            next_status = time.monotonic() + 0.25
        await asyncio.sleep(0.05)
    stopping.set()
    for task in tasks:
        task.cancel()
    await asyncio.wait(tasks, timeout=15)
    _write_json(
        cfg.result_file,
        {"started": started, "ended": time.time(), "clients": [c.result() for c in clients]},
    )


# -- relays, runs and faults (the test process) ------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time the process has used so far; 0 if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mib(pid: int) -> float:
    """The process's peak resident set size (VmHWM) so far, in MiB; 0 if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class Replica:
    """One relay replica on a fixed port, which it keeps across restarts."""

    def __init__(self, name: str, dsn: str, env: dict[str, str]) -> None:
        from tests.helpers import RelayProcess

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
    def current(self) -> Any:
        return self.processes[-1]

    @property
    def alive(self) -> bool:
        return bool(self.processes) and self.current.process.poll() is None

    def start(self, timeout: float = 30.0) -> Replica:
        from tests.helpers import RelayProcess

        self.processes.append(RelayProcess(self.dsn, self.env))
        self.current.start(timeout)
        return self

    def sample_rss(self) -> None:
        if self.alive:
            self.peak_rss = max(self.peak_rss, peak_rss_mib(self.current.process.pid))

    def cpu_seconds(self) -> float:
        """CPU seconds of every process of this replica so far."""
        return self.cpu + (cpu_seconds(self.current.process.pid) if self.alive else 0.0)

    def _ending(self) -> None:
        self.sample_rss()
        self.cpu += cpu_seconds(self.current.process.pid)

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


def wait_until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.05)


@dataclass
class Fault:
    name: str
    t0: float  # wall clock when it was injected
    t1: float = 0.0  # when the injection step returned
    # When the relay was hit (e.g. its `listener_lost` line): events committed before it may
    # still have been read through the old connection; recovery waits for one committed after.
    effective: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def create_database(admin_dsn: str) -> str:
    """A fresh database with the relay schema and the example tables; returns its DSN."""
    from relay.sqlfiles import install_script, sql_dir

    name = f"chaos_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    dsn = psycopg.conninfo.make_conninfo(admin_dsn, dbname=name)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(install_script())
        conn.execute((sql_dir() / "examples" / "thumbnails_generations.sql").read_text())
    return dsn


def drop_database(admin_dsn: str, dsn: str) -> None:
    name = psycopg.conninfo.conninfo_to_dict(dsn)["dbname"]
    with (
        contextlib.suppress(psycopg.Error),
        psycopg.connect(admin_dsn, autocommit=True, connect_timeout=5) as conn,
    ):
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def start_cursor(dsn: str) -> str:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT replace(s.epoch::text, '-', ''), h.pos FROM relay.settings s, relay.head h"
        ).fetchone()
    assert row is not None
    return f"{row[0]}.{row[1]}"


@contextlib.contextmanager
def private_folder() -> Iterator[Path]:
    """A temporary folder that only its creator removes. Not pytest's tmp_path: pytest keeps the
    base folders of the last three sessions only, so a session started elsewhere meanwhile (on a
    shared machine, a developer's) deletes a long run's database from under its server."""
    import shutil
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="pgrelay-chaos-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


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
        self.dsn = create_database(admin_dsn)
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
               **(env or {})}  # fmt: skip
        replica = Replica(f"r{len(self.replicas)}", self.dsn, env)
        self.replicas.append(replica.start())
        return replica

    def _spawn(self, role: str, config: object) -> subprocess.Popen[bytes]:
        path = self.workdir / f"{role}.json"
        path.write_text(json.dumps(asdict(config)))  # type: ignore[call-overload]
        out = (self.workdir / f"{role}.log").open("wb")
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        try:
            return subprocess.Popen(
                [sys.executable, "-m", "tests.chaos.harness", role, str(path)],
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
            return {"live": 0, "ever": 0, "unique": 0, "sessions": 0, "t": 0.0}
        return data

    @property
    def normal_count(self) -> int:
        return sum(spec.kind == "normal" for spec in self.specs)

    def wait_live(self, timeout: float) -> float:
        """Waits until every normal client is subscribed; returns the seconds it took."""
        started = time.monotonic()

        def all_live() -> bool:
            assert self.swarm is not None and self.swarm.poll() is None, "the swarm exited"
            return bool(self.status()["live"] == self.normal_count)

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


# -- the checker -------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))
    return ordered[index]


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 1)


def check(
    swarm: dict[str, Any],
    committed: Sequence[tuple[str, str]],
    faults: Sequence[Fault],
    load_ended: float,
) -> dict[str, Any]:
    """What the clients received against what was committed, and the recovery after each fault.

    Per normal client (its user's subscription, across every reconnect and replica): lost =
    committed rows of its user never received; duplicated = a row received again; out of order =
    an event whose log position is not above the previous one; leaked = a row of another user;
    phantom = a row that was never committed. Slow clients are not expected to get anything; what
    they did get must still be theirs, once and in order.
    """
    committed_markers = {marker for marker, _ in committed}
    by_user: dict[str, set[str]] = {}
    for marker, user in committed:
        by_user.setdefault(user, set()).add(marker)
    clients = swarm["clients"]
    totals = dict.fromkeys(
        ("delivered", "expected", "lost", "duplicated", "out_of_order", "leaked", "phantom",
         "resets_normal", "errors_normal", "slow_delivered", "slow_violations"), 0
    )  # fmt: skip
    latencies: list[float] = []
    by_group: dict[str, list[float]] = {}
    examples: list[str] = []
    for client in clients:
        user = client["user"]
        seen: set[str] = set()
        last_pos = -1
        bad = 0
        for pos, marker, row_user, received, committed_at in client["events"]:
            problem = None
            if marker in seen:
                problem = "duplicated"
            elif row_user != user:
                problem = "leaked"
            elif marker not in committed_markers:
                problem = "phantom"
            if pos <= last_pos:
                key = "out_of_order"
                if client["kind"] == "normal":
                    totals[key] += 1
                bad += 1
                if len(examples) < 5:
                    examples.append(f"{user}: position {pos} after {last_pos}")
            last_pos = max(last_pos, pos)
            seen.add(marker)
            if problem is not None:
                bad += 1
                if client["kind"] == "normal":
                    totals[problem] += 1
                if len(examples) < 5:
                    examples.append(f"{user}: {problem} {marker} (row of {row_user})")
            if client["kind"] == "normal":
                latencies.append(received - committed_at)
                by_group.setdefault(client.get("group", ""), []).append(received - committed_at)
        if client["kind"] == "normal":
            mine = by_user.get(user, set())
            totals["delivered"] += len(client["events"])
            totals["expected"] += len(mine)
            totals["lost"] += len(mine - seen)
            totals["resets_normal"] += len(client["resets"])
            totals["errors_normal"] += len(client["errors"])
        else:
            totals["slow_delivered"] += len(client["events"])
            totals["slow_violations"] += bad

    normal = [c for c in clients if c["kind"] == "normal"]
    recoveries: list[float] = []
    unrecovered = 0
    fault_rows = []
    for index, fault in enumerate(faults):
        until = faults[index + 1].t0 if index + 1 < len(faults) else load_ended
        hit = max(fault.t0, fault.effective)
        resumed = min(
            (ev[3] for c in normal for ev in c["events"] if hit < ev[4] < until),
            default=None,
        )
        back: list[float] = []
        cut = 0
        for client in normal:
            sessions = client["sessions"]
            ended = [s for s in sessions if s["end"] and fault.t0 <= s["end"] < until]
            if not ended:
                continue
            cut += 1
            again = [
                s["subscribed"]
                for s in sessions
                if s["subscribed"] and s["subscribed"] > ended[0]["end"]
            ]
            back.append(min(again) if again else math.inf)
        parts = [t for t in (resumed, max(back, default=None)) if t is not None]
        recovery = max(parts) - fault.t0 if parts else math.inf
        if math.isinf(recovery):
            unrecovered += 1
        else:
            recoveries.append(recovery)
        fault_rows.append({
            "name": fault.name,
            "recovery_s": None if math.isinf(recovery) else round(recovery, 3),
            "delivery_resumed_s": None if resumed is None else round(resumed - fault.t0, 3),
            "clients_cut": cut,
            "all_resubscribed_s": None if not back or math.isinf(max(back)) else round(max(back) - fault.t0, 3),
            **fault.extra,
        })  # fmt: skip

    sessions = [s for c in normal for s in c["sessions"]]
    figures: dict[str, Any] = {
        **totals,
        "clients": len(normal),
        "slow_clients": len(clients) - len(normal),
        "users_written": len(by_user),
        "written": len(committed),
        "latency_p50_ms": _ms(percentile(latencies, 0.50)),
        "latency_p99_ms": _ms(percentile(latencies, 0.99)),
        "latency_max_ms": _ms(max(latencies, default=None)),
        "latency_by_group": {
            group: {
                "events": len(values),
                "p50_ms": _ms(percentile(values, 0.5)),
                "p99_ms": _ms(percentile(values, 0.99)),
                "max_ms": _ms(max(values)),
            }
            for group, values in sorted(by_group.items())
            if group
        },
        "faults": len(faults),
        "fault_details": fault_rows,
        "recovery_median_s": round(percentile(recoveries, 0.5) or 0.0, 3) if recoveries else None,
        "recovery_max_s": round(max(recoveries), 3) if recoveries else None,
        "unrecovered_faults": unrecovered,
        "sessions_normal": len(sessions),
        "refused_handshakes": sum(1 for s in sessions if s["error"]),
        "close_codes": _close_codes(sessions),
        "slow_sessions": sum(len(c["sessions"]) for c in clients if c["kind"] != "normal"),
        "examples": examples,
    }
    return figures


def _close_codes(sessions: Sequence[dict[str, Any]]) -> dict[str, int]:
    codes: dict[str, int] = {}
    for session in sessions:
        key = session["error"] or (str(session["code"]) if session["code"] is not None else None)
        if key is not None:
            codes[key] = codes.get(key, 0) + 1
    return dict(sorted(codes.items()))


def bar_violations(figures: dict[str, Any]) -> list[str]:
    """The bar every scenario is held to; empty when it is met."""
    problems = [
        f"{key}={figures[key]}"
        for key in (
            "lost",
            "duplicated",
            "out_of_order",
            "leaked",
            "phantom",
            "resets_normal",
            "slow_violations",
            "unrecovered_faults",
        )
        if figures.get(key)
    ]
    if figures.get("peak_rss_mib", 0) > RSS_LIMIT_MIB:
        problems.append(f"peak RSS {figures['peak_rss_mib']} MiB > {RSS_LIMIT_MIB} MiB")
    return problems


# -- the results file ----------------------------------------------------------------------------


def relay_code_digest() -> str:
    """A digest of relay/ as it is on disk: which code the relay processes ran."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted((REPO / "relay").rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            digest.update(path.relative_to(REPO).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def code_state() -> dict[str, Any]:
    """The commit and whether relay/ differs from it (read-only git commands)."""
    state: dict[str, Any] = {"relay_code": relay_code_digest()}
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        state["commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
            timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
        state["relay_modified"] = bool(
            subprocess.run(
                ["git", "--no-optional-locks", "status", "--porcelain", "--", "relay"],
                cwd=REPO,
                capture_output=True,
                text=True,
                timeout=10,
                check=True,
            ).stdout.strip()
        )
    return state


def machine_info(dsn: str | None = None) -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                info["memory_gib"] = round(int(line.split()[1]) / 1024 / 1024, 1)
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
    if dsn is not None:
        with contextlib.suppress(psycopg.Error), psycopg.connect(dsn, connect_timeout=5) as conn:
            row = conn.execute("SHOW server_version").fetchone()
            info["postgres"] = row[0] if row else None
    with contextlib.suppress(ImportError):
        import websockets

        info["websockets"] = websockets.__version__
    return info


def record(key: str, entry: dict[str, Any], machine: dict[str, Any] | None = None) -> None:
    """Stores one test's figures under `key` (e.g. "listener_kill/full") in last-run.json."""
    RESULTS_FILE.parent.mkdir(parents=True, exist_ok=True)
    try:
        data = json.loads(RESULTS_FILE.read_text())
    except (OSError, ValueError):
        data = {}
    data.setdefault("entries", {})[key] = {
        **entry,
        "recorded_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    data["entries"][key].setdefault("code", code_state())
    if machine is not None:
        data.setdefault("machines", {})[key.rsplit("/", 1)[-1]] = machine
    _write_json(RESULTS_FILE, data)


# -- command line: the two load processes ------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos.harness")
    parser.add_argument("role", choices=["writer", "swarm"])
    parser.add_argument("config")
    args = parser.parse_args(argv)
    raw = json.loads(Path(args.config).read_text())
    if args.role == "writer":
        run_writer(WriterConfig(**raw))
    else:
        raw["clients"] = [ClientSpec(**spec) for spec in raw["clients"]]
        asyncio.run(run_swarm(SwarmConfig(**raw)))


if __name__ == "__main__":
    main()
