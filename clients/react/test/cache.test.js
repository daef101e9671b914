// Cache sync: the canonical map from row changes to cache keys, with TanStack Query's real
// QueryClient and SWR's real cache, fed by a client the test drives.
import assert from 'node:assert/strict';
import test, { afterEach } from 'node:test';
import { createElement as h } from 'react';
import { act, cleanup, render, screen } from '@testing-library/react';
import { QueryClient, QueryClientProvider, useQuery, useQueryClient } from '@tanstack/react-query';
import useSWR, { SWRConfig, useSWRConfig } from 'swr';
import {
  RelayProvider,
  createCacheSync,
  keyMatches,
  patchRows,
  queryCache,
  useQueryCacheSync,
  useSWRCacheSync,
} from '../src/index.js';
import { cursor } from '../../js/testlib/fakes.js';

afterEach(cleanup);

// No garbage-collection timers: they would keep the test process alive for minutes.
const newQueryClient = () => new QueryClient({ defaultOptions: { queries: { gcTime: Infinity, retry: false } } });

const wait = (ms) => act(() => new Promise((resolve) => setTimeout(resolve, ms)));

function fakeClient() {
  const client = {
    subs: [],
    subscribe(table, options, handlers) {
      const sub = { table, options, handlers, active: true };
      client.subs.push(sub);
      return () => {
        sub.active = false;
      };
    },
    emit(table, event) {
      for (const sub of client.subs) if (sub.active && sub.table === table) sub.handlers.onEvent(event);
    },
    reset(table) {
      for (const sub of client.subs) if (sub.active && sub.table === table) sub.handlers.onReset({ reason: 'overflow', cursor: cursor(99) });
    },
  };
  return client;
}

const change = (op, row, extra = {}) => ({
  type: 'event', cursor: cursor(row?.id ?? 0), schema: 'public', table: 'thumbnails', op,
  pk: { id: row?.id ?? extra.id }, row, changed: op === 'UPDATE' ? ['title'] : [], ts: '2025-01-01T00:00:00Z', ...extra,
});

/** The app's canonical map: which cached queries each row change touches. */
const RELAY_KEYS = [
  {
    table: 'thumbnails',
    patch: [{ key: ['thumbnails', 'list'], update: patchRows }],
    keys: (e) => [['thumbnails', 'count'], ['thumbnail', e.pk.id]],
  },
];

test('patchRows inserts, replaces and removes rows by primary key, and leaves the uncached alone', () => {
  const rows = [{ id: 1, title: 'a', extra: true }, { id: 2, title: 'b' }];
  assert.deepEqual(patchRows(rows, change('INSERT', { id: 3, title: 'c' })).map((r) => r.id), [1, 2, 3]);
  assert.deepEqual(patchRows(rows, change('UPDATE', { id: 1, title: 'A' })), [{ id: 1, title: 'A', extra: true }, { id: 2, title: 'b' }]);
  assert.deepEqual(patchRows(rows, change('UPDATE', { id: 9, title: 'x' }, { old: { id: 2 } })).map((r) => r.id), [1, 9]);
  assert.deepEqual(patchRows(rows, change('DELETE', null, { id: 2 })).map((r) => r.id), [1]);
  assert.deepEqual(patchRows(rows, change('INSERT', { id: 1, title: 'again' })).length, 2);
  assert.deepEqual(patchRows(rows, change('UPDATE', { id: 2, p: 'x' }), { belongs: (r) => r.p !== 'x' }).map((r) => r.id), [1]);
  assert.equal(patchRows(undefined, change('INSERT', { id: 3 })), undefined);
  assert.equal(patchRows(rows, change('UPDATE', null, { id: 1, truncated: true })), rows);
});

test('keyMatches: prefixes, with objects matched on their listed fields', () => {
  assert.ok(keyMatches(['thumbnails', { page: 1, size: 10 }], ['thumbnails']));
  assert.ok(keyMatches(['thumbnails', { page: 1, size: 10 }], ['thumbnails', { page: 1 }]));
  assert.ok(!keyMatches(['thumbnails', { page: 2 }], ['thumbnails', { page: 1 }]));
  assert.ok(!keyMatches(['thumbnail'], ['thumbnails']));
  assert.ok(!keyMatches(['thumbnails'], ['thumbnails', 1]));
  assert.ok(keyMatches('k', 'k'));
});

test('TanStack Query: a patch shows at once, invalidations come batched, a truncated row is refetched', async () => {
  const queryClient = newQueryClient();
  const client = fakeClient();
  const calls = [];
  const invalidate = queryClient.invalidateQueries.bind(queryClient);
  queryClient.invalidateQueries = (filters) => {
    calls.push(filters);
    return invalidate(filters);
  };
  queryClient.setQueryData(['thumbnails', 'list'], [{ id: 1, title: 'one' }]);
  queryClient.setQueryData(['thumbnails', 'count'], 1);
  queryClient.setQueryData(['thumbnail', 1], { id: 1, title: 'one' });
  queryClient.setQueryData(['thumbnail', 7], { id: 7 });
  const batches = [];
  const sync = createCacheSync(client, RELAY_KEYS, queryCache(queryClient), { windowMs: 20, onInvalidate: (keys) => batches.push(keys) });
  client.emit('thumbnails', change('INSERT', { id: 2, title: 'two' }));
  client.emit('thumbnails', change('UPDATE', { id: 1, title: 'ONE' }));
  assert.deepEqual(queryClient.getQueryData(['thumbnails', 'list']), [{ id: 1, title: 'ONE' }, { id: 2, title: 'two' }]);
  assert.equal(calls.length, 0);
  await new Promise((resolve) => setTimeout(resolve, 40));
  assert.deepEqual(batches, [[['thumbnails', 'count'], ['thumbnail', 2], ['thumbnail', 1]]]);
  assert.equal(calls.length, 1);
  const stale = (key) => queryClient.getQueryState(key).isInvalidated;
  assert.deepEqual([['thumbnails', 'count'], ['thumbnail', 1], ['thumbnail', 7], ['thumbnails', 'list']].map(stale), [true, true, false, false]);
  // A row too large to send cannot be patched: the list is refetched instead.
  client.emit('thumbnails', change('UPDATE', null, { id: 1, truncated: true }));
  sync.flush();
  assert.equal(stale(['thumbnails', 'list']), true);
  sync.stop();
  assert.equal(client.subs[0].active, false);
});

function Gallery() {
  const list = useQuery({ queryKey: ['thumbnails', 'list'], queryFn: async () => [{ id: 1, title: 'one' }] });
  useQueryCacheSync(useQueryClient(), RELAY_KEYS, { windowMs: 10 });
  return h('ul', null, (list.data ?? []).map((r) => h('li', { key: r.id }, r.title)));
}

test('TanStack Query end to end: a component’s list follows the rows, one subscription', async () => {
  const queryClient = newQueryClient();
  const client = fakeClient();
  const view = render(h(RelayProvider, { client }, h(QueryClientProvider, { client: queryClient }, h(Gallery))));
  await screen.findByText('one');
  await wait(5);
  assert.equal(client.subs.filter((s) => s.active).length, 1);
  const items = () => screen.getAllByRole('listitem').map((li) => li.textContent);
  await act(async () => client.emit('thumbnails', change('INSERT', { id: 2, title: 'two' })));
  await screen.findByText('two'); // TanStack Query notifies on its next tick
  assert.deepEqual(items(), ['one', 'two']);
  await act(async () => client.emit('thumbnails', change('DELETE', null, { id: 1 })));
  await wait(5);
  assert.deepEqual(items(), ['two']);
  view.unmount();
  await wait(5);
  assert.equal(client.subs.filter((s) => s.active).length, 0);
});

test('SWR: patches through mutate without revalidating, invalidations revalidate the key', async () => {
  const client = fakeClient();
  let fetches = 0;
  const rules = [{ table: 'thumbnails', patch: [{ key: '/thumbnails', update: patchRows }], keys: ['/count'] }];
  function List() {
    const { mutate } = useSWRConfig();
    useSWRCacheSync(mutate, rules, { windowMs: 10 });
    const list = useSWR('/thumbnails', async () => [{ id: 1, title: 'one' }]);
    const count = useSWR('/count', async () => {
      fetches += 1;
      return fetches;
    });
    return h('p', null, `${(list.data ?? []).map((r) => r.title).join(',')} | ${count.data ?? '-'}`);
  }
  render(h(RelayProvider, { client }, h(SWRConfig, { value: { provider: () => new Map(), dedupingInterval: 0 } }, h(List))));
  await screen.findByText('one | 1');
  await act(async () => client.emit('thumbnails', change('INSERT', { id: 2, title: 'two' })));
  await screen.findByText('one,two | 1');
  await wait(30);
  await screen.findByText('one,two | 2');
  await act(async () => client.reset('thumbnails'));
  await wait(30);
  await screen.findByText('one | 3'); // the reset revalidated the patched list and the count
});
