import assert from 'node:assert/strict';
import test from 'node:test';
import { createClient, refreshDelay, tokenExpiry } from '../src/index.js';
import { FakeClock, fakeSockets, unsignedToken } from '../testlib/fakes.js';

test('tokenExpiry reads exp from a base64url payload, in ms', () => {
  assert.equal(tokenExpiry(unsignedToken({ sub: 'a', exp: 1_800_000_000 })), 1_800_000_000_000);
  assert.equal(tokenExpiry(unsignedToken({ sub: 'a', exp: 1_800_000_000.5 })), 1_800_000_000_500);
  // A payload whose base64url uses - and _ (and needs no padding stripped by hand).
  const tricky = unsignedToken({ sub: '\u00ff\u00fe>>>???', exp: 42 });
  assert.match(tricky.split('.')[1], /[-_]/);
  assert.equal(tokenExpiry(tricky), 42_000);
});

test('tokenExpiry is null for tokens without a usable exp', () => {
  assert.equal(tokenExpiry(unsignedToken({ sub: 'a' })), null);
  assert.equal(tokenExpiry(unsignedToken({ sub: 'a', exp: '1800000000' })), null);
  assert.equal(tokenExpiry('not-a-jwt'), null);
  assert.equal(tokenExpiry('a.%%%.c'), null);
  assert.equal(tokenExpiry(`x.${Buffer.from('[1]').toString('base64url')}.y`), null);
  assert.equal(tokenExpiry(undefined), null);
});

test('refreshDelay: refreshBeforeMs ahead of exp, halfway for short tokens, never < 1 s', () => {
  const now = 1_000_000;
  assert.equal(refreshDelay(now + 3_600_000, now, 60_000), 3_540_000);
  assert.equal(refreshDelay(now + 120_000, now, 60_000), 60_000);
  assert.equal(refreshDelay(now + 30_000, now, 60_000), 15_000); // lives < 2 x refreshBeforeMs
  assert.equal(refreshDelay(now + 500, now, 60_000), 1000);
  assert.equal(refreshDelay(now - 10_000, now, 60_000), 1000); // already expired
  assert.equal(refreshDelay(null, now, 60_000), Infinity);
});

test('the client sends a new auth message on the open socket before the token expires', async () => {
  const clock = new FakeClock();
  const { FakeWebSocket, sockets } = fakeSockets();
  let issued = 0;
  const client = createClient({
    url: 'http://relay.test',
    token: async () => {
      issued += 1;
      return unsignedToken({ sub: 'alice', n: issued, exp: (clock.now() + 300_000) / 1000 });
    },
    WebSocket: FakeWebSocket,
    timers: clock,
    now: clock.now,
    pingIntervalMs: 0,
  });
  await sockets[0].accept();
  const auths = () => sockets[0].of('auth').map((m) => JSON.parse(atob(m.token.split('.')[1])).n);
  assert.deepEqual(auths(), [1]);
  await clock.advance(239_000); // the token lives 300 s: refreshed 60 s before, at 240 s
  assert.deepEqual(auths(), [1]);
  await clock.advance(1_000);
  assert.deepEqual(auths(), [1, 2]);
  await clock.advance(240_000);
  assert.deepEqual(auths(), [1, 2, 3]);
  assert.equal(sockets.length, 1);
  assert.equal(client.state, 'live');
  client.close();
  assert.equal(clock.pending, 0);
});
