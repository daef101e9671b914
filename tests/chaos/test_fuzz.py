"""Hostile input: seeded, fuzzed protocol frames against a live relay.

Every frame is built with the answer docs/protocol.md promises for it (sections 4, 8 and 9): an
``error`` with its code (and the ``id`` when the id itself was valid), a ``pong``, ``subscribed``
or ``unsubscribed``, or a close code. Categories: invalid JSON, JSON that is not an object, wrong
types, deep nesting, huge numbers, invalid UTF-8, binary frames, oversized frames, unknown types,
frames before authentication, 10,000 subscribe messages, and filter values (and ids, tables,
schemas, columns, cursors) made of SQL fragments. Each hostile string carries a unique marker;
PostgreSQL runs with ``log_statement = 'all'`` and no marker may appear in its log, as SQL text or
as a parameter. Meanwhile a well-behaved client keeps receiving its events, exactly once and in
order. Tokens and refused handshakes are covered in tests/test_relay_ws.py, test_relay_more.py
and test_relay_http.py.

Short run (make test): 2,000 fuzzed frames and 1,000 subscribes; full run (make chaos): 12,000
fuzzed frames and 10,000 subscribes. ``RELAY_FUZZ_SEED`` replays a run.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import random
import re
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from relay.devserver import PgServer
from tests.chaos.harness import (
    ChaosRun,
    machine_info,
    private_folder,
    record,
)
from tests.helpers import token

pytestmark = pytest.mark.pg

MAX_FRAME = 65536  # RELAY_MAX_MESSAGE_BYTES, default
MAX_ERRORS = 100  # refused frames answered before 1008
MAX_SUBS = 100  # RELAY_MAX_SUBSCRIPTIONS, default
WINDOW = 64  # answers outstanding per connection: well under the 1000-frame outbound bound
COLUMNS = ["id", "user_id", "project_id", "shot_id", "status", "url", "created_at"]
FOREIGN_EPOCH = "0" * 32
SQL_FRAGMENTS = [
    "'; DROP TABLE relay.log; --",
    '" OR 1=1 --',
    "1; SELECT pg_sleep(10)",
    "$$; TRUNCATE generations; $$",
    "') UNION SELECT * FROM relay.settings --",
    "%s",
    "%(user)s",
    "\\'; COPY relay.log TO PROGRAM 'id'; --",
    "NULL); DELETE FROM relay.inbox; --",
    "x' || pg_read_file('/etc/passwd') || '",
]
MARKER = re.compile(r"FZ\d{6}Q")


@dataclass
class Case:
    """One frame and what the relay must answer: frames (in order), or a close."""

    category: str
    payload: str | bytes
    as_text: bool = True  # bytes sent in a text frame: invalid UTF-8
    answers: list[dict[str, Any]] = field(default_factory=list)
    close: tuple[int, str | None] | None = None  # code and reason (None: any reason)


def error(code: str, sub_id: str | None = None) -> dict[str, Any]:
    return {"type": "error", "code": code, "id": sub_id}


class Script:
    """The frames of one connection, with the state the answers depend on."""

    def __init__(self, rng: random.Random, markers: Iterator[str], *, authed: bool = True) -> None:
        self.rng = rng
        self.markers = markers
        self.authed = authed
        self.cases: list[Case] = []
        self.errors = 0
        self.subs: set[str] = set()
        self.serial = 0
        self.closed = False

    def new_id(self) -> str:
        self.serial += 1
        return f"s{self.serial}"

    def add(self, case: Case) -> None:
        """Appends a case; an error past the limit becomes the 1008 close instead."""
        if self.closed:
            return
        errors = sum(a["type"] == "error" for a in case.answers)
        if errors and self.errors + errors > MAX_ERRORS:
            case.answers = []
            case.close = (1008, "too_many_errors")
        self.errors += errors
        self.cases.append(case)
        if case.close is not None:
            self.closed = True


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


# -- the categories: each adds one case (or a pair) to a script -------------------------------


def invalid_json(s: Script) -> None:
    rng = s.rng
    base = _json({"type": "subscribe", "id": "x", "table": "generations", "filter": {"a": [1]}})
    while True:
        text = list(base)
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(len(text))
            op = rng.random()
            if op < 0.4:
                del text[at]
            elif op < 0.8:
                text.insert(at, rng.choice('{}[]",:\\ntf0-e.'))
            else:
                text[at] = rng.choice("'`;\x00\x7f\u00e9")
        candidate = "".join(text)
        if rng.random() < 0.2:
            candidate = rng.choice(["", " ", "{", "}", "{'type': 'ping'}", "NaN?", "[1,]", '{"type":"ping",}',
                                    '{"type" "ping"}', "\ufeff{}", "undefined", "{\"type\":\"ping\"}{}"])  # fmt: skip
        try:
            parsed = json.loads(candidate)
        except (ValueError, RecursionError):
            break
        if not isinstance(parsed, dict):
            break  # not an object: the same answer
    s.add(Case("invalid JSON", candidate, answers=[error("bad_message")]))


def not_object(s: Script) -> None:
    value = s.rng.choice([0, -1.5, 1e308, "subscribe", [], [{"type": "ping"}], None, True, "ping"])
    s.add(Case("JSON not an object", _json(value), answers=[error("bad_message")]))


def _subscribe(s: Script, **fields: Any) -> dict[str, Any]:
    return {"type": "subscribe", "id": s.new_id(), "table": "generations", **fields}


def _subscribed_pair(
    s: Script, category: str, message: dict[str, Any], text: str | None = None
) -> None:
    """A valid subscribe (answered `subscribed`), then its unsubscribe."""
    sub_id = message["id"]
    s.add(Case(category, text or _json(message), answers=[{"type": "subscribed", "id": sub_id}]))
    s.subs.add(sub_id)
    unsubscribe(s, sub_id)


def unsubscribe(s: Script, sub_id: str) -> None:
    s.add(Case("valid", _json({"type": "unsubscribe", "id": sub_id}),
               answers=[{"type": "unsubscribed", "id": sub_id}]))  # fmt: skip
    s.subs.discard(sub_id)


BAD_IDS: list[Any] = [5, None, True, [], {}, "", "x" * 65, "\u00e9" * 33]
BAD_NAMES: list[Any] = [5, True, [], {}, "", "t" * 64, "\u00e9" * 32]
BAD_OPS: list[Any] = [
    "INSERT",
    [],
    ["TRUNCATE"],
    ["insert"],
    [1],
    [None],
    {"INSERT": 1},
    ["INSERT", 2],
]
BAD_FILTERS: list[Any] = [
    [], "project_id", 5, True,
    {"project_id": ["a", "b"]},
    {"project_id": {"eq": "a"}},
    {"project_id": {"in": []}},
    {"project_id": {"in": list(range(101))}},
    {"project_id": {"in": "a"}},
    {"project_id": {"in": [1], "x": 2}},
    {"project_id": {"in": [[1]]}},
    {"project_id": {"a": {"b": 1}}},
    {"": 1},
    {"c" * 64: 1},
    {"no_such_column": 1},
    {f"c{i}": 1 for i in range(17)},
]  # fmt: skip
BAD_COALESCE: list[Any] = ["5", 5.0, 1e3, True, -1, 60001, 10**30, [5], {"ms": 5}]
BAD_SINCE: list[Any] = [5, [], {}, True, "", "garbage", "0" * 32, f"{'0' * 32}.", "A" * 32 + ".1",
                        f"{'0' * 31}.1", f"{'0' * 32}.-1", f"{'0' * 32}.99999999999999999999",
                        f"{'0' * 32}.9223372036854775808", f"{'G' * 32}.1"]  # fmt: skip


def wrong_types(s: Script) -> None:
    rng = s.rng
    which = rng.choice(["id", "table", "schema", "ops", "filter", "coalesce_ms", "since", "type",
                        "unsubscribe", "auth"])  # fmt: skip
    if which == "id":
        message = {"type": "subscribe", "id": rng.choice(BAD_IDS), "table": "generations"}
        s.add(Case("wrong type: id", _json(message), answers=[error("bad_message")]))
    elif which in ("table", "schema", "ops", "filter", "coalesce_ms"):
        pool = {"table": BAD_NAMES, "schema": BAD_NAMES, "ops": BAD_OPS, "filter": BAD_FILTERS,
                "coalesce_ms": BAD_COALESCE}[which]  # fmt: skip
        message = _subscribe(s, **{which: rng.choice(pool)})
        s.add(
            Case(
                f"wrong type: {which}",
                _json(message),
                answers=[error("bad_message", message["id"])],
            )
        )
    elif which == "since":
        message = _subscribe(s, since=rng.choice(BAD_SINCE))
        s.add(
            Case("wrong type: since", _json(message), answers=[error("bad_cursor", message["id"])])
        )
    elif which == "type":
        message = {"type": rng.choice([5, None, ["subscribe"], {"t": 1}, True]), "id": "x"}
        s.add(Case("wrong type: type", _json(message), answers=[error("bad_message")]))
    elif which == "unsubscribe":
        if rng.random() < 0.5:
            message = {"type": "unsubscribe", "id": rng.choice(BAD_IDS)}
            s.add(
                Case("wrong type: unsubscribe id", _json(message), answers=[error("bad_message")])
            )
        else:
            sub_id = s.new_id()
            s.add(Case("unknown subscription", _json({"type": "unsubscribe", "id": sub_id}),
                       answers=[error("bad_message", sub_id)]))  # fmt: skip
    else:  # a refresh whose token is not a string closes the connection
        message = {"type": "auth", "token": rng.choice([None, 5, [], {"sub": "x"}])}
        s.add(Case("wrong type: auth token", _json(message), close=(4001, "malformed")))


def semantic(s: Script) -> None:
    """Well-typed requests the relay must refuse with their specific code, or accept."""
    rng = s.rng
    which = rng.randrange(6)
    if which == 0:
        message = _subscribe(s, schema="relay", table=rng.choice(["log", "inbox", "settings"]))
        s.add(Case("forbidden schema", _json(message), answers=[error("forbidden", message["id"])]))
    elif which == 1:
        message = _subscribe(s, table=rng.choice(["nope", "Generations", "pg_authid", "log"]))
        s.add(
            Case("unknown table", _json(message), answers=[error("unknown_table", message["id"])])
        )
    elif which == 2 and s.subs:
        sub_id = rng.choice(sorted(s.subs))
        message = {"type": "subscribe", "id": sub_id, "table": "generations"}
        s.add(Case("id in use", _json(message), answers=[error("bad_message", sub_id)]))
    elif which == 3:  # a cursor of another epoch: reset, then subscribed
        message = _subscribe(s, since=f"{FOREIGN_EPOCH}.{rng.randrange(10**6)}")
        s.add(Case("foreign epoch", _json(message), answers=[
            {"type": "reset", "sub": message["id"], "reason": "epoch_changed"},
            {"type": "subscribed", "id": message["id"]},
        ]))  # fmt: skip
        s.subs.add(message["id"])
        unsubscribe(s, message["id"])
    elif which == 4:
        ping = {"type": "ping", "ignored": rng.choice([[1, {"a": None}], "x", 1e400, -0.0])}
        s.add(Case("valid", _json(ping), answers=[{"type": "pong"}]))
    else:
        message = _subscribe(s, ops=rng.sample(["INSERT", "UPDATE", "DELETE"], rng.randint(1, 3)),
                             filter={"status": {"in": ["queued", "failed"]}}, coalesce_ms=rng.randint(0, 60000))  # fmt: skip
        _subscribed_pair(s, "valid", message)


def deep_nesting(s: Script) -> None:
    rng = s.rng
    depth = rng.choice([2000, 5000, 30000])
    shape = rng.randrange(4)
    if shape == 0:
        text = "[" * depth + "]" * depth
    elif shape == 1:
        text = '{"a":' * depth + "1" + "}" * depth
    elif shape == 2:  # deep inside a member the relay ignores: still more than it parses
        text = '{"type":"ping","x":' + "[" * depth + "]" * depth + "}"
    else:
        message = _subscribe(s, filter={"project_id": {"in": [[[[["x"]]]]]}})
        s.add(Case("deep nesting", _json(message), answers=[error("bad_message", message["id"])]))
        return
    if len(text.encode()) > MAX_FRAME:
        text = "[" * 30000 + "]" * 30000
    s.add(Case("deep nesting", text, answers=[error("bad_message")]))


def huge_numbers(s: Script) -> None:
    rng = s.rng
    which = rng.randrange(6)
    if which == 0:
        message = _subscribe(s, coalesce_ms=rng.choice([10**30, 2**63, 10**300, 60001]))
        s.add(Case("huge number", _json(message), answers=[error("bad_message", message["id"])]))
    elif which == 1:  # non-finite: refused
        sub_id = s.new_id()
        value = rng.choice(["1e400", "-1e400", "1e999999"])
        text = '{"type":"subscribe","id":"' + sub_id + '","table":"generations","filter":{"id":'
        text += value + "}}"
        s.add(Case("huge number", text, answers=[error("bad_message", sub_id)]))
    elif which == 2:  # big but finite: a valid filter value
        value = rng.choice(["1e308", "-1e308", str(10**200), "123456789012345678901234567890.5"])
        sub_id = s.new_id()
        text = '{"type":"subscribe","id":"' + sub_id + '","table":"generations","filter":{"id":'
        text += value + "}}"
        _subscribed_pair(s, "huge number", {"id": sub_id}, text)
    elif which == 3:  # cursor positions past 2**63 - 1
        message = _subscribe(s, since=f"{FOREIGN_EPOCH}.{rng.choice([2**63, 10**19 - 1 + 10**18])}")
        s.add(Case("huge number", _json(message), answers=[error("bad_cursor", message["id"])]))
    elif which == 4:  # in a member the relay ignores
        s.add(Case("huge number", '{"type":"ping","n":1e400}', answers=[{"type": "pong"}]))
    else:  # past CPython's 4300-digit limit: the frame cannot be parsed at all
        digits = "9" * rng.randint(4301, 20000)
        s.add(
            Case(
                "huge number", '{"type":"ping","n":' + digits + "}", answers=[error("bad_message")]
            )
        )


def invalid_utf8(s: Script) -> None:
    rng = s.rng
    if rng.random() < 0.5:  # JSON escapes of lone surrogates: valid UTF-8, invalid Unicode
        sub_id = s.new_id()
        field_ = rng.choice(["id", "table", "schema"])
        message = {"type": "subscribe", "id": sub_id, "table": "generations"}
        message[field_] = "\\ud800x" if field_ != "id" else "a\\udfff"
        text = json.dumps(message).replace("\\\\ud800", "\\ud800").replace("\\\\udfff", "\\udfff")
        answer = error("bad_message") if field_ == "id" else error("bad_message", sub_id)
        s.add(Case("lone surrogate", text, answers=[answer]))
        return
    payload = rng.choice([b'{"type":"ping","x":"\xff"}', b"\xc0\xaf", b'{"type":"\xed\xa0\x80"}',
                          b"\x80" * 10, b'{"id":"\xf8\x88\x80\x80\x80"}'])  # fmt: skip
    s.add(Case("invalid UTF-8", payload, as_text=True, close=(1007, None)))


def binary(s: Script) -> None:
    rng = s.rng
    payload = rng.choice([bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 200))),
                          b'{"type":"ping"}', b""])  # fmt: skip
    s.add(Case("binary frame", payload, as_text=False, answers=[error("bad_message")]))


def oversized(s: Script) -> None:
    rng = s.rng
    if rng.random() < 0.4:  # exactly at the bound: accepted
        head = '{"type":"ping","pad":"'
        text = head + "p" * (MAX_FRAME - len(head) - 2) + '"}'
        s.add(Case("frame at the size bound", text, answers=[{"type": "pong"}]))
        return
    size = rng.choice([MAX_FRAME + 1, 70_000, 1_000_000])
    if rng.random() < 0.5:
        s.add(Case("oversized frame", b"\x00" * size, as_text=False, close=(1009, None)))
    else:
        s.add(
            Case(
                "oversized frame", '{"type":"ping","pad":"' + "p" * size + '"}', close=(1009, None)
            )
        )


def unknown_type(s: Script) -> None:
    kind = s.rng.choice(["PING", "Subscribe", "pong", "event", "ready", "unsubscribe ", "reset",
                         "", "auth\u0000", "subscribe\n", "\u202eping"])  # fmt: skip
    s.add(Case("unknown type", _json({"type": kind, "id": "x"}), answers=[error("bad_message")]))


def sql_fragments(s: Script) -> None:
    rng = s.rng
    fragment = f"{next(s.markers)} {rng.choice(SQL_FRAGMENTS)}"  # the marker survives a cut
    where = rng.randrange(8)
    if where == 0:  # a filter value: accepted, compared in the relay, never sent to the database
        column = rng.choice(COLUMNS)
        condition: Any = fragment if rng.random() < 0.5 else {"in": [fragment, "x", 1, None]}
        _subscribed_pair(s, "SQL in filter value", _subscribe(s, filter={column: condition}))
    elif where == 1:
        message = _subscribe(s, filter={fragment[:63]: 1})
        s.add(
            Case(
                "SQL in filter column",
                _json(message),
                answers=[error("bad_message", message["id"])],
            )
        )
    elif where == 2:
        message = _subscribe(s, table=fragment[:63])
        s.add(Case("SQL in table", _json(message), answers=[error("unknown_table", message["id"])]))
    elif where == 3:
        message = _subscribe(s, schema=fragment[:63])
        s.add(
            Case("SQL in schema", _json(message), answers=[error("unknown_table", message["id"])])
        )
    elif where == 4:  # an id is any string of 1 to 64 bytes
        sub_id = fragment[:60]
        if sub_id in s.subs:
            return
        _subscribed_pair(
            s, "SQL in id", {"type": "subscribe", "id": sub_id, "table": "generations"}
        )
    elif where == 5:
        message = _subscribe(s, since=fragment)
        s.add(Case("SQL in cursor", _json(message), answers=[error("bad_cursor", message["id"])]))
    elif where == 6:
        message = _subscribe(s, ops=[fragment])
        s.add(Case("SQL in ops", _json(message), answers=[error("bad_message", message["id"])]))
    else:
        s.add(Case("SQL in type", _json({"type": fragment}), answers=[error("bad_message")]))


CATEGORIES: list[tuple[Callable[[Script], None], float]] = [
    (invalid_json, 3), (not_object, 1), (wrong_types, 4), (semantic, 3), (deep_nesting, 1),
    (huge_numbers, 2), (invalid_utf8, 0.6), (binary, 1), (oversized, 0.4), (unknown_type, 1),
    (sql_fragments, 4),
]  # fmt: skip

FLOOD = [invalid_json, not_object, unknown_type, binary, deep_nesting, semantic]


def build_scripts(rng: random.Random, frames: int) -> list[Script]:
    """Connections of 5 to 200 frames each, until `frames` frames in all."""
    serial = iter(range(10**6))
    markers = (f"FZ{n:06d}Q" for n in serial)
    functions = [f for f, _ in CATEGORIES]
    weights = [w for _, w in CATEGORIES]
    scripts: list[Script] = []
    total = 0
    while total < frames:
        if rng.random() < 0.04:  # before authenticating, anything but auth closes with 4001
            script = Script(rng, markers, authed=False)
            rng.choices(functions, weights)[0](script)
            first = script.cases[0]
            script.cases[1:] = []
            if first.close is None:  # 1007, 1009 and a malformed token keep their close
                first.answers, first.close = [], (4001, "auth_required")
            scripts.append(script)
            total += 1
            continue
        script = Script(rng, markers)
        if rng.random() < 0.05:  # refused frames only, until the 101st closes the connection
            while not script.closed and len(script.cases) < 400:
                rng.choice(FLOOD)(script)
        length = rng.choice([rng.randint(5, 60), rng.randint(60, 200)])
        while len(script.cases) < length and not script.closed:
            rng.choices(functions, weights)[0](script)
        total += len(script.cases)
        scripts.append(script)
    return scripts


# -- running scripts against the relay -----------------------------------------------------------


@dataclass
class Outcome:
    frames: int = 0
    matched: int = 0
    mismatches: list[str] = field(default_factory=list)
    categories: Counter[str] = field(default_factory=Counter)
    closes: Counter[str] = field(default_factory=Counter)


def _matches(expected: dict[str, Any], frame: dict[str, Any]) -> bool:
    if frame.get("type") != expected["type"]:
        return False
    if expected["type"] == "error":
        return frame.get("code") == expected["code"] and frame.get("id") == expected["id"]
    return all(frame.get(key) == value for key, value in expected.items())


async def _send(ws: ClientConnection, case: Case) -> None:
    if isinstance(case.payload, bytes):
        await ws.send(case.payload, text=case.as_text)
    else:
        await ws.send(case.payload)


async def run_script(url: str, script: Script, outcome: Outcome) -> None:
    headers = {"Authorization": f"Bearer {token('fuzzer')}"} if script.authed else None
    async with connect(url, additional_headers=headers, max_size=None, compression=None,
                       proxy=None, open_timeout=20, close_timeout=5) as ws:  # fmt: skip
        if script.authed:
            ready = json.loads(await asyncio.wait_for(ws.recv(), 20))
            assert "ready" == ready["type"], ready
        pending: deque[tuple[Case, dict[str, Any]]] = deque()
        cases = deque(script.cases)

        async def receive_one() -> None:
            case, expected = pending.popleft()
            frame = json.loads(await asyncio.wait_for(ws.recv(), 30))
            if _matches(expected, frame):
                outcome.matched += 1
            else:
                outcome.mismatches.append(
                    f"{case.category}: {str(case.payload)[:120]!r} -> {frame} (expected {expected})"
                )

        while cases:
            case = cases.popleft()
            if case.close is not None:
                while pending:  # answers to earlier frames first, then the frame that closes
                    await receive_one()
            outcome.frames += 1
            outcome.categories[case.category] += 1
            if case.close is None:
                await _send(ws, case)
            else:
                code, reason = case.close
                try:
                    await _send(ws, case)  # the relay may close before it has read all of it
                    frame = await asyncio.wait_for(ws.recv(), 30)
                    outcome.mismatches.append(
                        f"{case.category}: a frame {frame[:80]!r} instead of close {code}"
                    )
                except ConnectionClosed as closed:
                    got = closed.rcvd.code if closed.rcvd else 1006
                    got_reason = closed.rcvd.reason if closed.rcvd else ""
                    outcome.closes[str(got)] += 1
                    if got == code and (reason is None or reason == got_reason):
                        outcome.matched += 1
                    else:
                        outcome.mismatches.append(
                            f"{case.category}: closed {got} {got_reason!r}, expected {code} {reason!r}"
                        )
                return
            pending.extend((case, answer) for answer in case.answers)
            while len(pending) > WINDOW:
                await receive_one()
        while pending:
            await receive_one()


async def subscribe_storm(
    url: str, count: int, outcome: Outcome, *, unsubscribe_each: bool
) -> None:
    """`count` subscribe messages on one connection: with an unsubscribe after each (all answered),
    or without (100 subscribed, 100 too_many_subscriptions, then close 1008)."""
    headers = {"Authorization": f"Bearer {token('fuzzer')}"}
    category = "10,000 subscribes" if count >= 10_000 else f"{count:,} subscribes"
    async with connect(url, additional_headers=headers, max_size=None, compression=None,
                       proxy=None, open_timeout=20, close_timeout=5) as ws:  # fmt: skip
        assert "ready" == json.loads(await ws.recv())["type"]
        expected: deque[dict[str, Any]] = deque()
        closed_with: tuple[int, str] | None = None

        async def reader() -> None:
            nonlocal closed_with
            try:
                async for raw in ws:
                    frame = json.loads(raw)
                    want = expected.popleft() if expected else {"type": "nothing more"}
                    if _matches(want, frame):
                        outcome.matched += 1
                    else:
                        outcome.mismatches.append(f"{category}: {frame} (expected {want})")
            except ConnectionClosed as exc:
                closed_with = (exc.rcvd.code, exc.rcvd.reason) if exc.rcvd else (1006, "")
            else:
                closed_with = (ws.close_code or 1006, ws.close_reason or "")
            outcome.closes[str(closed_with[0])] += 1

        task = asyncio.create_task(reader())
        try:
            for n in range(count):
                sub_id = f"storm{n}"
                if unsubscribe_each:
                    expected.append({"type": "subscribed", "id": sub_id})
                    expected.append({"type": "unsubscribed", "id": sub_id})
                elif n < MAX_SUBS:
                    expected.append({"type": "subscribed", "id": sub_id})
                elif n < MAX_SUBS + MAX_ERRORS:
                    expected.append(error("too_many_subscriptions", sub_id))
                await ws.send(_json({"type": "subscribe", "id": sub_id, "table": "generations"}))
                outcome.frames += 1
                outcome.categories[category] += 1
                if unsubscribe_each:
                    await ws.send(_json({"type": "unsubscribe", "id": sub_id}))
                    outcome.frames += 1
                    outcome.categories[category] += 1
                while len(expected) > WINDOW:
                    await asyncio.sleep(0.001)
                    if task.done():
                        break
                if task.done():
                    break
        except ConnectionClosed:
            pass
        if unsubscribe_each:
            while expected and not task.done():  # noqa: ASYNC110 - the reader empties it
                await asyncio.sleep(0.01)
            await ws.close()
        await asyncio.wait_for(task, 60)
        if unsubscribe_each:
            ok = not expected and closed_with == (1000, "")
        else:
            ok = not expected and closed_with == (1008, "too_many_errors")
        if ok:
            outcome.matched += 1
        else:
            outcome.mismatches.append(
                f"{category}: closed {closed_with}, {len(expected)} answers missing"
            )


# -- the test ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def workspace() -> Iterator[Path]:
    with private_folder() as folder:
        yield folder


@pytest.fixture(scope="module")
def logged_pg(workspace: Path) -> Iterator[PgServer]:
    """A private server that logs every statement with its parameters."""
    server = PgServer(workspace / "pg", settings={"log_statement": "all"})
    with server.running():
        yield server


class Steady:
    """A well-behaved client of user "steady" and a writer of its rows, during the fuzzing."""

    def __init__(self, url: str, dsn: str) -> None:
        self.url = url
        self.dsn = dsn
        self.received: list[tuple[float, int, str]] = []
        self.written: list[str] = []
        self.stop = threading.Event()

    def write(self, max_rows: int) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            for n in range(max_rows):
                if self.stop.wait(0.025):
                    return
                marker = f"steady-{n}"
                conn.execute("INSERT INTO generations (user_id, project_id) VALUES ('steady', %s)",
                             (marker,))  # fmt: skip
                self.written.append(marker)

    async def listen(self, done: asyncio.Event) -> None:
        headers = {"Authorization": f"Bearer {token('steady')}"}
        async with connect(
            self.url, additional_headers=headers, compression=None, proxy=None
        ) as ws:
            await ws.send(_json({"type": "subscribe", "id": "s", "table": "generations"}))
            while not done.is_set():
                try:
                    raw = await asyncio.wait_for(ws.recv(), 0.2)
                except TimeoutError:
                    continue
                frame = json.loads(raw)
                if frame["type"] == "event":
                    self.received.append((time.time(), int(frame["cursor"].rsplit(".", 1)[1]),
                                          frame["row"]["project_id"]))  # fmt: skip


async def fuzz(
    url: str, scripts: list[Script], storm: int, steady: Steady
) -> tuple[Outcome, float, float]:
    outcome = Outcome()
    done = asyncio.Event()
    listener = asyncio.create_task(steady.listen(done))
    await asyncio.sleep(0.5)  # subscribed before the writer starts
    writer = threading.Thread(target=steady.write, args=(40 * 600,), daemon=True)
    writer.start()
    await asyncio.sleep(0.5)
    started = time.time()
    limit = asyncio.Semaphore(6)

    async def one(script: Script) -> None:
        async with limit:
            try:
                await run_script(url, script, outcome)
            except (ConnectionClosed, OSError, TimeoutError) as exc:
                outcome.mismatches.append(f"connection failed: {exc!r}")

    await asyncio.gather(
        *(one(script) for script in scripts),
        subscribe_storm(url, storm, outcome, unsubscribe_each=True),
        subscribe_storm(url, storm, outcome, unsubscribe_each=False),
    )
    ended = time.time()
    await asyncio.sleep(0.5)
    steady.stop.set()
    writer.join(10)
    deadline = time.monotonic() + 30
    while len(steady.received) < len(steady.written) and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.1)
    done.set()
    await listener
    return outcome, started, ended


@pytest.mark.parametrize(
    "frames, storm",
    [pytest.param(2_000, 1_000, id="short"),
     pytest.param(12_000, 10_000, id="full", marks=[pytest.mark.slow, pytest.mark.timeout(900)])],
)  # fmt: skip
def test_fuzzed_frames_get_documented_answers(
    logged_pg: PgServer, workspace: Path, frames: int, storm: int
) -> None:
    """Fuzzed frames each get their documented error or close code; a steady client keeps its events; no marker reaches Postgres."""
    started_at = time.monotonic()
    seed = int(os.environ.get("RELAY_FUZZ_SEED", "20250502"))
    scripts = build_scripts(random.Random(seed), frames)
    size = "short" if frames < 10_000 else "full"
    with ChaosRun(logged_pg.dsn(), workspace, "fuzz") as run:
        relay = run.add_replica()
        log_offset = logged_pg.logfile.stat().st_size
        steady = Steady(relay.url, run.dsn)
        outcome, started, ended = asyncio.run(fuzz(relay.url, scripts, storm, steady))
        # The process still serves: health, a fresh connection.
        assert (200, "ok\n") == relay.current.http("/healthz")
        relay.sample_rss()
        alive = relay.alive
        relay.stop()
        with logged_pg.logfile.open("rb") as log:
            log.seek(log_offset)
            pg_log = log.read().decode("utf-8", "replace")
    leaked_markers = sorted(set(MARKER.findall(pg_log)))
    received = [marker for _, _, marker in steady.received]
    positions = [pos for _, pos, _ in steady.received]
    quarters = [0, 0, 0, 0]
    for at, _, _ in steady.received:
        if started <= at < ended:
            quarters[min(3, int(4 * (at - started) / max(ended - started, 1e-9)))] += 1
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(steady.received)]
    figures = {
        "title": "Fuzzed protocol frames",
        "size": size,
        "seed": seed,
        "frames": outcome.frames,
        "connections": len(scripts) + 2,
        "answers_matched": outcome.matched,
        "mismatches": len(outcome.mismatches),
        "mismatch_examples": outcome.mismatches[:10],
        "categories": dict(sorted(outcome.categories.items())),
        "closes": dict(sorted(outcome.closes.items())),
        "markers_in_postgres_log": len(leaked_markers),
        "statements_logged": pg_log.count("statement: ") + pg_log.count("execute "),
        "steady_written": len(steady.written),
        "steady_received": len(received),
        "steady_lost": len(set(steady.written) - set(received)),
        "steady_duplicated": len(received) - len(set(received)),
        "steady_out_of_order": sum(b <= a for a, b in itertools.pairwise(positions)),
        "steady_events_per_quarter": quarters,
        "steady_max_gap_s": round(max(gaps, default=0.0), 3),
        "fuzz_seconds": round(ended - started, 1),
        "peak_rss_mib": round(relay.peak_rss, 1),
        "test_seconds": round(time.monotonic() - started_at, 1),
    }
    violations = [f"{key}={figures[key]}" for key in ("mismatches", "markers_in_postgres_log",
                  "steady_lost", "steady_duplicated", "steady_out_of_order") if figures[key]]  # fmt: skip
    if not alive:
        violations.append("the relay process died")
    if 0 in quarters:
        violations.append(
            f"the steady client went without events for a quarter of the run: {quarters}"
        )
    if "steady-1" not in pg_log:
        violations.append(
            "the Postgres log does not show statement parameters: the check is vacuous"
        )
    figures["bar_met"] = not violations
    figures["violations"] = violations
    record(f"8_fuzz/{size}", figures, machine_info(logged_pg.dsn()))
    assert frames <= outcome.frames
    assert [] == violations, outcome.mismatches[:10]
