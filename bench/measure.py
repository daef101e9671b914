"""The relay benchmark's single measurements: one latency run, one fan-out run, the limits, a
listener killed mid-run, each against servers already running; bench/relay_bench.py schedules them.
"""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path
from typing import Any

import psycopg

from bench.database import Database, listener_rate
from bench.machine import MachineCpu
from bench.plan import (
    BATCHES,
    FANOUT_RATE,
    PATH_SEGMENTS,
    PG_BACKGROUND,
    PG_WRITERS,
    FanoutRun,
    LatencyRun,
    Plan,
    Results,
    StackResult,
)
from bench.procs import RelayServer, SwarmGroup, log, run_load
from bench.profile import profiling
from bench.write_cpu import server_cpu_between, server_snapshot
from tests.support.processes import cpu_seconds
from tests.support.stats import percentile_or_nan

__all__ = ["Measure"]


class Measure:
    """One measurement at a time against the servers the schedule (relay_bench.Bench) started."""

    def __init__(self, plan: Plan, workdir: Path, profile: bool) -> None:
        self.plan = plan
        self.workdir = workdir
        self.db = Database(workdir)
        self.results = Results()
        self.seq = 1_000_000  # sequence numbers never repeat across runs
        self.do_profile = profile
        self.servers: dict[int, Any] = {}  # pid -> server, for settle()
        self.relay_base = 0  # events in the log before the relay started

    def next_seq(self) -> int:
        self.seq += 100_000_000
        return self.seq

    def latency_run(
        self,
        swarm: SwarmGroup,
        dsn: str,
        *,
        rate: float,
        users: int,
        seconds: float,
        per_commit: int,
        server_pid: int,
        path: bool = False,
    ) -> LatencyRun:
        self.settle(server_pid)
        swarm.quiesce()
        swarm.reset()
        head = self.db.log_head() if path else 0
        cpu = MachineCpu()
        cpu0 = cpu_seconds(server_pid)
        pg0 = server_snapshot(self.db.postmaster)
        load = run_load(
            dsn, rate=rate, seconds=seconds, users=users, seq_start=self.next_seq(),
            per_commit=per_commit,
        )  # fmt: skip
        stats = swarm.stats(load["committed"], self.plan.drain_timeout, arrivals=path)
        server_cpu = cpu_seconds(server_pid) - cpu0
        pg1 = server_snapshot(self.db.postmaster)
        others = cpu.others()
        dbname = str(psycopg.conninfo.conninfo_to_dict(dsn)["dbname"])
        postgres = server_cpu_between(
            pg0, pg1, self.db.server_parts(dbname), default=PG_BACKGROUND, exited=PG_WRITERS
        )
        lat = stats["latencies"]
        commit_lat = stats["commit_latencies"]
        return LatencyRun(
            committed=load["committed"],
            received=stats["events"],
            distinct=len(stats["seqs"]),
            duplicates=stats["duplicates"],
            kept_rate=bool(load["kept_rate"]),
            rate=load["rate"],
            payload=stats["bytes"] / stats["events"] if stats["events"] else 0.0,
            p50=percentile_or_nan(lat, 0.5),
            p95=percentile_or_nan(lat, 0.95),
            p99=percentile_or_nan(lat, 0.99),
            max=max(lat, default=float("nan")),
            commit_p50=percentile_or_nan(commit_lat, 0.5),
            commit_p99=percentile_or_nan(commit_lat, 0.99),
            others=others,
            server_cpu=server_cpu,
            postgres=postgres,
            latencies=lat,
            path=self.path_segments(head, stats["arrivals"]) if path else {},
        )

    def path_segments(
        self, head: int, arrivals: list[tuple[int, float]]
    ) -> dict[str, tuple[float, float]]:
        """Where an event's time goes on the relay's path, from the log's own timestamps:
        the writer's statement to its commit, to the sequencer moving it into the log, to the
        sequencer's commit, to the client."""
        logged = self.db.relay_path(head)
        parts: dict[str, list[float]] = {name: [] for name in PATH_SEGMENTS}
        for seq, received in arrivals:
            times = logged.get(seq)
            if times is None:
                continue
            stamp, committed, sequenced, seq_committed = times
            points = (stamp, committed, sequenced, seq_committed, received)
            for name, a, b in zip(PATH_SEGMENTS, points, points[1:], strict=False):
                parts[name].append(b - a)
        out = {
            name: (percentile_or_nan(values, 0.5), percentile_or_nan(values, 0.99))
            for name, values in parts.items()
            if values
        }
        # The sequencer's transactions (one commit timestamp each): how often it committed,
        # and how many rows each moved.
        commits = {times[3] for times in logged.values()}
        stamps = [times[0] for times in logged.values()]
        if len(commits) > 1 and stamps:
            span = max(stamps) - min(stamps)
            out[BATCHES] = (
                len(commits) / span if span else float("nan"),
                len(logged) / len(commits),
            )
        return out

    def fanout_run(
        self, swarm: SwarmGroup, server: Any, dsn: str | None, conns: int, seconds: float
    ) -> FanoutRun:
        self.settle(server.pid)
        swarm.quiesce()
        swarm.reset(sample=max(1, conns // 20))
        cpu = MachineCpu()
        cpu0 = cpu_seconds(server.pid)
        started = time.time()
        if dsn is None:
            answer = server.broadcast(FANOUT_RATE, seconds, self.next_seq())
            events = int(answer["events"])
            expected = int(answer["deliveries"])
        else:
            load = run_load(
                dsn, rate=FANOUT_RATE, seconds=seconds, users=1, user_prefix="fan",
                seq_start=self.next_seq(),
            )  # fmt: skip
            events = int(load["committed"])
            expected = events * conns
        # Drain: the saturated cases take a while to deliver the backlog; bounded.
        stats = swarm.stats(expected, max(self.plan.drain_timeout, 5 * seconds))
        cpu_used = cpu_seconds(server.pid) - cpu0
        span = max(1e-6, stats["last"] - max(started, stats["first"] or started))
        return FanoutRun(
            conns=conns,
            events=events,
            deliveries=int(stats["events"]),
            expected=expected,
            seconds=span,
            cpu=cpu_used,
            others=cpu.others(),
            p50=percentile_or_nan(stats["latencies"], 0.5),
        )

    def settle(self, pid: int, timeout: float = 120.0) -> None:
        """Waits until earlier runs' events are through, on every stack: a run that fell
        behind (a failed sustained step) must not leave its backlog in the next run. For a
        relay: its inbox empty and every logged event read. (The peer keeps its clients
        across its runs: their swarm's quiesce() catches its stragglers.)"""
        del pid  # every running stack is checked
        deadline = time.monotonic() + timeout
        relays = [s for s in self.servers.values() if isinstance(s, RelayServer)]
        while time.monotonic() < deadline:
            inbox, logged, _ = self.db.pipeline()
            if inbox == 0 and all(r.events_read() >= logged - self.relay_base for r in relays):
                return
            time.sleep(0.25)
        log(f"warning: the pipeline did not settle within {timeout:.0f} s")

    # -- the limits ----------------------------------------------------------------------

    def measure_limits(self) -> None:
        plan = self.plan
        limits = self.results.limits
        dsn = self.db.dsn("limits")
        for _ in range(plan.repeats):
            for key, mode, per_commit in (
                ("insert", "insert", 1),
                ("update", "update", 1),
                ("insert10", "insert", plan.sustain_per_commit),
            ):
                load = run_load(
                    dsn, rate=0, seconds=plan.limit_seconds, users=1000, writers=4,
                    seq_start=self.next_seq(), per_commit=per_commit, mode=mode,
                )  # fmt: skip
                limits.setdefault(key, []).append(load["rate"])
                log(f"limit {key}: {load['rate']:,.0f} rows/s")
            answer = listener_rate(self.db.dsn("limits"), plan.listen_count, 300)
            limits.setdefault("listener", []).append(answer["rate"])
            log(f"limit listener: {answer['rate']:,.0f} notifications/s")

    def profiled(
        self, pid: int, seconds: float, enabled: bool, name: str, rate: int = 250
    ) -> contextlib.AbstractContextManager[None]:
        """py-spy on the relay while the block runs, when enabled (see bench/profile.py)."""
        if not enabled:
            return contextlib.nullcontext()
        out = self.workdir / f"relay-{name}.raw"
        return profiling(pid, seconds, out, self.results.profile, name, rate)

    def kill_run(
        self,
        server: Any,
        swarm: SwarmGroup,
        dsn: str,
        result: StackResult,
        users: list[str],
        calm: int,
    ) -> None:
        """Kills the server's LISTEN connection in the middle of a small run; counts losses."""
        plan = self.plan
        kind = server.kind
        swarm.close()
        swarm.connect(kind, server.url, users, concurrency=calm, retries=3)
        swarm.reset()
        dbname = "relay" if kind == "relay" else "peer"
        app = "pgrelay-listener" if kind == "relay" else None
        outcome: dict[str, Any] = {}

        def load() -> None:
            outcome["load"] = run_load(
                dsn, rate=plan.kill_rate, seconds=plan.kill_seconds, users=len(users),
                seq_start=self.next_seq(),
            )  # fmt: skip

        thread = threading.Thread(target=load)
        thread.start()
        time.sleep(0.5 + plan.kill_seconds / 2)
        if kind == "relay":
            killed = self.db.terminate(dbname, app)
        else:  # every connection of the peer's database but the load generator's
            killed = self.terminate_peer_listener()
        thread.join()
        committed = int(outcome["load"]["committed"])
        stats = swarm.stats(committed, self.plan.drain_timeout)
        result.kill = {
            "committed": committed,
            "delivered": len(stats["seqs"]),
            "killed": len(killed),
        }
        log(f"{kind}: listener killed mid-run: {len(stats['seqs'])}/{committed} delivered")

    def terminate_peer_listener(self) -> list[int]:
        """Kills every connection of the peer's database but the load generator's."""
        with psycopg.connect(self.db.dsn("postgres"), autocommit=True) as conn:
            rows = conn.execute(
                "SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = 'peer' AND backend_type = 'client backend'"
                " AND application_name <> 'bench-loadgen' AND pid <> pg_backend_pid()"
            ).fetchall()
        return [int(r[0]) for r in rows]
