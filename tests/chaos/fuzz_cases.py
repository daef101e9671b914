"""The fuzz cases of tests/chaos/test_fuzz.py: hostile frames, each built with the answer
docs/protocol.md promises for it, grouped into per-connection scripts (seeded, replayable)."""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "MARKER",
    "MAX_ERRORS",
    "MAX_SUBS",
    "WINDOW",
    "Case",
    "Script",
    "build_scripts",
    "error",
    "to_json",
]

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


def to_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


# -- the categories: each adds one case (or a pair) to a script -------------------------------


def invalid_json(s: Script) -> None:
    rng = s.rng
    base = to_json({"type": "subscribe", "id": "x", "table": "generations", "filter": {"a": [1]}})
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
    s.add(Case("JSON not an object", to_json(value), answers=[error("bad_message")]))


def _subscribe(s: Script, **fields: Any) -> dict[str, Any]:
    return {"type": "subscribe", "id": s.new_id(), "table": "generations", **fields}


def _subscribed_pair(
    s: Script, category: str, message: dict[str, Any], text: str | None = None
) -> None:
    """A valid subscribe (answered `subscribed`), then its unsubscribe."""
    sub_id = message["id"]
    s.add(Case(category, text or to_json(message), answers=[{"type": "subscribed", "id": sub_id}]))
    s.subs.add(sub_id)
    unsubscribe(s, sub_id)


def unsubscribe(s: Script, sub_id: str) -> None:
    s.add(Case("valid", to_json({"type": "unsubscribe", "id": sub_id}),
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
    {"project_id": {"like": "a"}},
    {"project_id": {"lt": None}},
    {"project_id": {"not": {"eq": 1, "in": [2]}}},
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
        s.add(Case("wrong type: id", to_json(message), answers=[error("bad_message")]))
    elif which in ("table", "schema", "ops", "filter", "coalesce_ms"):
        pool = {"table": BAD_NAMES, "schema": BAD_NAMES, "ops": BAD_OPS, "filter": BAD_FILTERS,
                "coalesce_ms": BAD_COALESCE}[which]  # fmt: skip
        message = _subscribe(s, **{which: rng.choice(pool)})
        s.add(
            Case(
                f"wrong type: {which}",
                to_json(message),
                answers=[error("bad_message", message["id"])],
            )
        )
    elif which == "since":
        message = _subscribe(s, since=rng.choice(BAD_SINCE))
        s.add(
            Case(
                "wrong type: since", to_json(message), answers=[error("bad_cursor", message["id"])]
            )
        )
    elif which == "type":
        message = {"type": rng.choice([5, None, ["subscribe"], {"t": 1}, True]), "id": "x"}
        s.add(Case("wrong type: type", to_json(message), answers=[error("bad_message")]))
    elif which == "unsubscribe":
        if rng.random() < 0.5:
            message = {"type": "unsubscribe", "id": rng.choice(BAD_IDS)}
            s.add(
                Case("wrong type: unsubscribe id", to_json(message), answers=[error("bad_message")])
            )
        else:
            sub_id = s.new_id()
            s.add(Case("unknown subscription", to_json({"type": "unsubscribe", "id": sub_id}),
                       answers=[error("bad_message", sub_id)]))  # fmt: skip
    else:  # a refresh whose token is not a string closes the connection
        message = {"type": "auth", "token": rng.choice([None, 5, [], {"sub": "x"}])}
        s.add(Case("wrong type: auth token", to_json(message), close=(4001, "malformed")))


def semantic(s: Script) -> None:
    """Well-typed requests the relay must refuse with their specific code, or accept."""
    rng = s.rng
    which = rng.randrange(6)
    if which == 0:
        message = _subscribe(s, schema="relay", table=rng.choice(["log", "inbox", "settings"]))
        s.add(
            Case("forbidden schema", to_json(message), answers=[error("forbidden", message["id"])])
        )
    elif which == 1:
        message = _subscribe(s, table=rng.choice(["nope", "Generations", "pg_authid", "log"]))
        s.add(
            Case("unknown table", to_json(message), answers=[error("unknown_table", message["id"])])
        )
    elif which == 2 and s.subs:
        sub_id = rng.choice(sorted(s.subs))
        message = {"type": "subscribe", "id": sub_id, "table": "generations"}
        s.add(Case("id in use", to_json(message), answers=[error("bad_message", sub_id)]))
    elif which == 3:  # a cursor of another epoch: reset, then subscribed
        message = _subscribe(s, since=f"{FOREIGN_EPOCH}.{rng.randrange(10**6)}")
        s.add(Case("foreign epoch", to_json(message), answers=[
            {"type": "reset", "sub": message["id"], "reason": "epoch_changed"},
            {"type": "subscribed", "id": message["id"]},
        ]))  # fmt: skip
        s.subs.add(message["id"])
        unsubscribe(s, message["id"])
    elif which == 4:
        ping = {"type": "ping", "ignored": rng.choice([[1, {"a": None}], "x", 1e400, -0.0])}
        s.add(Case("valid", to_json(ping), answers=[{"type": "pong"}]))
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
        s.add(Case("deep nesting", to_json(message), answers=[error("bad_message", message["id"])]))
        return
    if len(text.encode()) > MAX_FRAME:
        text = "[" * 30000 + "]" * 30000
    s.add(Case("deep nesting", text, answers=[error("bad_message")]))


def huge_numbers(s: Script) -> None:
    rng = s.rng
    which = rng.randrange(6)
    if which == 0:
        message = _subscribe(s, coalesce_ms=rng.choice([10**30, 2**63, 10**300, 60001]))
        s.add(Case("huge number", to_json(message), answers=[error("bad_message", message["id"])]))
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
        s.add(Case("huge number", to_json(message), answers=[error("bad_cursor", message["id"])]))
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
    s.add(Case("unknown type", to_json({"type": kind, "id": "x"}), answers=[error("bad_message")]))


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
                to_json(message),
                answers=[error("bad_message", message["id"])],
            )
        )
    elif where == 2:
        message = _subscribe(s, table=fragment[:63])
        s.add(
            Case("SQL in table", to_json(message), answers=[error("unknown_table", message["id"])])
        )
    elif where == 3:
        message = _subscribe(s, schema=fragment[:63])
        s.add(
            Case("SQL in schema", to_json(message), answers=[error("unknown_table", message["id"])])
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
        s.add(Case("SQL in cursor", to_json(message), answers=[error("bad_cursor", message["id"])]))
    elif where == 6:
        message = _subscribe(s, ops=[fragment])
        s.add(Case("SQL in ops", to_json(message), answers=[error("bad_message", message["id"])]))
    else:
        s.add(Case("SQL in type", to_json({"type": fragment}), answers=[error("bad_message")]))


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
