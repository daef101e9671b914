"""The write-overhead benchmark runs end to end (smoke mode); it measures, this only checks."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.pg

ROOT = Path(__file__).resolve().parent.parent
CELLS = [
    (mode, writers)
    for mode in ("untracked", "tracked, notify on", "tracked, notify off")
    for writers in (1, 4)
]


def test_quick_benchmark_prints_a_row_for_every_cell() -> None:
    """`python -m bench.write_overhead --quick` exits 0 with a table row for each of the 6 cells."""
    result = subprocess.run(
        [sys.executable, "-m", "bench.write_overhead", "--quick"],
        cwd=ROOT, capture_output=True, text=True, timeout=110, check=False,
    )  # fmt: skip
    assert 0 == result.returncode, result.stderr[-3000:]
    for mode, writers in CELLS:
        row = re.compile(rf"^\| {re.escape(mode)} \| {writers} \| [\d,]+ \| \d+% \|", re.MULTILINE)
        assert row.search(result.stdout), f"no row for {mode} with {writers} writer(s)"
    assert "Target (from the issue): tracked, notify off" in result.stdout
