// The bindings against a real relay and database (tests/clients/test_js_client.py starts both):
// a provider at the root, a Live indicator, and a TanStack Query list kept by the canonical map.
// Skipped when RELAY_URL is not set.
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import test, { afterEach } from 'node:test';
import { createElement as h, useState } from 'react';
import { act, cleanup, render, screen, waitFor } from '@testing-library/react';
import { QueryClient, QueryClientProvider, useQuery, useQueryClient } from '@tanstack/react-query';
import { WebSocket } from 'ws';
import { RelayProvider, patchRows, useQueryCacheSync, useRelayStatus, useSubscription } from '../src/index.js';
import { RELAY_URL, addThumbnail, integration, mintToken, rows, sql } from '../../js/testlib/relay.js';

afterEach(cleanup);

const RELAY_KEYS = [{ table: 'thumbnails', patch: [{ key: ['thumbnails'], update: patchRows }] }];

function Live() {
  const { state, live } = useRelayStatus({ tickMs: 0 });
  return h('span', { 'data-testid': 'live', 'data-live': String(live) }, state);
}

function Thumbnails() {
  const list = useQuery({ queryKey: ['thumbnails'], queryFn: async () => [], staleTime: Infinity });
  // The cache sync subscribes first; the relay confirms in order on the one socket, so when
  // the subscription below is confirmed, so is the sync's.
  useQueryCacheSync(useQueryClient(), RELAY_KEYS, { windowMs: 20 });
  const [ready, setReady] = useState(false);
  useSubscription('thumbnails', { ops: ['INSERT'] }, { onSubscribed: () => setReady(true) });
  return h('ul', { 'data-ready': String(ready) }, (list.data ?? []).map((r) => h('li', { key: r.id }, r.title)));
}

test('a provider, a Live indicator and a TanStack Query list, live from the database', integration, async () => {
  const user = `u-${randomUUID()}`;
  const queryClient = new QueryClient({ defaultOptions: { queries: { gcTime: Infinity } } });
  const options = { url: RELAY_URL, token: () => mintToken(user), WebSocket, shareTabs: false };
  const view = render(
    h(RelayProvider, { options }, h(Live), h(QueryClientProvider, { client: queryClient }, h(Thumbnails))),
  );
  try {
    const until = (check) => waitFor(() => assert.ok(check()), { timeout: 10_000 });
    await until(() => screen.getByRole('list').dataset.ready === 'true');
    assert.equal(screen.getByTestId('live').textContent, 'live');
    await sql(addThumbnail(user, 'first'), addThumbnail(`u-${randomUUID()}`, 'not-mine'), addThumbnail(user, 'second'));
    const titles = () => screen.queryAllByRole('listitem').map((li) => li.textContent);
    await until(() => titles().length >= 2);
    const expected = await rows(`SELECT title FROM thumbnails WHERE user_id = '${user}' ORDER BY id`);
    assert.deepEqual(titles(), expected.map((r) => r[0]));
  } finally {
    view.unmount();
    await act(() => new Promise((resolve) => setTimeout(resolve, 5)));
  }
});
