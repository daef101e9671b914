"""The chaos results file, tests/chaos/results/last-run.json: one entry per scenario and size,
with the machine it ran on and the relay code it ran (``python -m tests.chaos.report`` turns it
into RELIABILITY.md), and the atomic JSON write the load processes use for their own files."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import subprocess
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import psycopg

from tests.support.paths import REPO

__all__ = [
    "RESULTS_FILE",
    "code_state",
    "machine_info",
    "record",
    "relay_code_digest",
    "write_json",
]

RESULTS_FILE = Path(__file__).resolve().parent / "results" / "last-run.json"


def write_json(path: str | Path, data: object) -> None:
    """Atomically: readers never see half a file."""
    tmp = Path(f"{path}.tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)


def relay_code_digest() -> str:
    """A digest of relay/ as it is on disk: which code the relay processes ran."""
    digest = hashlib.sha256()
    for path in sorted((REPO / "relay").rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            digest.update(path.relative_to(REPO).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def code_state() -> dict[str, Any]:
    """The commit and whether relay/ differs from it (read-only git commands)."""
    state: dict[str, Any] = {"relay_code": relay_code_digest()}
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        state["commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
            timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
        state["relay_modified"] = bool(
            subprocess.run(
                ["git", "--no-optional-locks", "status", "--porcelain", "--", "relay"],
                cwd=REPO,
                capture_output=True,
                text=True,
                timeout=10,
                check=True,
            ).stdout.strip()
        )
    return state


def machine_info(dsn: str | None = None) -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                info["memory_gib"] = round(int(line.split()[1]) / 1024 / 1024, 1)
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
    if dsn is not None:
        with contextlib.suppress(psycopg.Error), psycopg.connect(dsn, connect_timeout=5) as conn:
            row = conn.execute("SHOW server_version").fetchone()
            info["postgres"] = row[0] if row else None
    info["websockets"] = metadata.version("websockets")
    return info


def record(key: str, entry: dict[str, Any], machine: dict[str, Any] | None = None) -> None:
    """Stores one test's figures under `key` (e.g. "listener_kill/full") in last-run.json."""
    RESULTS_FILE.parent.mkdir(parents=True, exist_ok=True)
    try:
        data = json.loads(RESULTS_FILE.read_text())
    except (OSError, ValueError):
        data = {}
    data.setdefault("entries", {})[key] = {
        **entry,
        "recorded_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    data["entries"][key].setdefault("code", code_state())
    if machine is not None:
        data.setdefault("machines", {})[key.rsplit("/", 1)[-1]] = machine
    write_json(RESULTS_FILE, data)
