"""Router and RowFilter against a brute-force oracle, on random users, subscriptions and events.

A scenario is plain data: a starting head, the initial connections with their subscriptions, and
a sequence of actions (route an event, connect, remove, subscribe, unsubscribe, go_live). It is
run through a real Router with recording targets and, in parallel, through a model that checks
every (connection, subscription) against every event by brute force with its own jsonb equality.
Every subscription must receive exactly the events the model says, once each, in position order.

Small domains (4 users, 2 tables, 2 columns, a handful of values including 1 / 1.0 / True / "1")
make matches, near-misses and duplicate positions common. Set RELAY_LONG_PROPERTY=1 to push at
least 100,000 events through the hypothesis test instead of the default few thousand.
"""

from __future__ import annotations

import itertools
import os
import random
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import ClassVar, TypeAlias

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay.core.events import OPS, Event, JSONValue, Op
from relay.core.filters import RowFilter
from relay.core.router import Router
from relay.core.subscription import Subscription
from tests.support.factories import make_event

LONG = os.environ.get("RELAY_LONG_PROPERTY") == "1"
LONG_EVENTS = 100_000

USERS = ("u0", "u1", "u2", "u3")
AUDIENCE_POOL = (*USERS, "outsider")  # in audiences, never connected
TABLES = ("t1", "t2")
SCHEMAS = ("s1", "s2")
COLUMNS = ("a", "b")
OP_LIST: tuple[Op, ...] = ("INSERT", "UPDATE", "DELETE")
VALUES: tuple[JSONValue, ...] = (0, 1, 1.0, 2, True, False, "1", "x", None)
ROW_VALUES: tuple[JSONValue, ...] = (*VALUES, [1], {"a": 1})  # non-scalars never match
SUB_IDS = ("s0", "s1", "s2")  # few, so subscribe replaces and unsubscribe hits


# --- scenarios -----------------------------------------------------------------------------


@dataclass(frozen=True)
class SubSpec:
    id: str
    table: str
    schema: str | None
    ops: frozenset[str]
    filter: object  # the raw JSON form
    live: bool
    after: int

    def build(self) -> Subscription:
        return Subscription(
            id=self.id,
            table=self.table,
            schema=self.schema,
            ops=self.ops,
            filter=RowFilter.parse(self.filter),
            after=self.after,
            live=self.live,
        )


@dataclass(frozen=True)
class Route:
    event: Event


@dataclass(frozen=True)
class Connect:
    user: str
    subs: tuple[SubSpec, ...]


@dataclass(frozen=True)
class Remove:
    conn: int  # an index into the connections made so far, modulo their number


@dataclass(frozen=True)
class Subscribe:
    conn: int
    sub: SubSpec


@dataclass(frozen=True)
class Unsubscribe:
    conn: int
    sub_id: str


@dataclass(frozen=True)
class GoLive:
    conn: int
    sub_id: str
    delta: int  # after = head + delta, as a caller that replayed through head would pass


Action: TypeAlias = Route | Connect | Remove | Subscribe | Unsubscribe | GoLive


@dataclass(frozen=True)
class Scenario:
    head: int
    actions: tuple[Action, ...]


# --- the oracle ----------------------------------------------------------------------------


def json_eq(a: object, b: object) -> bool:
    """jsonb equality of two scalars, written out case by case."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, str) or isinstance(b, str):
        return isinstance(a, str) and isinstance(b, str) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    return False


def oracle_matches(raw: object, event: Event) -> bool:
    if raw is None:
        return True
    assert isinstance(raw, dict)
    for column, condition in raw.items():
        options = condition["in"] if isinstance(condition, dict) else [condition]
        if event.row is None:  # truncated: pk columns only, the rest fail open
            if column in event.pk and not any(json_eq(event.pk[column], o) for o in options):
                return False
            continue
        if column in event.row:
            value = event.row[column]
        elif column in event.pk:  # a key column the whitelist does not carry
            value = event.pk[column]
        else:
            return False
        if not any(json_eq(value, o) for o in options):
            return False
    return True


@dataclass
class ModelSub:
    spec: SubSpec
    live: bool
    after: int


@dataclass
class ModelConn:
    user: str
    conn_id: str
    alive: bool = True
    subs: dict[str, ModelSub] = field(default_factory=dict)


@dataclass(eq=False)
class Recorder:
    """A Target recording, per subscription id, the positions offered."""

    user: str
    conn_id: str
    got: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    writes: ClassVar[int] = 0  # offers any Recorder said it wrote at once: every other one

    def offer(self, sub: Subscription, event: Event, now: float) -> bool:
        assert self.user in event.audience, "delivered to a user outside the audience"
        assert float(event.pos) == now
        self.got[sub.id].append(event.pos)
        wrote = len(self.got[sub.id]) % 2 == 0
        Recorder.writes += wrote
        return wrote


def run_scenario(scenario: Scenario) -> int:
    """Runs the scenario through a Router and the model, asserts they agree; returns events routed."""
    router = Router(head=scenario.head)
    head = scenario.head
    targets: list[Recorder] = []
    models: list[ModelConn] = []
    subs: dict[tuple[str, str], Subscription] = {}  # the router's objects, to compare afters
    expected: dict[tuple[str, str], list[int]] = defaultdict(list)
    routed = 0

    def subscribe(index: int, spec: SubSpec) -> None:
        target, model = targets[index], models[index]
        if not model.alive:
            with pytest.raises(KeyError):
                router.subscribe(target, spec.build())
            return
        sub = spec.build()
        router.subscribe(target, sub)
        subs[target.conn_id, spec.id] = sub
        model.subs[spec.id] = ModelSub(spec, spec.live, spec.after)

    def pick(index: int) -> int | None:
        return index % len(targets) if targets else None

    for action in scenario.actions:
        if isinstance(action, Route):
            event = action.event
            writes_before = Recorder.writes
            delivered, written = router.route(event, float(event.pos))
            assert Recorder.writes - writes_before == written
            if event.pos <= head:
                assert 0 == delivered
                continue
            head = event.pos
            routed += 1
            want = 0
            for model in models:  # brute force: every connection, every subscription
                if not model.alive or model.user not in event.audience:
                    continue
                for msub in model.subs.values():
                    spec = msub.spec
                    if (
                        msub.live
                        and event.pos > msub.after
                        and spec.table == event.table
                        and spec.schema in (None, event.schema)
                        and event.op in spec.ops
                        and oracle_matches(spec.filter, event)
                    ):
                        expected[model.conn_id, spec.id].append(event.pos)
                        msub.after = event.pos
                        want += 1
            assert want == delivered
        elif isinstance(action, Connect):
            target = Recorder(action.user, f"c{len(targets)}")
            targets.append(target)
            models.append(ModelConn(action.user, target.conn_id))
            router.add(target)
            for spec in action.subs:
                subscribe(len(targets) - 1, spec)
        elif (index := pick(action.conn)) is None:
            continue
        elif isinstance(action, Remove):
            router.remove(targets[index])
            models[index].alive = False
            models[index].subs.clear()
        elif isinstance(action, Subscribe):
            subscribe(index, action.sub)
        elif isinstance(action, Unsubscribe):
            removed = models[index].subs.pop(action.sub_id, None) is not None
            assert removed == router.unsubscribe(targets[index], action.sub_id)
        else:
            after = head + action.delta
            live = models[index].subs.get(action.sub_id)
            assert (live is not None) == router.go_live(targets[index], action.sub_id, after)
            if live is not None:
                live.live, live.after = True, after

    assert head == router.head
    alive = [m for m in models if m.alive]
    assert len(alive) == router.connection_count
    assert len({m.user for m in alive}) == router.user_count
    for target in targets:
        got = {sub_id: positions for sub_id, positions in target.got.items() if positions}
        wanted = {s: p for (c, s), p in expected.items() if c == target.conn_id}
        assert wanted == got, target.conn_id
        for received in got.values():
            assert sorted(set(received)) == received  # once each, in position order
    for model, target in zip(models, targets, strict=True):
        for sub_id, msub in model.subs.items():
            sub = subs[target.conn_id, sub_id]
            assert (msub.live, msub.after) == (sub.live, sub.after)
    return routed


# --- hypothesis ----------------------------------------------------------------------------
# Strategies are built once at module level: building them inside a composite per draw costs
# more than the routing under test.

values = st.sampled_from(VALUES)
raw_filters = st.none() | st.dictionaries(
    st.sampled_from(COLUMNS),
    values | st.builds(lambda vs: {"in": vs}, st.lists(values, min_size=1, max_size=3)),
    max_size=2,
)
OP_SETS: tuple[frozenset[str], ...] = (
    OPS,
    OPS,
    frozenset({"INSERT"}),
    frozenset({"UPDATE", "DELETE"}),
    frozenset(),
)
sub_specs = st.builds(
    SubSpec,
    id=st.sampled_from(SUB_IDS),
    table=st.sampled_from(TABLES),
    schema=st.none() | st.sampled_from(SCHEMAS),
    ops=st.sampled_from(OP_SETS),
    filter=raw_filters,
    live=st.sampled_from((True, True, False)),
    after=st.integers(-3, 2),  # relative to the position when subscribed: see scenarios()
)
connects = st.builds(
    Connect, st.sampled_from(USERS), st.lists(sub_specs, min_size=1, max_size=3).map(tuple)
)
columns = st.sampled_from(("id", *COLUMNS))


@dataclass(frozen=True)
class RouteStep:
    """A Route before positions are assigned: ``step`` from the previous position."""

    step: int
    table: str
    schema: str
    op: Op
    truncated: bool
    audience: frozenset[str]
    pk: dict[str, JSONValue]
    row: dict[str, JSONValue]


def _dicts(pool: Sequence[JSONValue], sizes: range) -> list[dict[str, JSONValue]]:
    """Every dict over ("id", *COLUMNS) with values from pool and a size in sizes, smallest first."""
    names = ("id", *COLUMNS)
    out: list[dict[str, JSONValue]] = []
    for size in sizes:
        for keys in itertools.combinations(names, size):
            out += [
                dict(zip(keys, vals, strict=True)) for vals in itertools.product(pool, repeat=size)
            ]
    return out


# Each field is one choice from a precomputed pool (smallest first, so shrinking simplifies):
# drawing dicts and sets element by element made generation cost ~2 ms per event.
AUDIENCES = sorted(
    (
        frozenset(c)
        for n in range(len(AUDIENCE_POOL) + 1)
        for c in itertools.combinations(AUDIENCE_POOL, n)
    ),
    key=len,
)
# step, table, schema, op and truncated in one choice; steps of 0 and -2 repeat old positions.
SHAPES = list(
    itertools.product(
        (1, 1, 1, 1, 1, 1, 1, 2, 0, -2), TABLES, SCHEMAS, OP_LIST, (False,) * 9 + (True,)
    )
)


def _route_step(
    shape: tuple[int, str, str, Op, bool],
    audience: frozenset[str],
    pk: dict[str, JSONValue],
    row: dict[str, JSONValue],
) -> RouteStep:
    return RouteStep(*shape, audience, pk, row)


route_steps = st.builds(
    _route_step,
    st.sampled_from(SHAPES),
    st.sampled_from(AUDIENCES),
    st.sampled_from(_dicts(VALUES, range(1, 3))),
    st.sampled_from(_dicts(ROW_VALUES, range(4))),
)
conn_indexes = st.integers(0, 7)
sub_ids = st.sampled_from(SUB_IDS)
# Routes weighted 10 to 6 against the index changes (one_of would weight its branches evenly).
STEP_KINDS: tuple[st.SearchStrategy[RouteStep | Action], ...] = (
    *[route_steps] * 10,
    connects,
    st.builds(Remove, conn_indexes),
    st.builds(Subscribe, conn_indexes, sub_specs),
    st.builds(Unsubscribe, conn_indexes, sub_ids),
    *[st.builds(GoLive, conn_indexes, sub_ids, st.integers(-2, 2))] * 2,
)
steps = st.sampled_from(STEP_KINDS).flatmap(lambda kind: kind)


def rebase(spec: SubSpec, pos: int) -> SubSpec:
    """A drawn spec's ``after`` is relative to the position where it subscribes."""
    return replace(spec, after=max(0, pos + spec.after))


@st.composite
def scenarios(draw: st.DrawFn, min_steps: int, max_steps: int) -> Scenario:
    head = draw(st.integers(0, 3))
    actions: list[Action] = [
        Connect(c.user, tuple(rebase(spec, head) for spec in c.subs))
        for c in draw(st.lists(connects, min_size=2, max_size=6))
    ]
    pos = head
    for step in draw(st.lists(steps, min_size=min_steps, max_size=max_steps)):
        if isinstance(step, Connect):
            actions.append(Connect(step.user, tuple(rebase(spec, pos) for spec in step.subs)))
            continue
        if isinstance(step, Subscribe):
            actions.append(Subscribe(step.conn, rebase(step.sub, pos)))
            continue
        if not isinstance(step, RouteStep):
            actions.append(step)
            continue
        pos = max(0, pos + step.step)
        event = make_event(
            pos,
            audience=step.audience,
            table=step.table,
            schema=step.schema,
            op=step.op,
            pk=step.pk,
            row=step.row,
            truncated=step.truncated,
        )
        actions.append(Route(event))
    return Scenario(head, tuple(actions))


@pytest.mark.timeout(900 if LONG else 120)  # long mode takes a minute or two
def test_router_agrees_with_the_oracle() -> None:
    """Random scenarios: every subscription gets exactly the matching events, once, in order."""
    total = 0

    @settings(
        max_examples=1000 if LONG else 300,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(scenarios(50, 250) if LONG else scenarios(10, 60))
    def check(scenario: Scenario) -> None:
        nonlocal total
        total += run_scenario(scenario)

    check()
    while LONG and total < LONG_EVENTS:  # each call is a fresh batch of random examples
        check()
    if LONG:
        assert total >= LONG_EVENTS


# --- deterministic volume ------------------------------------------------------------------


def random_filter(rng: random.Random) -> object:
    if rng.random() < 0.3:
        return None
    raw: dict[str, object] = {}
    for column in rng.sample(COLUMNS, rng.randint(1, len(COLUMNS))):
        if rng.random() < 0.5:
            raw[column] = rng.choice(VALUES)
        else:
            raw[column] = {"in": [rng.choice(VALUES) for _ in range(rng.randint(1, 3))]}
    return raw


def random_spec(rng: random.Random, head: int) -> SubSpec:
    return SubSpec(
        id=rng.choice(SUB_IDS),
        table=rng.choice(TABLES),
        schema=rng.choice((None, *SCHEMAS)),
        ops=frozenset(rng.sample(OP_LIST, rng.randint(0, 3))),
        filter=random_filter(rng),
        live=rng.random() < 0.7,
        after=max(0, head + rng.randint(-3, 3)),
    )


def random_row(rng: random.Random, size: int, pool: Sequence[JSONValue]) -> Mapping[str, JSONValue]:
    return {c: rng.choice(pool) for c in rng.sample(("id", *COLUMNS), size)}


def random_scenario(rng: random.Random, n_events: int) -> Scenario:
    users = [f"u{i}" for i in range(12)]
    actions: list[Action] = [
        Connect(rng.choice(users), tuple(random_spec(rng, 0) for _ in range(rng.randint(0, 3))))
        for _ in range(20)
    ]
    pos = top = routed = 0
    while routed < n_events:
        roll = rng.random()
        conn = rng.randrange(1000)
        if roll < 0.9:
            step = rng.choice((-1, 0, 1, 1, 1, 2, 5))
            pos = max(0, pos + step)
            if pos > top:  # a new position, not a repeat the router ignores
                top, routed = pos, routed + 1
            event = make_event(
                pos,
                audience=rng.sample([*users, "outsider"], rng.randint(0, 5)),
                table=rng.choice(TABLES),
                schema=rng.choice(SCHEMAS),
                op=rng.choice(OP_LIST),
                pk=random_row(rng, rng.randint(1, 2), VALUES),
                row=random_row(rng, rng.randint(0, 3), ROW_VALUES),
                truncated=rng.random() < 0.05,
            )
            actions.append(Route(event))
        elif roll < 0.92:
            specs = tuple(random_spec(rng, pos) for _ in range(rng.randint(0, 3)))
            actions.append(Connect(rng.choice(users), specs))
        elif roll < 0.94:
            actions.append(Remove(conn))
        elif roll < 0.96:
            actions.append(Subscribe(conn, random_spec(rng, pos)))
        elif roll < 0.98:
            actions.append(Unsubscribe(conn, rng.choice(SUB_IDS)))
        else:
            actions.append(GoLive(conn, rng.choice(SUB_IDS), rng.randint(-1, 2)))
    return Scenario(0, tuple(actions))


def test_twenty_thousand_seeded_events_agree_with_the_oracle() -> None:
    """20,000 seeded random events over 12 users route exactly as the brute-force oracle says."""
    assert 20_000 <= run_scenario(random_scenario(random.Random(20260101), 20_000))


def test_oracle_is_not_vacuous() -> None:
    """The seeded scenario makes many deliveries and skips many events (the oracle bites)."""
    scenario = random_scenario(random.Random(7), 2_000)
    router_deliveries = 0
    router = Router()
    targets: list[Recorder] = []
    for action in scenario.actions:
        if isinstance(action, Connect):
            targets.append(Recorder(action.user, f"c{len(targets)}"))
            router.add(targets[-1])
            for spec in action.subs:
                router.subscribe(targets[-1], spec.build())
        elif isinstance(action, Route):
            router_deliveries += router.route(action.event, float(action.event.pos)).delivered
    routes = sum(isinstance(a, Route) for a in scenario.actions)
    assert 200 < router_deliveries < routes * 10
