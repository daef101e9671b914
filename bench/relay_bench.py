"""The relay against the physical limits and a peer, side by side in one run.

One run on one machine: a private PostgreSQL server (durable commits), the relay (`relay serve`),
the peer (encode/broadcaster's Postgres backend with Starlette websockets under uvicorn), a bare
websockets server (websockets' ``broadcast()``), the load generator (bench/loadgen.py) and a
client swarm (bench/swarm.py, two processes), all separate processes on 127.0.0.1.

Measured, for the relay and the peer alike: commit-to-client latency (stamped by the writing
statement with ``clock_timestamp()``, read by the client on the same clock) at 200, 1,000 and
4,500 events/s over 100 and 1,000 users; the highest rate sustained for 20 s with p99 under 1 s
and nothing lost; fan-out of 20 events/s to one user with 100, 1,000 and 10,000 connections
(deliveries/s, server CPU per delivery); RSS per idle connection at 1,000 and 10,000 with
browser-like clients (they offer permessage-deflate); 1,000 clients connecting at once; what
happens when the server's database listener is killed. Against the limits: PostgreSQL's own
INSERT/UPDATE rate on an untracked table, one psycopg listener's raw NOTIFY receive rate, and
websockets' raw ``broadcast()`` to the same clients.

    python -m bench.relay_bench [--quick] [--out BENCHMARKS.md] [--plots DIR] [--no-profile]

Writes its Markdown region (between the relay-bench markers) into --out, leaving the rest of
the file as it is; progress goes to stderr. --quick (under a minute) is the smoke mode of the
test suite: tiny runs, every section present, numbers meaningless.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import os
import pickle
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from bench.procs import (
    PY,
    ROOT,
    BareServer,
    Database,
    MachineCpu,
    PeerServer,
    RelayServer,
    SwarmGroup,
    cpu_seconds,
    listener_rate,
    log,
    rss_bytes,
    run_load,
)

__all__ = ["MARK_END", "MARK_START", "SECTIONS", "main"]

MARK_START = "<!-- relay-bench:start -->"
MARK_END = "<!-- relay-bench:end -->"
# Every report has these headings, in this order (the smoke test checks them).
SECTIONS = (
    "## Relay: latency, throughput, fan-out and connections",
    "### Setup",
    "### Commit-to-client latency",
    "### Highest sustained rate",
    "### Fan-out",
    "### Connections",
    "### The limits",
    "### Failure behaviour",
    "### Targets",
    "### Profile of the hot path",
    "### History",
)
PATH_SEGMENTS = (
    "statement → writer's commit",
    "writer's commit → sequenced",
    "sequenced → sequencer's commit",
    "sequencer's commit → client",
)
BATCHES = "sequencer transactions"  # path entry: (per second, rows each)
FANOUT_RATE = 20.0  # events/s to the one user of the fan-out runs
FANOUT_USER = "fan0"  # the load generator's user 0 with prefix "fan"


@dataclass(frozen=True)
class Plan:
    """How much to measure: the full run, or the smoke test's."""

    repeats: int
    lat_seconds: float
    lat_rates: tuple[int, ...]
    lat_users: tuple[int, ...]
    sustain_seconds: float
    sustain_ladder: tuple[int, ...]
    sustain_start: int  # index into the ladder
    sustain_steps: int
    sustain_per_commit: int
    fanout_conns: tuple[int, ...]
    fanout_seconds: Callable[[int], float]
    memory_conns: tuple[int, ...]
    storm: int
    storm_repeats: int
    limit_seconds: float
    listen_count: int
    kill_rate: float
    kill_seconds: float
    drain_timeout: float
    settle: float  # seconds for RSS to settle after connecting; idle CPU is read over 1.5x


FULL = Plan(
    repeats=3,
    lat_seconds=4.0,
    lat_rates=(200, 1000, 4500),
    lat_users=(100, 1000),
    sustain_seconds=20.0,
    sustain_ladder=(1000, 2000, 3000, 4500, 6500, 9000, 13000),
    sustain_start=3,
    sustain_steps=3,
    sustain_per_commit=10,
    fanout_conns=(100, 1000, 10_000),
    fanout_seconds=lambda conns: 5.0 if conns <= 1000 else 3.0,
    memory_conns=(1000, 10_000),
    storm=1000,
    storm_repeats=3,
    limit_seconds=4.0,
    listen_count=50_000,
    kill_rate=200.0,
    kill_seconds=4.0,
    drain_timeout=10.0,
    settle=2.0,
)
QUICK = Plan(
    repeats=1,
    lat_seconds=1.0,
    lat_rates=(1000,),
    lat_users=(100,),
    sustain_seconds=1.0,
    sustain_ladder=(1000, 2000),
    sustain_start=0,
    sustain_steps=1,
    sustain_per_commit=10,
    fanout_conns=(100,),
    fanout_seconds=lambda conns: 1.0,
    memory_conns=(100,),
    storm=100,
    storm_repeats=1,
    limit_seconds=1.0,
    listen_count=2000,
    kill_rate=100.0,
    kill_seconds=1.5,
    drain_timeout=3.0,
    settle=0.5,
)


def per_commit_for(rate: float) -> int:
    """Events per transaction in the latency runs: one, except at 4,500 events/s, where this
    machine cannot commit one durable, captured transaction per event (see the limits)."""
    return 5 if rate >= 4000 else 1


def commit_mode(per_commit: int) -> str:
    return "durable, 1 event/commit" if per_commit == 1 else f"durable, {per_commit} events/commit"


# -- results -----------------------------------------------------------------------------------


def quantile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


@dataclass
class LatencyRun:
    committed: int
    received: int
    distinct: int
    duplicates: int
    kept_rate: bool
    rate: float
    payload: float
    p50: float
    p95: float
    p99: float
    max: float
    commit_p50: float  # relay only: from the event's commit timestamp
    commit_p99: float
    others: float
    server_cpu: float  # seconds of the server process's CPU during the run
    latencies: list[float] = field(default_factory=list, repr=False)
    # The relay's path, segment -> (p50, p99) seconds: see Bench.path_segments.
    path: dict[str, tuple[float, float]] = field(default_factory=dict)

    @property
    def lost(self) -> int:
        return self.committed - self.distinct


@dataclass
class FanoutRun:
    conns: int
    events: int
    deliveries: int
    expected: int
    seconds: float
    cpu: float
    others: float
    p50: float

    @property
    def rate(self) -> float:
        return self.deliveries / self.seconds if self.seconds else 0.0

    @property
    def us_per_delivery(self) -> float:
        return self.cpu / self.deliveries * 1e6 if self.deliveries else float("nan")


@dataclass
class StackResult:
    name: str
    available: bool = True
    why_not: str = ""
    latency: dict[tuple[int, int], list[LatencyRun]] = field(default_factory=dict)
    sustained: dict[int, list[tuple[int, LatencyRun, bool]]] = field(default_factory=dict)
    fanout: dict[int, list[FanoutRun]] = field(default_factory=dict)
    rss_per_conn: dict[int, float] = field(default_factory=dict)
    idle_cpu: dict[int, float] = field(default_factory=dict)  # cores with N idle connections
    storms: list[dict[str, Any]] = field(default_factory=list)
    kill: dict[str, Any] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)


@dataclass
class Stack:
    """One server under test, its clients, and where its results go."""

    server: Any
    dsn: str | None  # its database: None for the bare server (it makes its own events)
    result: StackResult
    swarm: SwarmGroup
    calm: int  # handshakes at a time outside the storms


@dataclass
class Results:
    machine: dict[str, str] = field(default_factory=dict)
    limits: dict[str, list[float]] = field(default_factory=dict)
    stacks: dict[str, StackResult] = field(default_factory=dict)
    profile: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.time)
    seconds: float = 0.0


# -- measuring -----------------------------------------------------------------------------


class Bench:
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

    # -- the pieces ----------------------------------------------------------------------

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
        load = run_load(
            dsn, rate=rate, seconds=seconds, users=users, seq_start=self.next_seq(),
            per_commit=per_commit,
        )  # fmt: skip
        stats = swarm.stats(load["committed"], self.plan.drain_timeout, arrivals=path)
        server_cpu = cpu_seconds(server_pid) - cpu0
        others = cpu.others()
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
            p50=quantile(lat, 0.5),
            p95=quantile(lat, 0.95),
            p99=quantile(lat, 0.99),
            max=max(lat, default=float("nan")),
            commit_p50=quantile(commit_lat, 0.5),
            commit_p99=quantile(commit_lat, 0.99),
            others=others,
            server_cpu=server_cpu,
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
            name: (quantile(values, 0.5), quantile(values, 0.99))
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
            p50=quantile(stats["latencies"], 0.5),
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

    # -- one stack -----------------------------------------------------------------------

    def run_stacks(self, stacks: list[Stack]) -> None:
        """Measures the stacks side by side: each cell's runs alternate between them, so a
        neighbour's load on the shared machine falls on both alike."""
        plan = self.plan
        users = [str(u) for u in range(max(plan.memory_conns))]
        for st in stacks:  # each on its fresh server, the others idle with no clients
            self._memory_and_storm(st.server, st.swarm, st.result, users, st.calm)
            st.swarm.close()
        with_db = [st for st in stacks if st.dsn is not None]
        for n_users in sorted(plan.lat_users, reverse=True):
            for st in with_db:
                st.swarm.close()
                answer = st.swarm.connect(st.server.kind, st.server.url, users[:n_users],
                                          concurrency=st.calm, retries=3)  # fmt: skip
                log(f"{st.server.kind}: {answer['connected']} clients for the latency runs")
            self._latency(with_db, n_users)
            for st in with_db:
                self._sustained(st.server, st.swarm, st.dsn or "", st.result, n_users)
        for st in stacks:
            st.swarm.close()
        for st in stacks:
            self._fanout(st.server, st.swarm, st.dsn, st.result)
            st.swarm.close()
        for st in with_db:  # last: the peer does not recover from it
            self._kill(st.server, st.swarm, st.dsn or "", st.result, users[:100], st.calm)

    def _memory_and_storm(
        self, server: Any, swarm: SwarmGroup, result: StackResult, users: list[str], calm: int
    ) -> None:
        plan = self.plan
        kind = server.kind
        # Warm-up: code paths loaded, first allocations made; then the baseline.
        swarm.connect(kind, server.url, [f"w{i}" for i in range(20)], concurrency=1)
        swarm.close()
        time.sleep(plan.settle)
        base = rss_bytes(server.pid)
        connected = 0
        for index, count in enumerate(sorted(plan.memory_conns)):
            batch = users[connected:count]
            if index == 0:  # the first population connects all at once: the storm
                answer = swarm.connect(
                    kind, server.url, batch[: plan.storm], concurrency=plan.storm, retries=3
                )
                result.storms.append(answer)
                log(f"{kind}: storm of {plan.storm}: {answer['seconds']:.2f} s, "
                    f"{answer['failed']} failed {answer['errors']}")  # fmt: skip
                batch = batch[plan.storm :]
            if batch:
                answer = swarm.connect(kind, server.url, batch, concurrency=calm, retries=3)
            connected = count
            time.sleep(plan.settle)
            rss = rss_bytes(server.pid)
            result.rss_per_conn[count] = (rss - base) / count
            profile = self.do_profile and kind == "relay" and count == max(plan.memory_conns)
            with self._profiling(server.pid, 1.5 * plan.settle, profile, "idle", rate=1000):
                cpu0, t0 = cpu_seconds(server.pid), time.monotonic()
                time.sleep(1.5 * plan.settle)
            result.idle_cpu[count] = (cpu_seconds(server.pid) - cpu0) / (time.monotonic() - t0)
            log(f"{kind}: {count} idle connections, "
                f"{result.rss_per_conn[count] / 1000:.1f} kB each, "
                f"idle CPU {result.idle_cpu[count]:.3f} cores")  # fmt: skip
        # More storms on the warm server: the median of all of them is reported. (No retries:
        # the clients are closed right after.)
        for _ in range(plan.storm_repeats - 1):
            swarm.close()
            time.sleep(1.0)
            answer = swarm.connect(kind, server.url, users[: plan.storm], concurrency=plan.storm)
            result.storms.append(answer)
            log(f"{kind}: storm of {plan.storm}: {answer['seconds']:.2f} s, "
                f"{answer['failed']} failed {answer['errors']}")  # fmt: skip

    def _latency(self, stacks: list[Stack], n_users: int) -> None:
        plan = self.plan
        for repeat in range(plan.repeats):
            for rate in plan.lat_rates:
                for st in stacks:
                    name = st.result.name
                    profile = (
                        self.do_profile and name == "relay" and repeat == 0
                        and (rate, n_users) == (1000, 1000)
                    )  # fmt: skip
                    with self._profiling(st.server.pid, plan.lat_seconds + 1, profile, "latency"):
                        run = self.latency_run(
                            st.swarm, st.dsn or "", rate=rate, users=n_users,
                            seconds=plan.lat_seconds, per_commit=per_commit_for(rate),
                            server_pid=st.server.pid, path=name == "relay",
                        )  # fmt: skip
                    st.result.latency.setdefault((rate, n_users), []).append(run)
                    log(f"{name}: {rate}/s over {n_users} users: p50 {run.p50 * 1e3:.2f} "
                        f"p99 {run.p99 * 1e3:.2f} max {run.max * 1e3:.1f} ms, "
                        f"{run.distinct}/{run.committed} delivered, rate {run.rate:.0f}, "
                        f"others {run.others:.2f}")  # fmt: skip

    def _sustained(
        self, server: Any, swarm: SwarmGroup, dsn: str, result: StackResult, n_users: int
    ) -> None:
        """A ladder: up while a step passes, down while it fails; stops at the first change
        of direction, or after sustain_steps steps."""
        plan = self.plan
        ladder = plan.sustain_ladder
        index = plan.sustain_start
        steps: list[tuple[int, LatencyRun, bool]] = []
        direction = 0
        for _ in range(plan.sustain_steps):
            rate = ladder[index]
            run = self.latency_run(
                swarm, dsn, rate=rate, users=n_users, seconds=plan.sustain_seconds,
                per_commit=plan.sustain_per_commit, server_pid=server.pid,
            )  # fmt: skip
            run.latencies = []
            ok = run.kept_rate and run.lost == 0 and run.duplicates == 0 and run.p99 < 1.0
            steps.append((rate, run, ok))
            log(f"{result.name}: sustain {rate}/s over {n_users} users: "
                f"{'pass' if ok else 'fail'} (rate {run.rate:.0f}, lost {run.lost}, "
                f"p99 {run.p99 * 1e3:.1f} ms)")  # fmt: skip
            step = 1 if ok else -1
            if direction and step != direction:
                break
            direction = step
            index += step
            if not 0 <= index < len(ladder):
                break
        result.sustained[n_users] = steps

    def _fanout(self, server: Any, swarm: SwarmGroup, dsn: str | None, result: StackResult) -> None:
        plan = self.plan
        kind = server.kind
        for conns in plan.fanout_conns:
            swarm.close()
            time.sleep(0.5)
            # The first subscribe alone: on the peer it LISTENs, the others only join it.
            swarm.connect(kind, server.url, [FANOUT_USER], concurrency=1)
            swarm.connect(kind, server.url, [FANOUT_USER] * (conns - 1), concurrency=200,
                          retries=3)  # fmt: skip
            profile = self.do_profile and kind == "relay" and conns == 1000
            for repeat in range(plan.repeats):
                with self._profiling(server.pid, plan.fanout_seconds(conns) + 2,
                                     profile and repeat == 0, "fanout"):  # fmt: skip
                    run = self.fanout_run(swarm, server, dsn, conns, plan.fanout_seconds(conns))
                result.fanout.setdefault(conns, []).append(run)
                log(f"{result.name}: fan-out to {conns}: {run.rate:,.0f} deliveries/s, "
                    f"{run.us_per_delivery:.1f} us CPU each, {run.deliveries}/{run.expected}, "
                    f"others {run.others:.2f}")  # fmt: skip

    @contextlib.contextmanager
    def _profiling(
        self, pid: int, seconds: float, enabled: bool, name: str, rate: int = 250
    ) -> Iterator[None]:
        spy = shutil.which("py-spy") or str(Path(PY).parent / "py-spy")
        if not enabled or not Path(spy).exists():
            yield
            return
        out = self.workdir / f"relay-{name}.raw"
        proc = subprocess.Popen(
            [spy, "record", "-p", str(pid), "-d", str(int(seconds) + 1), "-r", str(rate),
             "-f", "raw", "-o", str(out), "--nonblocking"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        time.sleep(0.5)
        try:
            yield
        finally:
            try:
                proc.wait(seconds + 30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if out.exists():
                self.results.profile[name] = summarize_profile(out.read_text())
            else:
                assert proc.stderr is not None
                self.results.profile[name] = {"error": proc.stderr.read().decode()[-300:]}

    def _kill(
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
            killed = self._terminate_peer_listener()
        thread.join()
        committed = int(outcome["load"]["committed"])
        stats = swarm.stats(committed, self.plan.drain_timeout)
        result.kill = {
            "committed": committed,
            "delivered": len(stats["seqs"]),
            "killed": len(killed),
        }
        log(f"{kind}: listener killed mid-run: {len(stats['seqs'])}/{committed} delivered")

    def _terminate_peer_listener(self) -> list[int]:
        import psycopg

        with psycopg.connect(self.db.dsn("postgres"), autocommit=True) as conn:
            rows = conn.execute(
                "SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = 'peer' AND backend_type = 'client backend'"
                " AND application_name <> 'bench-loadgen' AND pid <> pg_backend_pid()"
            ).fetchall()
        return [int(r[0]) for r in rows]

    # -- the whole run -------------------------------------------------------------------

    def run(self) -> Results:
        results = self.results
        results.machine = machine_info()
        self.db.start()
        try:
            results.machine["postgres"] = self.db.version()
            log("limits")
            self.measure_limits()
            relay = StackResult("relay")
            peer = StackResult("peer")
            bare = StackResult("bare websockets")
            results.stacks.update(relay=relay, peer=peer, bare=bare)
            missing = [m for m in ("broadcaster", "starlette", "uvicorn", "asyncpg")
                       if importlib.util.find_spec(m) is None]  # fmt: skip
            if missing:
                peer.available = False
                peer.why_not = f"not installed here: {', '.join(missing)}"
                log(f"peer skipped: {peer.why_not}")
            self.relay_base = self.db.pipeline()[1]
            with contextlib.ExitStack() as stack:
                relay_server = RelayServer(self.db.dsn("relay")).start()
                stack.callback(relay_server.stop)
                self.servers[relay_server.pid] = relay_server
                stacks = [Stack(relay_server, self.db.dsn("relay"), relay, SwarmGroup(2), 200)]
                stack.callback(stacks[0].swarm.stop)
                if peer.available:
                    peer_server = PeerServer(self.db.dsn("peer"), self.workdir / "peer.log")
                    peer_server.start()
                    stack.callback(peer_server.stop)
                    stack.callback(lambda: peer.errors.update(peer_server.errors()))
                    # Subscribing is serial on the peer: broadcaster's one asyncpg connection
                    # refuses a second LISTEN while one is in flight (see the storms).
                    stacks.append(Stack(peer_server, self.db.dsn("peer"), peer, SwarmGroup(2), 1))
                    stack.callback(stacks[-1].swarm.stop)
                self.run_stacks(stacks)
            self.servers.clear()
            with contextlib.ExitStack() as stack:
                bare_server = BareServer().start()
                stack.callback(bare_server.stop)
                swarm = SwarmGroup(2)
                stack.callback(swarm.stop)
                self.run_stacks([Stack(bare_server, None, bare, swarm, 200)])
        finally:
            self.db.stop()
        results.seconds = time.time() - results.started
        return results


def summarize_profile(raw: str) -> dict[str, Any]:
    """py-spy's collapsed stacks as shares of the samples: by function (self) and inclusive."""
    own: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = 0
    for line in raw.splitlines():
        if not line.strip():
            continue
        stack, _, count_text = line.rpartition(" ")
        count = int(count_text)
        frames = [_function(f) for f in stack.split(";")]
        total += count
        own[frames[-1]] = own.get(frames[-1], 0) + count
        for name in set(frames):
            incl[name] = incl.get(name, 0) + count
    top_self = sorted(own.items(), key=lambda kv: -kv[1])[:12]
    watch = ("LogReader._read_all", "event_from_row", "Hub.deliver", "Router.route",
             "Session.offer", "Connection.write_direct", "Connection._can_write_now",
             "Event.wire_frame", "_SelectorSocketTransport.write", "Hub.written_directly",
             "Sequencer._serve", "AsyncConnection.notifies", "WebsocketShell.sweep",
             "Connection.check", "Session.tick", "Connection.keepalive")  # fmt: skip
    return {
        "samples": total,
        "self": [(name, count / total) for name, count in top_self] if total else [],
        "inclusive": {name: incl.get(name, 0) / total for name in watch} if total else {},
    }


def _function(frame: str) -> str:
    """'Router.route (relay/router.py:201)' -> 'Router.route'."""
    return frame.split(" (", 1)[0]


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine_info() -> dict[str, str]:
    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = "?"
    with contextlib.suppress(OSError):
        kb = int(Path("/proc/meminfo").read_text().split("\n", 1)[0].split()[1])
        mem = f"{kb / 1024**2:.0f} GiB"
    return {
        "cpu": f"{os.cpu_count()} cores ({model})",
        "memory": mem,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "packages": ", ".join(
            f"{p} {_version(p)}"
            for p in ("websockets", "psycopg", "broadcaster", "starlette", "uvicorn", "asyncpg")
        ),
    }


# -- the report ----------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke mode: under a minute")
    parser.add_argument("--out", type=Path, help="write the region into this Markdown file")
    parser.add_argument("--plots", type=Path, help="folder for the PNG plots (default: bench/)")
    parser.add_argument("--json", type=Path, help="also dump the raw results here")
    parser.add_argument("--save", type=Path, help="keep the results (pickle) to --render later")
    parser.add_argument("--render", type=Path, help="measure nothing: report saved results")
    parser.add_argument("--no-profile", action="store_true", help="skip the py-spy profile")
    args = parser.parse_args(argv)
    from bench.report import render, replace_region, write_plots

    plan = QUICK if args.quick else FULL
    with tempfile.TemporaryDirectory(prefix="relay-bench-") as tmp:
        workdir = Path(tmp)
        if args.render:
            results = pickle.loads(args.render.read_bytes())
        else:
            bench = Bench(plan, workdir, profile=not args.no_profile and not args.quick)
            results = bench.run()
        if args.save:
            args.save.write_bytes(pickle.dumps(results))
        plots_dir = args.plots or (workdir if args.quick else ROOT / "bench")
        plots = write_plots(results, plots_dir)
        if args.json:
            args.json.write_text(json.dumps(results_to_json(results), indent=1))
        region = render(results, plan, quick=args.quick, plots=plots)
    sys.stdout.write(region + "\n")
    if args.out:
        replace_region(args.out, region)
        log(f"wrote {args.out}")
    return 0


def results_to_json(results: Results) -> dict[str, Any]:
    def enc(value: Any) -> Any:
        if hasattr(value, "__dataclass_fields__"):
            return {k: enc(v) for k, v in vars(value).items() if k != "latencies"}
        if isinstance(value, dict):
            return {str(k): enc(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [enc(v) for v in value]
        return value

    out: dict[str, Any] = enc(results)
    return out


if __name__ == "__main__":
    sys.exit(main())
