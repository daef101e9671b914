"""The Supabase filter syntax: what realtime-js emits, parsed into the one filter engine."""

from __future__ import annotations

import pytest

from relay.core.events import JSONValue
from relay.core.filters import RowFilter
from relay.core.postgrest import parse_filter
from relay.errors import ProtocolError
from tests.support.factories import make_event


def matches(text: str, row: dict[str, JSONValue], types: dict[str, str] | None = None) -> bool:
    return parse_filter(text, types).matches(make_event(1, row=row))


def error(text: str, types: dict[str, str] | None = None) -> str:
    with pytest.raises(ProtocolError) as caught:
        parse_filter(text, types)
    assert "bad_message" == caught.value.code
    return caught.value.message


@pytest.mark.parametrize(
    ("text", "row", "expected"),
    [
        ("id=eq.200", {"id": 200}, True),
        ("id=eq.200", {"id": "200"}, True),  # type unknown: the text and the number
        ("id=eq.200", {"id": 201}, False),
        ("id=eq.2.50", {"id": 2.5}, True),
        ("id=neq.200", {"id": 201}, True),
        ("id=neq.200", {"id": None}, False),
        ("id=gt.0,id=lt.100", {"id": 50}, True),
        ("id=gt.0,id=lt.100", {"id": 100}, False),
        ("id=gte.100", {"id": 100}, True),
        ("id=lte.-1", {"id": -1}, True),
        ("name=lt.b", {"name": "a"}, True),
        ("name=lt.b", {"name": "c"}, False),
        ("status=in.(active,pending)", {"status": "pending"}, True),
        ("status=in.(active,pending)", {"status": "closed"}, False),
        ("status=in.( active , pending )", {"status": "pending"}, True),  # items trimmed
        ("id=in.(1,2,3)", {"id": 3}, True),
        ("id=not.eq.5", {"id": 6}, True),
        ("id=not.eq.5", {"id": 5}, False),
        ("id=not.eq.5", {"id": None}, False),
        ("id=not.in.(1,2)", {"id": 3}, True),
        ("id=not.in.(1,2)", {"id": 1}, False),
        ("id=not.gt.5", {"id": 5}, True),
        ('name=eq."a,b"', {"name": "a,b"}, True),
        ('name=eq."say \\"hi\\""', {"name": 'say "hi"'}, True),
        ('name=eq."back\\\\slash"', {"name": "back\\slash"}, True),
        ('name=eq." padded "', {"name": " padded "}, True),
        ('name=in.("a,b",c)', {"name": "a,b"}, True),
        ('name=in.("a,b",c)', {"name": "c"}, True),
        ('name=in.("a,b",c)', {"name": "a"}, False),
        ("name=eq.(x)", {"name": "(x)"}, True),
        ("done=eq.true", {"done": True}, True),
        ("done=eq.t", {"done": True}, True),
        ("done=eq.f", {"done": True}, False),
        ("done=eq.true", {"done": "true"}, True),
        ("a=eq.1,b=eq.x", {"a": 1, "b": "x"}, True),
        ("a=eq.1,b=eq.x", {"a": 1, "b": "y"}, False),
        ("a=eq.1,a=eq.2", {"a": 1}, False),  # AND on one column
        ("", {"a": 1}, True),
        ("   ", {"a": 1}, True),
    ],
)
def test_grammar(text: str, row: dict[str, JSONValue], expected: bool) -> None:
    """Every operator, not., comma as AND, quoting and in-lists, as realtime-js writes them."""
    assert expected == matches(text, row)


@pytest.mark.parametrize(
    ("text", "types", "row", "expected"),
    [
        ("id=eq.200", {"id": "int8"}, {"id": 200}, True),
        ("id=eq.200", {"id": "text"}, {"id": 200}, False),  # a text column holds strings
        ("id=eq.200", {"id": "text"}, {"id": "200"}, True),
        ("id=eq.200", {"id": "int8"}, {"id": "200"}, False),
        ("done=eq.yes", {"done": "bool"}, {"done": True}, True),
        (
            "u=eq.A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11",
            {"u": "uuid"},
            {"u": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"},
            True,
        ),
        ("j=eq.5", {"j": "jsonb"}, {"j": 5}, True),
        ('j=eq."\\"x\\""', {"j": "jsonb"}, {"j": "x"}, True),  # the JSON text "x"
        ("n=gt.1e2", {"n": "numeric"}, {"n": 101}, True),
    ],
)
def test_known_types_read_the_value_as_the_column_type(
    text: str, types: dict[str, str], row: dict[str, JSONValue], expected: bool
) -> None:
    """With the column's PostgreSQL type known, the text value is read as that type only."""
    assert expected == matches(text, row, types)


@pytest.mark.parametrize(
    ("text", "types", "message"),
    [
        ("subject=foo.hey", None, 'Error parsing `filter` params: ["foo", "hey"]'),
        ("undefined", None, 'Error parsing `filter` params: ["undefined"]'),
        ("a=eq", None, 'Error parsing `filter` params: ["a", "eq"]'),
        (
            "a=eq.1,,b=eq.2",
            None,
            "Error parsing `filter` params: filter must not contain "
            "empty segments (check for extra commas)",
        ),
        (
            "a=in.1,2",
            None,
            "Error parsing `filter` params: `in` filter value must be wrapped by parentheses",
        ),
        (
            "a=like.x%",
            None,
            "Error parsing `filter` params: operator like is not supported by "
            "pgrelay (use eq, neq, in, lt, lte, gt, gte)",
        ),
        ("a=not.ilike.x", None, "operator ilike is not supported by pgrelay"),
        ("a=is.null", None, "operator is is not supported by pgrelay"),
        ("id=eq.abc", {"id": "int8"}, "invalid input syntax for type int8 on column id: 'abc'"),
        ("d=eq.maybe", {"d": "bool"}, "invalid input syntax for type bool on column d"),
        ("u=eq.nope", {"u": "uuid"}, "invalid input syntax for type uuid on column u"),
        ('j=eq.{"a":1}', {"j": "jsonb"}, "filters on json objects and arrays are not supported"),
        ("=eq.1", None, "invalid column for filter ''"),
        ("a=in.(" + ",".join(map(str, range(101))) + ")", None, "`in` takes 1 to 100 values"),
        (",".join(f"c{i}=gt.{i}" for i in range(17)), None, "filter has 17 columns; at most 16"),
    ],
)
def test_refusals(text: str, types: dict[str, str] | None, message: str) -> None:
    """Bad filters and unsupported operators are refused with Supabase's message prefix, never
    read as matching everything."""
    assert message in error(text, types)


def test_the_same_engine_as_protocol_v1() -> None:
    """The text syntax and v1's JSON build equal filters for the same conditions."""
    text = parse_filter(
        "age=gte.18,age=lt.65,team=in.(a,b),id=not.eq.x",
        {"age": "int4", "team": "text", "id": "text"},
    )
    v1 = RowFilter.parse(
        {"age": {"gte": 18, "lt": 65}, "team": {"in": ["a", "b"]}, "id": {"not": {"eq": "x"}}}
    )
    assert v1 == text
