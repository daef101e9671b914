"""Where things are: the repository, the test fixtures, the example schema, private folders."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from relay.ops.datafiles import sql_dir

__all__ = ["FIXTURES", "REPO", "example_path", "private_folder"]

REPO = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def example_path() -> Path:
    """The example schema (thumbnails, generations) the end-to-end tests write to."""
    return sql_dir() / "examples" / "thumbnails_generations.sql"


@contextlib.contextmanager
def private_folder(prefix: str) -> Iterator[Path]:
    """A temporary folder that only its creator removes. Not pytest's tmp_path: pytest prunes
    the base folders of older sessions when another session starts (on a shared machine, a
    developer's), which would delete a server's data from under it while it runs."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
