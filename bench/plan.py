"""What the relay benchmark measures and what it keeps: the plan (full or quick), the report's
markers and headings, and the result records. Shared by bench/relay_bench.py (which measures) and
bench/report.py (which writes the Markdown region and the plots); it imports neither."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "BAR",
    "BATCHES",
    "FANOUT_RATE",
    "FANOUT_USER",
    "FULL",
    "MARK_END",
    "MARK_START",
    "PATH_SEGMENTS",
    "PG_BACKGROUND",
    "PG_OWN",
    "PG_PARTS",
    "PG_WRITERS",
    "QUICK",
    "SECTIONS",
    "Bar",
    "FanoutRun",
    "LatencyRun",
    "Plan",
    "Results",
    "StackResult",
    "commit_mode",
    "per_commit_for",
]

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
# The PostgreSQL server's CPU during a latency run, by part (bench/measure.py): the writers'
# backends (the load generator's: they exit when it finishes, so the postmaster's reaped-children
# time), the stack's own live connections (the relay's sequencer, reader and others; the peer's
# listener), and the rest (postmaster, walwriter, checkpointer, I/O workers, autovacuum). The
# other stack's backends, idle meanwhile, are left out.
PG_WRITERS = "writers' backends"
PG_OWN = "the stack's connections"
PG_BACKGROUND = "background"
PG_PARTS = (PG_WRITERS, PG_OWN, PG_BACKGROUND)
BATCHES = "sequencer transactions"  # path entry: (per second, rows each)
FANOUT_RATE = 20.0  # events/s to the one user of the fan-out runs
FANOUT_USER = "fan0"  # the load generator's user 0 with prefix "fan"


@dataclass(frozen=True)
class Bar:
    """Issue 12's targets, as the report judges them (bench/findings.py)."""

    p50_1000: float = 0.0015  # seconds, 1,000 users at 1,000 events/s
    p99_1000: float = 0.005
    cpu_ratio: float = 2.0  # relay process CPU per event against the peer server's, there
    postgres_ratio: float = 1.5  # PostgreSQL CPU per event against the peer's, there
    p99_4500: float = 0.020  # seconds, 100 and 1,000 users at 4,500 events/s
    sustained_ratio: float = 1.5  # highest rate sustained at 1,000 users against the peer's
    fanout_us: float = 17.5  # relay CPU per delivery at 1,000 connections
    idle_kb: float = 19.7  # RSS per idle connection at 10,000


BAR = Bar()


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
    # Up to 25,000 and five steps from 4,500: each stack climbs until it fails, so the ratio of
    # the two highest rates (issue 12: the relay at least 1.5x the peer's) is measured, not a
    # pair of lower bounds.
    sustain_ladder=(1000, 2000, 3000, 4500, 6500, 9000, 13000, 18000, 25000),
    sustain_start=3,
    sustain_steps=5,
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
    # Seconds of the whole PostgreSQL server's CPU during the run, by part (PG_PARTS).
    postgres: dict[str, float] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list, repr=False)
    # The relay's path, segment -> (p50, p99) seconds: see Bench.path_segments.
    path: dict[str, tuple[float, float]] = field(default_factory=dict)

    @property
    def lost(self) -> int:
        return self.committed - self.distinct

    @property
    def postgres_cpu(self) -> float:
        """Seconds of the PostgreSQL server's CPU for this run's stack (nan: not measured)."""
        return sum(self.postgres.values()) if self.postgres else float("nan")


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
class Results:
    machine: dict[str, str] = field(default_factory=dict)
    limits: dict[str, list[float]] = field(default_factory=dict)
    stacks: dict[str, StackResult] = field(default_factory=dict)
    profile: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.time)
    seconds: float = 0.0
