"""The chaos checker: what every client received against what the database committed.

The truth is the database: the rows of ``generations`` at the end are exactly what was committed
(a commit that failed with an unknown outcome does not matter: the row is there or it is not).
Every client's first subscription resumes from one cursor taken before the writer starts, so every
row committed afterwards must reach the client of its user, whenever and wherever it connects:
lost, duplicated, out of order and leaked (a row of another user) are exact counts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tests.support.stats import percentile

__all__ = ["RSS_LIMIT_MIB", "Fault", "bar_violations", "check", "resume_outcomes"]

# The memory bound every scenario is held to: the relay's container limit in deploy/k8s.
RSS_LIMIT_MIB = 512


@dataclass
class Fault:
    name: str
    t0: float  # wall clock when it was injected
    t1: float = 0.0  # when the injection step returned
    # When the relay was hit (e.g. its `listener_lost` line): events committed before it may
    # still have been read through the old connection; recovery waits for one committed after.
    effective: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


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


def resume_outcomes(
    swarm: dict[str, Any], faults: Sequence[Fault], down: Sequence[tuple[float, float]]
) -> dict[str, Any]:
    """How the normal clients' resumes ended, given the faults and the windows (wall clock, start
    and end) when the database did not answer: resumes answered (`subscribed`); refused with
    1011 `replay_unavailable` while it was down, and while it answered (which no resume may be);
    handshakes answered 503 while it answered (the relay not ready: its log reader reconnecting),
    with the latest such refusal in seconds after the fault or the database's return before it."""
    sessions = [s for c in swarm["clients"] if c["kind"] == "normal" for s in c["sessions"]]

    def is_down(t: float) -> bool:
        return any(start <= t <= end for start, end in down)

    refused = [
        s["end"] for s in sessions if s["code"] == 1011 and s["reason"] == "replay_unavailable"
    ]
    anchors = [f.t0 for f in faults] + [end for _, end in down]
    not_ready = [
        s["end"] - max((a for a in anchors if a <= s["end"]), default=s["end"])
        for s in sessions
        if s["error"] == "http 503" and not is_down(s["end"])
    ]
    return {
        "resumes": sum(1 for s in sessions if s["subscribed"]),
        "refused_resumes_db_down": sum(1 for t in refused if is_down(t)),
        "refused_resumes_db_up": sum(1 for t in refused if not is_down(t)),
        "not_ready_db_up": len(not_ready),
        "not_ready_db_up_max_s": round(max(not_ready), 3) if not_ready else None,
    }
