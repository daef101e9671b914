// The client against a real relay and a real database (tests/clients/test_js_client.py starts both).
// Skipped when RELAY_URL is not set.
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import test from 'node:test';
import { WebSocket } from 'ws';
import { backoffCeiling, createClient } from '../src/index.js';
import {
  RELAY_URL,
  addThumbnail,
  gatedWebSocket,
  integration,
  mintToken,
  sleep,
  sql,
  waitFor,
} from '../testlib/relay.js';

/** A fresh user per test, so tests never see each other's rows. */
const newUser = () => `u-${randomUUID()}`;

/** Subscribes and waits until the relay confirmed it; collects what arrives. */
async function subscribed(client, table, options = {}) {
  const got = { events: [], resets: [], errors: [], confirmations: 0 };
  got.titles = () => got.events.map((e) => e.row.title);
  got.unsubscribe = client.subscribe(table, options, {
    onEvent: (e) => got.events.push(e),
    onReset: (r) => got.resets.push(r),
    onError: (e) => got.errors.push(e),
    onSubscribed: () => {
      got.confirmations += 1;
    },
  });
  await waitFor(() => got.confirmations > 0 || got.errors.length > 0, { what: 'subscribed' });
  assert.deepEqual(got.errors, []);
  return got;
}

function connect(user, options = {}) {
  const states = [];
  const client = createClient({
    url: RELAY_URL,
    token: () => mintToken(user),
    WebSocket,
    onState: (s) => states.push(s),
    ...options,
  });
  client.states = states;
  return client;
}

const pollStatus = RELAY_URL
  ? await fetch(new URL('/v1/poll', RELAY_URL)).then((r) => r.status, () => 0)
  : 0;

test('live events reach the subscriber, and only its own rows', integration, async () => {
  const alice = newUser();
  const client = connect(alice);
  try {
    await waitFor(() => client.state === 'live', { what: 'live' });
    const got = await subscribed(client, 'thumbnails');
    const updates = await subscribed(client, 'thumbnails', {
      ops: ['UPDATE'],
      filter: { project_id: 'p2' },
    });
    await sql(addThumbnail(alice, 'one', 'p2'), addThumbnail(newUser(), 'not-mine'));
    await waitFor(() => got.events.length === 1, { what: 'the INSERT' });
    const { id } = got.events[0].row;
    await sql(`SELECT increment_thumbnail_share_click_count(${id})`);
    await waitFor(() => got.events.length === 2, { what: 'the UPDATE' });
    const [insert, update] = got.events;
    assert.equal(insert.type, 'event');
    assert.equal(insert.op, 'INSERT');
    assert.equal(insert.table, 'thumbnails');
    assert.equal(insert.sub, undefined);
    assert.deepEqual(insert.row, { id, user_id: alice, project_id: 'p2', title: 'one', share_click_count: 0 });
    assert.equal(update.op, 'UPDATE');
    assert.deepEqual(update.changed, ['share_click_count']);
    assert.equal(update.row.share_click_count, 1);
    assert.deepEqual(updates.events.map((e) => e.op), ['UPDATE']);
    assert.deepEqual(client.states, ['live']);
  } finally {
    client.close();
  }
});

test('after a drop it resumes with exactly the missed rows, no duplicates', integration, async () => {
  const alice = newUser();
  const gate = gatedWebSocket();
  const client = connect(alice, {
    WebSocket: gate.WebSocket,
    backoff: { initialMs: 50, capMs: 200 },
    fallbackAfter: Infinity,
  });
  try {
    const got = await subscribed(client, 'thumbnails');
    await sql(addThumbnail(alice, 'before'));
    await waitFor(() => got.events.length === 1, { what: 'the first event' });
    gate.down = true;
    gate.sockets.at(-1).terminate(); // the connection drops (client side, abruptly)
    await waitFor(() => client.state === 'reconnecting', { what: 'reconnecting' });
    await sql(addThumbnail(alice, 'missed-1'), addThumbnail(alice, 'missed-2'), addThumbnail(newUser(), 'other'));
    await sleep(300); // a few refused attempts
    assert.equal(client.state, 'reconnecting');
    gate.down = false;
    await waitFor(() => got.events.length >= 3, { what: 'the replay' });
    await waitFor(() => client.state === 'live', { what: 'live again' });
    await sql(addThumbnail(alice, 'live'));
    await waitFor(() => got.events.length >= 4, { what: 'the live event' });
    await sleep(500);
    assert.deepEqual(got.titles(), ['before', 'missed-1', 'missed-2', 'live']);
    assert.equal(got.resets.length, 0);
    assert.ok(got.confirmations >= 2, 'resubscribed after the drop');
  } finally {
    client.close();
  }
});

test('while the relay is unreachable, retries back off within the full-jitter bounds', integration, async () => {
  const gate = gatedWebSocket();
  gate.down = true;
  const draws = [];
  const backoff = { initialMs: 40, capMs: 320 };
  const client = connect(newUser(), {
    WebSocket: gate.WebSocket,
    backoff,
    fallbackAfter: Infinity,
    random: () => {
      const r = Math.random();
      draws.push(r);
      return r;
    },
  });
  try {
    await waitFor(() => gate.opens.length >= 8, { what: '8 attempts' });
    for (let n = 0; n < 7; n += 1) {
      const gap = gate.opens[n + 1] - gate.opens[n];
      const asked = draws[n] * backoffCeiling(n, backoff);
      assert.ok(gap >= asked - 2, `attempt ${n}: waited ${gap} ms, less than ${asked}`);
      assert.ok(gap <= backoffCeiling(n, backoff) + 200, `attempt ${n}: ${gap} ms, over the ceiling`);
    }
    assert.equal(client.state, 'connecting');
  } finally {
    client.close();
  }
});

test('a token the relay refuses (4001) is asked for again, with backoff', integration, async () => {
  const user = newUser();
  let calls = 0;
  const errors = [];
  const client = connect(user, {
    token: () => {
      calls += 1;
      // The first two are signed with the wrong key; the relay closes with 4001 bad_signature.
      return calls <= 2 ? mintToken(user, { secret: 'x'.repeat(40) }) : mintToken(user);
    },
    backoff: { initialMs: 50, capMs: 200 },
    onError: (e) => errors.push(e),
  });
  try {
    await waitFor(() => client.state === 'live', { what: 'live' });
    assert.equal(calls, 3);
    assert.deepEqual(errors.map((e) => [e.code, e.reason]), [
      ['auth_refused', 'bad_signature'],
      ['auth_refused', 'bad_signature'],
    ]);
  } finally {
    client.close();
  }
});

test('a short-lived token is refreshed on the open socket, which outlives it', integration, async () => {
  const alice = newUser();
  const gate = gatedWebSocket();
  let issued = 0;
  const client = connect(alice, {
    WebSocket: gate.WebSocket,
    token: () => {
      issued += 1;
      return mintToken(alice, { ttlS: 3 });
    },
  });
  try {
    const got = await subscribed(client, 'thumbnails');
    // The relay closes a socket at exp + 5 s leeway: 8 s for the first token.
    await sleep(9_000);
    await sql(addThumbnail(alice, 'still-here'));
    await waitFor(() => got.events.length === 1, { what: 'an event after the first exp' });
    assert.deepEqual(got.titles(), ['still-here']);
    assert.equal(gate.sockets.length, 1, 'the socket was never replaced');
    assert.ok(issued >= 4, `only ${issued} tokens asked for`);
    assert.deepEqual(client.states, ['live']);
  } finally {
    client.close();
  }
});

test('a cursor of another epoch gets onReset(epoch_changed), then live events', integration, async () => {
  const alice = newUser();
  const client = connect(alice);
  try {
    const got = await subscribed(client, 'thumbnails', { since: `${'0'.repeat(32)}.5` });
    assert.deepEqual(got.resets.map((r) => r.reason), ['epoch_changed']);
    assert.match(got.resets[0].cursor, /^[0-9a-f]{32}\.\d+$/);
    await sql(addThumbnail(alice, 'after-reset'));
    await waitFor(() => got.events.length === 1, { what: 'the event after the reset' });
    assert.deepEqual(got.titles(), ['after-reset']);
  } finally {
    client.close();
  }
});

test(
  'websockets failing: long-polling with the same cursors, then back to websockets',
  { ...integration, skip: integration.skip ?? (pollStatus === 404 ? 'needs /v1/poll' : false) },
  async () => {
    const alice = newUser();
    const gate = gatedWebSocket();
    gate.down = true;
    const client = connect(alice, {
      WebSocket: gate.WebSocket,
      backoff: { initialMs: 20, capMs: 100 },
      wsRetryMs: 1_500,
      pollWaitS: 5,
    });
    try {
      const got = await subscribed(client, 'thumbnails');
      assert.equal(client.state, 'polling');
      assert.ok(gate.opens.length >= 3); // three failed opens, then polling
      const others = await subscribed(client, 'thumbnails', { ops: ['UPDATE'] });
      await sql(addThumbnail(alice, 'polled-1'), addThumbnail(newUser(), 'other'));
      await waitFor(() => got.events.length === 1, { what: 'a polled event' });
      await sql(addThumbnail(alice, 'polled-2'));
      await waitFor(() => got.events.length === 2, { what: 'a second polled event' });
      const { id } = got.events[0].row;
      await sql(`SELECT increment_thumbnail_share_click_count(${id})`);
      await waitFor(() => others.events.length === 1, { what: 'a polled UPDATE' });
      // Websockets work again: the next retry takes over, resuming each subscription's cursor.
      gate.down = false;
      await waitFor(() => client.state === 'live', { timeoutMs: 5_000, what: 'live' });
      await sql(addThumbnail(alice, 'live-1'));
      await waitFor(() => got.events.length === 4, { what: 'events over the socket' });
      await sleep(500);
      assert.deepEqual(got.events.map((e) => [e.op, e.row.title]), [
        ['INSERT', 'polled-1'],
        ['INSERT', 'polled-2'],
        ['UPDATE', 'polled-1'],
        ['INSERT', 'live-1'],
      ]);
      assert.deepEqual(others.events.map((e) => [e.op, e.changed]), [['UPDATE', ['share_click_count']]]);
      assert.equal(got.events[0].type, 'event');
      assert.deepEqual(client.states.slice(-2), ['polling', 'live']);
    } finally {
      client.close();
    }
  },
);

test('a row handed to another user leaves one view and enters the other', integration, async () => {
  const alice = newUser();
  const bob = newUser();
  const aliceClient = connect(alice);
  const bobClient = connect(bob);
  try {
    await waitFor(() => aliceClient.state === 'live' && bobClient.state === 'live', { what: 'live' });
    const mine = await subscribed(aliceClient, 'thumbnails');
    const theirs = await subscribed(bobClient, 'thumbnails');
    await sql(addThumbnail(alice, 'draft'));
    await waitFor(() => mine.events.length === 1, { what: 'the INSERT' });
    const { id } = mine.events[0].row;
    const q = (s) => `'${s.replace(/'/g, "''")}'`;
    await sql(`UPDATE thumbnails SET user_id = ${q(bob)}, title = 'for bob only' WHERE id = ${id}`);
    await waitFor(() => mine.events.length === 2 && theirs.events.length === 1, { what: 'the moves' });
    const [out] = mine.events.slice(1);
    assert.deepEqual([out.op, out.moved, out.pk, out.row, out.changed], ['DELETE', 'out', { id }, null, []]);
    assert.ok(!JSON.stringify(mine.events).includes('for bob only'));
    const [entry] = theirs.events;
    assert.deepEqual([entry.op, entry.moved, entry.row.title, entry.row.user_id], ['INSERT', 'in', 'for bob only', bob]);
  } finally {
    aliceClient.close();
    bobClient.close();
  }
});
