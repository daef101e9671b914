"""The write-overhead benchmark's Markdown: the setup, throughput against untracked (medians and
paired by round), the issue's target, and CPU per commit by part."""

from __future__ import annotations

import platform
import statistics
from collections.abc import Sequence

from bench.write_plan import (
    CPU_PARTS,
    NOTIFY_OFF,
    PGBENCH_WORKLOAD,
    RELAY,
    ROWS,
    SEQUENCED,
    SERVER_PARTS,
    TARGET,
    UNTRACKED,
    WRITERS,
    Cell,
    Setup,
)

__all__ = ["render", "target_line"]


def _base(cell: Cell, cells: Sequence[Cell]) -> Cell:
    return next(c for c in cells if c.mode == UNTRACKED and c.writers == cell.writers)


def _ratio(cell: Cell, cells: Sequence[Cell]) -> float:
    """Median throughput against the untracked median."""
    return cell.median / _base(cell, cells).median


def _paired(cell: Cell, cells: Sequence[Cell]) -> float:
    """The median, over rounds, of each run against the untracked run of the same round: the
    runs of a round are minutes apart at most, so drift in the machine's load cancels out."""
    base = _base(cell, cells)
    return statistics.median(run.tps / b.tps for run, b in zip(cell.runs, base.runs, strict=True))


def target_line(cells: Sequence[Cell]) -> str:
    """Whether notify off keeps the issue's share of untracked throughput with the most writers."""
    off = next(c for c in cells if c.mode == NOTIFY_OFF and c.writers == max(WRITERS))
    paired, ratio = _paired(off, cells), _ratio(off, cells)
    verdict = "**met**" if paired >= TARGET else "**not met**"
    return (
        f"Target (from the issue): {NOTIFY_OFF} at {TARGET:.0%} or more of {UNTRACKED} with "
        f"{max(WRITERS)} writers: {verdict} ({paired:.0%} paired by round; medians {ratio:.0%})."
    )


def render(cells: Sequence[Cell], setup: Setup) -> str:
    settings = ", ".join(f"{name}={value}" for name, value in setup.settings.items())
    if setup.client == "pgbench":
        workload = "".join((PGBENCH_WORKLOAD[0], f"`-T {int(setup.seconds)}`", PGBENCH_WORKLOAD[1]))
    else:
        workload = (
            "- Workload: each writer (one Python process, one connection) loops `UPDATE "
            "thumbnails SET share_click_count = share_click_count + 1 WHERE id = <random id>` "
            "in autocommit: one durable commit per UPDATE"
        )
    lines = [
        "Setup:",
        "",
        f"- PostgreSQL {setup.server_version} (`SHOW server_version`), a private server on "
        "127.0.0.1 (`relay.demo.pgserver.PgServer`), clients over TCP",
        f"- CPUs: {setup.cpus}; Python {platform.python_version()}; data folder on "
        f"{setup.filesystem}",
        f"- Durable commits: {settings}",
        f"- {setup.seconds:g} s per run, {setup.repeats} repeat(s) per cell, interleaved; each "
        f"run on a fresh table: {ROWS:,} rows, VACUUM ANALYZE, CHECKPOINT",
        workload,
        "- Tracked modes and the bare trigger: the relay's sequencer (`relay.pg.sequencer`, "
        f"batches of {RELAY.sequencer_batch}, looping while a batch is full) in a process of "
        "its own, polling the inbox adaptively (the command's batch window after a batch that "
        f"moved rows, doubling to {RELAY.poll_interval * 1000:g} ms while it finds none); with "
        "notify on, a `relay_inbox` doorbell ends its wait",
        f"- Load average (1 min) before the runs: {min(setup.load):.2f} to "
        f"{max(setup.load):.2f}, median {statistics.median(setup.load):.2f}",
        f"- Install script: {setup.script}",
        f"- Command: `{setup.command}`",
        "",
        "| mode | writers | median tps | vs untracked | paired by round | runs (tps) "
        "| inbox at the end |",
        "|---|---:|---:|---:|---:|---|---|",
    ]
    for cell in cells:
        runs = ", ".join(f"{run.tps:,.0f}" for run in cell.runs)
        if cell.mode in SEQUENCED:
            backlog = max(run.backlog for run in cell.runs)
            state = "drained" if all(run.drained for run in cell.runs) else "**not drained**"
            inbox = f"{state} (≤ {backlog:,} rows left when the writers stopped)"
        else:
            inbox = "n/a"
        lines.append(
            f"| {cell.mode} | {cell.writers} | {cell.median:,.0f} | {_ratio(cell, cells):.0%} "
            f"| {_paired(cell, cells):.0%} | {runs} | {inbox} |"
        )
    lines += [
        "",
        "`vs untracked`: median against median; `paired by round`: the median of each run "
        "against the untracked run of the same round.",
        "",
        target_line(cells),
        "",
        "CPU time per commit in µs (median of the runs); `others` is the CPU the "
        "rest of the machine used during the runs, in cores (highest of the runs):",
        "",
        "| mode | writers | " + " | ".join(CPU_PARTS) + " | server total | all measured | others |",
        "|---|---:|" + "---:|" * (len(CPU_PARTS) + 3),
    ]
    for cell in cells:
        parts = " | ".join(f"{cell.median_cpu_us(part):,.0f}" for part in CPU_PARTS)
        server = cell.median_cpu_us(*SERVER_PARTS)
        measured = cell.median_cpu_us(*CPU_PARTS)
        others = max(run.others for run in cell.runs)
        lines.append(
            f"| {cell.mode} | {cell.writers} | {parts} | {server:,.0f} | {measured:,.0f} "
            f"| {others:.2f} |"
        )
    lines.append("")
    return "\n".join(lines)
