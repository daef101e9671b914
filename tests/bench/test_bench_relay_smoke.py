"""The relay benchmark runs end to end (smoke mode); it measures, this only checks the report."""

from __future__ import annotations

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
