"""The machine a benchmark ran on, as the report's setup section names it."""

from __future__ import annotations

import contextlib
import os
import platform
import resource
import time
from importlib import metadata
from pathlib import Path

import psutil

__all__ = ["MachineCpu", "machine_info"]


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine_info() -> dict[str, str]:
    """CPU model and cores, memory, kernel, Python, and the versions of the packages compared."""
    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = "?"
    with contextlib.suppress(OSError):
        kb = int(Path("/proc/meminfo").read_text().split("\n", 1)[0].split()[1])
        mem = f"{kb / 1024**2:.0f} GiB"
    return {
        "cpu": f"{os.cpu_count()} cores ({model})",
        "memory": mem,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "packages": ", ".join(
            f"{p} {_version(p)}"
            for p in ("websockets", "psycopg", "broadcaster", "starlette", "uvicorn", "asyncpg")
        ),
    }


class MachineCpu:
    """CPU used by this harness and every process it started (reaped ones included), and by
    the rest of the machine, between two samples."""

    def __init__(self) -> None:
        self.ours0, self.busy0, self.wall0 = self._sample()

    @staticmethod
    def _busy() -> float:
        fields = [float(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + fields[4]  # idle + iowait
        return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _ours() -> float:
        own = resource.getrusage(resource.RUSAGE_SELF)
        reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
        total = own.ru_utime + own.ru_stime + reaped.ru_utime + reaped.ru_stime
        for child in psutil.Process().children(recursive=True):
            try:
                t = child.cpu_times()
                total += t.user + t.system + t.children_user + t.children_system
            except psutil.Error:
                pass
        return total

    def _sample(self) -> tuple[float, float, float]:
        return self._ours(), self._busy(), time.monotonic()

    def others(self) -> float:
        """Cores the rest of the machine used since this object was made."""
        ours, busy, wall = self._sample()
        return max(0.0, (busy - self.busy0 - (ours - self.ours0)) / max(1e-9, wall - self.wall0))
