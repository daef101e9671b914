"""The write-overhead benchmark runs end to end (smoke mode); it measures, this only checks."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench.regions import CAPTURE_REGION, WRITE_REGION
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


def test_quick_benchmark_prints_a_row_for_every_cell(tmp_path: Path) -> None:
    """`--quick` exits 0 with pgbench as the load and a throughput and a CPU row for each of the
    8 cells, and writes the same report into the write-bench region of `--region`'s file."""
    target = tmp_path / "BENCHMARKS.md"
    target.write_text("# Benchmarks\n\nprose\n")
    report = quick_run("--region", str(target))
    assert_every_cell(report)
    assert "- Workload: pgbench (the server's own), `-M prepared`" in report
    assert f"# Benchmarks\n\nprose\n\n{WRITE_REGION.wrap(report)}\n" == target.read_text()


def test_quick_benchmark_with_python_writers() -> None:
    """`--quick --client python` runs the same cells with Python writer processes as the load."""
    report = quick_run("--client", "python")
    assert_every_cell(report)
    assert "- Workload: each writer (one Python process, one connection)" in report


@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind is not installed")
def test_capture_cost_counts_instructions_against_a_baseline(tmp_path: Path) -> None:
    """`bench.capture_cost` exits 0 with one row per chosen case: both scripts' counts and their
    difference (the untracked UPDATE costs the same under both), also written, with its
    command, into the capture-cost region of `--region`'s file."""
    target = tmp_path / "BENCHMARKS.md"
    result = subprocess.run(
        [sys.executable, "-m", "bench.capture_cost", "--case", "untracked",
         "--baseline", str(FIXTURES / "install-v3.sql"), "--region", str(target)],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert 0 == result.returncode, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert "| case | install-v3.sql | sql/install.sql | difference |" == lines[0]
    assert re.fullmatch(r"\| untracked UPDATE \| ([\d,]+) k \| \1 k \| [+-]0 k \|", lines[2])
    assert 3 == len(lines)
    command = "`python -m bench.capture_cost --baseline install-v3.sql`"
    assert (
        CAPTURE_REGION.wrap(f"{command}, instructions per transaction:\n\n{result.stdout}") + "\n"
        == target.read_text()
    )


def test_replay_cost_quick_prints_every_layout_and_horizon() -> None:
    """`bench.replay_cost --quick --no-write` exits 0 with, for each index layout, a first-page and
    catch-up time at 1 min, 1 h and 24 h offline, and its sequencer batch times."""
    from bench.replay_cost import LAYOUTS

    result = subprocess.run(
        [sys.executable, "-m", "bench.replay_cost", "--quick", "--no-write"],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert 0 == result.returncode, result.stderr[-3000:]
    cell = r" [\d,.]+ / [\d,.]+ \(\d+; \d+\) \|"
    for layout in LAYOUTS:
        name = re.escape(layout.name)
        assert re.search(rf"^\| {name} \|{cell * 3}$", result.stdout, re.M), layout.name
        assert re.search(rf"^\| {name} \|( [\d,.]+ \|){{3}} \d+ \|$", result.stdout, re.M)


def test_heartbeat_cost_prints_per_hour_counts() -> None:
    """`bench.heartbeat_cost --replicas 2` exits 0 with 720 heartbeat rows an hour per replica at
    5 s, every replica reading every heartbeat (2 x 720 x 2 reads), and WAL bytes per heartbeat."""
    result = subprocess.run(
        [sys.executable, "-m", "bench.heartbeat_cost", "--replicas", "2"],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert 0 == result.returncode, result.stderr[-3000:]
    assert "| log rows | 720 | 1,440 |" in result.stdout
    assert "| log reads (every replica reads every heartbeat) | 1,440 | 2,880 |" in result.stdout
    assert re.search(
        r"^\| WAL \| [\d.]+ MB \([\d,]+ bytes each\) \| [\d.]+ MB \|$", result.stdout, re.M
    )
