"""Row-change events as the relay sees them: one row of ``relay.log``.

An ``Event`` is immutable and carries everything routing needs (table, op, audience, row) and
everything a client is sent. Its JSON (``Event.encoded``) is encoded once, however many
connections receive it; relay/core/wire.py builds the frames around it and caches them on the
event.

Values arrive from the log as JSON text and are decoded here (``decode_json``, ``decode_key``) so
that no value a writer can store stops the stream. Numbers travel exactly where a JSON number
can: integers up to ``MAX_INT_DIGITS`` digits as numbers, and a number Python's float cannot hold
(an integer past that, a fraction or exponent overflowing to infinity or rounding a non-zero value
to zero) as a ``BigNumber``, a JSON string of its exact text. A value nested deeper than
``MAX_DEPTH`` cannot be carried: its event travels truncated (see relay/pg/rows.py
``event_from_row``).
"""

from __future__ import annotations

import itertools
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, Literal, TypeAlias

__all__ = [
    "MAX_DEPTH",
    "MAX_INT_DIGITS",
    "OPS",
    "UNCARRIABLE_REASONS",
    "BigNumber",
    "Event",
    "JSONValue",
    "Moved",
    "Op",
    "RawJSON",
    "Uncarriable",
    "decode_json",
    "decode_key",
    "dumps",
    "nesting_depth",
]

# HEARTBEAT events are the relay's own: they travel the log with no audience and reach nobody.
Op: TypeAlias = Literal["INSERT", "UPDATE", "DELETE", "HEARTBEAT"]
OPS: frozenset[str] = frozenset({"INSERT", "UPDATE", "DELETE"})  # what clients subscribe to
JSONValue: TypeAlias = Any  # what json.loads returns; rows are arbitrary JSON objects
# The two forms an UPDATE takes for a subscriber whose view it changes (relay/core/moves.py).
Moved: TypeAlias = Literal["out", "in"]

_encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def dumps(value: object) -> str:
    """Compact JSON, as every frame the relay sends is encoded."""
    return _encoder.encode(value)


# -- decoding the log's JSON ---------------------------------------------------------------------

# Arrays and objects a row, key or old key may nest (the row object itself is level 1). Frames
# then nest at most 101 levels: below the 128 of common client parsers (serde_json), and far below
# the Python recursion limit, so decoding and encoding never depend on the caller's stack depth.
MAX_DEPTH: Final = 100
# Integers longer than this travel as BigNumber: Python's own int-string limit (sys.int_info),
# fixed here so the outcome does not depend on the environment (PYTHONINTMAXSTRDIGITS).
MAX_INT_DIGITS: Final = 4300
UNCARRIABLE_REASONS: Final = ("too_deep", "invalid")  # bounded: they label a metric


class BigNumber(str):
    """A JSON number that a double cannot hold, as its exact JSON text.

    On the wire it is a JSON string; filters compare it by its decimal value, as jsonb does.
    """

    __slots__ = ()


class RawJSON(str):
    """A key member the relay cannot carry as JSON (nested past MAX_DEPTH), as its exact JSON
    text. On the wire it is a JSON string; it matches no filter value."""

    __slots__ = ()


class Uncarriable(ValueError):
    """A value the relay cannot carry as JSON; ``reason`` is one of UNCARRIABLE_REASONS."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _float(text: str) -> float | BigNumber:
    """A number written with a fraction or exponent: a float, unless the float would lose its
    magnitude (infinite, or zero for a non-zero number)."""
    value = float(text)
    if math.isinf(value):
        return BigNumber(text)
    if value == 0.0 and text.lstrip("-").split("e")[0].split("E")[0].strip("0."):
        return BigNumber(text)  # 1e-400: a double rounds it to zero
    return value


def _int(text: str) -> int | BigNumber:
    if len(text) - text.startswith("-") > MAX_INT_DIGITS:
        return BigNumber(text)
    try:
        return int(text)
    except ValueError:  # the environment set a lower int-string limit
        return BigNumber(text)


# The usual decoder converts integers natively (fast) and raises ValueError past Python's digit
# limit; only then is the text decoded again with the exact integer hook.
_DECODER: Final = json.JSONDecoder(parse_float=_float)
_EXACT_DECODER: Final = json.JSONDecoder(parse_float=_float, parse_int=_int)
# A JSON string token (escapes included), and what is neither a bracket nor a brace.
_STRING: Final = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
# For depth: an opening bracket or brace becomes +1, a closing one -1 (as a signed byte); every
# other byte is deleted.
_SIGNED: Final = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")
_NOT_BRACKETS: Final = bytes(set(range(256)) - set(b"[]{}"))
_TOKEN: Final = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{},:]')


def nesting_depth(text: str) -> int:
    """How deeply arrays and objects nest in a JSON text (0 for a scalar); brackets inside
    strings do not count. Never recurses, and runs no Python code per character: strings are cut
    by a regular expression, the brackets left become signed bytes (+1, -1) whose running sum's
    maximum is the depth. For a text of many brackets it costs about what json.loads does."""
    brackets = _STRING.sub("", text).encode().translate(_SIGNED, _NOT_BRACKETS)
    return max(itertools.accumulate(memoryview(brackets).cast("b")), default=0)


def decode_json(text: str | None) -> JSONValue:
    """A JSON text from the log as Python values, numbers exact (see the module docstring).

    Raises ``Uncarriable("too_deep")`` when it nests deeper than MAX_DEPTH, and
    ``Uncarriable("invalid")`` when it is not JSON at all; nothing else.
    """
    if text is None:
        return None
    # Cheap tests first: nesting past MAX_DEPTH needs that many brackets.
    if (
        len(text) > 2 * MAX_DEPTH
        and text.count("[") + text.count("{") > MAX_DEPTH
        and nesting_depth(text) > MAX_DEPTH
    ):
        raise Uncarriable("too_deep")
    try:
        return _DECODER.decode(text)
    except RecursionError:  # pragma: no cover - MAX_DEPTH is far below the recursion limit
        raise Uncarriable("too_deep") from None
    except ValueError:
        pass  # an integer past the int-string limit, or not JSON
    try:
        return _EXACT_DECODER.decode(text)
    except RecursionError:  # pragma: no cover - as above
        raise Uncarriable("too_deep") from None
    except ValueError:
        raise Uncarriable("invalid") from None


def _split_object(text: str) -> list[tuple[str, str]]:
    """The members of a JSON object text as (name, value text) pairs, without decoding the
    values: a value too deep to decode is still delimited. Iterative: no recursion."""
    members: list[tuple[str, str]] = []
    depth = 0
    name: str | None = None
    start = 0
    for match in _TOKEN.finditer(text):
        token = match.group()
        char = token[0]
        if char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
            if depth == 0 and name is not None:
                members.append((name, text[start : match.start()].strip()))
                name = None
        elif depth == 1:
            if char == '"' and name is None:
                name = json.loads(token)
            elif char == ":":
                start = match.end()
            elif char == "," and name is not None:
                members.append((name, text[start : match.start()].strip()))
                name = None
    return members


def _carriable(text: str) -> JSONValue:
    """One key member: decoded if it can be carried, else its text as RawJSON."""
    try:
        value = decode_json(text)
        dumps(value)
    except Exception:  # anything that cannot be carried travels as text
        return RawJSON(text)
    return value


def decode_key(text: str | None) -> dict[str, JSONValue] | None:
    """A primary key (or old key) from the log, which events must carry even when the row cannot
    be: each member that cannot be carried as JSON becomes a RawJSON of its exact text. Never
    raises for a JSON object text."""
    if text is None:
        return None
    try:
        key = decode_json(text)
        dumps(key)
    except Exception:  # fall back member by member
        return {name: _carriable(value) for name, value in _split_object(text)}
    if not isinstance(key, dict):  # pragma: no cover - the log's keys are JSON objects
        return {"": RawJSON(text)}
    return key


@dataclass(frozen=True, slots=True, eq=False)
class Event:
    """One captured row change, at position ``pos`` of the log.

    ``row`` holds the whitelisted column values: the new ones for INSERT and UPDATE, the old ones
    for DELETE; it is None when the row was over the database's size cap or nested past
    MAX_DEPTH (``truncated``).
    ``old_key`` is the primary key before the change (UPDATE and DELETE). ``changed`` lists the
    whitelisted columns an UPDATE changed, sorted. ``audience`` is every user id allowed to see it.

    An UPDATE also says what the row was before it (schema version 4), so each subscriber can be
    told whether the row stayed in its view, left it or entered it (relay/core/moves.py):
    ``old_values`` holds the old values of the carried columns it changed (None when unknown: a
    truncated UPDATE, or one logged before version 4) and ``old_audience`` the old row's audience
    when it differs from ``audience`` (None: the same). ``moved`` is set on the two forms an
    UPDATE takes for a subscriber whose view it changes, ``moved_out`` and ``moved_in``.
    """

    pos: int
    schema: str
    table: str
    op: Op
    pk: Mapping[str, JSONValue]
    row: Mapping[str, JSONValue] | None
    old_key: Mapping[str, JSONValue] | None
    changed: tuple[str, ...]
    audience: frozenset[str]
    committed_at: datetime
    truncated: bool = False
    old_values: Mapping[str, JSONValue] | None = None
    old_audience: frozenset[str] | None = None
    moved: Moved | None = None
    # The move-out and entry forms, built once per event (and so encoded once per fan-out).
    _forms: dict[Moved, Event] = field(default_factory=dict, init=False, repr=False, compare=False)
    # The encoding caches: the JSON (``encoded``), and what relay/core/wire.py builds around it,
    # the frame's tail per epoch and whole frames per (subscription id, epoch). Not constructor
    # arguments, so dataclasses.replace() never carries another event's encoding over.
    _body: str | None = field(default=None, init=False, repr=False, compare=False)
    tails: dict[str, str] = field(default_factory=dict, init=False, repr=False, compare=False)
    frames: dict[tuple[str, str], bytes] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    @property
    def row_key(self) -> tuple[str, str, str]:
        """Identifies the row across events: schema, table and the primary key as JSON."""
        return (self.schema, self.table, dumps(self.pk))

    @property
    def audience_before(self) -> frozenset[str]:
        """Who could see the row before this change: an UPDATE's old audience, else ``audience``."""
        return self.audience if self.old_audience is None else self.old_audience

    def moved_out(self) -> Event:
        """This UPDATE as a move-out: a DELETE of the row under its key before the change that
        carries nothing else (no value of the new row, no changed columns)."""
        form = self._forms.get("out")
        if form is None:
            key = self.pk if self.old_key is None else self.old_key
            form = Event(
                pos=self.pos,
                schema=self.schema,
                table=self.table,
                op="DELETE",
                pk=key,
                row=None,
                old_key=key,
                changed=(),
                audience=self.audience_before,
                committed_at=self.committed_at,
                moved="out",
            )
            self._forms["out"] = form
        return form

    def moved_in(self) -> Event:
        """This UPDATE as an entry: an INSERT of the row with its new values (truncated when
        the UPDATE is)."""
        form = self._forms.get("in")
        if form is None:
            form = Event(
                pos=self.pos,
                schema=self.schema,
                table=self.table,
                op="INSERT",
                pk=self.pk,
                row=self.row,
                old_key=None,
                changed=(),
                audience=self.audience,
                committed_at=self.committed_at,
                truncated=self.truncated,
                moved="in",
            )
            self._forms["in"] = form
        return form

    def encoded(self) -> str:
        """The event's JSON members, the frame's part after its ``"cursor"``, encoded once (the
        log reader encodes it when it reads the row, so a value that cannot be encoded is found
        there, not while routing). Raises what encoding raises (ValueError, RecursionError)."""
        body = self._body
        if body is None:
            members: dict[str, object] = {
                "schema": self.schema,
                "table": self.table,
                "op": self.op,
                "pk": self.pk,
                "row": self.row,
                "changed": list(self.changed),
                "ts": self.committed_at.isoformat(),
            }
            if self.old_key is not None:
                members["old"] = self.old_key
            if self.truncated:
                members["truncated"] = True
            if self.moved is not None:
                members["moved"] = self.moved
            body = dumps(members)[1:]  # drop the "{": the cursor goes before
            object.__setattr__(self, "_body", body)
        return body

    def merged_with(self, newer: Event) -> Event:
        """This UPDATE followed by a newer UPDATE of the same row, as one event.

        The result sits at the newer position with the newer values, and its ``changed`` is the
        union of both, so a client that skips the older one loses nothing. Both were delivered
        as UPDATEs (never a move-out or an entry), so the result says nothing of the row before.
        """
        return Event(
            pos=newer.pos,
            schema=newer.schema,
            table=newer.table,
            op=newer.op,
            pk=newer.pk,
            row=newer.row,
            old_key=self.old_key,
            changed=tuple(sorted(set(self.changed) | set(newer.changed))),
            audience=newer.audience,
            committed_at=newer.committed_at,
            truncated=newer.truncated,
        )
