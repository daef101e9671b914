"""The report's judgements: issue 12's targets, each measured, against its bar and met or not
(the notes on those missed: bench/target_notes.py), and the profile of the relay's hot path with
what it shows."""

from __future__ import annotations

import math
from dataclasses import dataclass

from bench.cells import (
    cell_of,
    fan_of,
    fmt_f,
    fmt_ms,
    fmt_n,
    fmt_pct,
    fmt_ratio,
    fmt_status,
    median,
    profile_self,
    profile_share,
    sustained_best,
    sustained_exact,
)
from bench.plan import BAR, Plan, Results, StackResult, commit_mode, per_commit_for
from bench.target_notes import target_notes

__all__ = ["Target", "judge", "profile_section", "targets"]

WRITE_PATH = (
    "The write path's bar (issue 12: with durable commits and 4 writers, the default mode keeps "
    "at least 75 % of untracked UPDATE throughput) is measured by `bench/write_overhead.py` and "
    "judged in *Write path: capture overhead* above, with the Postgres CPU per captured event."
)


@dataclass(frozen=True)
class Target:
    """One row of the targets table: what is asked, what was measured, the figure against the
    bar (a ratio where the issue states one), and met (True), not met (False) or not measured."""

    key: str
    name: str
    measured: str
    against: str
    ok: bool | None


def targets(results: Results, plan: Plan) -> list[str]:
    judged = judge(results, plan)
    lines = [
        "Issue 12's bar (pgrelay, with the peer in the same run): each target as measured, as a "
        "ratio where the issue states one, met or not. The notes after the table take each "
        "target missed in turn: by how much, what stands in the way, what would move it.",
        "",
        "| target | measured | against the bar | |",
        "|---|---|---|---|",
    ]
    lines += [f"| {t.name} | {t.measured} | {t.against} | {fmt_status(t.ok)} |" for t in judged]
    lines += ["", WRITE_PATH, ""]
    lines += target_notes(results, {t.key: t.ok for t in judged})
    undecided = [f"*{t.name}*" for t in judged if t.ok is None]
    if undecided:
        lines += [
            "",
            "Not decided by this run (no figure for it, as in a `--quick` run, or both stacks' "
            f"sustained searches ended on a pass): {'; '.join(undecided)}.",
        ]
    return lines


def _ms(seconds: float) -> str:
    return "n/a" if math.isnan(seconds) else f"{fmt_ms(seconds)} ms"


def _at_most(value: float, bar: float) -> bool | None:
    return None if math.isnan(value) else value <= bar


def _of_bar(value: float, bar: float, unit: str) -> str:
    """``0.87x the bar`` beside the bar itself."""
    return "n/a" if math.isnan(value) else f"{fmt_ratio(value, bar)} of {bar:g} {unit}"


def judge(results: Results, plan: Plan) -> list[Target]:
    """Every target of issue 12 (and the earlier ones still meaningful) against this run."""
    relay, peer = results.stacks["relay"], results.stacks["peer"]
    c, pc = cell_of(relay, 1000, 1000), cell_of(peer, 1000, 1000)
    nan = float("nan")
    p50, p99 = c.get("p50", nan), c.get("p99", nan)
    cpu, pcpu = c.get("cpu_us", nan), pc.get("cpu_us", nan)
    pg, ppg = c.get("pg_us", nan), pc.get("pg_us", nan)
    at = "1,000 users at 1,000 events/s"
    out = [
        Target(
            "p50", f"p50 ≤ {BAR.p50_1000 * 1e3:g} ms, {at}",
            f"{_ms(p50)} (peer {_ms(pc.get('p50', nan))})",
            _of_bar(p50 * 1e3, BAR.p50_1000 * 1e3, "ms"), _at_most(p50, BAR.p50_1000),
        ),
        Target(
            "p99", f"p99 ≤ {BAR.p99_1000 * 1e3:g} ms, {at}",
            f"{_ms(p99)} (peer {_ms(pc.get('p99', nan))})",
            _of_bar(p99 * 1e3, BAR.p99_1000 * 1e3, "ms"), _at_most(p99, BAR.p99_1000),
        ),
        Target(
            "cpu", f"relay process CPU per event ≤ {BAR.cpu_ratio:g}x the peer server's, {at}",
            f"{fmt_n(cpu)} µs against {fmt_n(pcpu)} µs",
            f"{fmt_ratio(cpu, pcpu)} (bar {BAR.cpu_ratio:g}x)",
            _at_most(cpu / pcpu if pcpu else nan, BAR.cpu_ratio),
        ),
        Target(
            "postgres", f"Postgres CPU per event ≤ {BAR.postgres_ratio:g}x the peer's, {at}",
            f"{fmt_n(pg)} µs against {fmt_n(ppg)} µs",
            f"{fmt_ratio(pg, ppg)} (bar {BAR.postgres_ratio:g}x)",
            _at_most(pg / ppg if ppg else nan, BAR.postgres_ratio),
        ),
    ]  # fmt: skip
    for users in (100, 1000):
        c45, p45 = cell_of(relay, 4500, users), cell_of(peer, 4500, users)
        p99_45 = c45.get("p99", nan)
        out.append(
            Target(
                f"p99_4500_{users}",
                f"p99 ≤ {BAR.p99_4500 * 1e3:g} ms, {users:,} users at 4,500 events/s",
                f"{_ms(p99_45)} (peer {_ms(p45.get('p99', nan))}; "
                f"{commit_mode(per_commit_for(4500))})",
                _of_bar(p99_45 * 1e3, BAR.p99_4500 * 1e3, "ms"),
                _at_most(p99_45, BAR.p99_4500),
            )
        )
    out.append(_sustained_target(relay, peer))
    us = fan_of(relay, 1000, "us")
    out.append(
        Target(
            "fanout",
            f"fan-out: relay CPU per delivery ≤ {BAR.fanout_us:g} µs at 1,000 connections",
            f"{fmt_f(us)} µs (peer {fmt_f(fan_of(peer, 1000, 'us'))} µs, bare websockets "
            f"{fmt_f(fan_of(results.stacks['bare'], 1000, 'us'))} µs)",
            _of_bar(us, BAR.fanout_us, "µs"), _at_most(us, BAR.fanout_us),
        )
    )  # fmt: skip
    kb = relay.rss_per_conn.get(10_000, nan) / 1000
    out.append(
        Target(
            "idle", f"idle memory ≤ {BAR.idle_kb:g} kB per connection at 10,000 connections",
            f"{fmt_f(kb)} kB (peer {fmt_f(peer.rss_per_conn.get(10_000, nan) / 1000)} kB)",
            _of_bar(kb, BAR.idle_kb, "kB"), _at_most(kb, BAR.idle_kb),
        )
    )  # fmt: skip
    out.append(_faults_target(relay, results.stacks.get("relay-supabase")))
    if relay.storms:
        failed = sum(s["failed"] for s in relay.storms)
        out.append(
            Target(
                "storm", f"{plan.storm:,} simultaneous connects with no failed attempt (earlier)",
                f"{failed} failed in {len(relay.storms)} storms, "
                f"{median([s['seconds'] for s in relay.storms]):.2f} s",
                "", failed == 0,
            )
        )  # fmt: skip
    return out


def _sustained_target(relay: StackResult, peer: StackResult) -> Target:
    """The highest rate sustained at 1,000 users against the peer's: a ratio of two limits
    when both searches ended at a failed step; from bounds otherwise, when they decide it."""
    steps, theirs = relay.sustained.get(1000, []), peer.sustained.get(1000, [])
    best, their_best = sustained_best(steps)[0], sustained_best(theirs)[0]
    exact, their_exact = sustained_exact(steps), sustained_exact(theirs)
    ratio = best / their_best if their_best else float("nan")
    ok: bool | None
    if not steps or not theirs:
        ok = None
    elif math.isnan(best):
        ok = False
    elif math.isnan(their_best):
        ok = True
    elif exact and their_exact:
        ok = ratio >= BAR.sustained_ratio
    elif their_exact:  # ours a lower bound: the ratio is at least this
        ok = True if ratio >= BAR.sustained_ratio else None
    elif exact:  # theirs a lower bound: the ratio is at most this
        ok = False if ratio < BAR.sustained_ratio else None
    else:
        ok = None
    bound = "" if exact == their_exact else "≥ " if their_exact else "≤ "

    def shown(value: float, is_exact: bool) -> str:
        return "none passed" if math.isnan(value) else f"{'' if is_exact else '≥ '}{value:,.0f}"

    return Target(
        "sustained",
        f"highest rate sustained 20 s at 1,000 users (p99 < 1 s, nothing lost) ≥ "
        f"{BAR.sustained_ratio:g}x the peer's",
        f"pgrelay {shown(best, exact)}, peer {shown(their_best, their_exact)} events/s",
        (f"{bound}{fmt_ratio(best, their_best)}" if exact or their_exact else "not separated")
        + f" (bar {BAR.sustained_ratio:g}x)",
        ok,
    )


def _faults_target(relay: StackResult, dialect: StackResult | None) -> Target:
    """Nothing lost or duplicated: every latency run (both dialects), every fan-out run and
    the run whose listener was killed; the sustained steps are judged by their own rule."""
    runs = [r for stack in (relay, dialect) if stack for rs in stack.latency.values() for r in rs]
    lost = sum(r.lost for r in runs)
    duplicated = sum(r.duplicates for r in runs)
    fan = [f for fs in relay.fanout.values() for f in fs]
    fan_lost = sum(max(0, f.expected - f.deliveries) for f in fan)
    fan_dup = sum(max(0, f.deliveries - f.expected) for f in fan)
    kill_lost = relay.kill["committed"] - relay.kill["delivered"] if relay.kill else 0
    total = lost + duplicated + fan_lost + fan_dup + kill_lost
    return Target(
        "faults", "nothing lost or duplicated in any cell",
        f"{lost:,} lost, {duplicated:,} duplicated in {len(runs)} latency runs; {fan_lost:,} "
        f"missing, {fan_dup:,} extra deliveries in {len(fan)} fan-out runs; {kill_lost:,} lost "
        "with the listener killed",
        "", (total == 0) if runs else None,
    )  # fmt: skip


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


def profile_intro() -> list[str]:
    return [
        "py-spy (the `bench` extra) samples the relay process at three moments of the full "
        "benchmark: `py-spy record --format raw --nonblocking`, folded here by function.",
        "",
    ]


def profile_findings(results: Results) -> list[str]:
    send_f = profile_share(results, "fanout", "_SelectorSocketTransport.write")
    route_f = profile_share(results, "fanout", "Router.route")
    deliver_l = profile_share(results, "latency", "Hub.deliver")
    read_l = profile_share(results, "latency", "LogReader._read_all")
    seq_l = profile_share(results, "latency", "Sequencer._serve")
    frame_l = profile_share(results, "latency", "V1.event_frame")
    send_l = profile_share(results, "latency", "_SelectorSocketTransport.write")
    send_q = profile_self(results, "latency", "BaseCursor._send_query_prepared")
    register = profile_self(results, "latency", "_PollLikeSelector.register")
    sweep_i = profile_share(results, "idle", "WebsocketShell.sweep")
    keep_i = profile_share(results, "idle", "Connection.keepalive")
    return [
        "What the profiles say:",
        "",
        f"* **Fan-out**: routing an event to its 1,000 connections is {fmt_pct(route_f)} of the "
        f"samples and the kernel's `send()` inside `_SelectorSocketTransport.write` "
        f"{fmt_pct(send_f)}: one system call per socket per event, which on loopback also does the "
        "receiver's TCP work. The rest of the routing share is Python per delivery: the "
        "subscription checks in `Router.route` and `Subscription.delivery`, `Connection.offer` and "
        "`Connection._can_write_now` (websockets' `Protocol.state` property and "
        "`transport.get_write_buffer_size()` on every delivery). The frame is encoded once per "
        "event (`V1.event_frame` is a dictionary hit).",
        f"* **Latency path** (1,000 events/s, one event per user): the log reader (reading "
        f"and decoding the rows, then routing) is {fmt_pct(read_l)}, of which delivering "
        f"{fmt_pct(deliver_l)}: encoding each event's frame {fmt_pct(frame_l)} (one connection per "
        f"event here, nothing to share) and `send()` {fmt_pct(send_l)}; the sequencer's loop "
        f"{fmt_pct(seq_l)}. At this rate every sequencer batch moves a few rows, so what the "
        "relay pays per batch (its queries and the waits for their answers) is paid every few "
        "events: psycopg sending a prepared "
        f"query (`BaseCursor._send_query_prepared`, {fmt_pct(send_q)} by itself) and its async "
        "wait registering the socket with the event loop for every query "
        f"(`_PollLikeSelector.register`, {fmt_pct(register)}) are the largest items.",
        f"* **Idle**: with 10,000 idle connections, `WebsocketShell.sweep` is {fmt_pct(sweep_i)} "
        "of the relay's samples (`Connection.check` and `Session.tick` for every connection "
        f"twice a second) and websockets' keepalive pings {fmt_pct(keep_i)}.",
    ]
