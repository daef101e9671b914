"""The relay benchmark's Markdown region and plots (bench/relay_bench.py measures)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bench.relay_bench import FanoutRun, LatencyRun, Plan, Results, StackResult

__all__ = ["render", "replace_region", "write_plots"]

CDF_PLOT = "relay_latency_cdf.png"
FANOUT_PLOT = "relay_fanout.png"
# The peer's reference figures from the issue (measured with that stack, fsync off, 2 cores).
PEER_REFERENCE = {
    "p50_1000": 0.5,
    "p99_1000": 2.6,
    "sustained_1000": 4500,
    "fanout_rate": 19_600,
    "fanout_us": 50,
    "idle_kb": 38,
    "idle_kb_deflate": 88,
}


def _median(values: Sequence[float]) -> float:
    values = [v for v in values if not math.isnan(v)]
    return statistics.median(values) if values else float("nan")


def _ms(seconds: float) -> str:
    if math.isnan(seconds):
        return "n/a"
    ms = seconds * 1e3
    return f"{ms:.2f}" if ms < 10 else f"{ms:.1f}" if ms < 100 else f"{ms:,.0f}"


def _f(value: float, digits: int = 1) -> str:
    return "n/a" if math.isnan(value) else f"{value:.{digits}f}"


def _n(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:,.0f}"


def _ratio(a: float, b: float) -> str:
    if math.isnan(a) or math.isnan(b) or not b:
        return "n/a"
    return f"{a / b:.2f}x" if a / b < 10 else f"{a / b:.0f}x"


def _stack_label(key: str) -> str:
    return {"relay": "pgrelay", "peer": "peer (broadcaster)", "bare": "bare websockets"}[key]


# -- aggregate views -----------------------------------------------------------------------


def latency_cell(runs: list[LatencyRun]) -> dict[str, float]:
    return {
        "p50": _median([r.p50 for r in runs]),
        "p95": _median([r.p95 for r in runs]),
        "p99": _median([r.p99 for r in runs]),
        "max": _median([r.max for r in runs]),
        "commit_p50": _median([r.commit_p50 for r in runs]),
        "commit_p99": _median([r.commit_p99 for r in runs]),
        "rate": _median([r.rate for r in runs]),
        "payload": _median([r.payload for r in runs]),
        "lost": sum(r.lost for r in runs),
        "committed": sum(r.committed for r in runs),
        "duplicates": sum(r.duplicates for r in runs),
        "others": max(r.others for r in runs),
        "kept": all(r.kept_rate for r in runs),
        "cpu_us": _median([r.server_cpu / r.committed * 1e6 for r in runs if r.committed]),
    }


def fanout_cell(runs: list[FanoutRun]) -> dict[str, float]:
    return {
        "rate": _median([r.rate for r in runs]),
        "us": _median([r.us_per_delivery for r in runs]),
        "cores": _median([r.cpu / r.seconds if r.seconds else 0.0 for r in runs]),
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


def fanout_max(stack: StackResult) -> tuple[float, int]:
    best, at = float("nan"), 0
    for conns, runs in stack.fanout.items():
        rate = fanout_cell(runs)["rate"]
        if math.isnan(best) or rate > best:
            best, at = rate, conns
    return best, at


# -- the region --------------------------------------------------------------------------


def render(results: Results, plan: Plan, *, quick: bool, plots: dict[str, Path]) -> str:
    from bench.relay_bench import FANOUT_RATE, MARK_END, MARK_START, SECTIONS, commit_mode

    stacks = results.stacks
    relay = stacks["relay"]
    peer = stacks["peer"]
    bare = stacks["bare"]
    out: list[str] = [MARK_START, "", SECTIONS[0], ""]
    if quick:
        out += [
            "*Smoke run (`--quick`): every run is tiny and the numbers mean nothing; run "
            "`make bench` for the figures.*",
            "",
        ]
    out += [
        "Everything in this section comes from one run of `make bench` "
        f"({results.seconds / 60:.0f} minutes), on one machine, in one go: `bench/relay_bench.py` "
        "starts a private PostgreSQL server, the relay, the peer, a bare websockets server, the "
        "load generator and the client swarm as separate processes on 127.0.0.1. Each figure is "
        f"the median of {plan.repeats} runs unless said otherwise. The relay and the peer run "
        "side by side: both servers are up at once, and the latency runs alternate between "
        "them run by run and repeat by repeat (the other sits idle meanwhile), so a neighbour's "
        "load on this shared machine falls on both alike. The write path (what capture costs a "
        "writer) is measured by `bench/write_overhead.py`: see *Write path: capture overhead* "
        "above; it is not redone here.",
        "",
        SECTIONS[1],
        "",
        "* **Machine**: "
        + results.machine.get("cpu", "?")
        + ", "
        + results.machine.get("memory", "?")
        + " of memory, Linux "
        + results.machine.get("kernel", "?")
        + ", PostgreSQL "
        + results.machine.get("postgres", "?")
        + ", Python "
        + results.machine.get("python", "?")
        + "; "
        + results.machine.get("packages", "")
        + ". The machine is shared: the `others` "
        "column is the CPU the rest of the machine used during a run (in cores, the highest of "
        "the runs), and the same figure moves with it.",
        "* **Commands**: `make bench`, that is `python -m bench.write_overhead` and then "
        "`python -m bench.relay_bench --out BENCHMARKS.md` (this section only; plots into "
        "`bench/`). `python -m bench.relay_bench --quick` is the smoke run of the test suite "
        "(`tests/test_bench_relay_smoke.py`). `--json FILE` dumps every run; `--no-profile` "
        "skips py-spy.",
        "* **Database**: one PostgreSQL server for every stack, `fsync`, `full_page_writes` and "
        "`synchronous_commit` on (every commit reaches the disk), `track_commit_timestamp` on. "
        "The peer's reference figures in the issue were measured with `fsync` off; here both "
        "stacks run with durable commits.",
        "* **Events**: INSERTs into the example schema's `generations` table "
        "(`sql/examples/thumbnails_generations.sql`), one row per event, by the load generator "
        "(`bench/loadgen.py`: writer processes, one connection each, open-loop pacing). The "
        "writing statement stamps the row (`url = extract(epoch FROM clock_timestamp())`); the "
        "client subtracts it from its own clock on receipt: *latency is from the writing "
        "statement to the client*, the writer's commit included. Users take turns, one event "
        "for one user. For the relay the table is tracked (`relay.track`, owner column "
        "`user_id`, notify on, the default); for the peer the same table has a trigger "
        "NOTIFYing channel `user_<id>` with the row as JSON (`bench/peer.py`), as that stack "
        "is used.",
        "* **Clients** (`bench/swarm.py`, two processes): websockets' protocol implementation "
        "on asyncio transports; each offers permessage-deflate as browsers do, authenticates "
        "with an `auth` message (a JWT), subscribes to `generations` (the relay; the peer "
        "subscribes it to the user's channel) and waits until subscribed. One connection per "
        "user in the latency runs.",
        "* **Relay**: `relay serve` (`tests/helpers.RelayProcess`), per-address limits raised "
        "(every client is 127.0.0.1), log level info. **Peer**: `bench/peer.py`, broadcaster "
        f"{_version_of(results, 'broadcaster')} (Postgres backend, asyncpg) and Starlette "
        "websockets under uvicorn, built as broadcaster's README shows. **Bare websockets**: "
        "`bench/bare_ws.py`, `websockets.broadcast()` to every connection with nothing else, "
        "no compression (as the relay, which negotiates none by default).",
        "",
    ]
    if not peer.available:
        out += [f"**The peer could not be measured**: {peer.why_not}.", ""]

    # -- latency
    out += [SECTIONS[2], ""]
    out += [
        "Milliseconds from the writing statement to the client; `commit→client` is the relay's "
        "own share (from the event's commit timestamp `ts`, exact with "
        "`track_commit_timestamp`); the peer's events carry no commit time. `lost` counts "
        "events committed and never received, over all runs of the cell.",
        "",
        "| stack | events/s | users = connections | payload (B) | commit mode | p50 | p95 "
        "| p99 | max | commit→client p50 / p99 | lost | server CPU/event (µs) | others |",
        "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key in ("relay", "peer"):
        stack = stacks[key]
        for (rate, users), runs in sorted(
            stack.latency.items(), key=lambda kv: (kv[0][1], kv[0][0])
        ):
            c = latency_cell(runs)
            kept = "" if c["kept"] else f" (written: {c['rate']:,.0f})"
            commit = (
                f"{_ms(c['commit_p50'])} / {_ms(c['commit_p99'])}"
                if not math.isnan(c["commit_p50"])
                else "n/a"
            )
            out.append(
                f"| {_stack_label(key)} | {rate:,}{kept} | {users:,} | {c['payload']:.0f} "
                f"| {commit_mode(_per_commit(rate))} | {_ms(c['p50'])} | {_ms(c['p95'])} "
                f"| {_ms(c['p99'])} | {_ms(c['max'])} | {commit} | {c['lost']:.0f} of "
                f"{c['committed']:,.0f} | {_n(c['cpu_us'])} | {c['others']:.2f} |"
            )
    out += ["", f"The individual runs' p99 in ms (to see the spread): {_runs_p99(stacks)}.", ""]
    out += path_table(relay)
    if "cdf" in plots:
        out += [f"![Latency CDF]({plots['cdf'].as_posix()})", ""]

    # -- sustained
    out += [SECTIONS[3], ""]
    out += [
        f"The highest rate, on the ladder {', '.join(f'{r:,}' for r in plan.sustain_ladder)} "
        f"events/s, that ran for {plan.sustain_seconds:.0f} s with the writers on schedule, "
        "p99 under 1 s and nothing lost or duplicated; commit mode "
        f"{commit_mode(plan.sustain_per_commit)} (so the search measures the servers, not the "
        "commit rate of single-row transactions: see *The limits*). The search climbs while a "
        "step passes and stops at the first failure (from a failed first step it goes down "
        "until one passes); each step is one run, and the next starts once the previous one's "
        "backlog is through.",
        "",
        "| stack | users = connections | highest sustained | p99 there (ms) | steps tried |",
        "|---|---:|---:|---:|---|",
    ]
    for key in ("relay", "peer"):
        stack = stacks[key]
        for users, steps in sorted(stack.sustained.items()):
            best, run = sustained_best(steps)
            tried = "; ".join(
                f"{rate:,}: {'pass' if ok else 'fail'} (p99 {_ms(r.p99)} ms"
                + (f", lost {r.lost}" if r.lost else "")
                + ("" if r.kept_rate else f", written {r.rate:,.0f}/s")
                + ")"
                for rate, r, ok in steps
            )
            out.append(
                f"| {_stack_label(key)} | {users:,} | "
                f"{'none passed' if run is None else f'≥ {best:,.0f}'} | "
                f"{'n/a' if run is None else _ms(run.p99)} | {tried} |"
            )
    out.append("")

    # -- fan-out
    out += [SECTIONS[4], ""]
    out += [
        f"{FANOUT_RATE:.0f} events/s to one user who has N connections (every connection "
        "receives every event). `deliveries/s` is what the clients received, first to last "
        "frame; `CPU/delivery` is the server process's own CPU time (user + system, from the "
        "kernel) over the run divided by the deliveries. On loopback the kernel charges the "
        "receiving side's TCP work to the sender's `send()`, so these figures include it. "
        "The clients run on the same 2 cores: where the offered rate is not reached, the "
        "server and the swarm share the machine and `complete` says whether every delivery "
        "arrived within the drain time.",
        "",
        "| stack | connections | offered/s | deliveries/s | CPU/delivery (µs) | server cores "
        "| complete | others |",
        "|---|---:|---:|---:|---:|---:|---|---:|",
    ]
    for key in ("relay", "peer", "bare"):
        stack = stacks[key]
        for conns, runs in sorted(stack.fanout.items()):
            c = fanout_cell(runs)
            out.append(
                f"| {_stack_label(key)} | {conns:,} | {FANOUT_RATE * conns:,.0f} "
                f"| {_n(c['rate'])} | {c['us']:.1f} | {c['cores']:.2f} "
                f"| {'yes' if c['complete'] else 'no'} ({c['deliveries']:,.0f} of "
                f"{c['expected']:,.0f}) | {c['others']:.2f} |"
            )
    out.append("")
    if "fanout" in plots:
        out += [f"![Delivered rate against connected clients]({plots['fanout'].as_posix()})", ""]

    # -- connections
    out += [SECTIONS[5], ""]
    out += [
        "RSS of the server process with N idle clients (authenticated, one subscription each, "
        "one user each; the clients offer permessage-deflate as browsers do), minus its RSS "
        "before they connected, divided by N; one fresh server per stack. `idle CPU` is the "
        "server's CPU while those clients sit idle (timers, keepalive). `storm`: "
        f"{plan.storm:,} clients connect at once (handshake, auth, subscribe, all "
        f"concurrently); time until the last is subscribed, median of {plan.storm_repeats}, "
        "and the failed attempts of every storm.",
        "",
        "| stack | "
        + " | ".join(f"RSS per idle conn at {n:,}" for n in sorted(plan.memory_conns))
        + " | "
        + " | ".join(f"idle CPU at {n:,} (cores)" for n in sorted(plan.memory_conns))
        + f" | storm of {plan.storm:,}: time | failed attempts |",
        "|---|" + "---:|" * (2 * len(plan.memory_conns) + 2),
    ]
    for key in ("relay", "peer", "bare"):
        stack = stacks[key]
        if not stack.rss_per_conn:
            continue
        rss = " | ".join(
            f"{stack.rss_per_conn.get(n, float('nan')) / 1000:.1f} kB"
            for n in sorted(plan.memory_conns)
        )
        idle = " | ".join(
            f"{stack.idle_cpu.get(n, float('nan')):.3f}" for n in sorted(plan.memory_conns)
        )
        storm_time = _median([s["seconds"] for s in stack.storms])
        failed = ", ".join(str(s["failed"]) for s in stack.storms)
        out.append(f"| {_stack_label(key)} | {rss} | {idle} | {storm_time:.2f} s | {failed} |")
    out.append("")
    if peer.storms and any(s["failed"] for s in peer.storms):
        errors = {}
        for storm in peer.storms:
            errors.update(storm["errors"])
        out += [
            "The peer's failed attempts, as the clients saw them: "
            + "; ".join(f"`{k}` x {v}" for k, v in errors.items())
            + ". The peer's log: "
            + ("; ".join(f"`{k}` x {v}" for k, v in list(peer.errors.items())[:3]) or "nothing")
            + ".",
            "",
        ]

    # -- limits
    out += [SECTIONS[6], ""]
    limits = results.limits
    insert1 = _median(limits.get("insert", []))
    update1 = _median(limits.get("update", []))
    insert10 = _median(limits.get("insert10", []))
    listener = _median(limits.get("listener", []))
    relay_sus, _ = sustained_best(relay.sustained.get(1000, relay.sustained.get(100, [])))
    peer_sus, _ = sustained_best(peer.sustained.get(1000, peer.sustained.get(100, [])))
    relay_fan, relay_fan_at = fanout_max(relay)
    peer_fan, peer_fan_at = fanout_max(peer)
    bare_fan, bare_fan_at = fanout_max(bare)
    out += [
        "| limit | measured | relay against it | peer against it |",
        "|---|---:|---:|---:|",
        f"| PostgreSQL, untracked table, single-row INSERT, 4 writers, durable (rows/s) "
        f"| {_n(insert1)} | | |",
        f"| PostgreSQL, untracked table, single-row UPDATE, 4 writers, durable (rows/s) "
        f"| {_n(update1)} | | |",
        f"| PostgreSQL, untracked table, INSERT {plan.sustain_per_commit} rows/commit, 4 writers "
        f"(rows/s) | {_n(insert10)} | sustained {_n(relay_sus)}: {_ratio(relay_sus, insert10)} "
        f"| sustained {_n(peer_sus)}: {_ratio(peer_sus, insert10)} |",
        f"| one psycopg connection LISTENing, NOTIFY with a 300-byte payload "
        f"(notifications/s) | {_n(listener)} | (reads the log, no payloads) "
        f"| sustained {_n(peer_sus)}: {_ratio(peer_sus, listener)} |",
        f"| websockets `broadcast()`, highest deliveries/s measured (at {bare_fan_at:,} "
        f"connections) | {_n(bare_fan)} | {_n(relay_fan)} (at {relay_fan_at:,}): "
        f"{_ratio(relay_fan, bare_fan)} | {_n(peer_fan)} (at {peer_fan_at:,}): "
        f"{_ratio(peer_fan, bare_fan)} |",
    ]
    for conns in sorted(bare.fanout):
        b = fanout_cell(bare.fanout[conns])
        r = fanout_cell(relay.fanout[conns]) if conns in relay.fanout else None
        p = fanout_cell(peer.fanout[conns]) if conns in peer.fanout else None
        out.append(
            f"| websockets `broadcast()`, CPU per delivery at {conns:,} connections (µs) "
            f"| {b['us']:.1f} | {r['us'] if r else float('nan'):.1f}: "
            f"{_ratio(r['us'] if r else float('nan'), b['us'])} "
            f"| {p['us'] if p else float('nan'):.1f}: "
            f"{_ratio(p['us'] if p else float('nan'), b['us'])} |"
        )
    out.append("")

    # -- failures
    out += [SECTIONS[7], ""]
    for key in ("relay", "peer"):
        kill = stacks[key].kill
        if not kill:
            continue
        lost = kill["committed"] - kill["delivered"]
        out.append(
            f"* **{_stack_label(key)}**: its database listener connection killed "
            f"(`pg_terminate_backend`) in the middle of a {plan.kill_seconds:.0f} s run at "
            f"{plan.kill_rate:.0f} events/s over 100 users: {kill['delivered']:,} of "
            f"{kill['committed']:,} events delivered, **{lost:,} lost**."
        )
    out += [
        "",
        "The relay's log reader reconnects with backoff and reads the log from its last "
        "position, so a lost listener costs latency, never events. broadcaster's Postgres "
        "backend has one asyncpg connection and no reconnect: after the kill its listener "
        "waits forever on an empty queue and every later event is lost, silently, until the "
        "process restarts. Its subscribes share that connection too: asyncpg refuses an "
        "operation while another is in flight (`another operation is in progress`), so "
        "clients subscribing (or leaving) at the same moment get their websocket closed "
        "(*Connections*, failed attempts).",
        "",
    ]

    # -- targets
    out += [SECTIONS[8], ""]
    out += targets(results, plan)
    out.append("")

    # -- profile
    out += [SECTIONS[9], ""]
    out += profile_section(results)
    out.append("")

    # -- history
    out += [SECTIONS[10], ""]
    out += history_section(results)
    out += ["", MARK_END]
    return "\n".join(out)


def path_table(relay: StackResult) -> list[str]:
    """Where the relay's latency goes, segment by segment, from the log's own timestamps."""
    from bench.relay_bench import BATCHES, PATH_SEGMENTS

    cells = [
        (cell, runs)
        for cell, runs in sorted(relay.latency.items(), key=lambda kv: (kv[0][1], kv[0][0]))
        if any(r.path for r in runs)
    ]
    if not cells:
        return []
    lines = [
        "Where the relay's time goes, per event, from the timestamps the log keeps "
        "(`committed_at`: the writer's commit; `sequenced_at`: the sequencer's statement; "
        "`pg_xact_commit_timestamp(xmin)` of the log row: the sequencer's commit) and the "
        "client's clock; ms, p50 / p99 (medians over the runs). The last segment is the relay "
        "process: the `NOTIFY relay_log` wake-up, reading the log, routing, writing the frame, "
        "and the client reading it.",
        "",
        "| events/s | users | " + " | ".join(PATH_SEGMENTS) + " |",
        "|---:|---:|" + "---:|" * len(PATH_SEGMENTS),
    ]
    batches = any(BATCHES in r.path for _, runs in cells for r in runs)
    if batches:
        lines[-2] += " sequencer: transactions/s, rows each |"
        lines[-1] += "---:|"
        lines[0] += (
            " The last column counts the sequencer's transactions (each one a durable commit "
            "and a `NOTIFY relay_log`, so one wake-up and one query of the reader)."
        )
    for (rate, users), runs in cells:
        row = []
        for name in PATH_SEGMENTS:
            p50 = _median([r.path[name][0] for r in runs if name in r.path])
            p99 = _median([r.path[name][1] for r in runs if name in r.path])
            row.append(f"{_ms(p50)} / {_ms(p99)}")
        if batches:
            per_s = _median([r.path[BATCHES][0] for r in runs if BATCHES in r.path])
            rows = _median([r.path[BATCHES][1] for r in runs if BATCHES in r.path])
            row.append(f"{_n(per_s)}, {_f(rows)}")
        lines.append(f"| {rate:,} | {users:,} | " + " | ".join(row) + " |")
    return [*lines, ""]


def _per_commit(rate: int) -> int:
    from bench.relay_bench import per_commit_for

    return per_commit_for(rate)


def _version_of(results: Results, package: str) -> str:
    for item in results.machine.get("packages", "").split(", "):
        if item.startswith(package + " "):
            return item.split(" ", 1)[1]
    return "?"


def _runs_p99(stacks: dict[str, StackResult]) -> str:
    parts = []
    for key in ("relay", "peer"):
        for (rate, users), runs in sorted(
            stacks[key].latency.items(), key=lambda kv: (kv[0][1], kv[0][0])
        ):
            parts.append(
                f"{_stack_label(key)} {rate:,}/s x {users:,}: "
                + ", ".join(_ms(r.p99) for r in runs)
            )
    return "; ".join(parts) if parts else "none"


def _status(ok: bool) -> str:
    return "**met**" if ok else "**not met**"


def targets(results: Results, plan: Plan) -> list[str]:
    relay = results.stacks["relay"]
    peer = results.stacks["peer"]
    lines = ["| target | measured | |", "|---|---|---|"]
    c1000 = (
        latency_cell(relay.latency.get((1000, 1000), [])) if (1000, 1000) in relay.latency else None
    )
    if c1000:
        ok = c1000["p50"] <= 0.002 and c1000["p99"] <= 0.010 and c1000["lost"] == 0
        lines.append(
            f"| p50 ≤ 2 ms and p99 ≤ 10 ms at 1,000 events/s, 1,000 users | p50 "
            f"{_ms(c1000['p50'])} ms, p99 {_ms(c1000['p99'])} ms | {_status(ok)} |"
        )
    c4500 = latency_cell(relay.latency[(4500, 1000)]) if (4500, 1000) in relay.latency else None
    if c4500:
        ok = c4500["p99"] <= 0.050 and c4500["lost"] == 0
        lines.append(
            f"| p99 ≤ 50 ms at 4,500 events/s, 1,000 users | p99 {_ms(c4500['p99'])} ms "
            f"({commit_mode_text(4500)}) | {_status(ok)} |"
        )
    users = 1000 if 1000 in relay.sustained else min(relay.sustained, default=0)
    if users:
        r_best, _ = sustained_best(relay.sustained[users])
        p_best, _ = sustained_best(peer.sustained.get(users, []))
        ok = not math.isnan(r_best) and (math.isnan(p_best) or r_best >= p_best)
        lines.append(
            f"| sustained rate at {users:,} users ≥ the peer's (durable) | relay {_n(r_best)}, "
            f"peer {_n(p_best)} events/s | {_status(ok)} |"
        )
    r_fan, _ = fanout_max(relay)
    p_fan, _ = fanout_max(peer)
    us_1000 = (
        fanout_cell(relay.fanout[1000])["us"]
        if 1000 in relay.fanout
        else fanout_cell(relay.fanout[min(relay.fanout)])["us"]
        if relay.fanout
        else float("nan")
    )
    if not math.isnan(r_fan):
        ok = (not math.isnan(p_fan) and r_fan >= 5 * p_fan) and us_1000 <= 10
        lines.append(
            f"| fan-out ≥ 5x the peer's deliveries/s at ≤ 10 µs relay CPU per delivery "
            f"| {_n(r_fan)} against {_n(p_fan)} deliveries/s ({_ratio(r_fan, p_fan)}); "
            f"{us_1000:.1f} µs at 1,000 connections | {_status(ok)} |"
        )
    top = max(relay.rss_per_conn, default=0)
    if top:
        kb = relay.rss_per_conn[top] / 1000
        lines.append(
            f"| {top:,} idle connections at ≤ 20 kB each, browser-like clients | {kb:.1f} kB "
            f"| {_status(kb <= 20)} |"
        )
    if relay.storms:
        failed = sum(s["failed"] for s in relay.storms)
        lines.append(
            f"| {plan.storm:,} simultaneous connects with no failed attempt | {failed} failed in "
            f"{len(relay.storms)} storms, {_median([s['seconds'] for s in relay.storms]):.2f} s "
            f"| {_status(failed == 0)} |"
        )
    lines += ["", *target_notes(results)]
    return lines


def commit_mode_text(rate: int) -> str:
    from bench.relay_bench import commit_mode

    return commit_mode(_per_commit(rate))


PROFILE_TITLES = {
    "latency": "the relay during the first latency run at 1,000 events/s over 1,000 users",
    "fanout": "the relay during the first fan-out run at 1,000 connections",
    "idle": "the relay with 10,000 idle connections (1,000 Hz)",
}


def profile_section(results: Results) -> list[str]:
    lines = list(profile_intro())
    if not results.profile:
        lines.append("*(No profile in this run: `--quick`, `--no-profile`, or py-spy missing.)*")
    for name, profile in results.profile.items():
        if "error" in profile:
            lines += [f"*(py-spy failed: {profile['error']})*", ""]
            continue
        lines += [
            f"**{PROFILE_TITLES.get(name, name)}** ({profile['samples']:,} samples, 250 Hz "
            "unless said otherwise, active samples only). Share of the samples by function "
            "itself (top 12), and the inclusive share of the steps of the path (those over "
            "0.5 %):",
            "",
            "| function (self) | share | | path step (inclusive) | share |",
            "|---|---:|---|---|---:|",
        ]
        own = profile["self"]
        steps = [(k, v) for k, v in profile["inclusive"].items() if v >= 0.005]
        for i in range(max(len(own), len(steps))):
            left = f"`{own[i][0]}` | {own[i][1] * 100:.1f} %" if i < len(own) else " | "
            right = f"`{steps[i][0]}` | {steps[i][1] * 100:.1f} %" if i < len(steps) else " | "
            lines.append(f"| {left} | | {right} |")
        lines.append("")
    lines += profile_findings(results)
    return lines


def _cell(stack: StackResult, rate: int, users: int) -> dict[str, float] | None:
    runs = stack.latency.get((rate, users))
    return latency_cell(runs) if runs else None


def _segment(stack: StackResult, rate: int, users: int, index: int) -> tuple[float, float]:
    from bench.relay_bench import PATH_SEGMENTS

    name = PATH_SEGMENTS[index]
    runs = [r for r in stack.latency.get((rate, users), []) if name in r.path]
    return _median([r.path[name][0] for r in runs]), _median([r.path[name][1] for r in runs])


def _fan(stack: StackResult, conns: int, key: str) -> float:
    runs = stack.fanout.get(conns)
    return fanout_cell(runs)[key] if runs else float("nan")


def _share(results: Results, profile: str, name: str) -> float:
    return float(results.profile.get(profile, {}).get("inclusive", {}).get(name, float("nan")))


def _self(results: Results, profile: str, name: str) -> float:
    for function, share in results.profile.get(profile, {}).get("self", []):
        if function == name:
            return float(share)
    return float("nan")


def _pct(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value * 100:.0f} %"


def _sustain_failure(steps: list[tuple[int, LatencyRun, bool]]) -> str:
    """Why the relay's first failed step failed, from what was measured in it."""
    failed = [(rate, run) for rate, run, ok in steps if not ok]
    if not failed:
        return (
            "No step failed within the steps tried: both stacks passed the last one, so this "
            "run does not separate them (their p99 there is in the table)."
        )
    rate, run = failed[0]
    seconds = run.committed / run.rate if run.rate else float("nan")
    cores = run.server_cpu / seconds if seconds else float("nan")
    cause = (
        f"the writers fell behind the schedule ({run.rate:,.0f} events/s written): PostgreSQL "
        "ran out of CPU for capture, sequencing and commits on this shared machine"
        if not run.kept_rate
        else f"the writers kept the schedule but delivery fell behind (p99 {_ms(run.p99)} ms)"
    )
    return (
        f"The relay's first failed step, {rate:,} events/s: {cause}; the relay process used "
        f"{_f(cores, 2)} cores there ({_n(run.server_cpu / run.committed * 1e6)} µs per event)."
    )


def _worst_segment(seg: list[tuple[float, float]]) -> str:
    """Names the step with the largest p99 and what it is waiting for."""
    p99s = [p99 for _, p99 in seg]
    if not p99s or all(math.isnan(v) for v in p99s):
        return ""
    index = max(range(len(p99s)), key=lambda i: -1.0 if math.isnan(p99s[i]) else p99s[i])
    why = (
        "the writers' own commits queue for the WAL flush and the NOTIFY lock",
        "the sequencer falls behind: one `relay.sequence_batch` transaction at a time, each "
        "its own durable commit queueing for the NOTIFY lock and the WAL flush with the "
        "writers' commits, and one wake-up per transaction",
        "the sequencer's commit waits for the NOTIFY lock and the WAL flush behind the "
        "writers' commits",
        "the relay process falls behind: reading the new log rows and routing them on its one "
        "event loop, one frame encoded and written per event",
    )[index]
    return f"The tail is in step {index + 1}: {why}."


def target_notes(results: Results) -> list[str]:
    """What stands in the way of each target, and what would move it."""
    relay, peer, bare = (results.stacks[k] for k in ("relay", "peer", "bare"))
    c1000 = _cell(relay, 1000, 1000) or {}
    p1000 = _cell(peer, 1000, 1000) or {}
    c4500 = _cell(relay, 4500, 1000) or {}
    cpu200 = (_cell(relay, 200, 1000) or {}).get("cpu_us", float("nan"))
    pcpu200 = (_cell(peer, 200, 1000) or {}).get("cpu_us", float("nan"))
    seg = [_segment(relay, 1000, 1000, i) for i in range(4)]
    seg45 = [_segment(relay, 4500, 1000, i) for i in range(4)]
    others = c1000.get("others", float("nan"))
    r_best, _ = sustained_best(relay.sustained.get(1000, []))
    p_best, _ = sustained_best(peer.sustained.get(1000, []))
    fail_text = _sustain_failure(relay.sustained.get(1000, []))
    relay_cpu = c4500.get("cpu_us", float("nan"))
    worst = _worst_segment(seg45)
    us_r, us_p, us_b = (_fan(s, 1000, "us") for s in (relay, peer, bare))
    top_r, top_p, top_b = (fanout_max(s)[0] for s in (relay, peer, bare))
    idle_r = relay.idle_cpu.get(10_000, float("nan"))
    idle_b = bare.idle_cpu.get(10_000, float("nan"))
    send = _share(results, "fanout", "_SelectorSocketTransport.write")
    top_kb = relay.rss_per_conn.get(max(relay.rss_per_conn, default=0), float("nan")) / 1000
    mem_status = "Met." if top_kb <= 20 else f"Not met ({_f(top_kb)} kB)."
    storm_failed = sum(s["failed"] for s in relay.storms)
    storm_status = (
        "Met: no failed attempt."
        if not storm_failed
        else (f"Not met: {storm_failed} failed attempts.")
    )
    return [
        "**Latency at 1,000 events/s.** The relay's path has four steps where the peer's has "
        "two (the writer's commit, one wake-up): the writer's commit, the sequencer's wake-up "
        "(the writers' `NOTIFY relay_inbox`), the sequencer's own durable transaction "
        "(`relay.sequence_batch`, which waits for its turn on PostgreSQL's NOTIFY lock and WAL "
        "flush like the writers' commits), and the relay's wake-up (`NOTIFY relay_log`, then a "
        "query for the new log "
        "rows). On this 2-core machine, shared with other jobs "
        f"(`others` {_f(others, 2)} cores in that cell), every hop also waits for a core. Medians "
        f"at 1,000 events/s over 1,000 users: statement → writer's commit {_ms(seg[0][0])} ms, "
        f"→ sequenced {_ms(seg[1][0])} ms, → sequencer's commit {_ms(seg[2][0])} ms, → client "
        f"{_ms(seg[3][0])} ms; the peer, one commit and one wake-up, has p50 "
        f"{_ms(p1000.get('p50', float('nan')))} ms. What would move it, in the relay: "
        "(1) the sequencer and the log reader run in the same process (`relay/db.py`): after "
        "`sequence_batch` returns, wake the reader in-process, or let `sequence_batch` return "
        "the rows it moved and route them on the leader at once, keeping `NOTIFY relay_log` for "
        "the other replicas: that removes the last wake-up and one query per batch from every "
        "event's path; (2) `Sequencer._serve` re-reads `relay.settings.notify` after every "
        "batch, one more round trip per wake-up: read it every few seconds instead; "
        "(3) the sequencer could commit with `synchronous_commit = off`: its rows come from "
        "durable inbox rows and the hub already resets its clients when the log's head goes "
        "back after a crash (`Hub.on_listener_state`), so this removes a WAL flush from every "
        "event's path at the price of resets after a crash: a design decision, not a tweak. "
        "Outside the relay: the hops' waits shrink with cores that other jobs do not take. "
        f"The relay's CPU per event is high at low rates ({_n(cpu200)} µs at 200 events/s, "
        f"{_n(c1000.get('cpu_us', float('nan')))} at 1,000; the peer {_n(pcpu200)} and "
        f"{_n(p1000.get('cpu_us', float('nan')))}): at these rates each wake-up moves one "
        "or a few rows, and pays three queries and two notification waits (profile below).",
        "",
        f"**Latency at 4,500 events/s.** The writers wrote "
        f"{c4500.get('rate', float('nan')):,.0f} events/s (5 events per commit; one event per "
        "commit is more than this machine commits into a tracked table: *Write path* "
        "above). Per step, p50 / p99: "
        f"statement → writer's commit {_ms(seg45[0][0])} / {_ms(seg45[0][1])} ms, → sequenced "
        f"{_ms(seg45[1][0])} / {_ms(seg45[1][1])} ms, → sequencer's commit {_ms(seg45[2][0])} / "
        f"{_ms(seg45[2][1])} ms, → client {_ms(seg45[3][0])} / {_ms(seg45[3][1])} ms. {worst} "
        f"The relay process used {_n(relay_cpu)} µs of CPU per event "
        "there (sequencing, reading, encoding once per event, writing). What would move it: "
        "the relay's per-batch round trips (1) and (2) above, the capture's own cost in the "
        "writers' backends (*Write path* above), and cores not shared with other jobs.",
        "",
        f"**Sustained rate.** At 1,000 users the relay sustained {_n(r_best)} events/s, the peer "
        f"{_n(p_best)}. {fail_text}"
        + (
            " What would move it: the relay's per-batch round trips (1) and (2) above, "
            "cheaper capture (*Write path* above), and a machine that is not shared."
            if any(not ok for _, _, ok in relay.sustained.get(1000, []))
            else ""
        ),
        "",
        f"**Fan-out.** Per delivery at 1,000 connections the relay spends {_f(us_r)} µs of "
        f"CPU, the peer {_f(us_p)} µs ({_ratio(us_p, us_r)} the relay's) and a bare websockets "
        f"`broadcast()` {_f(us_b)} µs: the 10 µs target is below what websockets' own "
        "broadcast costs on this machine, where the kernel's `send()` per socket (with the "
        f"receiver's loopback TCP work) is {_pct(send)} of the relay's samples (profile below). "
        "Deliveries per second cannot show 5x here: every stack tops out where the clients, on "
        f"the same 2 cores, stop keeping up (relay {_n(top_r)}, peer {_n(top_p)}, bare "
        f"{_n(top_b)} deliveries/s at 10,000 connections). By CPU per delivery one core "
        f"would carry about {_n(1e6 / us_r if us_r else float('nan'))} relay deliveries/s "
        f"against {_n(1e6 / us_p if us_p else float('nan'))} for the peer. What would move it: "
        "(1) when every connection of a subscription group is idle and plain-framed, write the "
        "shared frame in one tight loop over their transports, as `broadcast()` does, instead "
        "of `Router.route` → `Session.offer` → `Connection.write_direct` → "
        "`Connection._can_write_now` → `Hub.written_directly` per delivery (profile below); "
        f"(2) `Hub.written_directly` is a method call per delivery only to count it "
        f"({_pct(_share(results, 'fanout', 'Hub.written_directly'))} of the samples): "
        "`Router.route` already returns the count. At 10,000 connections one event's fan-out "
        "is one synchronous loop of 10,000 writes, every delivery on the direct path "
        f"({_f(_fan(relay, 10_000, 'us'))} µs each): the relay's single event loop then needs "
        "a whole core for about "
        f"{_n(1e6 / _fan(relay, 10_000, 'us') if _fan(relay, 10_000, 'us') else float('nan'))} "
        "deliveries/s and gets what the clients and other jobs leave of the two cores; "
        "several relay processes (replicas) would spread it.",
        "",
        f"**Idle connections.** {mem_status} The relay's idle CPU at 10,000 connections "
        f"({_f(idle_r, 3)} cores; bare websockets, with the same keepalive pings, "
        f"{_f(idle_b, 3)}) is mostly `WebsocketShell.sweep` visiting every connection every "
        "0.5 s (`Connection.check` → `Session.tick`): a heap of deadlines would visit only the "
        "connections whose auth timeout or token expiry is due, and the slow-client rule only "
        "those with a write pending.",
        "",
        f"**Simultaneous connects.** {storm_status} broadcaster fails all but one of the "
        "concurrent subscribes: its Postgres backend sends every LISTEN over one asyncpg "
        "connection, which refuses a second operation while one is in flight.",
    ]


def profile_intro() -> list[str]:
    return [
        "py-spy (the `bench` extra) samples the relay process at three moments of the full "
        "benchmark: `py-spy record --format raw --nonblocking`, folded here by function.",
        "",
    ]


def profile_findings(results: Results) -> list[str]:
    send_f = _share(results, "fanout", "_SelectorSocketTransport.write")
    route_f = _share(results, "fanout", "Router.route")
    deliver_l = _share(results, "latency", "Hub.deliver")
    read_l = _share(results, "latency", "LogReader._read_all")
    seq_l = _share(results, "latency", "Sequencer._serve")
    frame_l = _share(results, "latency", "Event.wire_frame")
    send_l = _share(results, "latency", "_SelectorSocketTransport.write")
    send_q = _self(results, "latency", "BaseCursor._send_query_prepared")
    register = _self(results, "latency", "_PollLikeSelector.register")
    sweep_i = _share(results, "idle", "WebsocketShell.sweep")
    keep_i = _share(results, "idle", "Connection.keepalive")
    return [
        "What the profiles say:",
        "",
        f"* **Fan-out**: routing an event to its 1,000 connections is {_pct(route_f)} of the "
        f"samples and the kernel's `send()` inside `_SelectorSocketTransport.write` "
        f"{_pct(send_f)}: one system call per socket per event, which on loopback also does the "
        "receiver's TCP work. The rest of the routing share is Python per delivery: the "
        "subscription checks in `Router.route`, `Session.offer`, `Connection.write_direct`, "
        "`Connection._can_write_now` (websockets' `Protocol.state` property and "
        "`transport.get_write_buffer_size()` on every delivery) and `Hub.written_directly` (a "
        "method call per delivery to count what `Router.route` already returns). The frame is "
        "encoded once per event (`Event.wire_frame` is a dictionary hit).",
        f"* **Latency path** (1,000 events/s, one event per user): the log reader (reading "
        f"and decoding the rows, then routing) is {_pct(read_l)}, of which delivering "
        f"{_pct(deliver_l)}: encoding each event's frame {_pct(frame_l)} (one connection per "
        f"event here, nothing to share) and `send()` {_pct(send_l)}; the sequencer's loop "
        f"{_pct(seq_l)}. At this rate every wake-up moves a few rows, so the fixed costs per "
        "wake-up (three queries: `sequence_batch`, the settings read, the reader's `SELECT`; "
        "two `notifies()` waits) are paid for every few events: psycopg sending a prepared "
        f"query (`BaseCursor._send_query_prepared`, {_pct(send_q)} by itself) and its async "
        "wait registering the socket with the event loop for every query "
        f"(`_PollLikeSelector.register`, {_pct(register)}) are the largest items.",
        f"* **Idle**: with 10,000 idle connections, `WebsocketShell.sweep` is {_pct(sweep_i)} "
        "of the relay's samples (`Connection.check` and `Session.tick` for every connection "
        f"twice a second) and websockets' keepalive pings {_pct(keep_i)}.",
    ]


def history_section(results: Results) -> list[str]:
    relay = results.stacks["relay"]
    bare = results.stacks["bare"]
    now_us = fanout_cell(relay.fanout[1000])["us"] if 1000 in relay.fanout else float("nan")
    now_kb = relay.rss_per_conn.get(10_000, relay.rss_per_conn.get(1000, float("nan"))) / 1000
    bare_kb = bare.rss_per_conn.get(10_000, bare.rss_per_conn.get(1000, float("nan"))) / 1000
    return [
        "Earlier work on the relay's hot path, by the lead, measured the same way:",
        "",
        "* **Fan-out: 40 µs → about 12 µs of relay CPU per delivery at 1,000 connections.** A "
        "connection with nothing queued gets its frame written straight to the transport "
        "(`Connection.write_direct` in `relay/server.py`, as websockets' `broadcast()` does; "
        "the queue and a writer task only while frames wait); each event is JSON-encoded and "
        "RFC 6455-framed once per subscription id (`Event.wire_frame`), not once per "
        "connection; the delivery-lag histogram takes one weighted observation per event "
        "(`WeightedHistogram`) instead of one per delivery. What remained was about 45 % the "
        "kernel's `send()` per socket: on loopback the receiver's TCP work is charged to the "
        f"sender. This run: **{_f(now_us)} µs** at 1,000 connections.",
        "* **Idle memory: 32.9 kB → 18.2 kB per connection** by removing the per-connection "
        "tasks (writer and watchdog: one sweeper for all timers, a writer only while frames "
        "wait) and dropping the handshake's headers after reading the token; bare websockets "
        f"was 15.6 kB with the same client. This run: **{_f(now_kb)} kB** for the relay, "
        f"**{_f(bare_kb)} kB** for bare websockets.",
    ]


# -- the file ----------------------------------------------------------------------------


def replace_region(path: Path, region: str) -> None:
    """Writes the region between the markers, re-reading the file just before: the rest of
    it belongs to others and may have changed while the benchmark ran."""
    from bench.relay_bench import MARK_END, MARK_START

    text = path.read_text() if path.exists() else ""
    start = text.find(MARK_START)
    end = text.find(MARK_END)
    if start != -1 and end != -1 and end > start:
        new = text[:start] + region + text[end + len(MARK_END) :]
    else:
        new = text.rstrip("\n") + ("\n\n" if text else "") + region + "\n"
    path.write_text(new)


# -- plots --------------------------------------------------------------------------------


def write_plots(results: Results, folder: Path) -> dict[str, Path]:
    """The latency CDF and the delivered rate against connected clients, as PNG files.
    Returns their paths relative to the repository (or absolute when outside it)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return {}
    from bench.relay_bench import FANOUT_RATE, ROOT

    folder.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    colours = {"relay": "tab:blue", "peer": "tab:orange", "bare": "tab:green"}

    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=110)
    drew = False
    for key in ("relay", "peer"):
        stack = results.stacks[key]
        cells = sorted(
            {cell for cell in stack.latency if cell[1] == max(u for _, u in stack.latency)}
        )
        for (rate, users), style in zip(cells, ("-", "--", ":"), strict=False):
            values = sorted(v * 1e3 for run in stack.latency[(rate, users)] for v in run.latencies)
            values = [max(v, 1e-3) for v in values]
            if not values:
                continue
            ys = [(i + 1) / len(values) for i in range(len(values))]
            ax.plot(values, ys, style, color=colours[key], linewidth=1.6,
                    label=f"{_stack_label(key)}, {rate:,} events/s, {users:,} users")  # fmt: skip
            drew = True
    if drew:
        ax.set_xscale("log")
        ax.set_xlabel("latency, writing statement → client (ms, log scale)")
        ax.set_ylabel("fraction of events")
        ax.set_ylim(0, 1.005)
        ax.grid(True, which="both", alpha=0.3)
        ax.axhline(0.99, color="grey", linewidth=0.8, linestyle=":")
        ax.legend(fontsize=8, loc="lower right")
        ax.set_title("Commit-to-client latency (durable commits, all runs pooled)", fontsize=10)
        fig.tight_layout()
        paths["cdf"] = folder / CDF_PLOT
        fig.savefig(paths["cdf"])
    plt.close(fig)

    fig, (ax, ax_cpu) = plt.subplots(1, 2, figsize=(10, 4.3), dpi=110)
    drew = False
    all_conns: set[int] = set()
    styles = {"relay": ("o", "-"), "peer": ("s", "--"), "bare": ("^", ":")}
    for key in ("relay", "peer", "bare"):
        stack = results.stacks[key]
        if not stack.fanout:
            continue
        conns = sorted(stack.fanout)
        all_conns.update(conns)
        cells = [fanout_cell(stack.fanout[c]) for c in conns]
        marker, line = styles[key]
        ax.plot(conns, [c["rate"] for c in cells], marker=marker, linestyle=line,
                color=colours[key], label=_stack_label(key), markersize=7, alpha=0.85)  # fmt: skip
        ax_cpu.plot(conns, [c["us"] for c in cells], marker=marker, linestyle=line,
                    color=colours[key], label=_stack_label(key), markersize=7)  # fmt: skip
        drew = True
    if drew:
        xs = sorted(all_conns)
        ax.plot(xs, [FANOUT_RATE * x for x in xs], "k:", linewidth=1,
                label=f"offered ({FANOUT_RATE:.0f}/s x N)")  # fmt: skip
        for axis in (ax, ax_cpu):
            axis.set_xscale("log")
            axis.set_xlabel("connected clients of the one user (log scale)")
            axis.grid(True, which="both", alpha=0.3)
        ax.set_yscale("log")
        ax.set_ylabel("deliveries per second received (log scale)")
        ax.legend(fontsize=8, loc="upper left")
        ax.set_title("Delivered rate against connected clients", fontsize=10)
        ax_cpu.set_ylabel("server CPU per delivery (µs)")
        ax_cpu.set_ylim(bottom=0)
        ax_cpu.legend(fontsize=8, loc="upper right")
        ax_cpu.set_title("Server CPU per delivery", fontsize=10)
        fig.suptitle(f"Fan-out, {FANOUT_RATE:.0f} events/s to one user; clients on the same "
                     "2 cores", fontsize=10)  # fmt: skip
        fig.tight_layout()
        paths["fanout"] = folder / FANOUT_PLOT
        fig.savefig(paths["fanout"])
    plt.close(fig)

    out: dict[str, Path] = {}
    for key, path in paths.items():
        try:
            out[key] = path.resolve().relative_to(ROOT)
        except ValueError:
            out[key] = Path(path.name)  # a temporary folder: never name a machine's path
    return out
