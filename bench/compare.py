"""The relay beside the peer, cell by cell: the latency cells' and the sustained steps' tables of
the report, each figure as "pgrelay / peer (ratio)", CPU per committed event for the relay
process, the peer's server process and the PostgreSQL server behind each."""

from __future__ import annotations

import math

from bench.cells import fmt_ms, fmt_n, fmt_ratio, latency_cell, median
from bench.plan import PG_PARTS, LatencyRun, StackResult, commit_mode, per_commit_for

__all__ = [
    "latency_side_by_side",
    "pair",
    "part_us",
    "postgres_parts",
    "step_outcome",
    "sustained_steps",
]

NAN = float("nan")


def pair(ours: float, theirs: float, fmt: str = "n") -> str:
    """``ours / theirs (ratio)``, in ms (``fmt="ms"``, from seconds) or whole numbers."""
    show = fmt_ms if fmt == "ms" else fmt_n
    if math.isnan(ours) and math.isnan(theirs):
        return "n/a"
    ratio = fmt_ratio(ours, theirs)
    return f"{show(ours)} / {show(theirs)}" + ("" if ratio == "n/a" else f" ({ratio})")


def _cells(relay: StackResult, peer: StackResult) -> list[tuple[int, int]]:
    return sorted(set(relay.latency) | set(peer.latency), key=lambda cell: (cell[1], cell[0]))


def _cell(stack: StackResult, cell: tuple[int, int]) -> dict[str, float]:
    runs = stack.latency.get(cell)
    return latency_cell(runs) if runs else {}


def latency_side_by_side(relay: StackResult, peer: StackResult) -> list[str]:
    """One row per latency cell: p50, p99, the server process's CPU per event, the PostgreSQL
    server's CPU per event, and losses, pgrelay against the peer with the ratio."""
    lines = [
        "pgrelay against the peer, cell by cell: `pgrelay / peer (ratio)`, medians of the runs. "
        "`CPU per event` is the server process's own CPU (the relay process; the peer's "
        "uvicorn process) per committed event; `Postgres CPU per event` is the whole PostgreSQL "
        "server's (postmaster and every child: the writers' backends with their triggers, the "
        "stack's own connections, walwriter, checkpointer, I/O workers, autovacuum) over the same "
        "window, per committed event. Both stacks share the one server and take turns: a run "
        "counts every server process but the other stack's backends (idle meanwhile, left out "
        "by their database); a backend that exited during the run (the load generator's, at its "
        "end) is counted through the postmaster's reaped-children time.",
        "",
        "| users | events/s | commit mode | p50 (ms) | p99 (ms) | CPU per event (µs), relay "
        "process / peer server | Postgres CPU per event (µs) | lost + duplicated |",
        "|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for cell in _cells(relay, peer):
        r, p = _cell(relay, cell), _cell(peer, cell)
        faults = " / ".join(
            "n/a" if not c else f"{c['lost'] + c['duplicates']:,.0f}" for c in (r, p)
        )
        lines.append(
            f"| {cell[1]:,} | {cell[0]:,} | {commit_mode(per_commit_for(cell[0]))} "
            f"| {pair(r.get('p50', NAN), p.get('p50', NAN), 'ms')} "
            f"| {pair(r.get('p99', NAN), p.get('p99', NAN), 'ms')} "
            f"| {pair(r.get('cpu_us', NAN), p.get('cpu_us', NAN))} "
            f"| {pair(r.get('pg_us', NAN), p.get('pg_us', NAN))} | {faults} |"
        )
    return [*lines, ""]


def part_us(runs: list[LatencyRun], part: str) -> float:
    """Median µs of PostgreSQL CPU per committed event in one part (bench/plan.py PG_PARTS)."""
    return median(
        [r.postgres[part] / r.committed * 1e6 for r in runs if r.committed and r.postgres]
    )


def postgres_parts(relay: StackResult, peer: StackResult) -> list[str]:
    """The PostgreSQL server's CPU per event by part, pgrelay against the peer."""
    cells = _cells(relay, peer)
    if not cells:
        return []
    lines = [
        "Where the PostgreSQL server's CPU per event goes (µs, `pgrelay / peer`): the writers' "
        "backends (the INSERT, its trigger and commit), the stack's own connections (the relay's "
        "sequencer, log reader and the rest of its connections; the peer's listener) and the "
        "server's background processes.",
        "",
        "| users | events/s | " + " | ".join(PG_PARTS) + " |",
        "|---:|---:|" + "---:|" * len(PG_PARTS),
    ]
    for cell in cells:
        r, p = relay.latency.get(cell, []), peer.latency.get(cell, [])
        row = " | ".join(pair(part_us(r, part), part_us(p, part)) for part in PG_PARTS)
        lines.append(f"| {cell[1]:,} | {cell[0]:,} | {row} |")
    return [*lines, ""]


def step_outcome(step: tuple[int, LatencyRun, bool] | None) -> str:
    """One sustained step as the table shows it: pass or fail, its p99 and what failed it."""
    if step is None:
        return "not run"
    _, run, ok = step
    return (
        f"{'pass' if ok else 'fail'} (p99 {fmt_ms(run.p99)} ms"
        + (f", lost {run.lost:,}" if run.lost else "")
        + (f", duplicated {run.duplicates:,}" if run.duplicates else "")
        + ("" if run.kept_rate else f", written {run.rate:,.0f}/s")
        + ")"
    )


def _per_event(step: tuple[int, LatencyRun, bool] | None, postgres: bool) -> float:
    if step is None or not step[1].committed:
        return NAN
    run = step[1]
    return (run.postgres_cpu if postgres else run.server_cpu) / run.committed * 1e6


def sustained_steps(relay: StackResult, peer: StackResult) -> list[str]:
    """Every step of the sustained search, both stacks on one row per rate."""
    lines = [
        "Each step of the search, both stacks side by side (CPU per committed event as in the "
        "latency cells, `pgrelay / peer`):",
        "",
        "| users | events/s | pgrelay | peer | CPU per event (µs), relay process / peer server "
        "| Postgres CPU per event (µs) |",
        "|---:|---:|---|---|---:|---:|",
    ]
    for users in sorted(set(relay.sustained) | set(peer.sustained)):
        ours = {s[0]: s for s in relay.sustained.get(users, [])}
        theirs = {s[0]: s for s in peer.sustained.get(users, [])}
        for rate in sorted(set(ours) | set(theirs)):
            r, p = ours.get(rate), theirs.get(rate)
            lines.append(
                f"| {users:,} | {rate:,} | {step_outcome(r)} | {step_outcome(p)} "
                f"| {pair(_per_event(r, False), _per_event(p, False))} "
                f"| {pair(_per_event(r, True), _per_event(p, True))} |"
            )
    return [*lines, ""]
