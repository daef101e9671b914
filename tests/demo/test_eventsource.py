"""Server-Sent Events in real headless Chromium, with the browser's own EventSource: a ticket
opens the stream, a drop mid-stream (the server side closes, or the network is cut) is resumed by
EventSource itself with Last-Event-ID, a cursor past retention gets the reset event, and a tab
that does not read is cut by the slow-consumer rule. Events are checked against the database."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import psycopg
import pytest

from tests.support.browser import DevTools, chromium
from tests.support.processes import RelayProcess, relay_process
from tests.support.proxy import TcpProxy, tcp_proxy
from tests.support.sse import open_stream
from tests.support.tokens import token
from tests.support.waiting import wait_until

pytestmark = pytest.mark.pg

BUSY = 20  # seconds the tab that does not read keeps its main thread busy
SUBS = [{"id": "t", "table": "thumbnails"}, {"id": "g", "table": "generations"}]
# A tab of the demo origin (no demo link: the page's own client stays off) trading alice's token
# for a ticket and opening an EventSource with it; it records what EventSource hands it.
PAGE = """(async () => {
  const answer = await fetch('/v1/sse/ticket', {
    method: 'POST', headers: { Authorization: 'Bearer ' + %s },
  });
  const { ticket } = await answer.json();
  window.got = { events: [], resets: [], errors: [], subscribed: 0, opens: 0, failures: 0 };
  const query = new URLSearchParams({ subs: JSON.stringify(%s), ticket, ...%s });
  const source = new EventSource('/v1/sse?' + query);
  source.onopen = () => { got.opens += 1; };
  source.onmessage = (e) => {
    const frame = JSON.parse(e.data);
    got.events.push([frame.sub, frame.row.id, e.lastEventId === frame.cursor]);
  };
  source.addEventListener('subscribed', () => { got.subscribed += 1; });
  source.addEventListener('reset', (e) => { got.resets.push(JSON.parse(e.data)); });
  source.addEventListener('error', (e) => {
    if (e.data) got.errors.push(JSON.parse(e.data).code);
    else got.failures += 1;  // EventSource's own: the connection failed, it retries
  });
  window.source = source;
  return true;
})()"""


@pytest.fixture
def demo(relay_db: str) -> Iterator[tuple[RelayProcess, TcpProxy, DevTools]]:
    """The demo relay behind a proxy the test drops, and Chromium."""
    with (
        relay_process(relay_db, {"RELAY_DEMO": "true"}) as relay,
        tcp_proxy(relay.port) as proxy,
        chromium() as browser,
    ):
        yield relay, proxy, browser


def open_page(browser: DevTools, port: int, since: str | None = None) -> str:
    session = browser.open(f"http://127.0.0.1:{port}/")
    browser.until(session, "document.readyState === 'complete'")
    extra = json.dumps({"since": since} if since else {})
    assert browser.js(session, PAGE % (json.dumps(token("alice")), json.dumps(SUBS), extra),
                      wait=True) is True  # fmt: skip
    return session


def alice_rows(dsn: str) -> list[list[object]]:
    """Alice's rows as the page records events: [subscription, id], in commit order."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT 't', id, xmin::text::bigint FROM thumbnails WHERE user_id = 'alice'"
            " UNION ALL SELECT 'g', id, xmin::text::bigint FROM generations"
            " WHERE user_id = 'alice' ORDER BY 3"
        ).fetchall()
    return [[str(sub), int(row_id)] for sub, row_id, _ in rows]


def write(
    dsn: str, count: int, pause: float, at: int = -1, drop: threading.Event | None = None
) -> None:
    """Rows for alice (a thumbnail, and every other time a generation) and bob, each committed
    alone; ``drop`` is set after row ``at``."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for n in range(count):
            conn.execute(
                "INSERT INTO thumbnails (user_id, project_id, title) VALUES ('alice', 'p1', %s)",
                (f"a{n}",),
            )
            if n % 2:
                conn.execute(
                    "INSERT INTO generations (user_id, project_id) VALUES ('alice', %s)", (f"g{n}",)
                )
            conn.execute(
                "INSERT INTO thumbnails (user_id, project_id, title) VALUES ('bob', 'p1', %s)",
                (f"b{n}",),
            )
            if n == at and drop is not None:
                drop.set()
            time.sleep(pause)


@pytest.mark.parametrize("how", ["server_closes", "network_cut"])
def test_a_drop_mid_stream_is_resumed_by_eventsource_with_nothing_lost_or_repeated(
    demo: tuple[RelayProcess, TcpProxy, DevTools], relay_db: str, how: str
) -> None:
    """The stream ends mid-way (a FIN from the server's side, or an RST as when the network is
    cut) and new connections fail for a second; EventSource reconnects on its own with
    Last-Event-ID, and the tab has every one of alice's rows once, in order, each event's
    lastEventId its cursor."""
    relay, proxy, browser = demo
    tab = open_page(browser, proxy.port)
    browser.until(tab, "window.got.subscribed === 2")
    dropped = threading.Event()
    writer = threading.Thread(target=write, args=(relay_db, 30, 0.05, 12, dropped))
    writer.start()
    try:
        assert dropped.wait(30)
        proxy.down = True
        proxy.close() if how == "server_closes" else proxy.cut()
        time.sleep(1.0)
        proxy.down = False
    finally:
        writer.join(60)
    expected = alice_rows(relay_db)
    assert 45 == len(expected)
    browser.until(tab, f"window.got.events.length >= {len(expected)}", timeout=30)
    time.sleep(0.5)
    got = browser.js(tab, "window.got")
    assert expected == [event[:2] for event in got["events"]]
    assert all(event[2] for event in got["events"])  # lastEventId == the event's cursor
    assert ([], [], 4) == (got["resets"], got["errors"], got["subscribed"])
    assert got["opens"] >= 2 and got["failures"] >= 1
    assert proxy.accepted >= 3  # the page, the stream, the stream again
    sse = 'transport="sse"'
    wait_until(lambda: relay.metric("relay_connections", sse) == 1.0, 10, "the old stream gone")


def test_a_cursor_past_retention_gets_the_reset_event(
    demo: tuple[RelayProcess, TcpProxy, DevTools], relay_db: str
) -> None:
    """An EventSource opened with a cursor the log has pruned past gets a reset event per
    subscription (cursor_expired), then live events."""
    relay, proxy, browser = demo
    stream = open_stream(relay, "alice", table="thumbnails")
    stream.frames(2)  # ready, subscribed
    write(relay_db, 2, 0.0)
    cursor = stream.events(1)[0]["cursor"]
    stream.close()
    with psycopg.connect(relay_db, autocommit=True) as conn:
        conn.execute("UPDATE relay.log SET sequenced_at = now() - interval '3 days'")
        conn.execute("SELECT relay.prune(interval '1 day')")
    tab = open_page(browser, proxy.port, since=cursor)
    browser.until(tab, "window.got.subscribed === 2")
    resets = browser.js(tab, "window.got.resets")
    assert [("t", "cursor_expired"), ("g", "cursor_expired")] == [
        (r["sub"], r["reason"]) for r in resets
    ]
    before = len(alice_rows(relay_db))
    write(relay_db, 1, 0.0)
    browser.until(tab, "window.got.events.length === 1")
    assert alice_rows(relay_db)[before:] == [e[:2] for e in browser.js(tab, "window.got.events")]


def test_a_tab_that_does_not_read_is_cut_by_the_slow_consumer_rule(relay_db: str) -> None:
    """While the tab's main thread is busy its EventSource reads nothing: the relay aborts the
    stream past RELAY_SLOW_CLIENT_TIMEOUT. Then EventSource reconnects with Last-Event-ID and
    the tab ends with every event once, in order."""
    env = {
        "RELAY_DEMO": "true",
        # The queue holds all 400 events: only the slow-client rule may cut the stream. (Were it
        # to overflow first, a reset frame could reach the tab before the abort, and rightly
        # skip what was dropped.)
        "RELAY_QUEUE_MAX_MESSAGES": "1000",
        "RELAY_QUEUE_MAX_BYTES": "64MiB",
        "RELAY_SLOW_CLIENT_TIMEOUT": "2s",
    }
    with relay_process(relay_db, env) as relay, chromium() as browser:
        tab = open_page(browser, relay.port)
        browser.until(tab, "window.got.subscribed === 2")
        # The tab stops reading: its main thread is busy for BUSY seconds.
        busy_until = time.monotonic() + BUSY
        busy = f"setTimeout(() => {{ const end = Date.now() + {BUSY * 1000}; while (Date.now() < end); }})"
        browser.js(tab, busy)
        big = "x" * 60_000  # 24 MB in all: more than the socket buffers hold
        with psycopg.connect(relay_db, autocommit=True) as conn:
            for i in range(400):
                conn.execute(
                    "INSERT INTO generations (user_id, project_id, url) VALUES ('alice', %s, %s)",
                    (str(i), big),
                )
        wait_until(
            lambda: relay.metric("relay_drops_total", 'reason="slow_client"') >= 1,
            BUSY,
            "the stream that is not read aborted",
        )
        time.sleep(max(0.0, busy_until - time.monotonic()) + 0.5)  # DevTools answers again
        expected = [row for row in alice_rows(relay_db) if row[0] == "g"]
        try:
            browser.until(tab, f"window.got.events.length >= {len(expected)}", timeout=60)
        finally:
            got = browser.js(tab, "window.got")
            print({**got, "events": len(got["events"])}, relay.lines[-10:])  # shown on failure
        assert [] == got["resets"]
        assert expected == [event[:2] for event in got["events"]]
        assert 1.0 == relay.metric("relay_drops_total", 'reason="slow_client"')
        assert got["opens"] >= 2
