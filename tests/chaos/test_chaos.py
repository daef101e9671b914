"""Prove it survives: eight fault scenarios under sustained load, checked exactly.

Each scenario runs in two sizes: ``short`` (in ``make test``: a few users, seconds of load, one or
two faults) and ``full`` (marked slow, ``make chaos``: 200 users, 500 rows/s, every fault the
issue asks for). Every run must lose, duplicate, reorder and leak nothing, reset no normal client,
recover from every fault and stay under the memory bound; each run's figures go to
tests/chaos/results/last-run.json, which ``python -m tests.chaos.report`` turns into
RELIABILITY.md. The harness is described in tests/chaos/cluster.py and the modules it names.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from relay.demo.pgserver import PgServer, StopMode
from tests.chaos.checker import bar_violations, resume_outcomes
from tests.chaos.cluster import ChaosRun, Replica, users
from tests.chaos.results import machine_info, record
from tests.chaos.swarm import ClientSpec
from tests.chaos.writer import WriterConfig
from tests.support.paths import private_folder
from tests.support.waiting import wait_until

pytestmark = pytest.mark.pg


@dataclass(frozen=True)
class Size:
    name: str
    users: int  # one normal client each
    ghosts: int  # users who get rows but have no client: nobody may receive them
    rate: float  # rows per second, all writers together
    writers: int
    gap: float  # seconds of load between two faults, after recovery
    tail: float  # seconds of load after the last fault
    max_seconds: float  # the load processes stop by themselves after this long, whatever happens


SHORT = Size("short", users=20, ghosts=4, rate=100, writers=2, gap=0.5, tail=1.0, max_seconds=150)
FULL = Size("full", users=200, ghosts=20, rate=500, writers=4, gap=2.0, tail=3.0, max_seconds=1500)
SIZES = [
    pytest.param(SHORT, id="short"),
    pytest.param(FULL, id="full", marks=[pytest.mark.slow, pytest.mark.timeout(1800)]),
]


@pytest.fixture(scope="module")
def workspace() -> Iterator[Path]:
    """Databases and load files, in a folder of the module's own (see support.paths.private_folder)."""
    with private_folder("pgrelay-chaos-") as folder:
        yield folder


@pytest.fixture(scope="module")
def chaos_pg(workspace: Path) -> Iterator[PgServer]:
    """A private server for the module (a database per run); scenario 2 restarts and crashes it."""
    server = PgServer(workspace / "pg")
    with server.running():
        yield server


def clients(size: Size, urls: list[str]) -> list[ClientSpec]:
    """One normal client per user, reconnecting to the same replica."""
    return [ClientSpec(user, urls) for user in users("u", size.users)]


def writer(size: Size, **overrides: Any) -> WriterConfig:
    all_users = users("u", size.users) + users("ghost", size.ghosts)
    return WriterConfig(dsn="", rate=size.rate, writers=size.writers, users=all_users,
                        max_seconds=size.max_seconds, **overrides)  # fmt: skip


def backend_pids(dsn: str, application_name: str) -> list[int]:
    """Backends of this run's database only (the server is shared by the module's runs)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s"
            " AND datname = current_database()",
            (application_name,),
        ).fetchall()
    return [int(row[0]) for row in rows]


def terminate(dsn: str, application_name: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE application_name = %s AND datname = current_database()",
            (application_name,),
        ).fetchone()
    return int(row[0]) if row else 0


def conclude(
    key: str,
    title: str,
    size: Size,
    figures: dict[str, Any],
    admin_dsn: str,
    started: float,
    extra: list[str] | None = None,
) -> None:
    """Records the run's figures, then holds it to the bar (and any extra conditions)."""
    figures["title"] = title
    figures["size"] = size.name
    figures["test_seconds"] = round(time.monotonic() - started, 1)
    violations = bar_violations(figures) + (extra or [])
    figures["bar_met"] = not violations
    figures["violations"] = violations
    record(f"{key}/{size.name}", figures, machine_info(admin_dsn))
    assert [] == violations, figures.get("examples")


def under_load(run: ChaosRun, specs: list[ClientSpec], cfg: WriterConfig, size: Size) -> None:
    """The start of every scenario but the storm (whose clients connect while rows are written):
    every client subscribed, then the writer started and events flowing."""
    run.start_swarm(specs, size.max_seconds)
    run.wait_live(60)
    run.start_writer(cfg)
    run.wait_flowing(30)


def settle(run: ChaosRun, size: Size, timeout: float = 90, since: float | None = None) -> None:
    """After a fault: every client subscribed (again since `since`, for a fault that cut them
    all) and events flowing, then some more load."""
    run.wait_live(timeout, since)
    run.wait_flowing(timeout)
    time.sleep(size.gap)


@pytest.mark.parametrize("size", SIZES)
def test_listener_backend_killed_repeatedly(
    chaos_pg: PgServer, workspace: Path, size: Size
) -> None:
    """Scenario 1: the listener's backend is terminated (20 times in full) under load; nothing is lost."""
    started = time.monotonic()
    kills = 2 if size is SHORT else 20
    with ChaosRun(chaos_pg.dsn(), workspace, "listener") as run:
        relay = run.add_replica()
        under_load(run, clients(size, [relay.url]), writer(size), size)
        for kill in range(kills):
            with run.fault("listener backend terminated") as fault:
                assert 1 == terminate(run.dsn, "pgrelay-listener")
            relay.wait_count("listener_lost", kill + 1, timeout=30)
            fault.effective = relay.log_times("listener_lost")[-1]
            relay.wait_count("listener_up", kill + 2, timeout=90)
            settle(run, size)
        time.sleep(size.tail)
        figures = run.finish()
        figures["reconnects"] = relay.count("listener_lost")
    conclude("1_listener_kill", "Listener backend killed (pg_terminate_backend)", size, figures,
             chaos_pg.dsn(), started)  # fmt: skip


@pytest.mark.parametrize("size", SIZES)
def test_postgres_restarted_and_crashed(chaos_pg: PgServer, workspace: Path, size: Size) -> None:
    """Scenario 2: Postgres fast-restarted (5 times in full) and crashed (3 times) under load; nothing is lost."""
    started = time.monotonic()
    both: list[StopMode] = ["fast", "immediate"]
    modes = both if size is SHORT else both * 3 + both[:1] * 2
    with ChaosRun(chaos_pg.dsn(), workspace, "postgres") as run:
        relay = run.add_replica()
        under_load(run, clients(size, [relay.url]), writer(size), size)
        for number, mode in enumerate(modes):
            name = "fast restart" if mode == "fast" else "crash (immediate stop), then start"
            with run.fault(f"postgres {name}"):
                chaos_pg.stop(mode)
                chaos_pg.start()
            relay.wait_count("listener_up", number + 2, timeout=90)
            settle(run, size)
        time.sleep(size.tail)
        figures = run.finish()
    conclude("2_postgres_restart", "Postgres fast restarts and crashes", size, figures,
             chaos_pg.dsn(), started)  # fmt: skip


@pytest.mark.parametrize("size", SIZES)
def test_relay_sigkilled_and_restarted(chaos_pg: PgServer, workspace: Path, size: Size) -> None:
    """Scenario 3: a replica SIGKILLed and restarted (5 times in full); clients resume by cursor, half on the other replica."""
    started = time.monotonic()
    kills = 2 if size is SHORT else 5
    with ChaosRun(chaos_pg.dsn(), workspace, "relay-kill") as run:
        replicas = [run.add_replica(), run.add_replica()]
        specs = []
        for index, user in enumerate(users("u", size.users)):
            home, other = replicas[index % 2], replicas[1 - index % 2]
            roam = (index // 2) % 2 == 1  # sticky clients wait for their replica to come back
            urls = [home.url, other.url] if roam else [home.url]
            specs.append(ClientSpec(user, urls, policy="roam" if roam else "sticky"))
        under_load(run, specs, writer(size), size)
        for kill in range(kills):
            target = replicas[kill % 2]
            with run.fault(f"SIGKILL {target.name}, restarted"):
                target.kill()
                target.start()
            settle(run, size)
        time.sleep(size.tail)
        figures = run.finish()
    conclude("3_relay_kill", "Relay SIGKILLed and restarted; clients resume by cursor",
             size, figures, chaos_pg.dsn(), started)  # fmt: skip


def _leader(replicas: list[Replica]) -> Replica:
    leaders: list[Replica] = []

    def one_leader() -> bool:
        leaders[:] = [r for r in replicas if r.metric("relay_sequencer_leader") == 1.0]
        return len(leaders) == 1

    wait_until(one_leader, 30, "exactly one sequencer leader")
    return leaders[0]


@pytest.mark.parametrize("size", SIZES)
def test_sequencer_holder_killed(chaos_pg: PgServer, workspace: Path, size: Size) -> None:
    """Scenario 4: two replicas; the sequencer holder is SIGKILLed (4 times in full); the other takes over."""
    started = time.monotonic()
    kills = 1 if size is SHORT else 4
    with ChaosRun(chaos_pg.dsn(), workspace, "sequencer") as run:
        replicas = [run.add_replica(), run.add_replica()]
        specs = [
            ClientSpec(user, [replicas[i % 2].url, replicas[1 - i % 2].url], policy="roam")
            for i, user in enumerate(users("u", size.users))
        ]
        under_load(run, specs, writer(size), size)
        for _ in range(kills):
            holder = _leader(replicas)
            survivor = replicas[1 - replicas.index(holder)]
            before = survivor.count("sequencer_leader")
            with run.fault(f"SIGKILL sequencer holder {holder.name}") as fault:
                holder.kill()
            survivor.wait_count("sequencer_leader", before + 1, timeout=30)
            fault.extra["takeover_s"] = round(
                survivor.log_times("sequencer_leader")[-1] - fault.t0, 3
            )
            holder.start()
            settle(run, size)
        time.sleep(size.tail)
        figures = run.finish()
    takeovers = [f["takeover_s"] for f in figures["fault_details"]]
    figures["takeover_max_s"] = max(takeovers)
    conclude("4_sequencer_takeover", "Sequencer holder killed; the other replica takes over",
             size, figures, chaos_pg.dsn(), started)  # fmt: skip


@pytest.mark.parametrize("size", SIZES)
def test_listener_backend_stops_answering(chaos_pg: PgServer, workspace: Path, size: Size) -> None:
    """Scenario 5: the listener's backend is SIGSTOPped (10 s, 3 times in full); the relay detects it and recovers."""
    started = time.monotonic()
    stops, seconds = (1, 4.0) if size is SHORT else (3, 10.0)
    with ChaosRun(chaos_pg.dsn(), workspace, "hung-backend") as run:
        relay = run.add_replica()
        under_load(run, clients(size, [relay.url]), writer(size), size)
        for number in range(stops):
            (pid,) = backend_pids(run.dsn, "pgrelay-listener")
            lost_before = relay.count("listener_lost")
            with run.fault(f"listener backend SIGSTOP for {seconds:g} s") as fault:
                os.kill(pid, signal.SIGSTOP)
            try:
                relay.wait_count("listener_lost", lost_before + 1, timeout=seconds + 20)
                fault.extra["detect_s"] = round(relay.log_times("listener_lost")[-1] - fault.t0, 3)
                relay.wait_count("listener_up", number + 2, timeout=60)
                time.sleep(max(0.0, fault.t0 + seconds - time.time()))
            finally:
                os.kill(pid, signal.SIGCONT)
            settle(run, size)
        time.sleep(size.tail)
        figures = run.finish()
    figures["detect_max_s"] = max(f["detect_s"] for f in figures["fault_details"])
    conclude("5_hung_backend", "Listener backend stops answering (SIGSTOP)", size, figures,
             chaos_pg.dsn(), started)  # fmt: skip


WITH_SLOW, TWIN = "replica with the slow clients", "twin replica without them"


@pytest.mark.parametrize("size", SIZES)
def test_clients_that_never_read(chaos_pg: PgServer, workspace: Path, size: Size) -> None:
    """Scenario 6: 50 clients that never read beside 200 normal ones; normal clients lose nothing (p99 ≤ 2x the twin's in full)."""
    started = time.monotonic()
    seconds = 4.0 if size is SHORT else 90.0
    slow_users = users("slow", 5)
    with ChaosRun(chaos_pg.dsn(), workspace, "slow") as run:
        # Two replicas of one database, the same events: every user has a normal client on each,
        # the slow clients (10 per slow user) are on the first only. Whatever else the machine
        # does meanwhile hits both alike; the slow clients are the only difference.
        slowed, twin = run.add_replica(), run.add_replica()  # the shipped slow-consumer settings
        specs = [ClientSpec(u, [slowed.url], group=WITH_SLOW) for u in users("u", size.users)]
        specs += [ClientSpec(u, [twin.url], group=TWIN) for u in users("u", size.users)]
        specs += [ClientSpec(slow_users[i % 5], [slowed.url], kind="slow") for i in range(50)]
        # 2 % of the rows, 60 kB each, to the slow users: 120 kB/s per slow client in the full
        # run, enough to fill its socket buffers, then its queue, within a minute.
        under_load(
            run,
            specs,
            writer(size, slow_users=slow_users, slow_share=0.02, slow_padding=60_000),
            size,
        )
        time.sleep(seconds)
        run.sample_metrics(
            [("relay_drops_total", 'reason="slow_client"'),
             ("relay_drops_total", 'reason="overflow"'),
             ("relay_resets_total", 'reason="overflow"')]
        )  # fmt: skip
        figures = run.finish()
    groups = figures["latency_by_group"]
    ratio = groups[WITH_SLOW]["p99_ms"] / max(groups[TWIN]["p99_ms"], 1e-3)
    figures["p99_ratio"] = round(ratio, 2)
    extra = []
    if size is FULL and ratio > 2.0:  # a timing bar: held in the full run only
        extra.append(f"normal clients' p99 {ratio:.2f}x the twin replica's (bar: 2x)")
    conclude("6_slow_clients", "Clients that never read, beside normal ones", size, figures,
             chaos_pg.dsn(), started, extra)  # fmt: skip


@pytest.mark.parametrize("size", SIZES)
def test_connect_storm_and_reconnect_storm(chaos_pg: PgServer, workspace: Path, size: Size) -> None:
    """Scenario 7: 2,000 clients connect at once under load, then reconnect after relay restarts (SIGTERM, SIGKILL)."""
    started = time.monotonic()
    count, modes = (300, ["kill"]) if size is SHORT else (2000, ["term", "kill"])
    with ChaosRun(chaos_pg.dsn(), workspace, "storm") as run:
        relay = run.add_replica()  # per-address limits raised: every client is on 127.0.0.1
        specs = [ClientSpec(user, [relay.url]) for user in users("u", count)]
        all_users = users("u", count) + users("ghost", size.ghosts)
        run.start_writer(WriterConfig(dsn="", rate=size.rate, writers=size.writers,
                                      users=all_users, max_seconds=size.max_seconds))  # fmt: skip
        run.start_swarm(specs, size.max_seconds)  # every client at once, while rows are written
        connect_s = run.wait_live(180)
        run.wait_flowing(60)
        time.sleep(size.gap)
        for mode in modes:
            name = "SIGTERM (clients get 1001)" if mode == "term" else "SIGKILL"
            with run.fault(f"relay restart after {name}") as fault:
                relay.stop() if mode == "term" else relay.kill()
                relay.start()
            settle(run, size, timeout=180, since=fault.t0)
        time.sleep(size.tail)
        figures = run.finish(drain_timeout=120)
    figures["connect_storm_s"] = round(connect_s, 2)
    conclude("7_connect_storm", f"{count:,} clients connect at once; reconnect storm after restarts",
             size, figures, chaos_pg.dsn(), started)  # fmt: skip


def terminate_relay_backends(dsn: str) -> int:
    """pg_terminate_backend on every relay backend of the run's database (reader, sequencer,
    maintenance and every replay pool connection)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE application_name LIKE 'pgrelay-%%' AND datname = current_database()"
        ).fetchone()
    return int(row[0]) if row else 0


def resumed_since(run: ChaosRun, since: float, timeout: float) -> None:
    """Every normal client subscribed again after `since` (wall clock), then events flowing."""
    wait_until(lambda: run.status()["oldest_subscribed"] > since, timeout, "every client resumed")
    run.wait_flowing(timeout)


@pytest.mark.parametrize("size", SIZES)
def test_resumes_across_database_faults(chaos_pg: PgServer, workspace: Path, size: Size) -> None:
    """Scenario 8: clients resume every half second while every relay backend is killed (10 times
    in full) and Postgres restarts (3 times); no resume is refused once Postgres answers."""
    started = time.monotonic()
    # Every client resumes about twice a second (400 resumes a second in full): replays reach a
    # fixed target while the router holds what arrives meanwhile (RELIABILITY.md, finding 8).
    resumers = users("u", size.users)
    kills = 2 if size is SHORT else 10
    restarts: list[StopMode] = ["fast"] if size is SHORT else ["fast", "immediate", "fast"]
    down: list[tuple[float, float]] = []
    with ChaosRun(chaos_pg.dsn(), workspace, "resume-faults") as run:
        relay = run.add_replica()
        specs = [ClientSpec(user, [relay.url], churn=0.5) for user in resumers]
        run.start_swarm(specs, size.max_seconds)
        wait_until(lambda: run.status()["ever"] == len(specs), 60, "every client subscribed")
        run.start_writer(WriterConfig(dsn="", rate=size.rate, writers=size.writers,
                                      users=resumers + users("ghost", size.ghosts),
                                      max_seconds=size.max_seconds))  # fmt: skip
        run.wait_flowing(30)
        for _ in range(kills):
            with run.fault("every relay backend terminated while clients resume") as fault:
                assert terminate_relay_backends(run.dsn) >= 4
            resumed_since(run, fault.t0, 60)
            time.sleep(size.gap)
        for mode in restarts:
            with run.fault(f"postgres {mode} stop, then start, while clients resume") as fault:
                chaos_pg.stop(mode)
                chaos_pg.start()
            with psycopg.connect(run.dsn, connect_timeout=10):
                down.append((fault.t0, time.time()))  # Postgres answers again from here
            resumed_since(run, down[-1][1], 90)
            time.sleep(size.gap)
        time.sleep(size.tail)
        figures = run.finish()
        swarm = json.loads((run.workdir / "swarm.result").read_text())
    figures.update(resume_outcomes(swarm, run.faults, down))
    figures["replay_retries"] = figures["relay_log"].get("replay_retried", 0)
    extra = []
    if figures["refused_resumes_db_up"]:
        extra.append(f"{figures['refused_resumes_db_up']} resumes refused with 1011 while "
                     "Postgres answered")  # fmt: skip
    conclude("8_resume_db_faults", "Resumes across backend kills and Postgres restarts", size,
             figures, chaos_pg.dsn(), started, extra)  # fmt: skip
