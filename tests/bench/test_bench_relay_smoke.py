"""The relay benchmark runs end to end (smoke mode); it measures, this only checks the report."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench.plan import MARK_END, MARK_START, SECTIONS
from tests.support.paths import REPO

pytestmark = pytest.mark.pg


@pytest.mark.timeout(300)
def test_quick_relay_benchmark_reports_every_section(tmp_path: Path) -> None:
    """`python -m bench.relay_bench --quick --out FILE` exits 0 and writes its region, with every
    section, between the markers, keeping what the file held outside them."""
    out = tmp_path / "BENCHMARKS.md"
    out.write_text(f"# Benchmarks\n\nsomeone else's\n\n{MARK_START}\nold\n{MARK_END}\n\ntail\n")
    result = subprocess.run(
        [sys.executable, "-m", "bench.relay_bench", "--quick", "--out", str(out),
         "--plots", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=280, check=False,
    )  # fmt: skip
    assert 0 == result.returncode, result.stderr[-3000:]
    text = out.read_text()
    assert text.startswith("# Benchmarks\n\nsomeone else's\n\n" + MARK_START)
    assert text.endswith(MARK_END + "\n\ntail\n")
    assert "\nold\n" not in text
    positions = [text.find("\n" + heading + "\n") for heading in SECTIONS]
    missing = [h for h, p in zip(SECTIONS, positions, strict=True) if p < 0]
    assert not missing, f"sections missing: {missing}"
    assert positions == sorted(positions), "sections out of order"
    assert "| pgrelay | 1,000" in text, "no latency row for the relay"
    assert "| pgrelay, Supabase dialect | 1,000" in text, "no latency row for the Supabase dialect"
    assert "Server CPU per event, the Supabase dialect" in text
    assert "| pgrelay | 100 | 2,000 |" in text, "no fan-out row for the relay"
    # The cells side by side, Postgres CPU per event measured for both stacks.
    assert (
        "| users | events/s | commit mode | p50 (ms) | p99 (ms) | CPU per event (µs), relay "
        "process / peer server | Postgres CPU per event (µs) | lost + duplicated |"
    ) in text
    row = next(line for line in text.splitlines() if line.startswith("| 100 | 1,000 | durable"))
    postgres = row.split(" | ")[6]
    # The peer runs only where `make bench` installed its packages (the bench extra).
    peer = r"\d[\d,]* \([\d.]+x\)" if importlib.util.find_spec("broadcaster") else "n/a"
    assert re.fullmatch(rf"\d[\d,]* / {peer}", postgres), row
    assert "| users | events/s | writers' backends | the stack's connections | background |" in text
    assert "| users | events/s | pgrelay | peer | CPU per event (µs), relay process / peer " in text
    # Issue 12's targets, one row each (judged or "not measured" in a quick run).
    targets = text[text.index("### Targets") : text.index("### Profile of the hot path")]
    for target in (
        "| p50 ≤ 1.5 ms, 1,000 users at 1,000 events/s |",
        "| p99 ≤ 5 ms, 1,000 users at 1,000 events/s |",
        "| relay process CPU per event ≤ 2x the peer server's, 1,000 users at 1,000 events/s |",
        "| Postgres CPU per event ≤ 1.5x the peer's, 1,000 users at 1,000 events/s |",
        "| p99 ≤ 20 ms, 100 users at 4,500 events/s |",
        "| p99 ≤ 20 ms, 1,000 users at 4,500 events/s |",
        "| highest rate sustained 20 s at 1,000 users (p99 < 1 s, nothing lost) ≥ 1.5x the peer's |",
        "| fan-out: relay CPU per delivery ≤ 17.5 µs at 1,000 connections |",
        "| idle memory ≤ 19.7 kB per connection at 10,000 connections |",
        "| nothing lost or duplicated in any cell |",
    ):
        assert target in targets, f"no targets row {target!r}"
