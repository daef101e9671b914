"""A small React page (@pgrelay/react) in real headless Chromium: a live count and a Live
indicator that goes grey while the relay is stopped and green again when it returns, with
nothing lost or repeated across the outage."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.support.browser import chromium
from tests.support.node import node_tool, npm_ci
from tests.support.paths import REPO, private_folder
from tests.support.processes import free_port, relay_process
from tests.support.tokens import token

pytestmark = pytest.mark.pg

REACT_DIR = REPO / "clients" / "react"
PAGE = REACT_DIR / "testlib" / "live-page.js"


@contextlib.contextmanager
def client_dir_with_page() -> Iterator[Path]:
    """The browser client's modules and the React page bundled beside them (as live.js), for
    the demo origin to serve (RELAY_CLIENT_DIR)."""
    npm_ci(REPO / "clients" / "js")
    npm_ci(REACT_DIR)
    with private_folder("pgrelay-react-page-") as folder:
        for module in (REPO / "clients" / "js" / "src").glob("*.js"):
            shutil.copy(module, folder / module.name)
        result = subprocess.run(
            [node_tool("npx"), "--no-install", "esbuild", str(PAGE), "--bundle", "--format=esm",
             "--define:process.env.NODE_ENV=\"production\"", f"--outfile={folder / 'live.js'}"],
            cwd=REACT_DIR, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert result.returncode == 0, f"esbuild failed:\n{result.stdout}\n{result.stderr}"
        yield folder


def insert(dsn: str, *titles: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for title in titles:
            conn.execute(
                "INSERT INTO thumbnails (user_id, project_id, title) VALUES ('alice', 'p1', %s)",
                (title,),
            )


def alice_ids(dsn: str) -> list[int]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT id FROM thumbnails WHERE user_id = 'alice' ORDER BY id")
        return [int(row[0]) for row in rows.fetchall()]


LIVE = "document.querySelector('#live')?.dataset.live === 'true'"
DOWN = "document.querySelector('#live')?.dataset.live === 'false'"
COLOR = "getComputedStyle(document.querySelector('#live')).color"
IDS = "JSON.parse(document.querySelector('#count').dataset.ids)"


def test_react_page_live_indicator_follows_the_relay(relay_db: str) -> None:
    """The Live badge is green while the relay runs, grey while it is stopped, green again when
    it is back; the count shows every row once, those written during the outage included."""
    with client_dir_with_page() as folder, chromium() as browser:
        env = {
            "RELAY_DEMO": "true",
            "RELAY_CLIENT_DIR": str(folder),
            "RELAY_PORT": str(free_port()),
        }
        with relay_process(relay_db, env) as relay:
            page = browser.open(f"http://127.0.0.1:{relay.port}/")
            browser.until(page, "document.readyState === 'complete'")
            mount = f"import('/live.js').then((m) => {{ m.mount({json.dumps(token('alice'))}); return true; }})"
            assert browser.js(page, mount, wait=True) is True
            browser.until(page, LIVE)
            assert "rgb(0, 128, 0)" == browser.js(page, COLOR)
            browser.until(page, "document.querySelector('#count') !== null")
            insert(relay_db, "one", "two", "three")
            browser.until(page, f"{IDS}.length >= 3")
            assert alice_ids(relay_db) == browser.js(page, IDS)
            relay.stop()
            browser.until(page, DOWN)
            assert "rgb(128, 128, 128)" == browser.js(page, COLOR)
            insert(relay_db, "four", "five")  # written while no relay runs
        with relay_process(relay_db, env):
            browser.until(page, LIVE, timeout=30)
            insert(relay_db, "six")
            expected = alice_ids(relay_db)
            browser.until(page, f"{IDS}.length >= {len(expected)}")
            assert expected == browser.js(page, IDS)
            assert 6 == len(expected)
