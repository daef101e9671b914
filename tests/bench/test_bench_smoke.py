"""The write-overhead benchmark runs end to end (smoke mode); it measures, this only checks."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest

from tests.support.paths import FIXTURES, REPO

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


@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind is not installed")
def test_capture_cost_counts_instructions_against_a_baseline() -> None:
    """`bench.capture_cost` exits 0 with one row per chosen case: both scripts' counts and their
    difference (the untracked UPDATE costs the same under both)."""
    result = subprocess.run(
        [sys.executable, "-m", "bench.capture_cost", "--case", "untracked",
         "--baseline", str(FIXTURES / "install-v3.sql")],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert 0 == result.returncode, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert "| case | install-v3.sql | sql/install.sql | difference |" == lines[0]
    assert re.fullmatch(r"\| untracked UPDATE \| ([\d,]+) k \| \1 k \| [+-]0 k \|", lines[2])
    assert 3 == len(lines)
