"""Router: the user index and the routing of events to matching live subscriptions."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import replace

import pytest

from relay.core.events import Event
from relay.core.router import Routed, Router
from relay.core.subscription import Subscription
from tests.support.factories import RecordingTarget, make_event, make_sub


def connect(router: Router, user: str, conn_id: str, *subs: Subscription) -> RecordingTarget:
    target = RecordingTarget(user, conn_id)
    router.add(target)
    for sub in subs:
        router.subscribe(target, sub)
    return target


# --- audience ------------------------------------------------------------------------------


def test_users_are_isolated() -> None:
    """An event goes only to users in its audience, whatever their subscriptions match."""
    router = Router()
    alice = connect(router, "alice", "c1", make_sub())
    bob = connect(router, "bob", "c2", make_sub())
    assert 1 == router.route(make_event(1, audience=["alice"]), 0.0).delivered
    assert 1 == router.route(make_event(2, audience=["bob"]), 0.0).delivered
    assert 0 == router.route(make_event(3, audience=["carol"]), 0.0).delivered
    assert 0 == router.route(make_event(4, audience=[]), 0.0).delivered
    assert [("s1", 1)] == alice.received
    assert [("s1", 2)] == bob.received


def test_shared_audience_reaches_every_member() -> None:
    """An event whose audience has several connected users reaches each of them."""
    router = Router()
    alice = connect(router, "alice", "c1", make_sub())
    bob = connect(router, "bob", "c2", make_sub())
    carol = connect(router, "carol", "c3", make_sub())
    assert 2 == router.route(make_event(1, audience=["alice", "bob", "dave"]), 5.0).delivered
    assert ([("s1", 1)], [("s1", 1)], []) == (alice.received, bob.received, carol.received)
    assert [5.0] == alice.times


def test_every_connection_of_a_user_gets_the_event() -> None:
    """A user with several connections gets the event on each of them, per subscription."""
    router = Router()
    tab1 = connect(router, "alice", "c1", make_sub("a"), make_sub("b"))
    tab2 = connect(router, "alice", "c2", make_sub("a"))
    assert 3 == router.route(make_event(1), 0.0).delivered
    assert [("a", 1), ("b", 1)] == sorted(tab1.received)
    assert [("a", 1)] == tab2.received
    assert (2, 1) == (router.connection_count, router.user_count)


def test_audience_larger_than_index() -> None:
    """A 100k-user audience with a few connected users reaches exactly those users."""
    router = Router()
    targets = [connect(router, f"u{i}", f"c{i}", make_sub()) for i in (5, 50_000, 99_999)]
    outsider = connect(router, "nobody", "cx", make_sub())
    audience = [f"u{i}" for i in range(100_000)]
    assert 3 == router.route(make_event(1, audience=audience), 0.0).delivered
    assert [[("s1", 1)]] * 3 == [t.received for t in targets]
    assert [] == outsider.received


def test_index_larger_than_audience() -> None:
    """With many connected users and a one-user audience, only that user gets the event."""
    router = Router()
    targets = [connect(router, f"u{i}", f"c{i}", make_sub()) for i in range(20_000)]
    assert 1 == router.route(make_event(1, audience=["u123"]), 0.0).delivered
    assert [1 if i == 123 else 0 for i in range(20_000)] == [len(t.received) for t in targets]


class CountingAudience(frozenset[str]):
    """An audience that counts how the router reads it."""

    iterated = 0
    probed = 0

    def __iter__(self) -> Iterator[str]:
        type(self).iterated += 1
        return super().__iter__()

    def __contains__(self, item: object) -> bool:
        type(self).probed += 1
        return super().__contains__(item)

    def isdisjoint(self, other: Iterable[object]) -> bool:
        type(self).probed += 1  # the decision's probe with a connection's keys (one call)
        return super().isdisjoint(other)


def test_routing_walks_the_smaller_side() -> None:
    """A big audience is probed once per connected user; a small one is iterated instead. The
    decision (relay/core/moves.py) probes it once more per subscription it delivers to."""
    router = Router()
    for i in range(3):
        connect(router, f"u{i}", f"c{i}", make_sub())
    CountingAudience.iterated = CountingAudience.probed = 0
    big = CountingAudience(f"u{i}" for i in range(1_000))
    event = replace(make_event(1), audience=big)
    assert 3 == router.route(event, 0.0).delivered
    assert (0, 3 + 3) == (CountingAudience.iterated, CountingAudience.probed)

    for i in range(3, 1_000):
        connect(router, f"u{i}", f"c{i}", make_sub())
    CountingAudience.iterated = CountingAudience.probed = 0
    small = CountingAudience({"u7", "nobody"})
    assert 1 == router.route(replace(make_event(2), audience=small), 0.0).delivered
    assert (1, 0 + 1) == (CountingAudience.iterated, CountingAudience.probed)


# --- matching ------------------------------------------------------------------------------


def test_table_must_match() -> None:
    """A subscription gets events of its table only."""
    router = Router()
    target = connect(router, "alice", "c1", make_sub("items"), make_sub("orders", table="orders"))
    router.route(make_event(1, table="orders"), 0.0)
    router.route(make_event(2, table="other"), 0.0)
    assert [("orders", 1)] == target.received


def test_schema_none_matches_any_schema_else_exact() -> None:
    """schema None matches the table in every schema; a named schema only itself."""
    router = Router()
    target = connect(router, "alice", "c1", make_sub("any"), make_sub("pub", schema="public"))
    router.route(make_event(1, schema="public"), 0.0)
    router.route(make_event(2, schema="tenant_a"), 0.0)
    assert [("any", 1), ("pub", 1), ("any", 2)] == target.received


def test_ops_must_match() -> None:
    """A subscription gets only the ops it asked for."""
    router = Router()
    target = connect(
        router,
        "alice",
        "c1",
        make_sub("ins", ops={"INSERT"}),
        make_sub("ud", ops={"UPDATE", "DELETE"}),
    )
    router.route(make_event(1, op="INSERT"), 0.0)
    router.route(make_event(2, op="UPDATE"), 0.0)
    router.route(make_event(3, op="DELETE"), 0.0)
    assert [("ins", 1), ("ud", 2), ("ud", 3)] == target.received


def test_filter_must_match() -> None:
    """A subscription gets only rows its filter matches."""
    router = Router()
    target = connect(router, "alice", "c1", make_sub(filter={"status": {"in": ["open", "new"]}}))
    router.route(make_event(1, row={"id": 1, "status": "open"}), 0.0)
    router.route(make_event(2, row={"id": 2, "status": "closed"}), 0.0)
    router.route(make_event(3, row={"id": 3}), 0.0)
    router.route(make_event(4, row={"id": 4, "status": "new"}), 0.0)
    assert [("s1", 1), ("s1", 4)] == target.received


def test_filter_never_widens_the_audience() -> None:
    """Even a truncated event, where the filter fails open, goes only to its audience."""
    router = Router()
    alice = connect(router, "alice", "c1", make_sub(filter={"status": "open"}))
    bob = connect(router, "bob", "c2", make_sub(filter={"status": "open"}))
    assert 1 == router.route(make_event(1, audience=["alice"], truncated=True), 0.0).delivered
    assert ([("s1", 1)], []) == (alice.received, bob.received)


# --- positions, after and live -------------------------------------------------------------


def test_after_is_the_seam() -> None:
    """No delivery at or below a subscription's after; after advances with each delivery."""
    router = Router()
    sub = make_sub(after=5)
    target = connect(router, "alice", "c1", sub)
    for pos in (3, 5, 6, 8):
        router.route(make_event(pos), 0.0)
    assert [("s1", 6), ("s1", 8)] == target.received
    assert 8 == sub.after


def test_after_does_not_advance_without_a_delivery() -> None:
    """An event the subscription does not match leaves its after alone."""
    router = Router()
    sub = make_sub(ops={"DELETE"})
    connect(router, "alice", "c1", sub)
    router.route(make_event(1, op="INSERT"), 0.0)
    assert 0 == sub.after


def test_not_live_subscriptions_are_skipped() -> None:
    """A subscription still replaying gets nothing from the router."""
    router = Router()
    sub = make_sub(live=False)
    target = connect(router, "alice", "c1", sub)
    assert 0 == router.route(make_event(1), 0.0).delivered
    assert ([], 0) == (target.received, sub.after)


def test_go_live_starts_after_the_given_position() -> None:
    """go_live marks the sub live at after: later events arrive, ones at or below after do not."""
    router = Router(head=10)
    sub = make_sub(live=False)
    target = connect(router, "alice", "c1", sub)
    router.route(make_event(11), 0.0)
    assert router.go_live(target, "s1", 12)
    assert (True, 12) == (sub.live, sub.after)
    for pos in (12, 13):
        router.route(make_event(pos), 0.0)
    assert [("s1", 13)] == target.received


def test_go_live_on_a_missing_subscription_is_false() -> None:
    """go_live returns False for an unknown sub id or an unregistered connection."""
    router = Router()
    target = connect(router, "alice", "c1", make_sub())
    assert not router.go_live(target, "nope", 0)
    assert not router.go_live(RecordingTarget("alice", "c2"), "s1", 0)
    router.unsubscribe(target, "s1")
    assert not router.go_live(target, "s1", 0)


def test_head_starts_at_the_constructor_argument() -> None:
    """head starts where it is told and follows the last routed position."""
    router = Router(head=41)
    assert 41 == router.head
    assert 0 == router.route(make_event(41), 0.0).delivered
    router.route(make_event(45, audience=[]), 0.0)
    assert 45 == router.head


def test_duplicate_and_old_positions_are_ignored() -> None:
    """An event at or below head was routed already: it is ignored and head does not move."""
    router = Router()
    sub = make_sub()
    target = connect(router, "alice", "c1", sub)
    assert 1 == router.route(make_event(5), 0.0).delivered
    sub.after = 0  # even a subscription that would accept it does not get it again
    assert 0 == router.route(make_event(5), 0.0).delivered
    assert 0 == router.route(make_event(4), 0.0).delivered
    assert ([("s1", 5)], 5) == (target.received, router.head)


# --- the index -----------------------------------------------------------------------------


def test_remove_cleans_the_index() -> None:
    """Removing a user's last connection removes the user key; their subscriptions go too."""
    router = Router()
    first = connect(router, "alice", "c1", make_sub())
    second = connect(router, "alice", "c2", make_sub())
    router.remove(first)
    assert (1, 1) == (router.connection_count, router.user_count)
    router.remove(second)
    assert (0, 0) == (router.connection_count, router.user_count)
    assert [] == router.subscriptions(second)
    assert 0 == router.route(make_event(1), 0.0).delivered
    assert ([], []) == (first.received, second.received)
    router.remove(second)  # idempotent
    assert (0, 0) == (router.connection_count, router.user_count)


def test_add_is_idempotent_and_refuses_a_clashing_conn_id() -> None:
    """Adding the same target twice is a no-op; another target under its conn_id is refused."""
    router = Router()
    target = connect(router, "alice", "c1", make_sub())
    router.add(target)
    assert 1 == router.connection_count
    assert ["s1"] == [s.id for s in router.subscriptions(target)]
    with pytest.raises(ValueError, match="'c1' is already registered"):
        router.add(RecordingTarget("alice", "c1"))


def test_an_impostor_with_the_same_ids_cannot_touch_the_connection() -> None:
    """Calls with a different object carrying the same user and conn_id change nothing."""
    router = Router()
    target = connect(router, "alice", "c1", make_sub())
    impostor = RecordingTarget("alice", "c1")
    router.remove(impostor)
    assert not router.unsubscribe(impostor, "s1")
    assert [] == router.subscriptions(impostor)
    assert (1, ["s1"]) == (router.connection_count, [s.id for s in router.subscriptions(target)])


def test_route_returns_the_deliveries_and_those_written_at_once() -> None:
    """Routed counts every offer made and, apart, the offers the targets wrote at once."""
    router = Router()
    connect(router, "alice", "c1", make_sub("a"), make_sub("b"))
    writer = connect(router, "bob", "c2", make_sub("a"))
    writer.writes = True
    assert Routed(3, 1) == router.route(make_event(1, audience=["alice", "bob"]), 0.0)
    assert Routed(0, 0) == router.route(make_event(1, audience=["alice", "bob"]), 0.0)


def test_subscription_looks_up_by_id_for_this_connection_only() -> None:
    """subscription(target, id) is the registered object; None for another or unknown target."""
    router = Router()
    sub = make_sub("a")
    target = connect(router, "alice", "c1", sub)
    assert (sub, None, None) == (
        router.subscription(target, "a"),
        router.subscription(target, "b"),
        router.subscription(RecordingTarget("alice", "c1"), "a"),
    )


def test_subscribe_replaces_by_id_and_unsubscribe_removes() -> None:
    """subscribe with an existing id replaces it (table too, now last); unsubscribe reports it."""
    router = Router()
    target = connect(router, "alice", "c1", make_sub("a"), make_sub("b"))
    replacement = make_sub("a", table="orders")
    router.subscribe(target, replacement)
    assert [("b", "items"), ("a", "orders")] == [
        (s.id, s.table) for s in router.subscriptions(target)
    ]
    router.route(make_event(1, table="items"), 0.0)
    router.route(make_event(2, table="orders"), 0.0)
    assert [("b", 1), ("a", 2)] == target.received
    assert router.unsubscribe(target, "a")
    assert not router.unsubscribe(target, "a")
    router.route(make_event(3, table="orders"), 0.0)
    assert [("b", 1), ("a", 2)] == target.received


def test_subscribe_on_unregistered_connection_raises() -> None:
    """Subscribing a connection the router does not know is a programming error."""
    with pytest.raises(KeyError):
        Router().subscribe(RecordingTarget("alice", "c1"), make_sub())


def test_unknown_connection_queries_are_harmless() -> None:
    """unsubscribe, subscriptions and remove on an unknown connection do nothing."""
    router = Router()
    stranger = RecordingTarget("zed", "c9")
    assert not router.unsubscribe(stranger, "s1")
    assert [] == router.subscriptions(stranger)
    router.remove(stranger)
    assert (0, 0) == (router.connection_count, router.user_count)


def test_offer_may_change_the_router() -> None:
    """An offer that unsubscribes or disconnects (an overflow reset) stops further offers."""
    router = Router()

    class Closing(RecordingTarget):
        def offer(self, sub: Subscription, event: Event, now: float) -> bool:
            super().offer(sub, event, now)
            router.remove(self)
            return False

    closing = Closing("alice", "c1")
    router.add(closing)
    router.subscribe(closing, make_sub("a"))
    router.subscribe(closing, make_sub("b"))
    other = connect(router, "alice", "c2", make_sub("a"))
    assert 2 == router.route(make_event(1), 0.0).delivered
    assert ([("a", 1)], [("a", 1)]) == (closing.received, other.received)
    assert (1, 1) == (router.connection_count, router.user_count)


# --- audience keys: role audiences ---------------------------------------------------------


def keyed(
    router: Router, user: str, conn_id: str, keys: list[str], *subs: Subscription
) -> RecordingTarget:
    target = RecordingTarget(user, conn_id)
    router.add(target, keys)
    for sub in subs:
        router.subscribe(target, sub)
    return target


def test_role_keys_reach_every_holder_and_nobody_else() -> None:
    """A row whose audience names role:anon reaches anonymous and only those connections; one
    naming a user never reaches an anonymous connection, whatever its filters."""
    router = Router()
    anon = keyed(router, "", "c1", ["role:anon"], make_sub())
    alice = keyed(router, "alice", "c2", ["alice", "role:authenticated"], make_sub())
    bob = keyed(router, "bob", "c3", ["bob", "role:authenticated"], make_sub())
    router.route(make_event(1, audience=["role:anon"]), 0.0)
    router.route(make_event(2, audience=["alice"]), 0.0)
    router.route(make_event(3, audience=["role:authenticated"]), 0.0)
    router.route(make_event(4, audience=["alice", "role:anon", "role:authenticated"]), 0.0)
    router.route(make_event(5, audience=[""]), 0.0)  # an empty owner value: nobody
    assert [("s1", 1), ("s1", 4)] == anon.received
    assert [("s1", 2), ("s1", 3), ("s1", 4)] == alice.received  # 4 once, under two keys
    assert [("s1", 3), ("s1", 4)] == bob.received


def test_a_connection_under_several_keys_is_removed_from_all() -> None:
    """remove() drops the connection from every key it was indexed under."""
    router = Router()
    alice = keyed(router, "alice", "c1", ["alice", "role:authenticated"], make_sub())
    assert (1, 2) == (router.connection_count, router.user_count)
    router.remove(alice)
    assert (0, 0) == (router.connection_count, router.user_count)
    assert 0 == router.route(make_event(1, audience=["role:authenticated", "alice"]), 0.0).delivered


def test_any_table_subscription_gets_every_table() -> None:
    """A subscription to ANY_TABLE (Supabase's schema-only binding) matches every table of its
    schema, beside the connection's table subscriptions."""
    from relay.core.subscription import ANY_TABLE

    router = Router()
    alice = connect(router, "alice", "c1", make_sub("all", table=ANY_TABLE, schema="public"),
                    make_sub("items"))  # fmt: skip
    router.route(make_event(1, table="items"), 0.0)
    router.route(make_event(2, table="other"), 0.0)
    router.route(make_event(3, table="other", schema="private"), 0.0)
    assert [("items", 1), ("all", 1), ("all", 2)] == alice.received
    router.unsubscribe(alice, "all")
    router.route(make_event(4, table="other"), 0.0)
    assert 3 == len(alice.received)


def test_a_catching_up_subscription_under_two_keys_holds_an_event_once() -> None:
    """A connection indexed under two keys of an event's audience holds it once for its
    catch-up, as it would deliver it once."""
    router = Router()
    sub = make_sub(live=False)
    sub.held, sub.hold_max = [], 10
    keyed(router, "alice", "c1", ["alice", "role:authenticated"], sub)
    router.route(make_event(1, audience=["alice", "role:authenticated"]), 0.0)
    assert [1] == [event.pos for event in sub.held]


def test_a_connection_in_the_old_audience_by_a_role_key_gets_the_move_out() -> None:
    """An UPDATE taking a public row private: a connection reached only by its role key is
    routed the move-out (the old audience is walked too); the owner the UPDATE; a connection
    held under two keys of the old audience is offered it once."""
    router = Router()
    anon = keyed(router, "", "c1", ["role:anon"], make_sub())
    bob = keyed(router, "bob", "c2", ["bob", "role:authenticated"], make_sub())
    owner = keyed(router, "alice", "c3", ["alice", "role:authenticated"], make_sub())
    event = make_event(1, op="UPDATE", row={"id": 1, "title": "secret"}, old_values={"title": "x"},
                       audience=["alice"], old_audience=["alice", "role:anon", "role:authenticated",
                                                         "bob"])  # fmt: skip
    assert 3 == router.route(event, 0.0).delivered
    assert [("s1", 1)] == anon.received == bob.received == owner.received
    assert event.moved_out() is anon.events[0] is bob.events[0]
    assert event is owner.events[0]


def test_a_catching_up_subscription_holds_the_form_it_is_sent() -> None:
    """While catching up, the router holds the move-out (not the UPDATE) for a connection only
    in the old audience, once though two of its keys are in it."""
    router = Router()
    sub = make_sub(live=False)
    sub.held, sub.hold_max = [], 10
    keyed(router, "bob", "c1", ["bob", "role:authenticated"], sub)
    event = make_event(1, op="UPDATE", old_values={}, audience=["alice"],
                       old_audience=["bob", "role:authenticated"])  # fmt: skip
    router.route(event, 0.0)
    assert [event.moved_out()] == sub.held
