"""RowFilter: parsing client filters and matching them with jsonb equality."""

from __future__ import annotations

from decimal import Decimal

import pytest

from relay.core.events import JSONValue
from relay.core.filters import RowFilter
from relay.errors import ProtocolError
from tests.support.factories import make_event


def matches(raw: object, row: dict[str, JSONValue]) -> bool:
    return RowFilter.parse(raw).matches(make_event(1, row=row))


# --- parsing -------------------------------------------------------------------------------


def test_none_is_the_empty_filter_matching_everything() -> None:
    """None parses to the empty filter, which matches any row and a truncated event."""
    empty = RowFilter.parse(None)
    assert () == empty.clauses
    assert empty.matches(make_event(1, row={"a": 1}))
    assert empty.matches(make_event(2, truncated=True))


def test_empty_object_is_the_empty_filter() -> None:
    """{} is the same as no filter."""
    assert RowFilter.parse(None) == RowFilter.parse({})


def test_key_order_does_not_matter() -> None:
    """Filters with the same conditions in another key order are equal, columns sorted."""
    a = RowFilter.parse({"b": 1, "a": {"in": ["x", "y"]}})
    b = RowFilter.parse({"a": {"in": ["y", "x"]}, "b": 1.0})
    assert a == b
    assert ("a", "b") == a.columns


BAD_FILTERS: list[tuple[str, object, str]] = [
    ("not an object", [{"a": 1}], "must be a JSON object or null, not an array"),
    ("a string", "a=1", "must be a JSON object or null, not a string"),
    ("bare array value", {"a": [1, 2]}, 'column "a": use {"in": [...]}'),
    ("unknown operator", {"a": {"b": 1}}, 'column "a": unknown operator "b"; an object'),
    ("in plus another key", {"a": {"in": [1], "x": 2}}, 'column "a": unknown operator "x"'),
    ("no operator", {"a": {}}, 'column "a": an object condition needs an operator'),
    ("not of two", {"a": {"not": {"eq": 1, "lt": 2}}}, '"not" takes an object of one operator'),
    ("not of not", {"a": {"not": {"not": {"eq": 1}}}}, '"not" takes an object of one operator'),
    ("lt null", {"a": {"lt": None}}, '"lt" compares with a number, a string or a boolean'),
    ("gt object", {"a": {"gt": {"b": 1}}}, 'the value of "gt" must be a JSON scalar'),
    ("neq array", {"a": {"neq": [1]}}, 'the value of "neq" must be a JSON scalar'),
    (
        "33 conditions",
        {f"c{i}": {"gt": 0, "lt": 9} for i in range(16)} | {"c0": {"gt": 0, "lt": 9, "neq": 5}},
        "conditions; at most 32",
    ),
    ("101 in values", {"a": {"in": list(range(101))}}, '"in" must have 1 to 100 values, not 101'),
    ("empty in", {"a": {"in": []}}, '"in" must have 1 to 100 values, not 0'),
    ("in not an array", {"a": {"in": 1}}, 'column "a": "in" must be an array'),
    ("array inside in", {"a": {"in": [[1]]}}, '"in" values must be a JSON scalar'),
    ("object inside in", {"a": {"in": [{"b": 1}]}}, "not an object"),
    ("non-str key", {1: "x"}, "filter column names must be strings, not int"),
    ("empty key", {"": "x"}, "filter column names must not be empty"),
    ("64-byte key", {"é" * 32: 1}, "is longer than 63 bytes"),
    ("17 keys", {f"c{i}": i for i in range(17)}, "filter has 17 columns; at most 16"),
    ("nan", {"a": float("nan")}, 'column "a": the value must be a finite number'),
    ("inf in in", {"a": {"in": [1, float("inf")]}}, '"in" values must be a finite number'),
    ("non-JSON value", {"a": (1, 2)}, "not a tuple"),
]


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [(raw, fragment) for _, raw, fragment in BAD_FILTERS],
    ids=[name for name, _, _ in BAD_FILTERS],
)
def test_bad_shapes_are_rejected(raw: object, fragment: str) -> None:
    """Each malformed filter raises bad_message with a one-line message naming the problem."""
    with pytest.raises(ProtocolError) as caught:
        RowFilter.parse(raw)
    assert "bad_message" == caught.value.code
    assert fragment in caught.value.message
    assert [caught.value.message] == caught.value.message.splitlines()


def test_message_names_the_column_even_with_a_newline() -> None:
    """A hostile column name is quoted, so the message stays on one line."""
    with pytest.raises(ProtocolError) as caught:
        RowFilter.parse({"a\nb\u2028": {"x": 1}})
    assert caught.value.message.startswith('filter on column "a\\nb\\u2028": ')


def test_limits_are_inclusive() -> None:
    """16 columns, 100 in values and a 63-byte column name are all allowed."""
    assert 16 == len(RowFilter.parse({f"c{i}": i for i in range(16)}).clauses)
    assert RowFilter.parse({"a": {"in": list(range(100))}}).matches(make_event(1, row={"a": 99}))
    name = "é" * 31 + "a"  # 63 bytes in UTF-8
    assert RowFilter.parse({name: 1}).matches(make_event(1, row={name: 1}))


def test_huge_ints_are_fine() -> None:
    """Integers of any size are accepted and compared exactly."""
    big = 10**40 + 1
    assert matches({"a": big}, {"a": big})
    assert not matches({"a": big}, {"a": 10**40})


# --- jsonb equality ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("filter_value", "row_value", "expected"),
    [
        (1, 1.0, True),
        (1.0, 1, True),
        (-0.0, 0, True),
        (2.5, 2.5, True),
        (0.1, 0.1, True),
        (1e30, 10**30, True),
        (10**30, 1e30, True),
        (1, 2, False),
        (True, 1, False),
        (1, True, False),
        (False, 0, False),
        (0, False, False),
        (0.0, False, False),
        (True, True, True),
        (False, False, True),
        (True, False, False),
        ("1", 1, False),
        (1, "1", False),
        ("a", "a", True),
        ("a", "A", False),
        (None, None, True),
        (None, 0, False),
        (None, "", False),
        (None, False, False),
        ("", None, False),
        (1, [1], False),
        (1, {"a": 1}, False),
        (1, Decimal("1.00"), True),
        (0.1, Decimal("0.1"), True),
        (1, float("nan"), False),
    ],
)
def test_jsonb_equality(filter_value: object, row_value: object, expected: bool) -> None:
    """Equality follows jsonb: numbers by value, bools and strings never equal numbers."""
    assert expected == matches({"a": filter_value}, {"a": row_value})
    assert expected == matches({"a": {"in": [filter_value]}}, {"a": row_value})


def test_in_matches_any_listed_value() -> None:
    """An in condition matches exactly the listed values, with the same equality rules."""
    f = {"a": {"in": [1, "x", None, True]}}
    assert [True, True, True, True, True, False, False, False] == [
        matches(f, {"a": v}) for v in (1, 1.0, "x", None, True, 2, "1", False)
    ]


def test_every_condition_must_hold() -> None:
    """Conditions are ANDed."""
    f = {"a": 1, "b": {"in": ["x", "y"]}}
    assert matches(f, {"a": 1, "b": "y", "c": 0})
    assert not matches(f, {"a": 1, "b": "z"})
    assert not matches(f, {"a": 2, "b": "x"})


def test_missing_column_does_not_match() -> None:
    """A column in neither the row nor the pk is no match, even when the filter value is null."""
    assert not matches({"a": 1}, {"b": 1})
    assert not matches({"a": None}, {"b": 1})
    assert not matches({"a": {"in": [None]}}, {})


def test_key_column_outside_the_row_is_matched_against_pk() -> None:
    """A pk column the whitelist leaves out of the row is compared with the pk's value."""
    event = make_event(1, pk={"id": 7}, row={"status": "open"})
    assert RowFilter.parse({"id": 7.0, "status": "open"}).matches(event)
    assert not RowFilter.parse({"id": 8}).matches(event)
    assert not RowFilter.parse({"id": True}).matches(make_event(2, pk={"id": 1}, row={}))


def test_row_value_wins_over_pk_value() -> None:
    """When the row carries a key column, the row's value is the one compared."""
    event = make_event(1, pk={"id": 7}, row={"id": 8})
    assert (False, True) == (
        RowFilter.parse({"id": 7}).matches(event),
        RowFilter.parse({"id": 8}).matches(event),
    )


def test_delete_matches_on_its_old_values() -> None:
    """A DELETE's row holds the old values, and the filter is applied to them."""
    event = make_event(1, op="DELETE", row={"id": 1, "status": "open"})
    assert RowFilter.parse({"status": "open"}).matches(event)


# --- truncated events ----------------------------------------------------------------------


def test_truncated_event_checks_pk_columns_against_pk() -> None:
    """With no row, conditions on pk columns are checked against the pk."""
    event = make_event(1, pk={"id": 7}, truncated=True)
    assert RowFilter.parse({"id": 7}).matches(event)
    assert RowFilter.parse({"id": {"in": [6, 7.0]}}).matches(event)
    assert not RowFilter.parse({"id": 8}).matches(event)
    assert not RowFilter.parse({"id": "7"}).matches(event)


def test_truncated_event_fails_open_on_other_columns() -> None:
    """With no row, conditions on non-pk columns are treated as matching."""
    event = make_event(1, pk={"id": 7}, truncated=True)
    assert RowFilter.parse({"status": "closed"}).matches(event)
    assert RowFilter.parse({"id": 7, "status": "closed"}).matches(event)
    assert not RowFilter.parse({"id": 8, "status": "closed"}).matches(event)


# --- comparison operators and not -----------------------------------------------------------


@pytest.mark.parametrize(
    ("condition", "row_value", "expected"),
    [
        ({"gt": 5}, 6, True),
        ({"gt": 5}, 5, False),
        ({"gte": 5}, 5.0, True),
        ({"lt": 5}, 4.5, True),
        ({"lte": 5}, 5, True),
        ({"lte": 5}, 6, False),
        ({"gt": 10**30}, 1e31, True),
        ({"gt": "b"}, "c", True),
        ({"gt": "b"}, "B", False),  # code point order: "B" < "b"
        ({"lt": "é"}, "z", True),
        ({"gt": False}, True, True),
        ({"gt": 5}, "6", False),  # another kind has no order against a number
        ({"gt": "5"}, 6, False),
        ({"gt": 0}, True, False),
        ({"gt": 0}, None, False),
        ({"gt": 0}, [1], False),
        ({"neq": 5}, 6, True),
        ({"neq": 5}, 5.0, False),
        ({"neq": 5}, "5", True),
        ({"neq": 5}, None, False),  # null satisfies only eq and in
        ({"neq": None}, 0, True),
        ({"eq": 5}, 5, True),
        ({"not": {"eq": 5}}, 6, True),
        ({"not": {"eq": 5}}, 5, False),
        ({"not": {"eq": 5}}, None, False),
        ({"not": {"in": [1, 2]}}, 3, True),
        ({"not": {"in": [1, 2]}}, 2, False),
        ({"not": {"lt": 5}}, 5, True),
        ({"not": {"lt": 5}}, "a", False),  # no order either way
        ({"gte": 18, "lt": 65}, 18, True),
        ({"gte": 18, "lt": 65}, 65, False),
        ({"in": [1, 2], "neq": 2}, 2, False),
        ({"in": [1, 2], "neq": 2}, 1, True),
    ],
)
def test_operators(condition: dict[str, object], row_value: object, expected: bool) -> None:
    """Each operator, not, and several operators on one column (AND) decide as SQL would."""
    assert expected == matches({"a": condition}, {"a": row_value})


def test_conditions_are_not_clauses_and_fail_open_in_sql() -> None:
    """eq and in stay clauses (narrowed in SQL); other operators are conditions by_type leaves
    out, so a replay's SQL reads them unfiltered and the match is exact in Python."""
    row_filter = RowFilter.parse({"a": {"eq": 1, "gt": 0}, "b": {"not": {"in": ["x"]}}})
    assert ("a", "b") == row_filter.columns
    assert [("a", (1,))] == list(row_filter.clauses)
    assert [("a", "gt", False), ("b", "in", True)] == [
        (c.column, c.op, c.negate) for c in row_filter.conditions
    ]
    assert ("a",) == tuple(values.column for values in row_filter.by_type())


def test_conditions_on_truncated_events_check_pk_only() -> None:
    """With no row, a condition on a pk column is checked against the pk, others pass."""
    event = make_event(1, pk={"id": 7}, truncated=True)
    assert RowFilter.parse({"id": {"gt": 5}, "status": {"lt": "a"}}).matches(event)
    assert not RowFilter.parse({"id": {"not": {"eq": 7}}}).matches(event)


def test_conditions_count_in_the_cost() -> None:
    """A condition costs a clause of its values plus CONDITION_BYTES."""
    from relay.core.filters import CLAUSE_BYTES, CONDITION_BYTES, VALUE_BYTES

    assert (
        CLAUSE_BYTES + 1 + VALUE_BYTES + CONDITION_BYTES == RowFilter.parse({"a": {"gt": 5}}).cost
    )
