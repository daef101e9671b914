"""One socket per browser, in real headless Chromium: tabs of the demo origin share the leader
tab's websocket, survive its closing, and never share a stream with another user's tab."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from relay.demo.scenario import seed
from tests.support.browser import DevTools, chromium
from tests.support.processes import RelayProcess, relay_process
from tests.support.tokens import token
from tests.support.waiting import wait_until

pytestmark = pytest.mark.pg

# Each tab runs the demo origin's own client module, records what it is handed, and counts
# the relay's confirmations.
TAB = """(async () => {
  window.got = { events: [], confirmed: 0 };
  const { createClient } = await import('/client.js');
  window.relay = createClient({ url: location.origin, token: () => %s });
  window.relay.subscribe(%s, %s, {
    onEvent: (e) => got.events.push(e.row.id),
    onSubscribed: () => { got.confirmed += 1; },
  });
  return true;
})()"""


@pytest.fixture
def demo(relay_db: str) -> Iterator[tuple[RelayProcess, DevTools]]:
    with relay_process(relay_db, {"RELAY_DEMO": "true"}) as relay, chromium() as browser:
        yield relay, browser


def open_tab(
    relay: RelayProcess, browser: DevTools, user: str, table: str, options: dict[str, Any]
) -> str:
    """A tab of the demo origin (no demo link: the page's own client stays off) running TAB."""
    session = browser.open(f"http://127.0.0.1:{relay.port}/")
    browser.until(session, "document.readyState === 'complete'")
    script = TAB % (json.dumps(token(user)), json.dumps(table), json.dumps(options))
    assert browser.js(session, script, wait=True) is True
    browser.until(session, "window.got.confirmed === 1")
    return session


def ids(dsn: str, query: str) -> list[int]:
    with psycopg.connect(dsn) as conn:
        return [int(row[0]) for row in conn.execute(query).fetchall()]


def connections(relay: RelayProcess) -> tuple[float, float]:
    """Websocket connections open at the relay now, and accepted since it started."""
    websocket = 'transport="websocket"'
    return (
        relay.metric("relay_connections", websocket),
        relay.metric("relay_connections_total", websocket),
    )


def write(dsn: str, first: int, count: int, pause: float = 0.0) -> None:
    """Rows for alice (thumbnails in p1 and p2, generations) and bob, each committed alone."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for n in range(first, first + count):
            conn.execute(
                "INSERT INTO thumbnails (user_id, project_id, title) VALUES ('alice', %s, %s)",
                ("p2" if n % 2 else "p1", f"a{n}"),
            )
            if n % 3 == 0:
                conn.execute(
                    "INSERT INTO generations (user_id, project_id, shot_id, status)"
                    " VALUES ('alice', 'p1', %s, 'queued')",
                    (f"g{n}",),
                )
            if n % 4 == 0:
                conn.execute(
                    "INSERT INTO thumbnails (user_id, project_id, title) VALUES ('bob', 'p1', %s)",
                    (f"b{n}",),
                )
            time.sleep(pause)  # paces the stream, so the leader closes in the middle of it


ALICE_ALL = "SELECT id FROM thumbnails WHERE user_id = 'alice' ORDER BY id"
ALICE_P2 = "SELECT id FROM thumbnails WHERE user_id = 'alice' AND project_id = 'p2' ORDER BY id"
ALICE_GENERATIONS = "SELECT id FROM generations WHERE user_id = 'alice' ORDER BY id"
BOB_ALL = "SELECT id FROM thumbnails WHERE user_id = 'bob' ORDER BY id"


def test_tabs_share_one_socket_and_survive_the_leader_closing(
    demo: tuple[RelayProcess, DevTools], relay_db: str
) -> None:
    """Three alice tabs: one relay connection, each tab exactly its rows; the leader closes
    mid-stream and the others go on with no gap and no repeat; bob's tab has its own socket."""
    relay, browser = demo
    a1 = open_tab(relay, browser, "alice", "thumbnails", {})
    a2 = open_tab(relay, browser, "alice", "thumbnails", {"filter": {"project_id": "p2"}})
    a3 = open_tab(relay, browser, "alice", "generations", {"ops": ["INSERT"]})
    roles = [browser.js(s, "window.relay.tabRole") for s in (a1, a2, a3)]
    assert ["leader", "follower", "follower"] == roles
    assert (1.0, 1.0) == connections(relay)

    b1 = open_tab(relay, browser, "bob", "thumbnails", {})
    assert "leader" == browser.js(b1, "window.relay.tabRole")
    assert (2.0, 2.0) == connections(relay)

    # Every tab gets every event of its subscription, and nothing else.
    write(relay_db, 0, 12)
    expected = {a1: ALICE_ALL, a2: ALICE_P2, a3: ALICE_GENERATIONS, b1: BOB_ALL}
    for session, query in expected.items():
        rows = ids(relay_db, query)
        browser.until(session, f"window.got.events.length >= {len(rows)}")
        assert rows == browser.js(session, "window.got.events"), query

    # The leader tab closes in the middle of a stream; the next tab leads from the cursors.
    writer = threading.Thread(target=write, args=(relay_db, 12, 60, 0.02))
    writer.start()
    try:
        seen = len(ids(relay_db, ALICE_P2))
        browser.until(a2, f"window.got.events.length >= {seen + 3}")
        browser.close(a1)
    finally:
        writer.join(60)
    assert not writer.is_alive()
    for session in (a2, a3, b1):
        rows = ids(relay_db, expected[session])
        browser.until(session, f"window.got.events.length >= {len(rows)}")
        assert rows == browser.js(session, "window.got.events"), expected[session]
    roles = sorted(browser.js(s, "window.relay.tabRole") for s in (a2, a3))
    assert ["follower", "leader"] == roles
    assert [2, 2] == [browser.js(s, "window.got.confirmed") for s in (a2, a3)]  # confirmed anew
    wait_until(
        lambda: connections(relay)[0] == 2.0,
        10,
        "the closed leader's socket to be gone at the relay",
    )
    assert 3.0 == connections(relay)[1]  # alice's two leaders, and bob


DASHBOARD = """(() => document.querySelector('#status').dataset.state === 'live'
  && document.querySelectorAll('#thumbnails [data-thumbnail-id]').length === 4)()"""


def test_demo_page_tabs_share_one_socket(relay_db: str) -> None:
    """Two tabs of alice's demo link: one relay connection, the page says which tab holds it,
    and a share click shows on both dashboards."""
    with psycopg.connect(relay_db, autocommit=True) as conn:
        seed(conn)
        (thumbnail,) = conn.execute(
            "SELECT min(id) FROM thumbnails WHERE user_id = 'alice'"
        ).fetchone() or (0,)
    with relay_process(relay_db, {"RELAY_DEMO": "true"}) as relay, chromium() as browser:
        link = f"http://127.0.0.1:{relay.port}/?token={token('alice')}"
        tabs = [browser.open(link), browser.open(link)]
        for session in tabs:
            browser.until(session, DASHBOARD)
        roles = [browser.until(s, "document.querySelector('#tab').dataset.role") for s in tabs]
        assert ["follower", "leader"] == sorted(roles)
        assert (1.0, 1.0) == connections(relay)
        request = urllib.request.Request(
            f"http://127.0.0.1:{relay.port}/demo/click?id={thumbnail}", method="POST"
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert 200 == response.status
        count = f"document.querySelector('[data-thumbnail-id=\"{thumbnail}\"] .count')"
        for session in tabs:
            browser.until(session, f"{count}.textContent === '1'")
