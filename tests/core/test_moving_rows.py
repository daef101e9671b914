"""Views that stay true: rows moving between owners, audiences and filters, through the router and
the catch-up, against a model database.

A seeded random workload writes two tables: ``t1`` has an owner column the whitelist leaves out
(``id, a, b`` are carried), ``t2`` an audience function of its ``team`` column (every column is
carried). Writes INSERT, DELETE and UPDATE rows, changing owners, teams, filtered columns and
keys; each makes the event ``sql/install.sql`` would capture (old values of the changed carried
columns, the old audience when it differs, now and then truncated). Users connect with
subscriptions (filters on ``a``, ``b``, ``id`` or none), go away and resume from their cursors
through ``Catchup`` (pages of random size, writes in between), subscribe anew after a fetch.

Each subscription keeps the view a client builds from the frames it gets: an INSERT adds the row,
a DELETE removes it, an UPDATE replaces it (under its new key); a truncated row is fetched again
at the end, as a client fetches it by key. At the end every subscription's view must equal the
database's rows its user may see and its filter matches, and no frame may ever carry a row's
values to a user outside that row's audience. Set RELAY_LONG_PROPERTY=1 for 100,000+ events.
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest

from relay.core.catchup import Catchup, Live, ReadPage
from relay.core.cursor import Cursor
from relay.core.events import OPS, Event, Op
from relay.core.filters import RowFilter
from relay.core.log import LogState, ReplayPage
from relay.core.router import Router
from relay.core.subscription import Subscription
from tests.support.factories import COMMITTED_AT

LONG = os.environ.get("RELAY_LONG_PROPERTY") == "1"
LONG_EVENTS = 100_000
EPOCH = "a" * 32
USERS = tuple(f"u{i}" for i in range(6))
OWNERS = (*USERS, "outsider", None)
TEAMS: Mapping[int, frozenset[str]] = {
    0: frozenset({"u0", "u1"}),
    1: frozenset({"u1", "u2", "u3"}),
    2: frozenset(),
    3: frozenset({"u0", "u4", "u5", "outsider"}),
}
VALUES: tuple[Any, ...] = (0, 1, 2, None, "x")
IDS = range(1, 31)
CARRIED = {"t1": ("id", "a", "b"), "t2": ("id", "team", "a", "b")}
Row = dict[str, Any]


def audience(table: str, row: Row) -> frozenset[str]:
    if table == "t1":
        return frozenset() if row["owner"] is None else frozenset({row["owner"]})
    return TEAMS[row["team"]]


def carried(table: str, row: Row) -> Row:
    return {column: row[column] for column in CARRIED[table]}


def json_eq(a: object, b: object) -> bool:
    return type(a) is type(b) and a == b


def passes(raw: object, row: Row) -> bool:
    """The model's filter: every condition holds on the carried row (all keys are carried)."""
    if raw is None:
        return True
    assert isinstance(raw, dict)
    for column, condition in raw.items():
        options = condition["in"] if isinstance(condition, dict) else [condition]
        if not any(json_eq(row[column], option) for option in options):
            return False
    return True


# --- the database and what capture makes of its writes --------------------------------------


@dataclass
class Database:
    rows: dict[tuple[str, int], Row] = field(default_factory=dict)
    log: list[Event] = field(default_factory=list)

    def view(self, user: str, table: str, raw: object) -> dict[int, Row]:
        """The rows of ``table`` the user may see that the filter matches, as events carry them."""
        return {
            key: carried(table, row)
            for (name, key), row in self.rows.items()
            if name == table and user in audience(table, row) and passes(raw, carried(table, row))
        }

    def write(self, rng: random.Random) -> Event | None:
        """One random write; the event capture appends to the log (None: no event)."""
        table = rng.choice(("t1", "t2"))
        ids = [key for name, key in self.rows if name == table]
        free = [key for key in IDS if (table, key) not in self.rows]
        roll = rng.random()
        if (roll < 0.3 or not ids) and free:
            new = {"id": rng.choice(free), "a": rng.choice(VALUES), "b": rng.choice(VALUES)}
            new |= (
                {"owner": rng.choice(OWNERS)}
                if table == "t1"
                else {"team": rng.choice(list(TEAMS))}
            )
            self.rows[table, new["id"]] = new
            return self._capture(table, "INSERT", None, new, rng)
        if not ids:
            return None
        old = self.rows[table, rng.choice(ids)]
        if roll < 0.4:
            del self.rows[table, old["id"]]
            return self._capture(table, "DELETE", old, None, rng)
        new = dict(old)
        for _ in range(rng.choice((1, 1, 2))):
            column = rng.choice(("owner" if table == "t1" else "team", "a", "b", "b", "id"))
            if column == "owner":
                new["owner"] = rng.choice(OWNERS)
            elif column == "team":
                new["team"] = rng.choice(list(TEAMS))
            elif column == "id" and free and rng.random() < 0.3:
                new["id"] = rng.choice(free)
            elif column in ("a", "b"):
                new[column] = rng.choice(VALUES)
        del self.rows[table, old["id"]]
        self.rows[table, new["id"]] = new
        return self._capture(table, "UPDATE", old, new, rng)

    def _capture(
        self, table: str, op: Op, old: Row | None, new: Row | None, rng: random.Random
    ) -> Event | None:
        source = new if new is not None else old
        assert source is not None
        row = carried(table, source)
        who = audience(table, source)
        old_key = None if old is None else {"id": old["id"]}
        changed: tuple[str, ...] = ()
        old_values: Row | None = None
        old_audience: frozenset[str] | None = None
        if op == "UPDATE":
            assert old is not None
            before, before_who = carried(table, old), audience(table, old)
            if row == before and who == before_who:
                return None  # nothing carried changed, nor the audience: no event
            changed = tuple(sorted(c for c in row if not json_eq(row[c], before[c])))
            old_values = {c: before[c] for c in changed}
            old_audience = None if before_who == who else before_who
        truncated = rng.random() < 0.03
        event = Event(
            pos=len(self.log) + 1,
            schema="public",
            table=table,
            op=op,
            pk={"id": source["id"]},
            row=None if truncated else row,
            old_key=old_key,
            changed=changed,
            audience=who,
            committed_at=COMMITTED_AT,
            truncated=truncated,
            old_values=None if truncated else old_values,
            old_audience=old_audience,
        )
        self.log.append(event)
        return event


# --- clients --------------------------------------------------------------------------------


@dataclass
class View:
    """One subscription as its client sees it: the rows it holds, and keys to fetch again."""

    table: str
    raw: object
    ops: frozenset[str]
    rows: dict[int, Row] = field(default_factory=dict)
    stale: set[int] = field(default_factory=set)
    after: int = 0

    def apply(self, user: str, form: Event, exact: bool) -> None:
        """Applies one frame. ``exact``: it comes of an event whose values were carried, so it
        names only rows the view holds (UPDATE, DELETE) or does not hold (INSERT); a truncated
        one may not (its filter is checked on the key only)."""
        assert form.op in self.ops and form.table == self.table
        if form.row is not None:  # never a row's values to a user outside its audience
            assert user in form.audience, (user, form)
        if form.moved == "out":
            assert (form.row, form.changed, form.pk) == (None, (), form.old_key)
        self.after = form.pos
        key = form.pk["id"]
        if exact and self.ops == OPS:  # a view missing some ops cannot know what it holds
            held = self.rows.keys() | self.stale
            if form.op == "INSERT":
                assert key not in self.rows, form
            else:
                assert (form.pk if form.old_key is None else form.old_key)["id"] in held, form
        if form.op == "DELETE":
            self.rows.pop(key, None)
            self.stale.discard(key)
            return
        if form.op == "UPDATE" and form.old_key is not None and form.old_key != form.pk:
            self.rows.pop(form.old_key["id"], None)
            self.stale.discard(form.old_key["id"])
        if form.row is None:
            self.rows.pop(key, None)
            self.stale.add(key)  # truncated: the client fetches the row by its key
        else:
            self.rows[key] = dict(form.row)
            self.stale.discard(key)

    def settle(self, db: Database, user: str) -> dict[int, Row]:
        """The view once the client has fetched its truncated rows again (through the app's API,
        which applies the same access and filter)."""
        for key in self.stale:
            row = db.rows.get((self.table, key))
            if (
                row is not None
                and user in audience(self.table, row)
                and passes(self.raw, carried(self.table, row))
            ):
                self.rows[key] = carried(self.table, row)
            else:
                self.rows.pop(key, None)
        return self.rows


@dataclass(eq=False)
class Client:
    """A connection: the router's target, applying each offer to the subscription's view."""

    user: str
    conn_id: str
    views: dict[str, View] = field(default_factory=dict)

    log: list[Event] = field(default_factory=list)

    def offer(self, sub: Subscription, event: Event, now: float) -> bool:
        self.views[sub.id].apply(self.user, event, not self.log[event.pos - 1].truncated)
        return False


def random_filter(rng: random.Random) -> object:
    kind = rng.random()
    if kind < 0.2:
        return None
    if kind < 0.5:
        return {"a": rng.choice(VALUES)}
    if kind < 0.7:
        return {"b": {"in": rng.sample(VALUES, 2)}}
    if kind < 0.9:
        return {"a": rng.choice(VALUES), "b": rng.choice(VALUES)}
    return {"id": {"in": rng.sample(list(IDS), 5)}}


@dataclass
class World:
    rng: random.Random
    db: Database = field(default_factory=Database)
    router: Router = field(default_factory=Router)
    live: list[Client] = field(default_factory=list)
    away: list[Client] = field(default_factory=list)
    routed: int = 0
    moves: int = 0
    resumes: int = 0

    def write(self) -> None:
        event = self.db.write(self.rng)
        if event is not None:
            self.routed += 1
            self.moves += event.op == "UPDATE" and (
                event.old_audience is not None or bool(set(event.changed) & {"a", "b", "id"})
            )
            self.router.route(event, 0.0)

    def subscribe(self, client: Client, sub_id: str) -> None:
        """Subscribe live at the head, then fetch: the view starts as the database's."""
        table, raw = self.rng.choice(("t1", "t2")), random_filter(self.rng)
        ops = OPS if self.rng.random() < 0.85 else frozenset(self.rng.sample(sorted(OPS), 2))
        head = self.router.head
        sub = Subscription(sub_id, table, None, ops, RowFilter.parse(raw), after=head, live=True)
        self.router.subscribe(client, sub)
        client.views[sub_id] = View(
            table, raw, ops, self.db.view(client.user, table, raw), after=head
        )

    def connect(self, user: str) -> None:
        client = Client(user, f"c{self.rng.getrandbits(48):x}", log=self.db.log)
        self.router.add(client)
        for n in range(self.rng.randint(1, 3)):
            self.subscribe(client, f"s{n}")
        self.live.append(client)

    def leave(self) -> None:
        client = self.live.pop(self.rng.randrange(len(self.live)))
        self.router.remove(client)
        self.away.append(client)

    def resume(self) -> None:
        """A client back from away: each subscription catches up from its cursor, in pages,
        with writes routed meanwhile, then goes live."""
        old = self.away.pop(self.rng.randrange(len(self.away)))
        client = Client(old.user, f"c{self.rng.getrandbits(48):x}", old.views, self.db.log)
        self.router.add(client)
        self.live.append(client)
        self.resumes += 1
        for sub_id, view in client.views.items():
            sub = Subscription(sub_id, view.table, None, view.ops, RowFilter.parse(view.raw),
                               after=view.after, live=False)  # fmt: skip
            self.router.subscribe(client, sub)
            catchup = Catchup(self.router, client, sub, Cursor(EPOCH, view.after),
                              limit=self.rng.randint(1, 40), hold=self.rng.choice((None, 0, 2)))  # fmt: skip
            state = LogState(EPOCH, self.router.head, 0, notify=True)
            step = catchup.start(state, 0.0)
            while isinstance(step, ReadPage):
                # Positions are gap-free from 1: the events in (after, upto] are log[after:upto].
                page = self.db.log[step.after : min(step.upto, step.after + step.limit)]
                scanned = page[-1].pos if len(page) == step.limit else step.upto
                for form in catchup.feed(ReplayPage(page, scanned)):
                    view.apply(client.user, form, not self.db.log[form.pos - 1].truncated)
                if self.rng.random() < 0.3:
                    self.write()  # routed while the catch-up is between pages
                step = catchup.next(0.0)
            assert isinstance(step, Live)
            for form in step.events:  # held while catching up: routed between the pages
                view.apply(client.user, form, not self.db.log[form.pos - 1].truncated)
            view.after = step.after


def run(seed: int, events: int) -> World:
    world = World(random.Random(seed))
    for user in USERS:
        for _ in range(world.rng.randint(1, 2)):
            world.connect(user)
    while world.routed < events:
        roll = world.rng.random()
        if roll < 0.9 or not world.live:
            world.write()
        elif roll < 0.93:
            world.leave()
        elif roll < 0.96 and world.away:
            world.resume()
        elif roll < 0.98:
            client = world.rng.choice(world.live)
            world.subscribe(client, world.rng.choice(("s0", "s1", "s2", "s3")))
        else:
            world.connect(world.rng.choice(USERS))
    while world.away:
        world.resume()
    for client in world.live:
        for view in client.views.values():
            if view.ops == OPS:
                assert world.db.view(client.user, view.table, view.raw) == view.settle(
                    world.db, client.user
                )
    return world


@pytest.mark.timeout(900 if LONG else 120)
def test_every_view_ends_as_the_databases() -> None:
    """Seeded workloads of moving rows (100,000+ events in the long version, 6,000 in the short):
    every subscription's reconstructed view equals the database's view of its rows at the end,
    live and resumed alike, and no value reached a user outside its row's audience."""
    total, seed = 0, 0
    while total < (LONG_EVENTS if LONG else 6_000):
        world = run(seed, 15_000 if LONG else 3_000)
        assert world.moves > world.routed // 5 and world.resumes > 10
        total += world.routed
        seed += 1
