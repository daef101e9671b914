"""The log limiter: warning lines of one kind cannot flood, and what was dropped is counted."""

from __future__ import annotations

import io
import json
import logging
import sys

import pytest
import structlog

from relay.ops.logs import LogLimiter, configure_logging, flush_suppressed


def test_limiter_writes_a_burst_per_window_then_counts() -> None:
    """At most `burst` lines of a kind per window; the next window's first line carries the
    count of those suppressed."""
    limiter = LogLimiter(burst=3, window=10.0)
    assert [0, 0, 0, None, None] == [limiter.allow("k", 100.0 + i) for i in range(5)]
    assert 0 == limiter.allow("other", 104.0)  # kinds have budgets of their own
    assert 2 == limiter.allow("k", 110.0)
    assert 0 == limiter.allow("k", 110.5)


def test_limiter_drain_reports_each_ended_window_once() -> None:
    """drain() reports a kind's suppressed count once its window ended, then not again."""
    limiter = LogLimiter(burst=1, window=10.0)
    for i in range(6):
        limiter.allow("k", 100.0 + i / 10)
    assert [] == limiter.drain(105.0)  # the window is still open
    assert [("k", 5)] == limiter.drain(110.0)
    assert [] == limiter.drain(120.0)
    assert 0 == limiter.allow("k", 121.0)  # nothing left to report on the next line


def test_limiter_tracks_a_bounded_number_of_kinds() -> None:
    """Past max_kinds, new kinds share one budget: memory does not grow with distinct lines."""
    limiter = LogLimiter(burst=2, window=10.0, max_kinds=3)
    assert [0, 0, 0] == [limiter.allow(f"k{i}", 1.0) for i in range(3)]
    assert [0, 0, None] == [limiter.allow(f"new{i}", 1.0) for i in range(3)]
    assert 4 == len(limiter._kinds)  # three kinds and the shared "(other)"


def test_configured_logging_limits_warnings_and_library_lines(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Through configure_logging: 1,000 identical warnings (relay's and asyncio's) write 10
    lines each; info lines are not limited; flush_suppressed reports the rest once."""
    import relay.ops.logs

    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    monkeypatch.setattr(relay.ops.logs, "_limiter", LogLimiter())
    clock = [1000.0]
    monkeypatch.setattr(relay.ops.logs.time, "monotonic", lambda: clock[0])  # type: ignore[attr-defined]
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging("json", "info")
        log = structlog.get_logger("test")
        for _ in range(1000):
            log.warning("flood", conn="x")
            logging.getLogger("asyncio").error(
                "socket.accept() out of system resource\nsocket: <x>", exc_info=OSError(24, "x")
            )
        for _ in range(20):
            log.info("authenticated")
        clock[0] += 10.0
        flush_suppressed()
        lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    finally:  # leave logging as the other tests found it
        structlog.reset_defaults()
        root.handlers[:], level = saved
        root.setLevel(level)
    events = [line["event"] for line in lines]
    assert 10 == events.count("flood")
    assert 20 == events.count("authenticated")
    accept = [e for e in events if e.startswith("socket.accept()")]
    assert 10 == len(accept)
    suppressed = {line["key"]: line["count"] for line in lines if line["event"] == "log_suppressed"}
    assert {"relay:flood": 990, "asyncio:socket.accept() out of system resource": 990} == (
        suppressed
    )
