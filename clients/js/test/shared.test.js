// One socket per browser (src/shared.js): tabs as clients in one process, with a Web Locks fake,
// Node's BroadcastChannel and a fake relay on the other end of the one websocket.
import assert from 'node:assert/strict';
import test from 'node:test';
import { createClient } from '../src/index.js';
import { cursor, fakeSockets, unsignedToken } from '../testlib/fakes.js';
import { FakeLocks, fakeTab, settle } from '../testlib/tabs.js';

const hour = () => (Date.now() + 3_600_000) / 1000;
const tokenOf = (sub, extra = {}) => unsignedToken({ sub, exp: hour(), ...extra });

/** A browser: tabs sharing one lock manager and the fake relay's sockets. */
function browser() {
  const locks = new FakeLocks();
  const { FakeWebSocket, sockets } = fakeSockets();
  const tabs = [];
  const open = (name, { user = 'alice', token, ...options } = {}) => {
    const tab = fakeTab(locks, name);
    const seen = { states: [], errors: [] };
    tab.client = createClient({
      url: 'https://relay.test',
      token: token ?? (() => tokenOf(user, { tab: name })),
      WebSocket: FakeWebSocket,
      onState: (s) => seen.states.push(s),
      onError: (e) => seen.errors.push(e),
      ...tab.options,
      ...options,
    });
    tab.seen = seen;
    tabs.push(tab);
    return tab;
  };
  const closeAll = () => tabs.forEach((t) => t.client.close());
  return { locks, sockets, open, closeAll };
}

function collect(client, table, options = {}) {
  const got = { events: [], subscribed: [], resets: [], errors: [] };
  got.cursors = () => got.events.map((e) => e.cursor);
  got.unsubscribe = client.subscribe(table, options, {
    onEvent: (e) => got.events.push(e),
    onSubscribed: (s) => got.subscribed.push(s),
    onReset: (r) => got.resets.push(r),
    onError: (e) => got.errors.push(e),
  });
  return got;
}

/** The relay's side: which table each subscription id on a socket is for. */
const subscriptions = (socket) => new Map(socket.of('subscribe').map((m) => [m.id, m]));
const idFor = (socket, table, filter) =>
  socket.of('subscribe').filter((m) => m.table === table && JSON.stringify(m.filter) === JSON.stringify(filter)).at(-1).id;
const frame = (sub, pos, table = 'thumbnails') => ({
  type: 'event', sub, cursor: cursor(pos), schema: 'public', table, op: 'INSERT',
  pk: { id: pos }, row: { id: pos }, changed: [], ts: '2025-01-01T00:00:00+00:00',
});

test('three tabs of one user share one socket, and each gets the events of its subscriptions only', async () => {
  const { sockets, open, closeAll } = browser();
  const [t1, t2, t3] = ['t1', 't2', 't3'].map((name) => open(name));
  await settle();
  assert.deepEqual([t1, t2, t3].map((t) => t.client.tabRole), ['leader', 'follower', 'follower']);
  assert.equal(sockets.length, 1);
  const a = collect(t1.client, 'thumbnails');
  const b = collect(t2.client, 'thumbnails', { filter: { project_id: 'p2' } });
  const c = collect(t3.client, 'generations');
  await sockets[0].accept();
  await settle();
  const socket = sockets[0];
  assert.equal(subscriptions(socket).size, 3);
  assert.deepEqual(JSON.parse(atob(socket.sent[0].token.split('.')[1])).tab, 't1'); // the leader's own
  const ids = [idFor(socket, 'thumbnails'), idFor(socket, 'thumbnails', { project_id: 'p2' }), idFor(socket, 'generations')];
  ids.forEach((id, n) => socket.receive({ type: 'subscribed', id, cursor: cursor(n) }));
  socket.receive(frame(ids[0], 10));
  socket.receive(frame(ids[1], 11));
  socket.receive(frame(ids[0], 12));
  socket.receive(frame(ids[2], 13, 'generations'));
  await settle();
  assert.deepEqual(a.cursors(), [cursor(10), cursor(12)]);
  assert.deepEqual(b.cursors(), [cursor(11)]);
  assert.deepEqual(c.cursors(), [cursor(13)]);
  assert.equal(b.events[0].sub, undefined);
  assert.deepEqual([a, b, c].map((g) => g.subscribed.length), [1, 1, 1]);
  assert.deepEqual([t1, t2, t3].map((t) => t.client.state), ['live', 'live', 'live']);
  assert.ok(t2.client.lastEventAt > 0 && t3.client.lastEventAt > 0);
  // A follower's unsubscribe reaches the relay; its later events would have nowhere to go.
  b.unsubscribe();
  await settle();
  assert.deepEqual(socket.of('unsubscribe'), [{ type: 'unsubscribe', id: ids[1] }]);
  closeAll();
});

test('the leader crashes mid-stream: the next tab leads and resumes every subscription exactly', async () => {
  const { sockets, open, closeAll, locks } = browser();
  const [t1, t2, t3] = ['t1', 't2', 't3'].map((name) => open(name));
  await settle();
  const a = collect(t1.client, 'thumbnails');
  const b = collect(t2.client, 'thumbnails');
  const c = collect(t3.client, 'thumbnails', { filter: { project_id: 'p3' } });
  await sockets[0].accept();
  await settle();
  const first = sockets[0];
  const [idA, idB, idC] = [...subscriptions(first).values()].map((m) => m.id);
  for (const pos of [1, 2, 3]) first.receive(frame(idB, pos));
  first.receive(frame(idC, 2));
  first.receive(frame(idA, 3));
  await settle();
  t1.crash();
  first.readyState = 3; // the browser closes a crashed tab's socket
  await settle();
  assert.equal(t2.client.tabRole, 'leader');
  assert.equal(locks.holder([...locks.held.keys()].find((n) => !n.includes('#'))), 't2');
  assert.equal(sockets.length, 2);
  const second = sockets[1];
  await second.accept();
  await settle();
  const resumed = [...subscriptions(second).values()];
  assert.deepEqual(resumed.map((m) => [m.table, m.filter, m.since]).sort(), [
    ['thumbnails', undefined, cursor(3)],
    ['thumbnails', { project_id: 'p3' }, cursor(2)],
  ].sort());
  const newB = resumed.find((m) => !m.filter).id;
  const newC = resumed.find((m) => m.filter).id;
  for (const pos of [4, 5]) second.receive(frame(newB, pos));
  second.receive(frame(newC, 5));
  await settle();
  assert.deepEqual(b.cursors(), [1, 2, 3, 4, 5].map(cursor));
  assert.deepEqual(c.cursors(), [2, 5].map(cursor));
  assert.deepEqual(a.cursors(), [cursor(3)]);
  assert.deepEqual([t2, t3].map((t) => t.client.state), ['live', 'live']);
  assert.deepEqual(t3.seen.states, ['live', 'reconnecting', 'live'].slice(0, t3.seen.states.length));
  closeAll();
});

test('a leader that closes resigns; a follower that closes loses its subscriptions at the relay', async () => {
  const { sockets, open, closeAll } = browser();
  const [t1, t2, t3] = ['t1', 't2', 't3'].map((name) => open(name));
  await settle();
  collect(t1.client, 'thumbnails');
  collect(t2.client, 'thumbnails');
  const c = collect(t3.client, 'generations');
  await sockets[0].accept();
  await settle();
  t2.client.close();
  await settle();
  assert.equal(sockets[0].of('unsubscribe').length, 1);
  assert.equal(t2.client.tabRole, 'closed');
  t1.client.close();
  await settle();
  assert.equal(sockets[0].closedWith.reason, 'client_closed');
  assert.equal(t3.client.tabRole, 'leader');
  assert.equal(sockets.length, 2);
  await sockets[1].accept();
  await settle();
  assert.deepEqual([...subscriptions(sockets[1]).values()].map((m) => m.table), ['generations']);
  assert.equal(c.subscribed.length, 0); // not confirmed by either relay socket yet
  closeAll();
});

test('tabs of another user get a socket of their own and never the first user’s events', async () => {
  const { sockets, open, closeAll } = browser();
  const alice = open('a1');
  const bob = open('b1', { user: 'bob' });
  const alice2 = open('a2');
  await settle();
  assert.deepEqual([alice, bob, alice2].map((t) => t.client.tabRole), ['leader', 'leader', 'follower']);
  assert.equal(sockets.length, 2);
  const gotAlice = collect(alice2.client, 'thumbnails');
  const gotBob = collect(bob.client, 'thumbnails');
  for (const socket of sockets) await socket.accept();
  await settle();
  const aliceSocket = sockets.find((s) => JSON.parse(atob(s.sent[0].token.split('.')[1])).sub === 'alice');
  const bobSocket = sockets.find((s) => s !== aliceSocket);
  aliceSocket.receive(frame(aliceSocket.of('subscribe')[0].id, 7));
  bobSocket.receive(frame(bobSocket.of('subscribe')[0].id, 8));
  await settle();
  assert.deepEqual(gotAlice.cursors(), [cursor(7)]);
  assert.deepEqual(gotBob.cursors(), [cursor(8)]);
  closeAll();
});

test('a leader whose provider fails (or turns to another user) borrows a follower’s token', async () => {
  const { sockets, open, closeAll } = browser();
  let calls = 0;
  const leader = open('t1', {
    random: () => 0,
    token: () => {
      calls += 1;
      if (calls === 1) return tokenOf('alice', { tab: 't1' });
      if (calls === 2) return tokenOf('mallory', { tab: 't1' });
      throw new Error('signed out');
    },
  });
  open('t2');
  // The first borrow may ask before t2 listens: the leader's socket then retries (backoff 0).
  const deadline = Date.now() + 5_000;
  let auth;
  while (!(auth = sockets.map((s) => (s.readyState === 0 && s.open(), s.sent[0])).find(Boolean))) {
    assert.ok(Date.now() < deadline, 'no socket got a token');
    await settle();
  }
  assert.equal(JSON.parse(atob(auth.token.split('.')[1])).tab, 't2');
  assert.equal(leader.client.tabRole, 'leader');
  assert.ok(calls >= 2);
  closeAll();
});

test('shareTabs: false, or no Web Locks, or a token without a user: a socket per tab', async () => {
  const { sockets, open, closeAll } = browser();
  const off = [open('t1', { shareTabs: false }), open('t2', { shareTabs: false })];
  await settle();
  assert.equal(sockets.length, 2);
  assert.deepEqual(off.map((t) => t.client.tabRole), ['solo', 'solo']);
  const noLocks = open('t3', { locks: null });
  assert.equal(noLocks.client.tabRole, 'solo');
  assert.equal(sockets.length, 3);
  // An opaque token: the tab cannot tell its user, so it shares with nobody.
  const opaque = open('t4', { token: () => 'opaque-token' });
  const got = collect(opaque.client, 'thumbnails', { since: cursor(4) });
  await settle();
  assert.equal(opaque.client.tabRole, 'solo');
  assert.equal(sockets.length, 4);
  await sockets[3].accept();
  await settle();
  assert.deepEqual(sockets[3].of('subscribe'), [{ type: 'subscribe', id: 's1', table: 'thumbnails', since: cursor(4) }]);
  sockets[3].receive(frame('s1', 5));
  assert.deepEqual(got.cursors(), [cursor(5)]);
  assert.equal(opaque.client.state, 'live');
  closeAll();
  assert.equal(opaque.client.state, 'closed');
});

test('a follower asks the leader to retry now; watchState tells every change', async () => {
  const { sockets, open, closeAll } = browser();
  const t1 = open('t1');
  const t2 = open('t2');
  await settle();
  const states = [];
  const stop = t2.client.watchState((s) => states.push(s));
  await sockets[0].accept();
  await settle();
  sockets[0].serverClose(1006);
  await settle();
  t2.client.reconnect(); // instead of the leader's backoff
  await settle();
  assert.equal(sockets.length, 2);
  await sockets[1].accept();
  await settle();
  stop();
  t1.client.close();
  await settle();
  assert.deepEqual(states, ['live', 'reconnecting', 'live']);
  closeAll();
});
