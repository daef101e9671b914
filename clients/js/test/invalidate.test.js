import assert from 'node:assert/strict';
import test from 'node:test';
import { createInvalidator } from '../src/index.js';
import { FakeClock } from '../testlib/fakes.js';

/** A stand-in client: records subscriptions and lets the test push events into them. */
function fakeClient() {
  const subs = [];
  return {
    subs,
    subscribe(table, options, handlers) {
      const sub = { table, options, handlers, active: true };
      subs.push(sub);
      return () => {
        sub.active = false;
      };
    },
  };
}

const update = (id, changed, row = {}) => ({
  type: 'event', table: 'thumbnails', schema: 'public', op: 'UPDATE', pk: { id },
  row: { id, ...row }, changed, cursor: 'c', ts: 't',
});
const insert = (id, row = {}) => ({ ...update(id, []), op: 'INSERT', row: { id, ...row } });

function setup(rules, options = {}) {
  const clock = new FakeClock();
  const client = fakeClient();
  const flushed = [];
  const invalidator = createInvalidator(client, rules, {
    onInvalidate: (keys) => flushed.push(keys),
    timers: clock,
    ...options,
  });
  return { clock, client, flushed, invalidator };
}

test('keys are de-duplicated and handed over once per window', async () => {
  const { clock, client, flushed } = setup([
    { table: 'thumbnails', keys: (e) => [['thumbnails', e.pk.id], ['thumbnails']] },
  ]);
  assert.equal(client.subs.length, 1);
  const { onEvent } = client.subs[0].handlers;
  onEvent(insert(1));
  onEvent(update(1, ['title']));
  onEvent(update(2, ['title']));
  await clock.advance(499);
  assert.deepEqual(flushed, []);
  await clock.advance(1);
  assert.deepEqual(flushed, [[['thumbnails', 1], ['thumbnails'], ['thumbnails', 2]]]);
  onEvent(update(1, ['title']));
  await clock.advance(500);
  assert.deepEqual(flushed.at(-1), [['thumbnails', 1], ['thumbnails']]);
  assert.equal(flushed.length, 2);
  assert.equal(clock.pending, 0);
});

test('rules match by ops, changed columns and when; one subscription per table', async () => {
  const { clock, client, flushed } = setup([
    { table: 'thumbnails', ops: ['UPDATE'], columns: ['share_click_count'], keys: ['clicks'] },
    { table: 'thumbnails', ops: ['INSERT', 'DELETE'], keys: ['list'] },
    { table: 'thumbnails', when: (e) => e.row?.project_id === 'p9', keys: (e) => [`project:${e.row.project_id}`] },
    { table: 'generations', schema: 'public', filter: { status: 'succeeded' }, keys: ['gallery'] },
  ]);
  assert.deepEqual(client.subs.map((s) => [s.table, s.options]), [
    ['thumbnails', { ops: undefined }],
    ['generations', { ops: undefined, schema: 'public', filter: { status: 'succeeded' } }],
  ]);
  const thumbs = client.subs[0].handlers;
  thumbs.onEvent(update(1, ['title']));
  await clock.advance(500);
  assert.deepEqual(flushed, []);
  thumbs.onEvent(update(1, ['share_click_count', 'title']));
  thumbs.onEvent({ ...update(2, []), truncated: true, row: null }); // unknown changes: matches
  thumbs.onEvent(insert(3, { project_id: 'p9' }));
  await clock.advance(500);
  assert.deepEqual(flushed, [['clicks', 'list', 'project:p9']]);
});

test('a move-out is a removal and an entry an addition to the rules', async () => {
  const { clock, client, flushed } = setup([
    { table: 'thumbnails', filter: { project_id: 'p1' }, ops: ['INSERT', 'DELETE'],
      keys: (e) => [['thumbnail', e.pk.id], ['project', 'p1']] },
    { table: 'thumbnails', filter: { project_id: 'p1' }, ops: ['UPDATE'], columns: ['title'],
      keys: ['titles'] },
  ]);
  const { onEvent } = client.subs[0].handlers;
  const movedOut = { ...update(4, []), op: 'DELETE', row: null, old: { id: 4 }, moved: 'out' };
  onEvent(movedOut); // the row left the filter: no values, its key only
  onEvent({ ...insert(5, { project_id: 'p1' }), moved: 'in' });
  await clock.advance(500);
  assert.deepEqual(flushed, [[['thumbnail', 4], ['project', 'p1'], ['thumbnail', 5]]]);
});

test('ops of rules sharing a subscription are merged', () => {
  const { client } = setup([
    { table: 't', ops: ['INSERT'], keys: ['a'] },
    { table: 't', ops: ['DELETE', 'INSERT'], keys: ['b'] },
  ]);
  assert.deepEqual(client.subs[0].options.ops, ['INSERT', 'DELETE']);
});

test('a reset invalidates the static keys (or resetKeys) and tells onReset', async () => {
  const resets = [];
  const { clock, client, flushed } = setup(
    [
      { table: 'thumbnails', keys: ['list'] },
      { table: 'thumbnails', keys: (e) => [e.pk.id], resetKeys: ['all-thumbnails'] },
      { table: 'thumbnails', keys: (e) => [e.pk.id] },
    ],
    { onReset: (info) => resets.push(info) },
  );
  client.subs[0].handlers.onReset({ reason: 'cursor_expired', cursor: 'c' });
  await clock.advance(500);
  assert.deepEqual(flushed, [['list', 'all-thumbnails']]);
  assert.deepEqual(resets, [{ table: 'thumbnails', schema: undefined, reason: 'cursor_expired' }]);
});

test('at maxKeys pending keys are handed over at once (the bound)', async () => {
  const { clock, client, flushed } = setup([{ table: 't', keys: (e) => [e.pk.id] }], { maxKeys: 3 });
  const { onEvent } = client.subs[0].handlers;
  for (let id = 1; id <= 7; id += 1) onEvent(insert(id));
  assert.deepEqual(flushed, [[1, 2, 3], [4, 5, 6]]);
  await clock.advance(500);
  assert.deepEqual(flushed, [[1, 2, 3], [4, 5, 6], [7]]);
});

test('flush() hands over now; stop() unsubscribes and drops what is pending', async () => {
  const { clock, client, flushed, invalidator } = setup([{ table: 't', keys: ['k'] }]);
  client.subs[0].handlers.onEvent(insert(1));
  invalidator.flush();
  assert.deepEqual(flushed, [['k']]);
  client.subs[0].handlers.onEvent(insert(2));
  invalidator.stop();
  assert.equal(client.subs[0].active, false);
  await clock.advance(1000);
  assert.deepEqual(flushed, [['k']]);
  assert.equal(clock.pending, 0);
});

test('a throwing key function or onInvalidate is reported, not thrown into the client', async () => {
  const errors = [];
  const { clock, client } = setup(
    [{ table: 't', keys: () => { throw new Error('bad rule'); } }, { table: 't', keys: ['k'] }],
    { onInvalidate: () => { throw new Error('bad cache'); }, onError: (e) => errors.push(e.message) },
  );
  client.subs[0].handlers.onEvent(insert(1));
  await clock.advance(500);
  assert.deepEqual(errors, ['bad rule', 'bad cache']);
});
