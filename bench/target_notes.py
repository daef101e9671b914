"""The notes under the report's targets table: for each target of issue 12 this run missed (or
could not decide), by how much, what stands in the way and what would move it, all from the
run's own figures (the relay's path segments, CPU per event by process and by part, the
sequencer's batches, the profiles), never from how the code is assumed to work."""

from __future__ import annotations

import math
from collections.abc import Mapping

from bench.cells import (
    batches,
    cell_of,
    fan_of,
    fmt_f,
    fmt_ms,
    fmt_n,
    fmt_pct,
    fmt_ratio,
    median,
    segment,
    sustained_best,
)
from bench.compare import part_us
from bench.plan import (
    BAR,
    PATH_SEGMENTS,
    PG_BACKGROUND,
    PG_OWN,
    PG_PARTS,
    PG_WRITERS,
    LatencyRun,
    Results,
    StackResult,
)

__all__ = ["batch_fit", "target_notes"]

NAN = float("nan")

# What each step of the relay's path is made of (its two timestamps), and what shortens it.
SEGMENT_WHY = (
    "the writer's own transaction: the INSERT with its capture trigger and the commit's WAL "
    "flush, which shares the disk with every other commit (the sequencer's included); it "
    "moves with cheaper capture in the writers' backends and fewer commits competing",
    "the wait for the sequencer's next look at the inbox: with {tps} sequencer transactions a "
    "second an event committed at a random moment waits about half of one loop, {half} ms; it "
    "moves with a shorter loop (the batch window, and the sequencer's own transaction and "
    "commit, the next step, overlapped with its next look)",
    "the rest of the sequencer's transaction: shaping the batch's events, inserting the log "
    "rows with their indexes, and its commit's WAL flush; it moves with less work per log row "
    "and the flush taken off the path (overlapped, or not waited for)",
    "the relay process from the sequencer's commit to the socket (learning of the batch, "
    "taking its rows, routing, encoding, writing) and the client reading the frame; it moves "
    "with fewer steps between the sequencer's commit and the write",
)
# Why a step's tail grows under load.
TAIL_WHY = (
    "the writers' commits queued for the WAL flush",
    "committed inbox rows queued for the sequencer: its looks and transactions fell behind the "
    "arrivals",
    "the sequencer's own transactions took long (shaping, inserting, the commit's flush)",
    "the relay process fell behind turning committed log rows into frames on the sockets",
)
PART_WHY = {
    PG_WRITERS: "the writers' transactions (pgrelay's capture trigger and inbox row against the "
    "peer's trigger and its NOTIFY); it moves with cheaper capture (*Write path* above)",
    PG_OWN: "the stack's own connections (for pgrelay the sequencer's looks and transactions, "
    "the log rows it inserts, and the reads of the log; for the peer its listener); it moves "
    "with fewer sequencer transactions per event (larger batches) and less work per log row",
    PG_BACKGROUND: "the server's background processes (WAL writing, checkpoints, autovacuum): "
    "it moves with fewer WAL bytes and dead rows per event (pgrelay writes an inbox row and a "
    "log row per event, the peer none)",
}


def target_notes(results: Results, judged: Mapping[str, bool | None]) -> list[str]:
    """One paragraph per target missed, in the table's order; the sustained ratio also when the
    run could not decide it."""
    relay, peer = results.stacks["relay"], results.stacks["peer"]
    missed = {key for key, ok in judged.items() if ok is False}
    notes: list[str] = []
    if missed & {"p50", "p99"}:
        notes.append(_latency_1000(relay, peer))
    if "cpu" in missed:
        notes.append(_relay_cpu(relay, peer))
    if "postgres" in missed:
        notes.append(_postgres_cpu(relay, peer))
    for users in (100, 1000):
        if f"p99_4500_{users}" in missed:
            notes.append(_latency_4500(relay, peer, users))
    if "sustained" in missed or (judged.get("sustained") is None and relay.sustained.get(1000)):
        notes.append(_sustained(relay, peer))
    if "fanout" in missed:
        notes.append(_fanout(results))
    if "idle" in missed:
        notes.append(_idle(results))
    if "faults" in missed:
        notes.append(_faults(relay))
    if "storm" in missed:
        notes.append("**Simultaneous connects.** Some attempts failed: see *Connections*.")
    if not missed:
        notes.append("No target above is missed in this run.")
    return [line for note in notes for line in (note, "")][:-1]


def _over(value: float, bar: float, unit: str) -> str:
    if math.isnan(value):
        return "not measured in this run"
    if value <= bar:
        return f"{fmt_f(value, 2)} {unit}, within {bar:g}"
    return f"{fmt_f(value, 2)} {unit} against {bar:g}, {fmt_f(value - bar, 2)} {unit} over"


def _path(relay: StackResult, rate: int, users: int, column: int) -> str:
    """The four steps' p50 (column 0) or p99 (column 1), in ms."""
    parts = [segment(relay, rate, users, i)[column] for i in range(len(PATH_SEGMENTS))]
    return ", ".join(f"{name} {fmt_ms(v)}" for name, v in zip(PATH_SEGMENTS, parts, strict=True))


def _largest(relay: StackResult, rate: int, users: int, column: int) -> int | None:
    values = [segment(relay, rate, users, i)[column] for i in range(len(PATH_SEGMENTS))]
    if all(math.isnan(v) for v in values):
        return None
    return max(range(len(values)), key=lambda i: -1.0 if math.isnan(values[i]) else values[i])


def _segment_why(relay: StackResult, rate: int, users: int, index: int) -> str:
    tps, _ = batches(relay, rate, users)
    half = 500 / tps if tps and not math.isnan(tps) else NAN
    return SEGMENT_WHY[index].format(tps=fmt_n(tps), half=fmt_f(half, 2))


def _latency_1000(relay: StackResult, peer: StackResult) -> str:
    c, pc = cell_of(relay, 1000, 1000), cell_of(peer, 1000, 1000)
    if not c:
        return "**Latency, 1,000 users at 1,000 events/s.** Not measured in this run."
    tps, rows = batches(relay, 1000, 1000)
    text = (
        f"**Latency, 1,000 users at 1,000 events/s.** p50 "
        f"{_over(c['p50'] * 1e3, BAR.p50_1000 * 1e3, 'ms')}; p99 "
        f"{_over(c['p99'] * 1e3, BAR.p99_1000 * 1e3, 'ms')}. The peer, one commit and one "
        f"wake-up, has p50 {fmt_ms(pc.get('p50', NAN))} and p99 {fmt_ms(pc.get('p99', NAN))} ms. "
        f"The relay's path, p50 in ms: {_path(relay, 1000, 1000, 0)}; p99: "
        f"{_path(relay, 1000, 1000, 1)}. The sequencer committed {fmt_n(tps)} transactions a "
        f"second, {fmt_f(rows)} rows each."
    )
    median_at, tail_at = _largest(relay, 1000, 1000, 0), _largest(relay, 1000, 1000, 1)
    if median_at is not None:
        text += (
            f" The largest median is {PATH_SEGMENTS[median_at]}: "
            f"{_segment_why(relay, 1000, 1000, median_at)}."
        )
    if tail_at is not None and tail_at != median_at:
        text += (
            f" The largest p99 is {PATH_SEGMENTS[tail_at]}: "
            f"{_segment_why(relay, 1000, 1000, tail_at)}."
        )
    return text + (
        f" Other jobs used {fmt_f(c['others'], 2)} cores of the machine during that cell's "
        "runs (the highest of them): every step also waits for a core."
    )


def batch_fit(relay: StackResult, users: int) -> tuple[float, float] | None:
    """The relay process's CPU per event split as ``per_event + per_batch / rows``: a least-
    squares line through the latency cells at ``users`` (rows per sequencer transaction
    against CPU per event); None with fewer than two distinct batch sizes or a negative part."""
    points = []
    for rate, at in relay.latency:
        if at != users:
            continue
        _, rows = batches(relay, rate, users)
        cpu = cell_of(relay, rate, users).get("cpu_us", NAN)
        if rows and not math.isnan(rows) and not math.isnan(cpu):
            points.append((1 / rows, cpu))
    if len({round(x, 6) for x, _ in points}) < 2:
        return None
    mx = sum(x for x, _ in points) / len(points)
    my = sum(y for _, y in points) / len(points)
    slope = sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x, _ in points)
    intercept = my - slope * mx
    return None if slope < 0 or intercept < 0 else (intercept, slope)


def _relay_cpu(relay: StackResult, peer: StackResult) -> str:
    c, pc = cell_of(relay, 1000, 1000), cell_of(peer, 1000, 1000)
    cpu, pcpu = c.get("cpu_us", NAN), pc.get("cpu_us", NAN)
    allowed = BAR.cpu_ratio * pcpu
    text = (
        f"**Relay process CPU per event, 1,000 users at 1,000 events/s.** {fmt_n(cpu)} µs "
        f"against the peer server's {fmt_n(pcpu)} µs: {fmt_ratio(cpu, pcpu)}, where the bar is "
        f"{BAR.cpu_ratio:g}x ({fmt_n(allowed)} µs), {fmt_n(cpu - allowed)} µs per event over."
    )
    cells = sorted(rate for rate, users in relay.latency if users == 1000)
    seen = [
        f"{rate:,} events/s: {fmt_n(cell_of(relay, rate, 1000).get('cpu_us', NAN))} µs, "
        f"{fmt_f(batches(relay, rate, 1000)[1])} rows per sequencer transaction"
        for rate in cells
    ]
    if seen:
        text += f" Over the cells at 1,000 users: {'; '.join(seen)}."
    fit = batch_fit(relay, 1000)
    rows = batches(relay, 1000, 1000)[1]
    if fit is not None and rows and not math.isnan(rows):
        per_event, per_batch = fit
        text += (
            f" A line through them puts about {fmt_n(per_batch)} µs on each batch and "
            f"{fmt_n(per_event)} µs on each event: at 1,000 events/s the batch's share is "
            f"{fmt_n(per_batch / rows)} µs of every event's {fmt_n(cpu)}. What would move it: "
            "fewer, larger batches at moderate rates (a longer window trades latency for it) "
            "or a cheaper cycle per batch in the relay process (the queries and waits between "
            f"the sequencer's look and the write); the {fmt_n(per_event)} µs per event against a "
            f"delivery's {fmt_f(fan_of(relay, 1000, 'us'))} µs in the fan-out runs."
        )
    else:
        text += (
            " What would move it: less work in the relay process per sequencer batch, and "
            "larger batches at moderate rates (see the profile below for where it goes)."
        )
    return text


def _postgres_cpu(relay: StackResult, peer: StackResult) -> str:
    c, pc = cell_of(relay, 1000, 1000), cell_of(peer, 1000, 1000)
    pg, ppg = c.get("pg_us", NAN), pc.get("pg_us", NAN)
    ours, theirs = relay.latency.get((1000, 1000), []), peer.latency.get((1000, 1000), [])
    parts = {part: (part_us(ours, part), part_us(theirs, part)) for part in PG_PARTS}
    split = "; ".join(f"{part} {fmt_n(a)} / {fmt_n(b)}" for part, (a, b) in parts.items())
    text = (
        f"**Postgres CPU per event, 1,000 users at 1,000 events/s.** {fmt_n(pg)} µs for pgrelay "
        f"against {fmt_n(ppg)} µs for the peer: {fmt_ratio(pg, ppg)}, where the bar is "
        f"{BAR.postgres_ratio:g}x ({fmt_n(BAR.postgres_ratio * ppg)} µs), "
        f"{fmt_n(pg - BAR.postgres_ratio * ppg)} µs per event over. By part, µs per event, "
        f"pgrelay / peer: {split}."
    )
    gaps = {part: a - b for part, (a, b) in parts.items() if not math.isnan(a - b)}
    if gaps:
        worst = max(gaps, key=lambda part: gaps[part])
        text += f" The largest gap, {fmt_n(gaps[worst])} µs per event, is {PART_WHY[worst]}."
    tps, rows = batches(relay, 1000, 1000)
    own = parts[PG_OWN][0]
    if tps and not math.isnan(tps) and not math.isnan(own) and rows:
        text += (
            f" The relay's own connections spent {fmt_n(own * rows)} µs of the server's CPU per "
            f"sequencer transaction ({fmt_n(tps)} a second, {fmt_f(rows)} rows each)."
        )
    return text


def _latency_4500(relay: StackResult, peer: StackResult, users: int) -> str:
    c, pc = cell_of(relay, 4500, users), cell_of(peer, 4500, users)
    head = f"**p99 at 4,500 events/s, {users:,} users.**"
    if not c:
        return f"{head} Not measured in this run."
    tps, rows = batches(relay, 4500, users)
    seconds = 1 / c["rate"] if c["rate"] else NAN
    text = (
        f"{head} {_over(c['p99'] * 1e3, BAR.p99_4500 * 1e3, 'ms')} (the peer "
        f"{fmt_ms(pc.get('p99', NAN))} ms); the writers wrote {fmt_n(c['rate'])} events/s. "
        f"The relay's path, p99 in ms: {_path(relay, 4500, users, 1)}. The sequencer committed "
        f"{fmt_n(tps)} transactions a second, {fmt_f(rows)} rows each."
    )
    tail = _largest(relay, 4500, users, 1)
    if tail is not None:
        text += (
            f" The tail is in {PATH_SEGMENTS[tail]}: {TAIL_WHY[tail]}; "
            f"{_segment_why(relay, 4500, users, tail)}."
        )
    return text + (
        f" At this rate the relay process used {fmt_f(c['cpu_us'] / seconds / 1e6, 2)} cores "
        f"({fmt_n(c['cpu_us'])} µs per event) and PostgreSQL "
        f"{fmt_f(c['pg_us'] / seconds / 1e6, 2)} ({fmt_n(c['pg_us'])} µs per event) of the "
        f"machine's cores, other jobs up to {fmt_f(c['others'], 2)}."
    )


def _first_failure(steps: list[tuple[int, LatencyRun, bool]]) -> str:
    """Why the lowest failed step failed, from what was measured in it."""
    failed = [(rate, run) for rate, run, ok in steps if not ok]
    if not failed:
        return "no step failed within the steps tried"
    rate, run = min(failed, key=lambda item: item[0])
    seconds = run.committed / run.rate if run.rate else NAN
    relay_cores, pg_cores = run.server_cpu / seconds, run.postgres_cpu / seconds
    pg_us = run.postgres_cpu / run.committed * 1e6 if run.committed else NAN
    cause = (
        f"the writers fell behind the schedule ({run.rate:,.0f} events/s written)"
        if not run.kept_rate
        else f"delivery fell behind (p99 {fmt_ms(run.p99)} ms, {run.lost:,} not received "
        "within the drain time)"
    )
    return (
        f"at {rate:,} events/s {cause}, with the server process at {fmt_f(relay_cores, 2)} "
        f"cores and PostgreSQL at {fmt_f(pg_cores, 2)} ({fmt_n(pg_us)} µs per event), other "
        f"jobs up to {fmt_f(run.others, 2)}"
    )


def _sustained(relay: StackResult, peer: StackResult) -> str:
    steps, theirs = relay.sustained.get(1000, []), peer.sustained.get(1000, [])
    best, their_best = sustained_best(steps)[0], sustained_best(theirs)[0]
    head = "**Highest sustained rate, 1,000 users.**"
    if not steps:
        return f"{head} Not measured in this run."
    needed = BAR.sustained_ratio * their_best
    return (
        f"{head} pgrelay {fmt_n(best)}, the peer {fmt_n(their_best)} events/s: the bar asks "
        f"{fmt_n(needed)} of pgrelay. pgrelay: {_first_failure(steps)}. The peer: "
        f"{_first_failure(theirs)}. Where the writers fell behind, PostgreSQL's CPU per event is "
        "what limits the rate on these two cores (the Postgres CPU note above says where it "
        "goes); where delivery fell behind, the server process's."
    )


def _fanout(results: Results) -> str:
    relay, bare = results.stacks["relay"], results.stacks["bare"]
    us, bare_us = fan_of(relay, 1000, "us"), fan_of(bare, 1000, "us")
    profile = results.profile.get("fanout", {})
    send = profile.get("inclusive", {}).get("_SelectorSocketTransport.write", NAN)
    top = [
        f"`{name}` {fmt_pct(share)}"
        for name, share in profile.get("self", [])[:6]
        if name != "_SelectorSocketTransport.write"
    ]
    return (
        f"**Fan-out.** {_over(us, BAR.fanout_us, 'µs')} per delivery at 1,000 connections; "
        f"bare websockets' `broadcast()`, the same clients and sockets, "
        f"{fmt_f(bare_us)} µs ({fmt_ratio(us, bare_us)} of it). The kernel's `send()` is "
        f"{fmt_pct(float(send))} of the relay's samples in the fan-out profile; the largest "
        f"others by own time: {', '.join(top) or 'not profiled'}. What would move it: less "
        "Python per delivery between routing and the write, down to `broadcast()`'s floor."
    )


def _idle(results: Results) -> str:
    relay, bare = results.stacks["relay"], results.stacks["bare"]
    kb = relay.rss_per_conn.get(10_000, NAN) / 1000
    bare_kb = bare.rss_per_conn.get(10_000, NAN) / 1000
    return (
        f"**Idle memory.** {_over(kb, BAR.idle_kb, 'kB')} per connection at 10,000; bare "
        f"websockets {fmt_f(bare_kb)} kB with the same clients, so the relay's own state is "
        f"about {fmt_f(kb - bare_kb)} kB a connection. What would move it: keeping less per "
        "connection beyond websockets' own (measure with tracemalloc by traceback)."
    )


def _faults(relay: StackResult) -> str:
    where = [
        f"{rate:,}/s x {users:,}: {sum(r.lost for r in runs)} lost, "
        f"{sum(r.duplicates for r in runs)} duplicated"
        for (rate, users), runs in sorted(relay.latency.items())
        if any(r.lost or r.duplicates for r in runs)
    ]
    lag = median([r.max for runs in relay.latency.values() for r in runs])
    return (
        "**Nothing lost or duplicated.** "
        + ("; ".join(where) + ". " if where else "Every latency run was whole. ")
        + "An event counts as lost when it has not arrived within the drain time after the "
        f"run (the median run's slowest event took {fmt_ms(lag)} ms): see the fan-out and "
        "failure rows for the other runs."
    )
