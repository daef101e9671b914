// The client against a fake relay: a WebSocket and a fetch driven by the test, fake timers.
import assert from 'node:assert/strict';
import test from 'node:test';
import { backoffCeiling, createClient, endpoints } from '../src/index.js';
import { FakeClock, cursor, fakeSockets, flush, unsignedToken } from '../testlib/fakes.js';

function setup(options = {}) {
  const clock = new FakeClock();
  const { FakeWebSocket, sockets } = fakeSockets();
  const states = [];
  const errors = [];
  let issued = 0;
  const client = createClient({
    url: 'https://relay.test/base/',
    token: async () => {
      issued += 1;
      return unsignedToken({ sub: 'alice', n: issued, exp: (clock.now() + 3_600_000) / 1000 });
    },
    WebSocket: FakeWebSocket,
    fetch: async () => {
      throw new Error('no fetch in this test');
    },
    timers: clock,
    now: clock.now,
    random: () => 0.5,
    onState: (s) => states.push(s),
    onError: (e) => errors.push(e),
    ...options,
  });
  return { clock, sockets, states, errors, client, issued: () => issued };
}

function collect() {
  const got = { events: [], resets: [], errors: [], subscribed: [] };
  got.handlers = {
    onEvent: (e) => got.events.push(e),
    onReset: (r) => got.resets.push(r),
    onError: (e) => got.errors.push(e),
    onSubscribed: (s) => got.subscribed.push(s),
  };
  return got;
}

const event = (sub, pos, title) => ({
  type: 'event', sub, cursor: cursor(pos), schema: 'public', table: 'thumbnails', op: 'INSERT',
  pk: { id: pos }, row: { id: pos, title }, changed: [], ts: '2025-01-01T00:00:00+00:00',
});

test('auth first, subscribe after ready, events delivered without the internal sub id', async () => {
  const { sockets, client, states, clock } = setup();
  assert.equal(sockets[0].url, 'wss://relay.test/base/v1/ws');
  const got = collect();
  client.subscribe('thumbnails', { filter: { project_id: 'p1' }, ops: ['INSERT'], coalesceMs: 250 }, got.handlers);
  await sockets[0].accept();
  assert.deepEqual(sockets[0].sent.map((m) => m.type), ['auth', 'subscribe']);
  assert.deepEqual(sockets[0].sent[1], {
    type: 'subscribe', id: 's1', table: 'thumbnails', filter: { project_id: 'p1' }, ops: ['INSERT'], coalesce_ms: 250,
  });
  sockets[0].receive({ type: 'subscribed', id: 's1', cursor: cursor(10) });
  sockets[0].receive(event('s1', 11, 'a'));
  assert.deepEqual(got.subscribed, [{ cursor: cursor(10) }]);
  assert.equal(got.events.length, 1);
  assert.equal(got.events[0].sub, undefined);
  assert.equal(got.events[0].row.title, 'a');
  assert.deepEqual(states, ['live']);
  client.close();
  assert.deepEqual(states, ['live', 'closed']);
  assert.equal(clock.pending, 0);
});

test('after a drop it reconnects with backoff and resubscribes from the last cursor', async () => {
  const { sockets, client, clock, states } = setup();
  const got = collect();
  client.subscribe('thumbnails', {}, got.handlers);
  await sockets[0].accept();
  sockets[0].receive({ type: 'subscribed', id: 's1', cursor: cursor(10) });
  sockets[0].receive(event('s1', 12, 'a'));
  sockets[0].serverClose(1006);
  assert.equal(client.state, 'reconnecting');
  // random() = 0.5: the first retry waits half of initialMs.
  await clock.advance(249);
  assert.equal(sockets.length, 1);
  await clock.advance(1);
  assert.equal(sockets.length, 2);
  await sockets[1].accept();
  assert.deepEqual(sockets[1].of('subscribe'), [
    { type: 'subscribe', id: 's1', table: 'thumbnails', since: cursor(12) },
  ]);
  sockets[1].receive(event('s1', 13, 'missed'));
  sockets[1].receive({ type: 'subscribed', id: 's1', cursor: cursor(15) });
  sockets[1].serverClose(1001);
  await clock.advance(500); // not up long enough to reset the attempts: 0.5 * 1000
  await sockets[2].accept();
  assert.equal(sockets[2].of('subscribe')[0].since, cursor(15)); // subscribed moved it on
  assert.deepEqual(states, ['live', 'reconnecting', 'live', 'reconnecting', 'live']);
  client.close();
});

test('failed opens back off within min(cap, initial * 2^n); a stable connection resets it', async () => {
  const { sockets, client, clock } = setup({ random: () => 0.999, fallbackAfter: Infinity, stableMs: 5_000 });
  const gaps = [];
  for (let n = 0; n < 9; n += 1) {
    const before = clock.now();
    sockets.at(-1).serverClose(1006);
    const count = sockets.length;
    while (sockets.length === count) await clock.advance(1);
    gaps.push(clock.now() - before);
  }
  gaps.forEach((gap, n) => {
    assert.ok(gap <= backoffCeiling(n) + 1 && gap >= backoffCeiling(n) * 0.999 - 1, `attempt ${n}: ${gap}`);
  });
  assert.equal(client.state, 'connecting'); // never live yet
  await sockets.at(-1).accept();
  await clock.advance(5_000); // stayed up: attempts start again from zero
  sockets.at(-1).serverClose(1006);
  const before = clock.now();
  const count = sockets.length;
  while (sockets.length === count) await clock.advance(1);
  assert.ok(clock.now() - before <= 500);
  client.close();
  assert.equal(clock.pending, 0);
});

test('close 4001 asks the token provider for a new token before reconnecting', async () => {
  const { sockets, client, clock, errors, issued } = setup();
  await sockets[0].accept();
  assert.equal(issued(), 1);
  sockets[0].serverClose(4001, 'token_expired');
  assert.equal(errors.at(-1).code, 'auth_refused');
  assert.equal(errors.at(-1).reason, 'token_expired');
  await clock.advance(500);
  sockets[1].open();
  await flush();
  assert.equal(issued(), 2);
  assert.equal(JSON.parse(atob(sockets[1].sent[0].token.split('.')[1])).n, 2);
  client.close();
});

test('close() from onError after a refused token leaves no timer and stays closed', async () => {
  let client = null;
  const harness = setup({ onError: () => client.close() });
  client = harness.client;
  const { sockets, clock, states } = harness;
  await sockets[0].accept();
  sockets[0].serverClose(4001, 'token_expired');
  assert.equal(client.state, 'closed');
  assert.equal(states.at(-1), 'closed');
  assert.equal(clock.pending, 0);
});

test('reset frames call onReset and move the cursor to the reset cursor', async () => {
  const { sockets, client, clock } = setup();
  const got = collect();
  client.subscribe('thumbnails', { since: `${'0'.repeat(32)}.5` }, got.handlers);
  await sockets[0].accept();
  assert.equal(sockets[0].of('subscribe')[0].since, `${'0'.repeat(32)}.5`);
  sockets[0].receive({ type: 'reset', sub: 's1', reason: 'epoch_changed', cursor: cursor(40) });
  sockets[0].receive({ type: 'subscribed', id: 's1', cursor: cursor(40) });
  sockets[0].receive({ type: 'reset', sub: 's1', reason: 'overflow', cursor: cursor(90) });
  assert.deepEqual(got.resets, [
    { reason: 'epoch_changed', cursor: cursor(40) },
    { reason: 'overflow', cursor: cursor(90) },
  ]);
  sockets[0].serverClose(1012, 'epoch_changed');
  await clock.advance(250);
  await sockets[1].accept();
  assert.equal(sockets[1].of('subscribe')[0].since, cursor(90));
  client.close();
});

test('an error naming a subscription ends it; others carry on; unsubscribe is sent', async () => {
  const { sockets, client } = setup();
  const bad = collect();
  const good = collect();
  client.subscribe('nope', {}, bad.handlers);
  const unsubscribe = client.subscribe('thumbnails', {}, good.handlers);
  await sockets[0].accept();
  sockets[0].receive({ type: 'error', id: 's1', code: 'unknown_table', message: "table 'nope' is not tracked" });
  assert.equal(bad.errors[0].code, 'unknown_table');
  sockets[0].receive(event('s1', 3, 'late')); // for an ended subscription: ignored
  sockets[0].receive(event('s2', 4, 'ok'));
  assert.equal(bad.events.length, 0);
  assert.equal(good.events.length, 1);
  unsubscribe();
  unsubscribe();
  assert.deepEqual(sockets[0].of('unsubscribe'), [{ type: 'unsubscribe', id: 's2' }]);
  sockets[0].receive(event('s2', 5, 'after'));
  assert.equal(good.events.length, 1);
  client.close();
});

test('a callback that throws does not break delivery', async () => {
  const { sockets, client, errors } = setup();
  const seen = [];
  client.subscribe('thumbnails', {}, {
    onEvent(e) {
      seen.push(e.row.title);
      throw new Error('app bug');
    },
  });
  await sockets[0].accept();
  sockets[0].receive(event('s1', 1, 'a'));
  sockets[0].receive(event('s1', 2, 'b'));
  assert.deepEqual(seen, ['a', 'b']);
  assert.deepEqual(errors.map((e) => e.code), ['callback_failed', 'callback_failed']);
  client.close();
});

test('a silent socket is pinged, then dropped and reconnected', async () => {
  const { sockets, client, clock } = setup({ pingIntervalMs: 20_000, pongTimeoutMs: 5_000 });
  await sockets[0].accept();
  await clock.advance(20_000); // the ready frame counted as traffic in the first interval
  assert.equal(sockets[0].of('ping').length, 0);
  await clock.advance(20_000);
  assert.equal(sockets[0].of('ping').length, 1);
  await clock.advance(5_000);
  assert.equal(sockets[0].closedWith.code, 4000);
  assert.equal(client.state, 'reconnecting');
  await clock.advance(250);
  assert.equal(sockets.length, 2);
  client.close();
});

test('a handshake that never completes is given up after openTimeoutMs', async () => {
  const { sockets, client, clock } = setup({ openTimeoutMs: 15_000 });
  await clock.advance(15_000);
  assert.equal(sockets[0].closedWith.reason, 'open_timeout');
  await clock.advance(250);
  assert.equal(sockets.length, 2);
  client.close();
});

test('reconnect() skips the backoff wait', async () => {
  const { sockets, client, clock } = setup({ random: () => 0.999 });
  await sockets[0].accept();
  sockets[0].serverClose(1006);
  assert.equal(sockets.length, 1);
  client.reconnect();
  assert.equal(sockets.length, 2);
  await sockets[1].accept();
  assert.equal(client.state, 'live');
  client.close();
  assert.equal(clock.pending, 0);
});

/** A fetch answering long-polls from a script: (url) => {status, body}. */
function fakeFetch(answer) {
  const requests = [];
  const fetch = async (url, init) => {
    const u = new URL(url);
    requests.push({ url: u, auth: init.headers.Authorization });
    const reply = await answer(u, requests.length);
    return { status: reply.status, json: async () => reply.body };
  };
  return { fetch, requests };
}

test('falls back to long-polling after 3 failed opens and returns to websockets', async () => {
  let pos = 20;
  let release;
  const { fetch, requests } = fakeFetch(async (u) => {
    if (!u.searchParams.get('since')) return { status: 200, body: { events: [], cursor: cursor(pos) } };
    await new Promise((resolve) => { release = resolve; });
    pos += 1;
    const { sub: _, ...frame } = event('x', pos, `polled-${pos}`);
    return { status: 200, body: { events: [frame], cursor: cursor(pos) } };
  });
  const { sockets, client, clock, states } = setup({ fetch, wsRetryMs: 30_000 });
  const got = collect();
  client.subscribe('thumbnails', { ops: ['INSERT', 'UPDATE'], filter: { project_id: 'p1' } }, got.handlers);
  sockets[0].serverClose(1006);
  await clock.advance(250);
  sockets[1].serverClose(1006);
  await clock.advance(500);
  assert.equal(requests.length, 0);
  sockets[2].serverClose(1006); // the third failed open
  await flush();
  assert.equal(client.state, 'polling');
  assert.equal(requests[0].url.href, 'https://relay.test/base/v1/poll?table=thumbnails&filter=%7B%22project_id%22%3A%22p1%22%7D&ops=INSERT%2CUPDATE&wait=25');
  assert.match(requests[0].auth, /^Bearer ey/);
  assert.deepEqual(got.subscribed, [{ cursor: cursor(20) }]);
  assert.equal(requests[1].url.searchParams.get('since'), cursor(20));
  release();
  await flush();
  assert.deepEqual(got.events.map((e) => e.row.title), ['polled-21']);
  assert.equal(requests[2].url.searchParams.get('since'), cursor(21));
  // Websockets are tried again every wsRetryMs while polling; this time they work.
  await clock.advance(30_000);
  assert.equal(sockets.length, 4);
  await sockets[3].accept();
  assert.equal(client.state, 'live');
  assert.deepEqual(sockets[3].of('subscribe')[0].since, cursor(21));
  release(); // the aborted poll's answer is not delivered
  await flush();
  assert.deepEqual(got.events.map((e) => e.row.title), ['polled-21']);
  assert.deepEqual(states, ['polling', 'live']);
  client.close();
  assert.equal(clock.pending, 0);
});

test('a relay without /v1/poll (404) keeps retrying websockets instead', async () => {
  const { fetch, requests } = fakeFetch(async () => ({ status: 404, body: null }));
  const { sockets, client, clock, errors } = setup({ fetch, fallbackAfter: 1 });
  client.subscribe('thumbnails', {}, {});
  sockets[0].serverClose(1006);
  await flush();
  assert.equal(requests.length, 1);
  assert.equal(errors.at(-1).code, 'poll_unavailable');
  assert.equal(client.state, 'connecting');
  for (let i = 1; i < 5; i += 1) {
    await clock.advance(30_000);
    sockets.at(-1).serverClose(1006);
  }
  assert.equal(requests.length, 1);
  client.close();
});

test('close() from onError on a 404 from /v1/poll leaves no timer and stays closed', async () => {
  const { fetch } = fakeFetch(async () => ({ status: 404, body: null }));
  let client = null;
  const harness = setup({ fetch, fallbackAfter: 1, onError: () => client.close() });
  client = harness.client;
  const { sockets, clock, states } = harness;
  client.subscribe('thumbnails', {}, {});
  sockets[0].serverClose(1006);
  await flush();
  assert.equal(client.state, 'closed');
  assert.equal(states.at(-1), 'closed');
  assert.equal(clock.pending, 0);
  await clock.advance(60_000);
  assert.equal(sockets.length, 1);
});

test('poll errors: 400 ends the subscription, 401 refreshes the token, 503 backs off', async () => {
  const replies = [
    { status: 200, body: { events: [], cursor: cursor(1) } },
    { status: 503, body: { error: 'not ready' } },
    { status: 401, body: { error: 'token refused', reason: 'expired' } },
    { status: 200, body: { reset: { reason: 'cursor_expired' }, cursor: cursor(50) } },
    { status: 400, body: { error: 'filter is not valid JSON', code: 'bad_message' } },
  ];
  const { fetch, requests } = fakeFetch(async () => replies.shift());
  const { client, clock, issued, states } = setup({ WebSocket: null, fetch });
  const got = collect();
  client.subscribe('thumbnails', {}, got.handlers);
  await flush();
  assert.equal(requests.length, 2); // the first answered at once, the second got 503
  assert.deepEqual(states, ['polling', 'reconnecting']);
  await clock.advance(250); // backoff 0.5 * 500
  assert.equal(requests.length, 3); // 401
  assert.equal(issued(), 1);
  await clock.advance(500); // backoff 0.5 * 1000
  assert.equal(issued(), 2);
  assert.equal(requests[3].url.searchParams.get('since'), cursor(1));
  assert.deepEqual(got.resets, [{ reason: 'cursor_expired', cursor: cursor(50) }]);
  assert.equal(requests[4].url.searchParams.get('since'), cursor(50));
  assert.equal(got.errors[0].code, 'bad_message');
  assert.equal(requests.length, 5);
  client.close();
  assert.equal(clock.pending, 0);
});

test('no timer and no listener survives close()', async () => {
  const { sockets, client, clock } = setup();
  client.subscribe('thumbnails', {}, {});
  await sockets[0].accept();
  sockets[0].serverClose(1006);
  assert.ok(clock.pending > 0);
  client.close();
  assert.equal(clock.pending, 0);
  assert.equal(client.state, 'closed');
  assert.throws(() => client.subscribe('thumbnails'), /closed/);
});

test('subscribing from onState("live") sends that subscription once', async () => {
  let client;
  const { sockets, client: c } = setup({
    onState: (state) => {
      if (state === 'live') client.subscribe('generations', {}, {});
    },
  });
  client = c;
  client.subscribe('thumbnails', {}, {});
  await sockets[0].accept();
  assert.deepEqual(sockets[0].of('subscribe').map((m) => [m.id, m.table]), [
    ['s1', 'thumbnails'],
    ['s2', 'generations'],
  ]);
  sockets[0].receive(null);
  client.close();
});

test('endpoints: /v1/ws, /v1/poll and /v1/sse under the base URL, schemes mapped', () => {
  assert.deepEqual(endpoints('ws://127.0.0.1:8080'), {
    ws: 'ws://127.0.0.1:8080/v1/ws',
    poll: 'http://127.0.0.1:8080/v1/poll',
    sse: 'http://127.0.0.1:8080/v1/sse',
  });
  assert.deepEqual(endpoints('https://example.com/relay/?x=1'), {
    ws: 'wss://example.com/relay/v1/ws',
    poll: 'https://example.com/relay/v1/poll',
    sse: 'https://example.com/relay/v1/sse',
  });
  assert.equal(endpoints('wss://a.example', '/poll-here').poll, 'https://a.example/poll-here');
});

test('page visible again or network back: an immediate attempt; listeners removed on close', async (t) => {
  const win = new EventTarget();
  const doc = Object.assign(new EventTarget(), { visibilityState: 'hidden' });
  const saved = { add: globalThis.addEventListener, remove: globalThis.removeEventListener, doc: globalThis.document };
  globalThis.addEventListener = win.addEventListener.bind(win);
  globalThis.removeEventListener = win.removeEventListener.bind(win);
  globalThis.document = doc;
  t.after(() => {
    globalThis.addEventListener = saved.add;
    globalThis.removeEventListener = saved.remove;
    globalThis.document = saved.doc;
  });
  const { sockets, client } = setup({ random: () => 0.999 });
  await sockets[0].accept();
  sockets[0].serverClose(1006);
  doc.dispatchEvent(new Event('visibilitychange')); // still hidden: nothing
  assert.equal(sockets.length, 1);
  doc.visibilityState = 'visible';
  doc.dispatchEvent(new Event('visibilitychange'));
  assert.equal(sockets.length, 2);
  sockets[1].serverClose(1006);
  win.dispatchEvent(new Event('online'));
  assert.equal(sockets.length, 3);
  await sockets[2].accept();
  win.dispatchEvent(new Event('online')); // live: a ping checks the socket
  assert.deepEqual(sockets[2].of('ping'), [{ type: 'ping' }]);
  client.close();
  win.dispatchEvent(new Event('online'));
  doc.dispatchEvent(new Event('visibilitychange'));
  assert.equal(sockets.length, 3);
});
