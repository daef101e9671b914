// The multi-tab protocol's core (src/tabs.js) alone: messages in, actions out.
import assert from 'node:assert/strict';
import test from 'node:test';
import { TabCore, groupName, memberName } from '../src/tabs.js';
import { cursor } from '../testlib/fakes.js';

const spec = { table: 'thumbnails', filter: { project_id: 'p1' } };
const event = (pos) => ({ type: 'event', cursor: cursor(pos), table: 'thumbnails', op: 'INSERT', row: { id: pos } });
const posts = (actions) => actions.filter((a) => a.type === 'post').map((a) => [a.to, a.message]);
const of = (actions, type) => actions.filter((a) => a.type === type);

/** Leads `leader` (the lock granted at `now`) and has `follower` hear of it; returns what the
 * follower posted. */
function elect(leader, follower, now = 1_000) {
  const announced = posts(leader.lead(now)).find(([, m]) => m.t === 'leader')[1];
  return follower.receive(announced);
}

test('group names keep users and relays apart; a member name extends its group', () => {
  assert.notEqual(groupName('wss://r/v1', 'alice'), groupName('wss://r/v1', 'bob'));
  assert.notEqual(groupName('wss://r/v1', 'alice'), groupName('wss://q/v1', 'alice'));
  assert.equal(groupName('wss://r', 'a b/#'), 'pgrelay/1 wss://r a%20b%2F%23');
  assert.equal(memberName('g', 'm1'), 'g #m1');
});

test('a follower holds its subscriptions until it hears of a leader, then offers each', () => {
  const a = new TabCore('A');
  const b = new TabCore('B');
  assert.deepEqual(b.start(), [{ type: 'post', to: null, message: { t: 'hello', from: 'B' } }]);
  assert.deepEqual(b.subscribe('s1', spec), []);
  assert.deepEqual(b.subscribe('s2', { table: 'generations' }, cursor(7)), []);
  const actions = elect(a, b);
  assert.deepEqual(posts(actions), [
    [null, { t: 'sub', to: 'A', id: 's1', spec, since: null, from: 'B' }],
    [null, { t: 'sub', to: 'A', id: 's2', spec: { table: 'generations' }, since: cursor(7), from: 'B' }],
  ]);
  // A repeated announcement (the answer to another tab's hello) offers nothing again.
  assert.deepEqual(b.receive({ t: 'leader', from: 'A', state: 'live' }), [{ type: 'state', state: 'live' }]);
});

test('the leader connects, carries its own and its followers subscriptions, watches followers', () => {
  const a = new TabCore('A');
  a.subscribe('s1', spec, cursor(3));
  const led = a.lead(1_000);
  assert.deepEqual(led.map((x) => x.type), ['connect', 'inner-subscribe', 'post']);
  assert.deepEqual(led[1], { type: 'inner-subscribe', key: 'A s1', spec, since: cursor(3) });
  const from = (m) => a.receive({ ...m, from: 'B', to: 'A' });
  assert.deepEqual(from({ t: 'sub', id: 's1', spec, since: null }), [
    { type: 'watch', member: 'B' },
    { type: 'inner-subscribe', key: 'B s1', spec, since: null },
  ]);
  assert.deepEqual(from({ t: 'sub', id: 's2', spec, since: cursor(9) }), [
    { type: 'inner-subscribe', key: 'B s2', spec, since: cursor(9) },
  ]);
  assert.deepEqual(from({ t: 'unsub', id: 's1' }), [{ type: 'inner-unsubscribe', key: 'B s1' }]);
  assert.deepEqual(from({ t: 'unsub', id: 's2' }), [
    { type: 'unwatch', member: 'B' },
    { type: 'inner-unsubscribe', key: 'B s2' },
  ]);
  // Addressed to another leader, malformed, or from itself: ignored.
  assert.deepEqual(a.receive({ t: 'sub', from: 'B', to: 'Z', id: 's3', spec }), []);
  assert.deepEqual(a.receive({ t: 'sub', from: 'B', to: 'A', id: 's3', spec: { table: '' } }), []);
  assert.deepEqual(a.receive({ t: 'hello', from: 'A' }), []);
  assert.deepEqual(a.receive('junk'), []);
  assert.deepEqual(posts(a.receive({ t: 'hello', from: 'C' })), [[null, { t: 'leader', term: 1_000, state: 'connecting', from: 'A' }]]);
});

test('relay callbacks go to the subscribing member only, its own ones to its app', () => {
  const a = new TabCore('A');
  const b = new TabCore('B');
  a.subscribe('s1', spec);
  b.subscribe('s1', spec);
  for (const [, message] of posts(elect(a, b))) a.receive(message);
  assert.deepEqual(a.relay('A s1', 'event', { event: event(5) }), [
    { type: 'deliver', id: 's1', kind: 'event', payload: { event: event(5) } },
  ]);
  assert.equal(a.subs.get('s1').cursor, cursor(5));
  assert.deepEqual(posts(a.relay('B s1', 'event', { event: event(5) })), [
    ['B', { t: 'event', to: 'B', id: 's1', event: event(5), from: 'A' }],
  ]);
  assert.deepEqual(a.relay('C s1', 'event', { event: event(5) }), []); // no such route
  // An error ends the route (and the watch on a member left with none).
  assert.deepEqual(a.relay('B s1', 'error', { code: 'forbidden', message: 'no' }).map((x) => x.type), ['unwatch', 'post']);
  assert.deepEqual(a.relay('B s1', 'event', { event: event(6) }), []);
});

test('a follower delivers what its leader relays and moves its cursors on', () => {
  const b = new TabCore('B');
  b.subscribe('s1', spec);
  elect(new TabCore('A'), b);
  const relayed = (m) => b.receive({ ...m, from: 'A', to: 'B' });
  assert.deepEqual(relayed({ t: 'subscribed', id: 's1', cursor: cursor(4) }), [
    { type: 'deliver', id: 's1', kind: 'subscribed', payload: { cursor: cursor(4) } },
  ]);
  assert.equal(relayed({ t: 'event', id: 's1', event: event(6) })[0].payload.event.cursor, cursor(6));
  assert.deepEqual(relayed({ t: 'reset', id: 's1', reason: 'overflow', cursor: cursor(9) }), [
    { type: 'deliver', id: 's1', kind: 'reset', payload: { reason: 'overflow', cursor: cursor(9) } },
  ]);
  assert.equal(b.subs.get('s1').cursor, cursor(9));
  assert.deepEqual(relayed({ t: 'event', id: 's9', event: event(10) }), []); // not subscribed
  assert.deepEqual(b.receive({ t: 'event', from: 'A', to: 'C', id: 's1', event: event(10) }), []);
  assert.deepEqual(b.receive({ t: 'event', from: 'X', to: 'B', id: 's1', event: event(10) }), []);
  assert.deepEqual(relayed({ t: 'error', id: 's1', code: 'forbidden', message: 'no' }), [
    { type: 'deliver', id: 's1', kind: 'error', payload: { code: 'forbidden', message: 'no' } },
  ]);
  assert.equal(b.subs.size, 0);
});

test('a new leader gets each subscription from its last delivered cursor; the old one is ignored', () => {
  const a = new TabCore('A');
  const b = new TabCore('B');
  const c = new TabCore('C');
  b.subscribe('s1', spec);
  elect(a, b);
  b.receive({ t: 'event', from: 'A', to: 'B', id: 's1', event: event(11) });
  // A crashes; C leads, B hears of it before A's last frames come in.
  const offered = elect(c, b, 2_000);
  assert.deepEqual(posts(offered), [[null, { t: 'sub', to: 'C', id: 's1', spec, since: cursor(11), from: 'B' }]]);
  assert.deepEqual(b.receive({ t: 'event', from: 'A', to: 'B', id: 's1', event: event(12) }), []);
  assert.equal(b.receive({ t: 'event', from: 'C', to: 'B', id: 's1', event: event(12) }).length, 1);
  assert.equal(b.subs.get('s1').cursor, cursor(12));
});

test('a follower that leads moves its own subscriptions over from their cursors', () => {
  const b = new TabCore('B');
  b.subscribe('s1', spec);
  elect(new TabCore('A'), b);
  b.receive({ t: 'event', from: 'A', to: 'B', id: 's1', event: event(20) });
  const led = b.lead(900); // a clock behind the old leader's: the term still goes up
  assert.equal(b.term, 1_001);
  assert.deepEqual(of(led, 'inner-subscribe'), [{ type: 'inner-subscribe', key: 'B s1', spec, since: cursor(20) }]);
  assert.deepEqual(b.receive({ t: 'event', from: 'A', to: 'B', id: 's1', event: event(21) }), []);
});

test('states: the leader broadcasts its socket state; followers wait for the next after a resign', () => {
  const a = new TabCore('A');
  const b = new TabCore('B');
  elect(a, b);
  assert.deepEqual(posts(a.innerState('live')), [[null, { t: 'state', state: 'live', from: 'A' }]]);
  assert.deepEqual(a.innerState('live'), []);
  assert.deepEqual(b.receive({ t: 'state', from: 'A', state: 'live' }), [{ type: 'state', state: 'live' }]);
  assert.deepEqual(b.receive({ t: 'state', from: 'X', state: 'offline' }), []);
  const closing = a.close();
  assert.deepEqual(closing.map((x) => x.type), ['post', 'disconnect', 'state']);
  assert.deepEqual(b.receive(closing[0].message), [{ type: 'state', state: 'reconnecting' }]);
  assert.equal(b.leader, null);
  assert.deepEqual(a.receive({ t: 'hello', from: 'B' }), []); // closed
});

test('a gone follower loses every route; wake and tokens go to the right member', () => {
  const a = new TabCore('A');
  a.lead(1_000);
  a.receive({ t: 'sub', from: 'B', to: 'A', id: 's1', spec });
  a.receive({ t: 'sub', from: 'B', to: 'A', id: 's2', spec });
  assert.deepEqual(a.memberGone('B'), [
    { type: 'inner-unsubscribe', key: 'B s1' },
    { type: 'unwatch', member: 'B' },
    { type: 'inner-unsubscribe', key: 'B s2' },
  ]);
  assert.equal(a.routes.size, 0);
  assert.deepEqual(a.receive({ t: 'wake', from: 'B', to: 'A' }), [{ type: 'wake' }]);
  assert.deepEqual(posts(a.askToken(3)), [[null, { t: 'token?', n: 3, from: 'A' }]]);
  assert.deepEqual(a.receive({ t: 'token', from: 'B', to: 'A', n: 3, token: 'x' }), [{ type: 'token', n: 3, token: 'x' }]);
  const b = new TabCore('B');
  elect(new TabCore('C'), b);
  assert.deepEqual(b.receive({ t: 'token?', from: 'C', n: 1 }), [{ type: 'lend-token', to: 'C', n: 1 }]);
  assert.deepEqual(b.receive({ t: 'token?', from: 'A', n: 1 }), []);
  assert.deepEqual(posts(b.wake()), [[null, { t: 'wake', to: 'C', from: 'B' }]]);
  assert.deepEqual(b.askToken(1), []);
});

test('an old leader’s announcement that comes late does not take a follower back to it', () => {
  const b = new TabCore('B');
  b.subscribe('s1', spec);
  const a = new TabCore('A');
  a.lead(1_000);
  const stale = posts(a.receive({ t: 'hello', from: 'N' }))[0][1]; // A answers a new tab, dies
  elect(new TabCore('C'), b, 2_000);
  assert.deepEqual(b.receive(stale), []);
  assert.equal(b.leader, 'C');
  assert.deepEqual(b.receive({ t: 'leader', from: 'D', state: 'live' }), []); // no term: ignored
  // After C resigns, its own late announcement does not bring it back either.
  b.receive({ t: 'resign', from: 'C' });
  assert.deepEqual(b.receive({ t: 'leader', from: 'C', term: 2_000, state: 'live' }), []);
  assert.equal(posts(elect(new TabCore('E'), b, 3_000)).length, 1);
});
