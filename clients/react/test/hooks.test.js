// The provider and hooks in a DOM (happy-dom, test/dom.js), with a client the test drives.
import assert from 'node:assert/strict';
import test, { afterEach } from 'node:test';
import { StrictMode, createElement as h, useState } from 'react';
import { act, cleanup, render, screen } from '@testing-library/react';
import { RelayProvider, useRelayStatus, useSubscription } from '../src/index.js';
import { cursor, fakeSockets, unsignedToken } from '../../js/testlib/fakes.js';

afterEach(cleanup);

const tick = () => act(() => new Promise((resolve) => setTimeout(resolve, 5)));

/** A client whose subscriptions and state the test sees and drives. */
function fakeClient() {
  const watchers = new Set();
  const client = {
    subs: [],
    state: 'connecting',
    lastEventAt: null,
    tabRole: 'follower',
    subscribe(table, options, handlers) {
      const sub = { table, options, handlers, active: true };
      client.subs.push(sub);
      return () => {
        sub.active = false;
      };
    },
    watchState(listener) {
      watchers.add(listener);
      return () => watchers.delete(listener);
    },
    set(state) {
      client.state = state;
      watchers.forEach((w) => w(state));
    },
    active: () => client.subs.filter((s) => s.active),
  };
  return client;
}

const event = (pos, title) => ({ type: 'event', cursor: cursor(pos), table: 'thumbnails', op: 'INSERT', pk: { id: pos }, row: { id: pos, title } });

function Titles({ filter, tag = '' }) {
  const [titles, setTitles] = useState([]);
  // A new handlers object (and options object) on every render: neither resubscribes.
  useSubscription('thumbnails', { filter, ops: ['INSERT'] }, {
    onEvent: (e) => setTitles((t) => [...t, `${tag}${e.row.title}`]),
  });
  return h('ul', null, titles.map((t) => h('li', { key: t }, t)));
}

const within = (client, children, strict = false) => {
  const tree = h(RelayProvider, { client }, children);
  return strict ? h(StrictMode, null, tree) : tree;
};

test('useSubscription: one subscription for the component’s life, the latest handlers called', async () => {
  const client = fakeClient();
  const view = render(within(client, h(Titles, { filter: { project_id: 'p1' } })));
  assert.equal(client.subs.length, 1);
  assert.deepEqual(client.subs[0].options, { filter: { project_id: 'p1' }, ops: ['INSERT'] });
  view.rerender(within(client, h(Titles, { filter: { project_id: 'p1' }, tag: '>' })));
  await act(async () => client.subs[0].handlers.onEvent(event(1, 'one')));
  assert.deepEqual(screen.getAllByRole('listitem').map((li) => li.textContent), ['>one']);
  assert.equal(client.subs.length, 1);
  view.unmount();
  await tick();
  assert.deepEqual(client.active(), []);
});

test('useSubscription under StrictMode’s double mount subscribes once', async () => {
  const client = fakeClient();
  const view = render(within(client, h(Titles, { filter: { project_id: 'p1' } }), true));
  await tick();
  assert.equal(client.subs.length, 1);
  assert.equal(client.active().length, 1);
  view.unmount();
  await tick();
  assert.equal(client.active().length, 0);
});

test('a filter change subscribes again once, and ends the old subscription at once', async () => {
  const client = fakeClient();
  const view = render(within(client, h(Titles, { filter: { project_id: 'p1' } }), true));
  await tick();
  view.rerender(within(client, h(Titles, { filter: { project_id: 'p2' } }), true));
  assert.equal(client.subs.length, 2);
  assert.deepEqual(client.active().map((s) => s.options.filter), [{ project_id: 'p2' }]);
  await tick();
  assert.equal(client.subs.length, 2);
  view.rerender(within(client, h(Titles, { filter: { project_id: 'p2' } }), true));
  await tick();
  assert.equal(client.subs.length, 2);
});

test('useSubscription waits for a client and for enabled', async () => {
  function Gated({ enabled }) {
    useSubscription('generations', { enabled }, {});
    return null;
  }
  const client = fakeClient();
  const view = render(within(client, h(Gated, { enabled: false })));
  assert.equal(client.subs.length, 0);
  view.rerender(within(client, h(Gated, { enabled: true })));
  assert.equal(client.active().length, 1);
  view.rerender(within(client, h(Gated, { enabled: false })));
  await tick();
  assert.equal(client.active().length, 0);
  render(h(Gated, { enabled: true })); // no provider: nothing to subscribe with, no error
});

function Live() {
  const s = useRelayStatus({ tickMs: 0 });
  return h('span', { 'data-testid': 'live', 'data-live': String(s.live), 'data-role': s.role },
    `${s.state}${s.lastEventAgeMs === null ? '' : ' last event'}`);
}

test('useRelayStatus follows the state for a Live indicator', async () => {
  const client = fakeClient();
  render(within(client, h(Live)));
  const badge = () => screen.getByTestId('live');
  assert.equal(badge().textContent, 'connecting');
  const seen = [];
  for (const state of ['live', 'reconnecting', 'polling', 'offline', 'live']) {
    act(() => client.set(state));
    seen.push([badge().textContent, badge().dataset.live]);
  }
  assert.deepEqual(seen, [['live', 'true'], ['reconnecting', 'false'], ['polling', 'true'], ['offline', 'false'], ['live', 'true']]);
  assert.equal(badge().dataset.role, 'follower');
  client.lastEventAt = Date.now() - 3_000;
  act(() => client.set('reconnecting'));
  assert.equal(badge().textContent, 'reconnecting last event');
});

test('useRelayStatus: the age of the last event, re-read every tick', async () => {
  const client = fakeClient();
  client.lastEventAt = Date.now() - 5_000;
  let status;
  function Probe() {
    status = useRelayStatus({ tickMs: 10 });
    return null;
  }
  render(within(client, h(Probe)));
  const first = status.lastEventAgeMs;
  assert.ok(first >= 5_000 && first < 6_000, String(first));
  await act(() => new Promise((resolve) => setTimeout(resolve, 40)));
  assert.ok(status.lastEventAgeMs > first);
});

test('RelayProvider with options owns one client: one socket under StrictMode, closed on unmount', async () => {
  const { FakeWebSocket, sockets } = fakeSockets();
  const options = {
    url: 'https://relay.test',
    token: () => unsignedToken({ sub: 'alice', exp: Date.now() / 1000 + 3600 }),
    WebSocket: FakeWebSocket,
    shareTabs: false,
  };
  const view = render(h(StrictMode, null, h(RelayProvider, { options }, h(Live), h(Titles, {}))));
  await tick();
  assert.equal(sockets.length, 1);
  await act(() => sockets[0].accept());
  assert.equal(screen.getByTestId('live').textContent, 'live');
  assert.deepEqual(sockets[0].of('subscribe').map((m) => m.table), ['thumbnails']);
  await act(async () => sockets[0].receive({ ...event(3, 'three'), sub: sockets[0].of('subscribe')[0].id }));
  assert.deepEqual(screen.getAllByRole('listitem').map((li) => li.textContent), ['three']);
  view.unmount();
  await tick();
  assert.equal(sockets[0].closedWith.reason, 'client_closed');
  assert.equal(sockets.length, 1);
});
