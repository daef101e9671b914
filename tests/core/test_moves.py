"""What an event is to one subscriber (relay/core/moves.py): the UPDATE, a move-out, an entry or
nothing, by the audiences and the old and new values; their frames; the subscription's ops."""

from __future__ import annotations

import json
from typing import Any

import pytest

from relay.core.events import Event, Op
from relay.core.filters import RowFilter
from relay.core.moves import seen_as
from relay.core.subscription import ANY_TABLE
from relay.core.wire import V1
from tests.support.factories import make_event, make_sub

EPOCH = "e" * 32
P1 = RowFilter.parse({"project": "p1"})
ANY = RowFilter.parse(None)


def moved_project(**changes: Any) -> Event:
    """Row 7 of alice, moved from project p1 to p2 (old values given)."""
    fields: dict[str, Any] = {
        "op": "UPDATE", "pk": {"id": 7}, "row": {"id": 7, "project": "p2", "title": "secret"},
        "old_values": {"project": "p1"}, "audience": ("alice",),
    }  # fmt: skip
    return make_event(5, **{**fields, **changes})


def kind(form: Event | None, event: Event) -> str:
    if form is None:
        return "nothing"
    if form is event:
        return "as is"
    assert form.moved is not None
    return f"moved {form.moved}"


@pytest.mark.parametrize(
    ("row_filter", "user", "expected"),
    [
        (P1, "alice", "moved out"),  # matched p1 before, not after
        (RowFilter.parse({"project": "p2"}), "alice", "moved in"),
        (RowFilter.parse({"project": {"in": ["p1", "p2"]}}), "alice", "as is"),
        (ANY, "alice", "as is"),
        (RowFilter.parse({"project": "p3"}), "alice", "nothing"),
        (ANY, "bob", "nothing"),  # never in the audience
    ],
)
def test_filter_decides_from_old_and_new_values(
    row_filter: RowFilter, user: str, expected: str
) -> None:
    """An UPDATE whose old values matched and new do not is a move-out, the other way an entry."""
    event = moved_project()
    assert expected == kind(seen_as(event, (user,), row_filter), event)


@pytest.mark.parametrize(
    ("user", "expected"),
    [("alice", "moved out"), ("bob", "moved in"), ("carol", "as is"), ("dave", "nothing")],
)
def test_audience_hand_over(user: str, expected: str) -> None:
    """Old audience only: move-out; new only: entry; both: the UPDATE; neither: nothing."""
    event = moved_project(audience=("bob", "carol"), old_audience=("alice", "carol"))
    assert expected == kind(seen_as(event, (user,), ANY), event)


def test_audience_only_change_sends_nothing_to_users_in_both() -> None:
    """No carried column changed (old values empty): users in both audiences get nothing, unless
    the key changed; the others move."""
    event = moved_project(audience=("bob", "carol"), old_audience=("carol", "alice"), old_values={})
    assert [None, "in", "out"] == [
        None if (form := seen_as(event, (user,), ANY)) is None else form.moved
        for user in ("carol", "bob", "alice")
    ]
    rekeyed = moved_project(audience=("carol",), old_audience=("carol", "x"), old_values={},
                            old_key={"id": 6})  # fmt: skip
    assert rekeyed is seen_as(rekeyed, ("carol",), ANY)


def test_move_out_carries_the_old_key_and_nothing_of_the_new_row() -> None:
    """The move-out frame: a DELETE under the key before the change, row null, moved out."""
    event = moved_project(pk={"id": 8}, old_key={"id": 7}, audience=("bob",),
                          old_audience=("alice",))  # fmt: skip
    form = seen_as(event, ("alice",), ANY)
    assert form is not None
    frame = V1(EPOCH).event("mine", form)
    assert "secret" not in frame and "p2" not in frame and "bob" not in frame
    assert {
        "type": "event", "sub": "mine", "cursor": f"{EPOCH}.5", "schema": "public",
        "table": "items", "op": "DELETE", "pk": {"id": 7}, "row": None, "changed": [],
        "ts": "2026-01-01T00:00:00+00:00", "old": {"id": 7}, "moved": "out",
    } == json.loads(frame)  # fmt: skip


def test_entry_carries_the_new_row_as_an_insert() -> None:
    """The entry frame: an INSERT of the new values under the new key, moved in, no old key."""
    event = moved_project(pk={"id": 8}, old_key={"id": 7}, row={"id": 8, "project": "p2"})
    form = seen_as(event, ("alice",), RowFilter.parse({"project": "p2"}))
    assert form is not None
    frame = V1(EPOCH).event("p2", form)
    assert {
        "type": "event", "sub": "p2", "cursor": f"{EPOCH}.5", "schema": "public",
        "table": "items", "op": "INSERT", "pk": {"id": 8},
        "row": {"id": 8, "project": "p2"}, "changed": [],
        "ts": "2026-01-01T00:00:00+00:00", "moved": "in",
    } == json.loads(frame)  # fmt: skip


def test_forms_are_built_once_per_event() -> None:
    """Every subscriber gets the same move-out and entry objects, so each is encoded once."""
    event = moved_project(audience=("bob",), old_audience=("alice",))
    assert seen_as(event, ("alice",), ANY) is seen_as(event, ("alice",), P1) is event.moved_out()
    assert seen_as(event, ("bob",), ANY) is event.moved_in()
    assert event.moved_out().encoded() is event.moved_out().encoded()


def test_truncated_update_moves_by_audience_and_key_only() -> None:
    """A truncated UPDATE (values unknown) moves users between audiences; a filter on a non-key
    column counts as matching on both sides, one on the key is checked before and after."""
    event = moved_project(truncated=True, audience=("bob", "carol"), old_audience=("alice", "carol"),
                          pk={"id": 8}, old_key={"id": 7})  # fmt: skip
    assert [("DELETE", "out", None), ("INSERT", "in", True), ("UPDATE", None, True)] == [
        (form.op, form.moved, form.truncated or None)
        for user in ("alice", "bob", "carol")
        if (form := seen_as(event, (user,), P1)) is not None
    ]
    by_key = RowFilter.parse({"id": 7})
    assert "moved out" == kind(seen_as(event, ("carol",), by_key), event)
    assert "moved in" == kind(seen_as(event, ("carol",), RowFilter.parse({"id": 8})), event)


def test_update_logged_before_old_values_is_decided_by_its_new_values() -> None:
    """Old values unknown (logged before schema version 4): the UPDATE when the new values match,
    nothing otherwise, as before."""
    event = moved_project(old_values=None)
    assert event is seen_as(event, ("alice",), RowFilter.parse({"project": "p2"}))
    assert seen_as(event, ("alice",), P1) is None


def test_insert_and_delete_go_as_they_are_to_who_sees_the_row() -> None:
    """INSERT and DELETE: the event itself, to users in the audience whose filter matches."""
    ops: tuple[Op, ...] = ("INSERT", "DELETE")
    for op in ops:
        event = make_event(3, op=op, row={"id": 3, "project": "p1"})
        assert event is seen_as(event, ("alice",), P1)
        assert seen_as(event, ("alice",), RowFilter.parse({"project": "p2"})) is None
        assert seen_as(event, ("bob",), ANY) is None


@pytest.mark.parametrize(
    ("ops", "alice", "bob"),
    [
        ({"INSERT", "UPDATE", "DELETE"}, "DELETE", "INSERT"),
        ({"UPDATE"}, None, None),
        ({"DELETE"}, "DELETE", None),
        ({"INSERT"}, None, "INSERT"),
    ],
)
def test_ops_select_by_the_frame_delivered(
    ops: set[str], alice: str | None, bob: str | None
) -> None:
    """A move-out is delivered with DELETE in ops, an entry with INSERT; and only of the table."""
    event = moved_project(audience=("bob",), old_audience=("alice",))
    sub = make_sub(ops=ops)
    got = [
        None if (f := sub.delivery(event, (user,))) is None else f.op for user in ("alice", "bob")
    ]
    assert [alice, bob] == got
    assert make_sub(table="other").delivery(event, ("alice",)) is None


def test_pk_column_the_row_does_not_carry_is_checked_against_the_old_key() -> None:
    """A filter on a key column outside the row: the old key before, the new key after."""
    event = make_event(9, op="UPDATE", pk={"id": 2}, old_key={"id": 1}, row={"v": 1},
                       old_values={"v": 0})  # fmt: skip
    assert "moved out" == kind(seen_as(event, ("alice",), RowFilter.parse({"id": 1})), event)
    assert "moved in" == kind(seen_as(event, ("alice",), RowFilter.parse({"id": 2})), event)


# --- audience keys (relay/core/audience.py) and the filter engine's comparisons ---------------

BOB = ("bob", "role:authenticated")  # a signed-in user's keys
ANON = ("role:anon",)  # an anonymous visitor's


@pytest.mark.parametrize(
    ("old_audience", "audience", "keys", "expected"),
    [
        (("role:authenticated",), ("alice",), BOB, "moved out"),  # left by the role key
        (("alice",), ("role:authenticated",), BOB, "moved in"),  # entered by the role key
        (("bob",), ("role:authenticated",), BOB, "as is"),  # in both, by different keys
        (("alice", "role:anon"), ("alice",), ANON, "moved out"),  # public made private
        (("alice",), ("alice", "role:anon"), ANON, "moved in"),
        (("alice", "role:anon"), ("alice",), BOB, "nothing"),  # in neither by any key
    ],
)
def test_audience_membership_is_any_key_of_the_connection(
    old_audience: tuple[str, ...], audience: tuple[str, ...], keys: tuple[str, ...], expected: str
) -> None:
    """A subscriber is in an audience when any of its keys (user id, role keys) is: one in the
    old audience by a role key and in the new by none gets the move-out."""
    event = moved_project(audience=audience, old_audience=old_audience)
    assert expected == kind(seen_as(event, keys, ANY), event)


@pytest.mark.parametrize(
    ("condition", "old", "new", "expected"),
    [
        ({"budget": {"gt": 10}}, 20, 5, "moved out"),
        ({"budget": {"gt": 10}}, 5, 20, "moved in"),
        ({"budget": {"gt": 10}}, 11, 20, "as is"),
        ({"budget": {"gt": 10}}, 1, 2, "nothing"),
        ({"budget": {"gte": 10, "lt": 20}}, 10, 20, "moved out"),
        ({"budget": {"neq": 5}}, 5, 6, "moved in"),
        ({"budget": {"not": {"in": [1, 2]}}}, 3, 2, "moved out"),
        ({"budget": {"gt": 10}}, None, 20, "moved in"),  # null satisfies no comparison
        ({"budget": {"not": {"gt": 10}}}, 5, None, "moved out"),  # nor its negation
        ({"project": "p1", "budget": {"lt": 10}}, 5, 50, "moved out"),  # clause kept, condition not
    ],
)
def test_comparisons_decide_from_the_old_row(
    condition: dict[str, Any], old: object, new: object, expected: str
) -> None:
    """matched_before checks every operator on the old row (the new values patched with the old
    ones), so a value crossing a bound moves the row out or in."""
    event = moved_project(row={"id": 7, "project": "p1", "budget": new}, old_values={"budget": old})
    assert expected == kind(seen_as(event, ("alice",), RowFilter.parse(condition)), event)


def test_comparison_on_a_key_column_uses_the_old_key() -> None:
    """A comparison on a key column the row does not carry: the old key before, the new after;
    on a truncated UPDATE too."""
    for truncated in (False, True):
        event = make_event(9, op="UPDATE", pk={"id": 12}, old_key={"id": 8}, row={"v": 1},
                           old_values={"v": 0}, truncated=truncated)  # fmt: skip
        assert "moved in" == kind(seen_as(event, ("alice",), RowFilter.parse({"id": {"gt": 10}})),
                                  event)  # fmt: skip
        assert "moved out" == kind(seen_as(event, ("alice",), RowFilter.parse({"id": {"lt": 10}})),
                                   event)  # fmt: skip


def test_a_filter_of_comparisons_only_is_not_skipped_as_empty() -> None:
    """The shortcut for an unchanged audience and no filter does not take a filter whose only
    conditions are comparisons (no equality clause)."""
    event = moved_project(row={"id": 7, "project": "p1", "budget": 5}, old_values={"budget": 50})
    assert event.moved_out() is seen_as(event, ("alice",), RowFilter.parse({"budget": {"gt": 9}}))


def test_delivery_honours_any_table_and_the_schema() -> None:
    """An ANY_TABLE subscription is sent the move-out of a row of any table of its schema (every
    schema when it names none), never of another schema's."""
    event = moved_project(audience=("bob",), old_audience=("alice",))
    assert event.moved_out() is make_sub(table=ANY_TABLE).delivery(event, ("alice",))
    assert event.moved_out() is make_sub(table=ANY_TABLE, schema="public").delivery(
        event, ("alice",)
    )
    assert make_sub(table=ANY_TABLE, schema="private").delivery(event, ("alice",)) is None
    assert make_sub(table="items", schema="private").delivery(event, ("alice",)) is None
    assert event.moved_in() is make_sub(table=ANY_TABLE).delivery(event, ("bob",))
