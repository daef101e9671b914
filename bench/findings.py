"""The report's judgements: the targets of the issue, met or not, with what held each back, and
the profile of the relay's hot path with what it shows."""

from __future__ import annotations

import math

from bench.cells import (
    fanout_cell,
    fanout_max,
    fmt_f,
    fmt_ms,
    fmt_n,
    fmt_pct,
    fmt_ratio,
    fmt_status,
    latency_cell,
    median,
    sustained_best,
)
from bench.plan import (
    PATH_SEGMENTS,
    LatencyRun,
    Plan,
    Results,
    StackResult,
    commit_mode,
    per_commit_for,
)

__all__ = ["profile_section", "targets"]


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
            f"{fmt_ms(c1000['p50'])} ms, p99 {fmt_ms(c1000['p99'])} ms | {fmt_status(ok)} |"
        )
    c4500 = latency_cell(relay.latency[(4500, 1000)]) if (4500, 1000) in relay.latency else None
    if c4500:
        ok = c4500["p99"] <= 0.050 and c4500["lost"] == 0
        lines.append(
            f"| p99 ≤ 50 ms at 4,500 events/s, 1,000 users | p99 {fmt_ms(c4500['p99'])} ms "
            f"({commit_mode(per_commit_for(4500))}) | {fmt_status(ok)} |"
        )
    users = 1000 if 1000 in relay.sustained else min(relay.sustained, default=0)
    if users:
        r_best, _ = sustained_best(relay.sustained[users])
        p_best, _ = sustained_best(peer.sustained.get(users, []))
        ok = not math.isnan(r_best) and (math.isnan(p_best) or r_best >= p_best)
        lines.append(
            f"| sustained rate at {users:,} users ≥ the peer's (durable) | relay {fmt_n(r_best)}, "
            f"peer {fmt_n(p_best)} events/s | {fmt_status(ok)} |"
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
            f"| {fmt_n(r_fan)} against {fmt_n(p_fan)} deliveries/s ({fmt_ratio(r_fan, p_fan)}); "
            f"{us_1000:.1f} µs at 1,000 connections | {fmt_status(ok)} |"
        )
    top = max(relay.rss_per_conn, default=0)
    if top:
        kb = relay.rss_per_conn[top] / 1000
        lines.append(
            f"| {top:,} idle connections at ≤ 20 kB each, browser-like clients | {kb:.1f} kB "
            f"| {fmt_status(kb <= 20)} |"
        )
    if relay.storms:
        failed = sum(s["failed"] for s in relay.storms)
        lines.append(
            f"| {plan.storm:,} simultaneous connects with no failed attempt | {failed} failed in "
            f"{len(relay.storms)} storms, {median([s['seconds'] for s in relay.storms]):.2f} s "
            f"| {fmt_status(failed == 0)} |"
        )
    lines += ["", *target_notes(results)]
    return lines


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
    mem_status = "Met." if top_kb <= 20 else f"Not met ({fmt_f(top_kb)} kB)."
    storm_failed = sum(s["failed"] for s in relay.storms)
    storm_status = (
        "Met: no failed attempt."
        if not storm_failed
        else (f"Not met: {storm_failed} failed attempts.")
    )
    return [
        "**Latency at 1,000 events/s.** The relay's path has four steps where the peer's has "
        "two (the writer's commit, one wake-up): the writer's commit, the sequencer's next look "
        "at the inbox (an adaptive poll, `RELAY_BATCH_WINDOW` after a batch, by default; the "
        "writers' `NOTIFY relay_inbox` with notify on), the sequencer's own durable transaction "
        "(`relay.sequence_batch`, which waits for its WAL flush like the writers' commits), and "
        "the relay's wake-up (`NOTIFY relay_log` with the new head, then a query for the new "
        "log rows). On this 2-core machine, shared with other jobs "
        f"(`others` {fmt_f(others, 2)} cores in that cell), every hop also waits for a core. "
        "Medians "
        f"at 1,000 events/s over 1,000 users: statement → writer's commit {fmt_ms(seg[0][0])} ms, "
        f"→ sequenced {fmt_ms(seg[1][0])} ms, → sequencer's commit {fmt_ms(seg[2][0])} ms, → "
        "client "
        f"{fmt_ms(seg[3][0])} ms; the peer, one commit and one wake-up, has p50 "
        f"{fmt_ms(p1000.get('p50', float('nan')))} ms. What would move it, in the relay: "
        "(1) the sequencer and the log reader run in the same process (`relay/pg/reader.py`, "
        "`relay/pg/sequencer.py`): after `sequence_batch` returns, wake the reader "
        "in-process, or let `sequence_batch` return "
        "the rows it moved and route them on the leader at once, keeping `NOTIFY relay_log` for "
        "the other replicas: that removes the last wake-up and one query per batch from every "
        "event's path; (2) overlap the sequencer's WAL flush with its next look at the inbox "
        "(a second connection), so an event waits less than half a sequencer loop; "
        "(3) the sequencer could commit with `synchronous_commit = off`: its rows come from "
        "durable inbox rows and the hub already resets its clients when the log's head goes "
        "back after a crash (`Hub.on_log_state`), so this removes a WAL flush from every "
        "event's path at the price of resets after a crash: a design decision, not a tweak. "
        "Outside the relay: the hops' waits shrink with cores that other jobs do not take. "
        f"The relay's CPU per event is high at low rates ({fmt_n(cpu200)} µs at 200 events/s, "
        f"{fmt_n(c1000.get('cpu_us', float('nan')))} at 1,000; the peer {fmt_n(pcpu200)} and "
        f"{fmt_n(p1000.get('cpu_us', float('nan')))}): at these rates each wake-up moves one "
        "or a few rows, and pays three queries and two notification waits (profile below).",
        "",
        f"**Latency at 4,500 events/s.** The writers wrote "
        f"{c4500.get('rate', float('nan')):,.0f} events/s (5 events per commit; one event per "
        "commit is more than this machine commits into a tracked table: *Write path* "
        "above). Per step, p50 / p99: "
        f"statement → writer's commit {fmt_ms(seg45[0][0])} / {fmt_ms(seg45[0][1])} ms, → "
        "sequenced "
        f"{fmt_ms(seg45[1][0])} / {fmt_ms(seg45[1][1])} ms, → sequencer's commit "
        f"{fmt_ms(seg45[2][0])} / "
        f"{fmt_ms(seg45[2][1])} ms, → client {fmt_ms(seg45[3][0])} / {fmt_ms(seg45[3][1])} ms. "
        f"{worst} "
        f"The relay process used {fmt_n(relay_cpu)} µs of CPU per event "
        "there (sequencing, reading, encoding once per event, writing). What would move it: "
        "the relay's per-batch round trips (1) and (2) above, the capture's own cost in the "
        "writers' backends (*Write path* above), and cores not shared with other jobs.",
        "",
        f"**Sustained rate.** At 1,000 users the relay sustained {fmt_n(r_best)} events/s, the "
        "peer "
        f"{fmt_n(p_best)}. {fail_text}"
        + (
            " What would move it: the relay's per-batch round trips (1) and (2) above, "
            "cheaper capture (*Write path* above), and a machine that is not shared."
            if any(not ok for _, _, ok in relay.sustained.get(1000, []))
            else ""
        ),
        "",
        f"**Fan-out.** Per delivery at 1,000 connections the relay spends {fmt_f(us_r)} µs of "
        f"CPU, the peer {fmt_f(us_p)} µs ({fmt_ratio(us_p, us_r)} the relay's) and a bare "
        "websockets "
        f"`broadcast()` {fmt_f(us_b)} µs: the 10 µs target is below what websockets' own "
        "broadcast costs on this machine, where the kernel's `send()` per socket (with the "
        f"receiver's loopback TCP work) is {fmt_pct(send)} of the relay's samples (profile below). "
        "Deliveries per second cannot show 5x here: every stack tops out where the clients, on "
        f"the same 2 cores, stop keeping up (relay {fmt_n(top_r)}, peer {fmt_n(top_p)}, bare "
        f"{fmt_n(top_b)} deliveries/s at 10,000 connections). By CPU per delivery one core "
        f"would carry about {fmt_n(1e6 / us_r if us_r else float('nan'))} relay deliveries/s "
        f"against {fmt_n(1e6 / us_p if us_p else float('nan'))} for the peer. What would move it: "
        "(1) when every connection of a subscription group is idle and plain-framed, write the "
        "shared frame in one tight loop over their transports, as `broadcast()` does, instead "
        "of `Router.route` → `Subscription.delivery` → `Connection.offer` → "
        "`Connection._can_write_now` per delivery (profile below). At 10,000 connections one "
        "event's fan-out "
        "is one synchronous loop of 10,000 writes, every delivery on the direct path "
        f"({fmt_f(_fan(relay, 10_000, 'us'))} µs each): the relay's single event loop then needs "
        "a whole core for about "
        f"{fmt_n(1e6 / _fan(relay, 10_000, 'us') if _fan(relay, 10_000, 'us') else float('nan'))} "
        "deliveries/s and gets what the clients and other jobs leave of the two cores; "
        "several relay processes (replicas) would spread it.",
        "",
        f"**Idle connections.** {mem_status} The relay's idle CPU at 10,000 connections "
        f"({fmt_f(idle_r, 3)} cores; bare websockets, with the same keepalive pings, "
        f"{fmt_f(idle_b, 3)}) is mostly `WebsocketShell.sweep` visiting every connection every "
        "0.5 s (`Connection.check` → `Session.tick`): a heap of deadlines would visit only the "
        "connections whose auth timeout or token expiry is due, and the slow-client rule only "
        "those with a write pending.",
        "",
        f"**Simultaneous connects.** {storm_status} broadcaster fails all but one of the "
        "concurrent subscribes: its Postgres backend sends every LISTEN over one asyncpg "
        "connection, which refuses a second operation while one is in flight.",
    ]


def _cell(stack: StackResult, rate: int, users: int) -> dict[str, float] | None:
    runs = stack.latency.get((rate, users))
    return latency_cell(runs) if runs else None


def _segment(stack: StackResult, rate: int, users: int, index: int) -> tuple[float, float]:
    name = PATH_SEGMENTS[index]
    runs = [r for r in stack.latency.get((rate, users), []) if name in r.path]
    return median([r.path[name][0] for r in runs]), median([r.path[name][1] for r in runs])


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
        else f"the writers kept the schedule but delivery fell behind (p99 {fmt_ms(run.p99)} ms)"
    )
    return (
        f"The relay's first failed step, {rate:,} events/s: {cause}; the relay process used "
        f"{fmt_f(cores, 2)} cores there ({fmt_n(run.server_cpu / run.committed * 1e6)} µs per "
        "event)."
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
    send_f = _share(results, "fanout", "_SelectorSocketTransport.write")
    route_f = _share(results, "fanout", "Router.route")
    deliver_l = _share(results, "latency", "Hub.deliver")
    read_l = _share(results, "latency", "LogReader._read_all")
    seq_l = _share(results, "latency", "Sequencer._serve")
    frame_l = _share(results, "latency", "V1.event_frame")
    send_l = _share(results, "latency", "_SelectorSocketTransport.write")
    send_q = _self(results, "latency", "BaseCursor._send_query_prepared")
    register = _self(results, "latency", "_PollLikeSelector.register")
    sweep_i = _share(results, "idle", "WebsocketShell.sweep")
    keep_i = _share(results, "idle", "Connection.keepalive")
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
        f"{fmt_pct(seq_l)}. At this rate every wake-up moves a few rows, so the fixed costs per "
        "wake-up (three queries: `sequence_batch`, the settings read, the reader's `SELECT`; "
        "two `notifies()` waits) are paid for every few events: psycopg sending a prepared "
        f"query (`BaseCursor._send_query_prepared`, {fmt_pct(send_q)} by itself) and its async "
        "wait registering the socket with the event loop for every query "
        f"(`_PollLikeSelector.register`, {fmt_pct(register)}) are the largest items.",
        f"* **Idle**: with 10,000 idle connections, `WebsocketShell.sweep` is {fmt_pct(sweep_i)} "
        "of the relay's samples (`Connection.check` and `Session.tick` for every connection "
        f"twice a second) and websockets' keepalive pings {fmt_pct(keep_i)}.",
    ]
