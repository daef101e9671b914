"""Client input: an SSE request's subscriptions become subscribe messages with the stream's one
cursor."""

from __future__ import annotations

import json

import pytest

from relay.core.requests import stream_messages
from relay.errors import ProtocolError


def test_subs_become_messages_with_index_ids_and_the_stream_cursor() -> None:
    """Each object of ``subs`` is a subscribe message; ids default to their index; one since."""
    subs = [{"table": "a", "ops": ["INSERT"]}, {"id": "mine", "table": "b", "filter": {"x": 1}}]
    assert [
        {"id": "0", "table": "a", "ops": ["INSERT"], "since": "c.5"},
        {"id": "mine", "table": "b", "filter": {"x": 1}, "since": "c.5"},
    ] == stream_messages({"subs": json.dumps(subs), "since": "ignored"}, "c.5")


def test_without_subs_the_query_is_one_subscription_as_for_a_long_poll() -> None:
    """table, schema, filter and ops as a long-poll takes them; id 0; no cursor: from now."""
    query = {"table": "t", "schema": "s", "filter": '{"k":"v"}', "ops": "INSERT,DELETE",
             "since": "c.1"}  # fmt: skip
    assert [
        {"id": "0", "table": "t", "schema": "s", "filter": {"k": "v"}, "ops": ["INSERT", "DELETE"]}
    ] == stream_messages(query, None)


@pytest.mark.parametrize(
    ("subs", "message"),
    [
        ("[", "subs is not valid JSON"),
        ("[]", "subs must be a non-empty array of objects"),
        ('{"table":"t"}', "subs must be a non-empty array of objects"),
        ('[{"table":"t"}, 3]', "subs must be a non-empty array of objects"),
        ('[{"table":"t","since":"c.1"}]', "since is not taken per subscription on a stream"),
        (
            '[{"table":"t","coalesce_ms":5}]',
            "coalesce_ms is not taken per subscription on a stream",
        ),
    ],
)
def test_bad_subs_are_refused(subs: str, message: str) -> None:
    """Not an array of objects, or a per-subscription cursor or coalescing window: bad_message."""
    with pytest.raises(ProtocolError) as refused:
        stream_messages({"subs": subs}, None)
    assert ("bad_message", message) == (refused.value.code, refused.value.message)
