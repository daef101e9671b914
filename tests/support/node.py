"""Node tools for the tests of the JavaScript packages (clients/js, clients/react): finding
node and npm, and installing a package's dev dependencies from its lock file."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

__all__ = ["node_tool", "npm_ci"]


def node_tool(name: str) -> str:
    """The path of a Node tool (node, npm, npx); missing fails under CI and skips elsewhere."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not on PATH: the JavaScript packages cannot be tested"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def npm_ci(folder: Path, installed: str = "node_modules") -> None:
    """Installs a package's dev dependencies from its lock file, once: unless ``installed`` (a
    folder under ``folder``, e.g. one pinned package's) is there already."""
    if (folder / installed).is_dir():
        return
    result = subprocess.run(
        [node_tool("npm"), "ci", "--no-audit", "--no-fund"],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, f"npm ci failed in {folder}:\n{result.stdout}\n{result.stderr}"
