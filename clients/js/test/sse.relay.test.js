// The SSE transport against a real relay and a real database (tests/clients/test_js_client.py
// starts both), through a TCP proxy the tests drop. Skipped when RELAY_URL is not set.
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import test from 'node:test';
import { createClient } from '../src/index.js';
import { tcpProxy } from '../testlib/proxy.js';
import { RELAY_URL, addThumbnail, integration, mintToken, sleep, sql, waitFor } from '../testlib/relay.js';

const newUser = () => `u-${randomUUID()}`;

function collect(client, table, options = {}) {
  const got = { events: [], resets: [], errors: [], confirmations: 0 };
  got.names = () => got.events.map((e) => e.row.title ?? e.row.project_id);
  got.unsubscribe = client.subscribe(table, options, {
    onEvent: (e) => got.events.push(e),
    onReset: (r) => got.resets.push(r),
    onError: (e) => got.errors.push(e),
    onSubscribed: () => {
      got.confirmations += 1;
    },
  });
  return got;
}

const addGeneration = (user, project) =>
  `INSERT INTO generations (user_id, project_id) VALUES ('${user}', '${project}')`;

for (const drop of ['close', 'cut']) {
  test(`a stream dropped mid-way (${drop}) resumes with exactly what followed`, integration, async () => {
    const alice = newUser();
    const proxy = await tcpProxy(RELAY_URL);
    const states = [];
    const client = createClient({
      url: proxy.url,
      transport: 'sse',
      token: () => mintToken(alice),
      backoff: { initialMs: 50, capMs: 200 },
      fallbackAfter: Infinity,
      onState: (s) => states.push(s),
    });
    try {
      const thumbnails = collect(client, 'thumbnails');
      const generations = collect(client, 'generations');
      await waitFor(() => generations.confirmations === 1 && thumbnails.confirmations === 1, {
        what: 'both subscribed',
      });
      assert.equal(client.state, 'live');
      const written = [];
      for (let n = 0; n < 20; n += 1) {
        await sql(addThumbnail(alice, `t${n}`), addGeneration(alice, `g${n}`), addThumbnail(newUser(), 'other'));
        written.push(`t${n}`, `g${n}`);
        if (n === 7) {
          proxy.down = true; // reconnects are refused for a while
          proxy[drop]();
        }
        if (n === 12) proxy.down = false;
      }
      await waitFor(() => thumbnails.events.length + generations.events.length >= 40, {
        what: 'every event',
        timeoutMs: 20_000,
      });
      await sleep(500);
      assert.deepEqual(thumbnails.names(), written.filter((w) => w.startsWith('t')));
      assert.deepEqual(generations.names(), written.filter((w) => w.startsWith('g')));
      assert.deepEqual([thumbnails.resets, generations.resets], [[], []]);
      assert.ok(states.includes('reconnecting'), states.join());
      assert.equal(client.state, 'live');
      assert.ok(proxy.accepted >= 2);
    } finally {
      client.close();
      await proxy.stop();
    }
  });
}

test('subscribing while streaming adds the subscription without losing or repeating the others', integration, async () => {
  const alice = newUser();
  const client = createClient({ url: RELAY_URL, transport: 'sse', token: () => mintToken(alice) });
  try {
    const thumbnails = collect(client, 'thumbnails');
    await waitFor(() => thumbnails.confirmations === 1, { what: 'subscribed' });
    await sql(addThumbnail(alice, 'one'));
    await waitFor(() => thumbnails.events.length === 1, { what: 'one' });
    const generations = collect(client, 'generations');
    await sql(addThumbnail(alice, 'two'));
    await waitFor(() => generations.confirmations === 1, { what: 'the second subscribed' });
    await sql(addGeneration(alice, 'g'), addThumbnail(alice, 'three'));
    await waitFor(() => thumbnails.events.length === 3 && generations.events.length === 1, {
      what: 'the rest',
    });
    thumbnails.unsubscribe();
    await sql(addThumbnail(alice, 'after'), addGeneration(alice, 'g2'));
    await waitFor(() => generations.events.length === 2, { what: 'g2' });
    await sleep(300);
    assert.deepEqual(thumbnails.names(), ['one', 'two', 'three']);
    assert.deepEqual(generations.names(), ['g', 'g2']);
    assert.equal(thumbnails.confirmations, 1);
  } finally {
    client.close();
  }
});

test('an unknown table ends that subscription only', integration, async () => {
  const alice = newUser();
  const client = createClient({ url: RELAY_URL, transport: 'sse', token: () => mintToken(alice) });
  try {
    const nope = collect(client, 'nope');
    const thumbnails = collect(client, 'thumbnails');
    await waitFor(() => nope.errors.length === 1 && thumbnails.confirmations === 1, {
      what: 'one refused, one subscribed',
    });
    assert.equal(nope.errors[0].code, 'unknown_table');
    await sql(addThumbnail(alice, 'x'));
    await waitFor(() => thumbnails.events.length === 1, { what: 'x' });
  } finally {
    client.close();
  }
});
