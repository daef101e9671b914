"""The relay benchmark's report from given figures (no run): the cells side by side with their
ratios, and issue 12's targets judged, with a note for each one missed."""

from __future__ import annotations

from bench.findings import judge
from bench.plan import (
    BATCHES,
    FULL,
    PATH_SEGMENTS,
    PG_BACKGROUND,
    PG_OWN,
    PG_WRITERS,
    FanoutRun,
    LatencyRun,
    Results,
    StackResult,
)
from bench.report import render

COMMITTED = 4000


def _run(
    p50_ms: float,
    p99_ms: float,
    cpu_us: float,
    pg_us: tuple[float, float, float],
    *,
    rate: float = 1000.0,
    kept: bool = True,
    path: dict[str, tuple[float, float]] | None = None,
) -> LatencyRun:
    writers, own, background = (us * COMMITTED / 1e6 for us in pg_us)
    return LatencyRun(
        committed=COMMITTED, received=COMMITTED, distinct=COMMITTED, duplicates=0,
        kept_rate=kept, rate=rate, payload=370.0, p50=p50_ms / 1e3, p95=p99_ms / 2e3,
        p99=p99_ms / 1e3, max=p99_ms / 1e3, commit_p50=float("nan"), commit_p99=float("nan"),
        others=0.1, server_cpu=cpu_us * COMMITTED / 1e6,
        postgres={PG_WRITERS: writers, PG_OWN: own, PG_BACKGROUND: background},
        path=path or {},
    )  # fmt: skip


def _path(rows: float) -> dict[str, tuple[float, float]]:
    segments = ((0.5, 2.0), (1.0, 4.0), (0.1, 0.5), (0.4, 1.5))  # ms
    path = {name: (a / 1e3, b / 1e3) for name, (a, b) in zip(PATH_SEGMENTS, segments, strict=True)}
    path[BATCHES] = (1000 / rows, rows)
    return path


def _fanout(us: float) -> FanoutRun:
    return FanoutRun(conns=1000, events=100, deliveries=100_000, expected=100_000, seconds=5.0,
                     cpu=us * 100_000 / 1e6, others=0.0, p50=0.001)  # fmt: skip


def _results() -> Results:
    relay, peer, bare = StackResult("relay"), StackResult("peer"), StackResult("bare websockets")
    relay.latency = {
        (200, 1000): [_run(3.0, 9.0, 700, (200, 300, 50), rate=200, path=_path(1.5))],
        (1000, 1000): [_run(2.0, 8.0, 300, (200, 150, 50), path=_path(4.0))],
        (4500, 100): [_run(4.0, 15.0, 90, (150, 60, 40), rate=4500, path=_path(20.0))],
        (4500, 1000): [_run(9.0, 40.0, 100, (150, 60, 40), rate=4500, path=_path(20.0))],
    }
    peer.latency = {
        (200, 1000): [_run(1.0, 3.0, 250, (150, 10, 40), rate=200)],
        (1000, 1000): [_run(1.0, 4.0, 100, (150, 10, 40))],
        (4500, 100): [_run(1.5, 4.0, 60, (120, 5, 30), rate=4500)],
        (4500, 1000): [_run(1.6, 4.5, 65, (120, 5, 30), rate=4500)],
    }
    relay.sustained = {
        1000: [
            (4500, _run(5.0, 20.0, 90, (150, 60, 40), rate=4500), True),
            (6500, _run(9.0, 90.0, 80, (150, 60, 40), rate=6500), True),
            (9000, _run(90.0, 900.0, 80, (150, 60, 40), rate=7000, kept=False), False),
        ]
    }
    peer.sustained = {
        1000: [
            (rate, _run(1.0, 5.0, 50, (120, 5, 30), rate=rate), True)
            for rate in (4500, 6500, 9000, 13000)
        ]
        + [(18000, _run(1.0, 2000.0, 50, (120, 5, 30), rate=18000), False)]
    }
    relay.fanout, peer.fanout, bare.fanout = ({1000: [_fanout(us)]} for us in (17.0, 39.0, 11.0))
    relay.rss_per_conn, peer.rss_per_conn, bare.rss_per_conn = (
        {10_000: kb * 1000} for kb in (19.5, 85.0, 15.8)
    )
    relay.storms = [{"failed": 0, "seconds": 2.0, "errors": {}}]
    relay.kill = {"committed": 800, "delivered": 800, "killed": 1}
    return Results(stacks={"relay": relay, "peer": peer, "bare": bare})


def test_latency_cells_side_by_side_with_ratios() -> None:
    """Each latency cell is one row: p50, p99, the server's CPU and Postgres CPU per event,
    pgrelay / peer with the ratio; Postgres CPU per event is split by part the same way."""
    text = render(_results(), FULL, quick=False, plots={})
    assert (
        "| 1,000 | 1,000 | durable, 1 event/commit | 2.00 / 1.00 (2.00x) | 8.00 / 4.00 (2.00x) "
        "| 300 / 100 (3.00x) | 400 / 200 (2.00x) | 0 / 0 |"
    ) in text
    assert "| 1,000 | 1,000 | 200 / 150 (1.33x) | 150 / 10 (15x) | 50 / 40 (1.25x) |" in text
    assert (
        "| 1,000 | 9,000 | fail (p99 900 ms, written 7,000/s) | pass (p99 5.00 ms) "
        "| 80 / 50 (1.60x) | 250 / 155 (1.61x) |"
    ) in text
    assert "| 1,000 | 18,000 | not run | fail (p99 2,000 ms) | n/a / 50 | n/a / 155 |" in text
    assert "| pgrelay | 1,000 | 6,500 | 90.0 |" in text


def test_targets_state_issue_12s_bar() -> None:
    """The targets table has one row per target of issue 12, each measured, against the bar
    and judged; the sustained rate is judged on the two searches' limits."""
    judged = {t.key: (t.measured, t.against, t.ok) for t in judge(_results(), FULL)}
    assert judged == {
        "p50": ("2.00 ms (peer 1.00 ms)", "1.33x of 1.5 ms", False),
        "p99": ("8.00 ms (peer 4.00 ms)", "1.60x of 5 ms", False),
        "cpu": ("300 µs against 100 µs", "3.00x (bar 2x)", False),
        "postgres": ("400 µs against 200 µs", "2.00x (bar 1.5x)", False),
        "p99_4500_100": ("15.0 ms (peer 4.00 ms; durable, 5 events/commit)", "0.75x of 20 ms",
                         True),
        "p99_4500_1000": ("40.0 ms (peer 4.50 ms; durable, 5 events/commit)", "2.00x of 20 ms",
                          False),
        "sustained": ("pgrelay 6,500, peer 13,000 events/s", "0.50x (bar 1.5x)", False),
        "fanout": ("17.0 µs (peer 39.0 µs, bare websockets 11.0 µs)", "0.97x of 17.5 µs", True),
        "idle": ("19.5 kB (peer 85.0 kB)", "0.99x of 19.7 kB", True),
        "faults": ("0 lost, 0 duplicated in 4 latency runs; 0 missing, 0 extra deliveries in 1 "
                   "fan-out runs; 0 lost with the listener killed", "", True),
        "storm": ("0 failed in 1 storms, 2.00 s", "", True),
    }  # fmt: skip


def test_each_missed_target_has_a_note_from_the_figures() -> None:
    """A missed target's note says by how much and where the time or CPU goes, from the run's
    own figures; met targets get none."""
    text = render(_results(), FULL, quick=False, plots={})
    notes = text[text.index("### Targets") : text.index("### Profile of the hot path")]
    assert "p50 2.00 ms against 1.5, 0.50 ms over; p99 8.00 ms against 5, 3.00 ms over" in notes
    assert "The largest median is writer's commit → sequenced: the wait for the sequencer" in notes
    assert "250 sequencer transactions a second" in notes
    assert "where the bar is 2x (200 µs), 100 µs per event over" in notes
    assert "where the bar is 1.5x (300 µs), 100 µs per event over" in notes
    assert "The largest gap, 140 µs per event, is the stack's own connections" in notes
    assert "**p99 at 4,500 events/s, 1,000 users.** 40.00 ms against 20, 20.00 ms over" in notes
    assert "**p99 at 4,500 events/s, 100 users.**" not in notes
    assert "the bar asks 19,500 of pgrelay" in notes
    assert (
        "at 9,000 events/s the writers fell behind the schedule (7,000 events/s written)" in notes
    )
    assert "**Fan-out.**" not in notes and "**Idle memory.**" not in notes
