"""bench/regions.py: a benchmark rewrites its own region of BENCHMARKS.md and nothing else."""

from __future__ import annotations

from pathlib import Path

from bench.regions import WRITE_REGION, Region, replace_region


def test_region_replaces_only_its_own_markers(tmp_path: Path) -> None:
    """The text between a region's markers is replaced; the prose and other regions stay."""
    other = Region("other")
    path = tmp_path / "B.md"
    path.write_text(f"intro\n{WRITE_REGION.wrap('old')}\nmiddle\n{other.wrap('kept')}\nend\n")
    replace_region(path, WRITE_REGION.wrap("new"), WRITE_REGION.start, WRITE_REGION.end)
    assert (
        f"intro\n{WRITE_REGION.start}\n\nnew\n\n{WRITE_REGION.end}\nmiddle\n"
        f"{other.start}\n\nkept\n\n{other.end}\nend\n"
    ) == path.read_text()


def test_region_is_appended_to_a_file_without_it(tmp_path: Path) -> None:
    """A file without the markers gets the region appended after a blank line."""
    path = tmp_path / "B.md"
    path.write_text("# Benchmarks\n")
    replace_region(path, WRITE_REGION.wrap("x"), WRITE_REGION.start, WRITE_REGION.end)
    assert f"# Benchmarks\n\n{WRITE_REGION.wrap('x')}\n" == path.read_text()
