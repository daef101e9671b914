"""Hostile input in the Supabase dialect: seeded, fuzzed Phoenix frames against a live relay.

Each frame is built with the answer docs/supabase.md ("Bad input") promises for it: a frame that
cannot be answered (not JSON, not a five-member array, a ref that is not a short string, a bad
topic) gets none; one with a ref and a topic gets a ``phx_reply`` error naming the problem (an
event or payload of the wrong type, an unjoined topic: ``unmatched topic``, a broadcast or a
presence push); an unknown event on a joined channel is ignored; a binary frame other than a
user broadcast gets nothing. Each connection sends at most 90 bad frames and then a heartbeat,
whose reply must come right after every promised answer, in order; a 101st bad frame closes
with 1008 ``too_many_errors``, an oversized frame with 1009. Meanwhile a well-behaved Supabase
socket keeps receiving its changes, exactly once and in order.

Short run (make test): 1,800 fuzzed frames on 20 sockets; ``RELAY_PHOENIX_FUZZ_FRAMES`` sets
another total and ``RELAY_FUZZ_SEED`` replays a run. RELIABILITY.md records the full run.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from collections import Counter
from typing import Any

import jwt
import psycopg
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as ws_connect

from tests.support.clients import close_of
from tests.support.processes import RelayProcess, relay_process
from tests.support.tokens import SECRET

pytestmark = pytest.mark.pg

FRAMES = int(os.environ.get("RELAY_PHOENIX_FUZZ_FRAMES", "1800"))
SEED = int(os.environ.get("RELAY_FUZZ_SEED", "20260514"))
PER_SOCKET = 90
Expected = list[Any]  # the answers a frame promises: phx_reply payloads


def token(ttl: float = 3600, **claims: Any) -> str:
    return jwt.encode({"exp": time.time() + ttl, **claims}, SECRET, "HS256")


def endpoint(relay: RelayProcess) -> str:
    return (
        f"ws://127.0.0.1:{relay.port}/realtime/v1/websocket?apikey={token(role='anon')}&vsn=2.0.0"
    )


def error(reason: str) -> dict[str, Any]:
    return {"status": "error", "response": {"reason": reason}}


JUNK: list[Any] = [None, True, 0, -1, 1.5, "", "x" * 70, [], [1], {}, {"a": 1}, "\u0000", "é"]


KINDS = (
    "invalid JSON", "JSON not an array", "wrong arity", "bad ref", "bad topic",
    "bad event", "payload not an object", "unjoined topic", "unknown event on a joined channel",
    "broadcast or presence push", "binary frame", "malformed join config",
)  # fmt: skip


def case(rng: random.Random, joined: str, kind: int) -> tuple[str | bytes, list[Any]]:
    """One hostile frame of this kind and the replies it promises (each as its full frame)."""
    ref = str(rng.randrange(10**6))
    if kind == 0:
        return rng.choice(["{", "[1,2", "nul", '"open', "[]]", "\x00"]), []
    if kind == 1:
        return json.dumps(rng.choice([{}, {"topic": "x"}, 5, "s", None, True])), []
    if kind == 2:
        arity = rng.choice([0, 1, 2, 3, 4, 6, 9])
        return json.dumps([ref] * arity), []
    if kind == 3:  # a ref that is not a short string (a number is read as its digits)
        bad_ref = rng.choice([True, [], {}, 1.5, "r" * 65, ""])
        return json.dumps([None, bad_ref, joined, "phx_leave", {}]), []
    if kind == 4:  # a bad topic: nothing to answer on
        topic: Any = rng.choice([None, 5, "", "t" * 256, [], {}])
        return json.dumps([None, ref, topic, "heartbeat", {}]), []
    if kind == 5:  # an event of the wrong type
        event: Any = rng.choice([None, 5, "", "e" * 65, [], {}])
        reply = error("event must be a string of 1 to 64 characters")
        return json.dumps([None, ref, joined, event, {}]), [[None, ref, joined, "phx_reply", reply]]
    if kind == 6:  # a payload that is not an object
        payload: Any = rng.choice([None, 5, "p", [], True])
        reply = error("payload must be an object")
        return json.dumps([None, ref, joined, "phx_join", payload]), [
            [None, ref, joined, "phx_reply", reply]]  # fmt: skip
    if kind == 7:  # any event on a topic never joined
        topic = "realtime:never-" + str(rng.randrange(100))
        event = rng.choice(["phx_leave", "access_token", "broadcast", "whatever", "heartbeat"])
        return json.dumps(["9", ref, topic, event, {}]), [
            ["9", ref, topic, "phx_reply", error("unmatched topic")]]  # fmt: skip
    if kind == 8:  # an unknown event on the joined channel: ignored, as Supabase does
        return json.dumps(["1", ref, joined, rng.choice(["hello", "phx_reply", "x"]), {}]), []
    if kind == 9:  # broadcast and presence pushes
        event = rng.choice(["broadcast", "presence"])
        reason = f"{event} is not supported by pgrelay: it serves postgres_changes only"
        return json.dumps(["1", ref, joined, event, {"type": event, "event": "e", "payload": {}}]), [
            ["1", ref, joined, "phx_reply", error(reason)]]  # fmt: skip
    if kind == 10:  # binary: a user broadcast (kind 3) is answered, other kinds are not
        if rng.random() < 0.5:
            parts = [b"1", ref.encode(), joined.encode(), b"cursor", b""]
            head = bytes([3, *(len(p) for p in parts), 1])
            reason = "broadcast is not supported by pgrelay: it serves postgres_changes only"
            return head + b"".join(parts) + b'{"x":1}', [
                ["1", ref, joined, "phx_reply", error(reason)]
            ]
        return bytes([rng.choice([0, 1, 2, 4, 5, 255])]) + rng.randbytes(rng.randrange(40)), []
    # kind 11: a join whose config is malformed
    config = rng.choice(
        [{"postgres_changes": 5}, {"postgres_changes": [1]}, {"postgres_changes": "x"}]
    )
    topic = "realtime:bad-" + str(rng.randrange(100))
    reason = "InvalidJoinPayload: config.postgres_changes must be a list of objects"
    return json.dumps([ref, ref, topic, "phx_join", {"config": config}]), [
        [ref, ref, topic, "phx_reply", error(reason)]]  # fmt: skip


class Steady(threading.Thread):
    """A well-behaved socket for one user, counting the changes it receives."""

    def __init__(self, relay: RelayProcess) -> None:
        super().__init__(daemon=True)
        self.ws = ws_connect(endpoint(relay), open_timeout=5, legacy=True)
        config = {
            "postgres_changes": [{"event": "INSERT", "schema": "public", "table": "thumbnails"}]
        }
        self.ws.send(json.dumps(["1", "1", "realtime:steady", "phx_join",
                                 {"config": config, "access_token": token(sub="steady", role="authenticated")}]))  # fmt: skip
        assert "ok" == json.loads(self.ws.recv(5))[4]["status"]
        self.titles: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                frame = json.loads(self.ws.recv(0.2))
            except TimeoutError:
                continue
            except ConnectionClosed:
                return
            if frame[3] == "postgres_changes":
                self.titles.append(frame[4]["data"]["record"]["title"])


def answers(ws: ClientConnection, heartbeat: str) -> list[Any]:
    """Frames received up to the heartbeat's reply (system messages aside)."""
    got: list[Any] = []
    while True:
        frame = json.loads(ws.recv(10))
        if frame[1] == heartbeat and frame[2] == "phoenix":
            return got
        if frame[3] != "system":
            got.append(frame)


@pytest.mark.timeout(300)
def test_fuzzed_phoenix_frames_get_their_documented_answers(
    relay: RelayProcess, relay_db: str
) -> None:
    """Every fuzzed frame gets exactly the answer it promises, the relay keeps serving, and a
    well-behaved socket receives every change once, in order."""
    with relay_process(relay_db, {"RELAY_CONNECT_RATE_PER_IP": "100000"}) as relay:
        fuzz(relay, relay_db)


def fuzz(relay: RelayProcess, relay_db: str) -> None:
    rng = random.Random(SEED)
    steady = Steady(relay)
    steady.start()
    written: list[str] = []
    kinds: Counter[str] = Counter()
    sent = matched = sockets = 0
    with psycopg.connect(relay_db, autocommit=True) as db:
        while sent < FRAMES:
            with ws_connect(endpoint(relay), open_timeout=5, legacy=True, max_size=None) as ws:
                sockets += 1
                joined = f"realtime:fuzz-{sockets}"
                ws.send(
                    json.dumps(["1", "1", joined, "phx_join", {"config": {"postgres_changes": []}}])
                )
                assert "ok" == json.loads(ws.recv(5))[4]["status"]
                expected: list[Any] = []
                for _ in range(min(PER_SOCKET, FRAMES - sent)):
                    kind = rng.randrange(len(KINDS))
                    kinds[KINDS[kind]] += 1
                    frame, promised = case(rng, joined, kind)
                    ws.send(frame)
                    expected += promised
                    sent += 1
                heartbeat = f"hb-{sockets}"
                ws.send(json.dumps([None, heartbeat, "phoenix", "heartbeat", {}]))
                assert expected == answers(ws, heartbeat)
                matched += len(expected) + 1
            title = f"t{sockets}"
            db.execute(
                "INSERT INTO thumbnails (user_id, project_id, title) VALUES ('steady', 'p1', %s)",
                (title,),
            )
            written.append(title)
    # Past the bound: the 101st answered-or-not bad frame closes with 1008.
    with ws_connect(endpoint(relay), open_timeout=5, legacy=True) as ws:
        for n in range(101):
            ws.send(json.dumps([None, str(n), "realtime:nope", "x", {}]))
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                ws.recv(5)
        assert (1008, "too_many_errors") == close_of(closed.value)
    with ws_connect(endpoint(relay), open_timeout=5, legacy=True, max_size=None) as ws:
        ws.send("[" + " " * 70_000 + "]")
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(5)
        assert 1009 == close_of(closed.value)[0]
    deadline = time.monotonic() + 10
    while len(steady.titles) < len(written) and time.monotonic() < deadline:
        time.sleep(0.05)
    steady.stop.set()
    steady.join()
    assert written == steady.titles
    print(f"phoenix fuzz: seed {SEED}, {sent} frames on {sockets} sockets, {matched} answers "
          f"matched, {len(written)} of {len(written)} steady changes received in order; "
          f"by kind: {dict(sorted(kinds.items()))}")  # fmt: skip
