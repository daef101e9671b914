// The SSE transport against a fake relay: a fetch whose streams the test writes, fake timers.
import assert from 'node:assert/strict';
import test from 'node:test';
import { createClient } from '../src/index.js';
import { eventStreamParser } from '../src/sse.js';
import { FakeClock, cursor, flush, unsignedToken } from '../testlib/fakes.js';

/** A fetch the test answers: each request is kept with its URL, headers and answer functions. */
function fakeFetch() {
  const requests = [];
  const encoder = new TextEncoder();
  const fetch = (url, init) =>
    new Promise((resolve, reject) => {
      const request = { url: new URL(url), init, aborted: false };
      request.subs = () => JSON.parse(request.url.searchParams.get('subs'));
      request.since = () => request.url.searchParams.get('since');
      request.respond = (status, body) =>
        resolve(new Response(JSON.stringify(body), { status, headers: { 'Content-Type': 'application/json' } }));
      request.fail = () => reject(new TypeError('fetch failed'));
      request.open = () => {
        let controller;
        const body = new ReadableStream({ start: (c) => (controller = c) });
        init.signal.addEventListener('abort', () => {
          request.aborted = true;
          try {
            controller.error(new DOMException('aborted', 'AbortError'));
          } catch {
            // already closed
          }
        });
        resolve(new Response(body, { status: 200, headers: { 'Content-Type': 'text/event-stream' } }));
        request.write = (text) => controller.enqueue(encoder.encode(text));
        request.frame = (frame, id) =>
          request.write(`${id ? `id: ${id}\n` : ''}${frame.type === 'event' ? '' : `event: ${frame.type}\n`}data: ${JSON.stringify(frame)}\n\n`);
        request.end = () => controller.close();
        return request;
      };
      requests.push(request);
    });
  return { fetch, requests };
}

function setup(options = {}) {
  const clock = new FakeClock();
  const { fetch, requests } = fakeFetch();
  const states = [];
  const errors = [];
  let issued = 0;
  const client = createClient({
    url: 'https://relay.test/base/',
    transport: 'sse',
    token: async () => {
      issued += 1;
      return unsignedToken({ sub: 'alice', n: issued, exp: (clock.now() + 3_600_000) / 1000 });
    },
    fetch,
    timers: clock,
    now: clock.now,
    random: () => 0.5,
    onState: (s) => states.push(s),
    onError: (e) => errors.push(e),
    ...options,
  });
  return { clock, requests, states, errors, client, issued: () => issued };
}

function collect() {
  const got = { events: [], resets: [], errors: [], subscribed: [] };
  got.handlers = {
    onEvent: (e) => got.events.push(e),
    onReset: (r) => got.resets.push(r),
    onError: (e) => got.errors.push(e),
    onSubscribed: (s) => got.subscribed.push(s),
  };
  got.titles = () => got.events.map((e) => e.row.title);
  return got;
}

const event = (sub, pos, title) => ({
  type: 'event', sub, cursor: cursor(pos), schema: 'public', table: 'thumbnails', op: 'INSERT',
  pk: { id: pos }, row: { id: pos, title }, changed: [], ts: '2025-01-01T00:00:00+00:00',
});

/** Answers a stream request as the relay does: ready, subscribed per subscription, position. */
async function accept(request, at) {
  request.open();
  request.frame({ type: 'ready', user: 'alice', cursor: cursor(at) });
  for (const { id } of request.subs()) request.frame({ type: 'subscribed', id, cursor: cursor(at) });
  request.write(`id: ${cursor(at)}\n\n`);
  await flush();
  await flush();
}

test('the parser follows the event-stream rules: line ends, BOM, comments, ids, split chunks', () => {
  const blocks = [];
  const parser = eventStreamParser((b) => blocks.push(b));
  for (const chunk of ['\ufeffretry: 5\n\n: hi\n\nid: a.1\r', '\ndata: {"x":1}\r\rdata:  two\ndata', ':three\n\nid: a.2\n\n', 'event: reset\ndata: x\n']) {
    parser.push(chunk);
  }
  assert.deepEqual(blocks, [
    { event: 'message', data: null, id: undefined, comment: true },
    { event: 'message', data: '{"x":1}', id: 'a.1', comment: false },
    { event: 'message', data: ' two\nthree', id: undefined, comment: false },
    { event: 'message', data: null, id: 'a.2', comment: false },
  ]);
  parser.push('\n');
  assert.deepEqual(blocks.at(-1), { event: 'reset', data: 'x', id: undefined, comment: false });
});

test('one stream carries every subscription, with the token in the header, frames as over a websocket', async () => {
  const { requests, client, states } = setup();
  const a = collect();
  const b = collect();
  client.subscribe('thumbnails', { ops: ['INSERT'], coalesceMs: 200 }, a.handlers);
  client.subscribe('generations', { filter: { project_id: 'p' } }, b.handlers);
  await flush();
  await flush();
  const [request] = requests;
  assert.equal(`${request.url.origin}${request.url.pathname}`, 'https://relay.test/base/v1/sse');
  assert.deepEqual(request.subs(), [
    { id: 's1', table: 'thumbnails', ops: ['INSERT'] },
    { id: 's2', table: 'generations', filter: { project_id: 'p' } },
  ]);
  assert.equal(request.since(), null);
  assert.match(request.init.headers.Authorization, /^Bearer /);
  await accept(request, 10);
  assert.equal(client.state, 'live');
  assert.deepEqual(states, ['live']);
  request.frame(event('s1', 11, 'one'), cursor(11));
  request.frame(event('s2', 12, 'two'), cursor(12));
  request.frame({ type: 'reset', sub: 's2', reason: 'overflow', cursor: cursor(13) });
  await flush();
  assert.deepEqual([a.titles(), b.titles()], [['one'], ['two']]);
  assert.equal(a.events[0].sub, undefined);
  assert.deepEqual(b.resets, [{ reason: 'overflow', cursor: cursor(13) }]);
  assert.deepEqual([a.subscribed.length, b.subscribed.length], [1, 1]);
  client.close();
  assert.equal(request.aborted, true);
});

test('subscribing while streaming opens the stream again from its position, nothing twice', async () => {
  const { requests, client, clock } = setup();
  const a = collect();
  client.subscribe('thumbnails', {}, a.handlers);
  await flush();
  await accept(requests[0], 10);
  requests[0].frame(event('s1', 11, 'one'), cursor(11));
  requests[0].write(`:\nid: ${cursor(14)}\n\n`); // a heartbeat: the stream stands at 14
  await flush();
  const b = collect();
  client.subscribe('generations', {}, b.handlers);
  await clock.advance(0); // subscriptions made in one turn open one stream
  assert.equal(requests.length, 2);
  assert.equal(requests[0].aborted, true);
  assert.deepEqual(requests[1].subs().map((s) => s.id), ['s1', 's2']);
  assert.equal(requests[1].since(), cursor(14));
  await accept(requests[1], 14);
  requests[1].frame(event('s1', 14, 'again'), cursor(14)); // at its position: not repeated
  requests[1].frame(event('s2', 15, 'two'), cursor(15));
  await flush();
  assert.deepEqual([a.titles(), b.titles()], [['one'], ['two']]);
  assert.deepEqual([a.subscribed.length, b.subscribed.length], [1, 1]);
  client.close();
});

test('a stream that ends is opened again after the backoff, from its last id', async () => {
  const { requests, client, clock, states } = setup();
  const a = collect();
  client.subscribe('thumbnails', {}, a.handlers);
  await flush();
  await accept(requests[0], 10);
  requests[0].frame(event('s1', 11, 'one'), cursor(11));
  requests[0].frame({ type: 'error', code: 'going_away', message: 'the relay is shutting down' });
  requests[0].end();
  await flush();
  await flush();
  assert.equal(client.state, 'reconnecting');
  await clock.advance(1000);
  assert.equal(requests.length, 2);
  assert.equal(requests[1].since(), cursor(11));
  await accept(requests[1], 11);
  requests[1].frame(event('s1', 12, 'two'), cursor(12));
  await flush();
  assert.deepEqual(a.titles(), ['one', 'two']);
  assert.deepEqual(a.subscribed.length, 2); // again after the reconnect, as over a websocket
  assert.deepEqual(states, ['live', 'reconnecting', 'live']);
  client.close();
});

test('a refused token is reported and a new one asked for; a refused subscription ends alone', async () => {
  const { requests, client, clock, errors, issued } = setup();
  const a = collect();
  const b = collect();
  client.subscribe('thumbnails', {}, a.handlers);
  client.subscribe('nope', {}, b.handlers);
  await flush();
  requests[0].respond(401, { error: 'token refused', reason: 'expired' });
  await flush();
  await flush();
  assert.deepEqual(errors.map((e) => [e.code, e.reason]), [['auth_refused', 'expired']]);
  await clock.advance(1000);
  assert.equal(issued(), 2);
  requests[1].respond(400, { error: "table 'nope' is not tracked", code: 'unknown_table', id: 's2' });
  await clock.advance(0);
  assert.deepEqual(b.errors.map((e) => e.code), ['unknown_table']);
  assert.deepEqual(requests[2].subs().map((s) => s.id), ['s1']);
  await accept(requests[2], 5);
  assert.equal(client.state, 'live');
  client.close();
});

test('a relay without /v1/sse: after three failed opens the client long-polls', async () => {
  const { requests, client, clock } = setup();
  client.subscribe('thumbnails', {}, collect().handlers);
  await flush();
  for (let attempt = 0; attempt < 3; attempt += 1) {
    assert.equal(requests.at(-1).url.pathname, '/base/v1/sse');
    requests.at(-1).respond(404, null);
    await clock.advance(2_000); // the backoff
  }
  assert.deepEqual(requests.map((r) => r.url.pathname.slice(9)), ['sse', 'sse', 'sse', 'poll']);
  requests[3].respond(200, { events: [], cursor: cursor(3) });
  await flush();
  await flush();
  assert.equal(client.state, 'polling');
  client.close();
});

test('a refreshed token opens the stream again with it, from its position', async () => {
  const { requests, client, clock } = setup({ refreshBeforeMs: 60_000, pingIntervalMs: 0 });
  client.subscribe('thumbnails', {}, collect().handlers);
  await flush();
  await accept(requests[0], 10);
  await clock.advance(3_600_000 - 60_000);
  await clock.advance(0);
  assert.equal(requests.length, 2);
  assert.notEqual(requests[1].init.headers.Authorization, requests[0].init.headers.Authorization);
  assert.equal(requests[1].since(), cursor(10));
  client.close();
});

test('heartbeats are signs of life; a stream silent past the ping timeout is dropped', async () => {
  const { requests, client, clock } = setup();
  client.subscribe('thumbnails', {}, collect().handlers);
  await flush();
  await accept(requests[0], 10);
  for (let beat = 0; beat < 4; beat += 1) {
    await clock.advance(15_000);
    requests[0].write(':\n\n');
  }
  assert.deepEqual([requests.length, requests[0].aborted], [1, false]);
  await clock.advance(50_000); // silent: a ping at the second tick, unanswered 10 s later
  assert.equal(requests[0].aborted, true);
  await clock.advance(1_000); // the backoff
  assert.equal(requests.length, 2);
  client.close();
});
