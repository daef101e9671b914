"""Marked regions of a Markdown file that a benchmark owns: ``make bench`` rewrites
BENCHMARKS.md from one run, each benchmark its own region, the prose around them untouched."""

from __future__ import annotations

from pathlib import Path

__all__ = ["CAPTURE_REGION", "REPLAY_REGION", "WRITE_REGION", "Region", "replace_region"]


class Region:
    """The start and end markers of one benchmark's region."""

    def __init__(self, name: str) -> None:
        self.start = f"<!-- {name}:start -->"
        self.end = f"<!-- {name}:end -->"

    def wrap(self, body: str) -> str:
        """The body between the markers, as the region is written."""
        return f"{self.start}\n\n{body.strip()}\n\n{self.end}"


WRITE_REGION = Region("write-bench")
CAPTURE_REGION = Region("capture-cost")
REPLAY_REGION = Region("replay-cost")


def replace_region(path: Path, region: str, start: str, end: str) -> None:
    """Writes ``region`` (markers included) over the one between ``start`` and ``end``, or
    appends it when the file has none, re-reading the file just before: the rest of it belongs
    to others and may have changed while the benchmark ran."""
    text = path.read_text() if path.exists() else ""
    first = text.find(start)
    last = text.find(end)
    if first != -1 and last != -1 and last > first:
        new = text[:first] + region + text[last + len(end) :]
    else:
        new = text.rstrip("\n") + ("\n\n" if text else "") + region + "\n"
    path.write_text(new)
