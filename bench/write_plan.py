"""What the write-overhead benchmark (bench/write_overhead.py) measures and keeps: the modes and
writer counts, where CPU time is counted, and the records of runs, cells and the setup."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from relay.ops.config import Settings

__all__ = [
    "BARE",
    "CLIENTS",
    "CONNECT_TIMEOUT",
    "CPU_PARTS",
    "MODES",
    "NOTIFY_OFF",
    "NOTIFY_ON",
    "PGBENCH_WORKLOAD",
    "RELAY",
    "ROWS",
    "SEQUENCED",
    "SEQUENCER_APP",
    "SERVER_PARTS",
    "TARGET",
    "UNTRACKED",
    "WRITERS",
    "WRITER_APP",
    "BenchError",
    "Cell",
    "Run",
    "Setup",
]

ROWS = 10_000
WRITERS = (1, 4)
CONNECT_TIMEOUT = 60.0  # seconds for a writer or the sequencer to connect
TARGET = 0.75  # from the issue: notify off keeps 75 % of untracked throughput, 4 writers
RELAY = Settings()  # the relay's defaults: poll interval, batch size, listen window

UNTRACKED = "untracked"
NOTIFY_ON = "tracked, notify on"
NOTIFY_OFF = "tracked, notify off"
BARE = "bare outbox trigger"
MODES = (UNTRACKED, NOTIFY_ON, NOTIFY_OFF, BARE)
SEQUENCED = frozenset({NOTIFY_ON, NOTIFY_OFF, BARE})
CLIENTS = ("pgbench", "python")

WRITER_APP = "bench-writer"
SEQUENCER_APP = "bench-sequencer"
PGBENCH_WORKLOAD = (
    "- Workload: pgbench (the server's own), `-M prepared`, `-c N -j N` for N writers, ",
    ", custom script `\\set id random(1, 10000)` then `UPDATE thumbnails SET share_click_count"
    " = share_click_count + 1 WHERE id = :id`: one durable commit per UPDATE",
)

# Where CPU time goes, per commit. "others" is the rest of the machine, in cores.
CPU_PARTS = (
    "writer backends",
    "sequencer backend",
    "server background",
    "load generator",
    "sequencer process",
)
SERVER_PARTS = CPU_PARTS[:3]


@dataclass
class Run:
    """One measured run of one cell."""

    commits: int
    seconds: float
    backlog: int  # inbox rows left when the writers stopped
    drained: bool  # the sequencer emptied the inbox afterwards
    cpu: dict[str, float]  # CPU seconds per part over the measured window
    others: float  # cores used by everything else on the machine meanwhile

    @property
    def tps(self) -> float:
        return self.commits / self.seconds

    def cpu_us(self, part: str) -> float:
        return self.cpu[part] / self.commits * 1e6 if self.commits else 0.0


@dataclass
class Cell:
    mode: str
    writers: int
    runs: list[Run] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(run.tps for run in self.runs)

    def median_cpu_us(self, *parts: str) -> float:
        return statistics.median(sum(run.cpu_us(p) for p in parts) for run in self.runs)


@dataclass
class Setup:
    server_version: str
    settings: dict[str, str]
    cpus: int
    filesystem: str
    seconds: float
    repeats: int
    client: str
    command: str
    script: str
    load: list[float]  # 1-minute load average before each run


class BenchError(Exception):
    """A run could not be measured, or its counts do not add up: the numbers would mean nothing."""
