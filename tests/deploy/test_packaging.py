"""The distribution builds from what the container image copies, and carries its files."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from tests.support.paths import REPO


def build_stage_sources() -> list[str]:
    """The paths deploy/Dockerfile's build stage copies into its context."""
    text = (REPO / "deploy" / "Dockerfile").read_text()
    stage = text.split("AS build", 1)[1].split("\nFROM ", 1)[0]
    paths: list[str] = []
    for line in stage.splitlines():
        if match := re.match(r"COPY\s+(?!--)(.+)\s+\S+$", line.strip()):
            paths += match.group(1).split()
    return paths


def test_wheel_builds_from_the_image_build_context_with_its_data(tmp_path: Path) -> None:
    """Only what the Dockerfile copies is enough to build the wheel, and the wheel has the SQL,
    every module of the browser client and the demo page (no network: the venv's setuptools,
    no isolation)."""
    context = tmp_path / "context"
    for source in build_stage_sources():
        target = context / source
        target.parent.mkdir(parents=True, exist_ok=True)
        if (REPO / source).is_dir():
            shutil.copytree(REPO / source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(REPO / source, target)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path / "dist"), str(context)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert 0 == result.returncode, result.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("pgrelay-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {
        "relay/py.typed",
        "relay/demo/static/demo.html",
        "pgrelay-0.1.0.data/data/share/pgrelay/sql/install.sql",
        "pgrelay-0.1.0.data/data/share/pgrelay/sql/uninstall.sql",
    }
    expected |= {  # every module of the browser client: client.js imports them
        f"pgrelay-0.1.0.data/data/share/pgrelay/client/{module.name}"
        for module in (REPO / "clients" / "js" / "src").glob("*.js")
    }
    assert expected <= names, sorted(expected - names)
