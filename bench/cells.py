"""The relay benchmark's figures as the report shows them: repeated runs folded into one cell
(medians; sums of losses), and the number formats of the tables ("n/a" for a missing value)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

from bench.plan import BATCHES, PATH_SEGMENTS, FanoutRun, LatencyRun, Results, StackResult

__all__ = [
    "batches",
    "cell_of",
    "fan_of",
    "fanout_cell",
    "fanout_max",
    "fmt_f",
    "fmt_ms",
    "fmt_n",
    "fmt_pct",
    "fmt_ratio",
    "fmt_status",
    "latency_cell",
    "latency_summary",
    "median",
    "profile_self",
    "profile_share",
    "segment",
    "stack_label",
    "sustained_best",
    "sustained_exact",
]


def median(values: Sequence[float]) -> float:
    values = [v for v in values if not math.isnan(v)]
    return statistics.median(values) if values else float("nan")


def fmt_ms(seconds: float) -> str:
    if math.isnan(seconds):
        return "n/a"
    ms = seconds * 1e3
    return f"{ms:.2f}" if ms < 10 else f"{ms:.1f}" if ms < 100 else f"{ms:,.0f}"


def fmt_f(value: float, digits: int = 1) -> str:
    return "n/a" if math.isnan(value) else f"{value:.{digits}f}"


def fmt_n(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:,.0f}"


def fmt_ratio(a: float, b: float) -> str:
    if math.isnan(a) or math.isnan(b) or not b:
        return "n/a"
    return f"{a / b:.2f}x" if a / b < 10 else f"{a / b:.0f}x"


def fmt_pct(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value * 100:.0f} %"


def fmt_status(ok: bool | None) -> str:
    """Met, not met, or not measured (None: the run has no figure that decides it)."""
    return "**not measured**" if ok is None else "**met**" if ok else "**not met**"


def stack_label(key: str) -> str:
    return {
        "relay": "pgrelay",
        "relay-supabase": "pgrelay, Supabase dialect",
        "peer": "peer (broadcaster)",
        "bare": "bare websockets",
    }[key]


def latency_cell(runs: list[LatencyRun]) -> dict[str, float]:
    return {
        "p50": median([r.p50 for r in runs]),
        "p95": median([r.p95 for r in runs]),
        "p99": median([r.p99 for r in runs]),
        "max": median([r.max for r in runs]),
        "commit_p50": median([r.commit_p50 for r in runs]),
        "commit_p99": median([r.commit_p99 for r in runs]),
        "rate": median([r.rate for r in runs]),
        "payload": median([r.payload for r in runs]),
        "lost": sum(r.lost for r in runs),
        "committed": sum(r.committed for r in runs),
        "duplicates": sum(r.duplicates for r in runs),
        "others": max(r.others for r in runs),
        "kept": all(r.kept_rate for r in runs),
        "cpu_us": median([r.server_cpu / r.committed * 1e6 for r in runs if r.committed]),
        "pg_us": median([r.postgres_cpu / r.committed * 1e6 for r in runs if r.committed]),
    }


def fanout_cell(runs: list[FanoutRun]) -> dict[str, float]:
    return {
        "rate": median([r.rate for r in runs]),
        "us": median([r.us_per_delivery for r in runs]),
        "cores": median([r.cpu / r.seconds if r.seconds else 0.0 for r in runs]),
        "complete": all(r.deliveries >= r.expected for r in runs),
        "deliveries": sum(r.deliveries for r in runs),
        "expected": sum(r.expected for r in runs),
        "others": max(r.others for r in runs),
    }


def sustained_best(steps: list[tuple[int, LatencyRun, bool]]) -> tuple[float, LatencyRun | None]:
    passed = [(rate, run) for rate, run, ok in steps if ok]
    if not passed:
        return float("nan"), None
    rate, run = max(passed, key=lambda item: item[0])
    return float(rate), run


def sustained_exact(steps: list[tuple[int, LatencyRun, bool]]) -> bool:
    """Whether the highest step passed is the stack's limit on the ladder (a step above it
    failed), not only a lower bound (the search ran out of steps while passing)."""
    best, _ = sustained_best(steps)
    return not math.isnan(best) and any(not ok and rate > best for rate, _, ok in steps)


def fanout_max(stack: StackResult) -> tuple[float, int]:
    best, at = float("nan"), 0
    for conns, runs in stack.fanout.items():
        rate = fanout_cell(runs)["rate"]
        if math.isnan(best) or rate > best:
            best, at = rate, conns
    return best, at


def cell_of(stack: StackResult, rate: int, users: int) -> dict[str, float]:
    """One latency cell folded (latency_cell), or {} when the run has no such cell."""
    runs = stack.latency.get((rate, users))
    return latency_cell(runs) if runs else {}


def segment(stack: StackResult, rate: int, users: int, index: int) -> tuple[float, float]:
    """One step of the relay's path (PATH_SEGMENTS[index]) in a cell: median p50 and p99."""
    name = PATH_SEGMENTS[index]
    runs = [r for r in stack.latency.get((rate, users), []) if name in r.path]
    return median([r.path[name][0] for r in runs]), median([r.path[name][1] for r in runs])


def batches(stack: StackResult, rate: int, users: int) -> tuple[float, float]:
    """The sequencer's transactions per second and log rows each in a cell (medians)."""
    runs = [r for r in stack.latency.get((rate, users), []) if BATCHES in r.path]
    return median([r.path[BATCHES][0] for r in runs]), median([r.path[BATCHES][1] for r in runs])


def fan_of(stack: StackResult, conns: int, key: str) -> float:
    runs = stack.fanout.get(conns)
    return float(fanout_cell(runs)[key]) if runs else float("nan")


def profile_share(results: Results, profile: str, name: str) -> float:
    """A function's inclusive share of one profile's samples (nan: not profiled)."""
    found: Any = results.profile.get(profile, {}).get("inclusive", {}).get(name, float("nan"))
    return float(found)


def profile_self(results: Results, profile: str, name: str) -> float:
    """A function's own share of one profile's samples, if among the top ones (else nan)."""
    for function, share in results.profile.get(profile, {}).get("self", []):
        if function == name:
            return float(share)
    return float("nan")


def latency_summary(results: Results) -> str:
    """The latency cells as a plain table: medians over the repeats, the server's CPU per
    event, what else ran on the machine (cores, the most of any repeat), losses."""
    lines = [
        "stack  rate/s  users  runs  p50 ms  p99 ms  cpu us/event  others  lost  dup",
    ]
    for name, stack in results.stacks.items():
        for (rate, users), runs in sorted(stack.latency.items()):
            cell = latency_cell(runs)
            lines.append(
                f"{name:5}  {rate:6}  {users:5}  {len(runs):4}  {fmt_ms(cell['p50']):>6}  "
                f"{fmt_ms(cell['p99']):>6}  {cell['cpu_us']:12.0f}  {cell['others']:6.2f}  "
                f"{cell['lost']:4}  {cell['duplicates']:3}"
            )
    lines += [f"{key}: {value}" for key, value in results.machine.items() if "load" in key]
    return "\n".join(lines)
