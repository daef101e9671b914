"""The write-overhead benchmark runs end to end (smoke mode); it measures, this only checks."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.support.paths import REPO

pytestmark = pytest.mark.pg

CELLS = [
    (mode, writers)
    for mode in ("untracked", "tracked, notify on", "tracked, notify off", "bare outbox trigger")
    for writers in (1, 4)
]


def quick_run(*args: str) -> str:
    """`python -m bench.write_overhead --quick` plus args: its Markdown, after a zero exit."""
    result = subprocess.run(
        [sys.executable, "-m", "bench.write_overhead", "--quick", *args],
        cwd=REPO, capture_output=True, text=True, timeout=110, check=False,
    )  # fmt: skip
    assert 0 == result.returncode, result.stderr[-3000:]
    return result.stdout


def assert_every_cell(report: str) -> None:
    for mode, writers in CELLS:
        row = re.compile(rf"^\| {re.escape(mode)} \| {writers} \| [\d,]+ \| \d+% \|", re.MULTILINE)
        assert row.search(report), f"no row for {mode} with {writers} writer(s)"
        cpu = re.compile(
            rf"^\| {re.escape(mode)} \| {writers} \|( [\d,]+ \|){{7}} [\d.]+ \|$", re.M
        )
        assert cpu.search(report), f"no CPU row for {mode} with {writers} writer(s)"
    assert "Target (from the issue): tracked, notify off" in report


def test_quick_benchmark_prints_a_row_for_every_cell() -> None:
    """`--quick` exits 0 with pgbench as the load and a throughput and a CPU row for each of the 8 cells."""
    report = quick_run()
    assert_every_cell(report)
    assert "- Workload: pgbench (the server's own), `-M prepared`" in report


def test_quick_benchmark_with_python_writers() -> None:
    """`--quick --client python` runs the same cells with Python writer processes as the load."""
    report = quick_run("--client", "python")
    assert_every_cell(report)
    assert "- Workload: each writer (one Python process, one connection)" in report
