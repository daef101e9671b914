// One socket per browser against a real relay and database (tests/clients/test_js_client.py
// starts both): tabs in one process with a Web Locks fake, Node's BroadcastChannel and `ws`.
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import test from 'node:test';
import { WebSocket } from 'ws';
import { createClient } from '../src/index.js';
import { RELAY_URL, addThumbnail, integration, mintToken, rows, sql, waitFor } from '../testlib/relay.js';
import { FakeLocks, fakeTab } from '../testlib/tabs.js';

test('three tabs, one socket; the leader crashes mid-stream and nothing is lost or repeated', integration, async () => {
  const user = `u-${randomUUID()}`;
  const locks = new FakeLocks();
  const tabs = ['t1', 't2', 't3'].map((name) => {
    const tab = fakeTab(locks, name, { WebSocket });
    tab.client = createClient({ url: RELAY_URL, token: () => mintToken(user), ...tab.options });
    tab.got = { ids: [], confirmed: 0 };
    tab.client.subscribe('thumbnails', {}, {
      onEvent: (e) => tab.got.ids.push(e.row.id),
      onSubscribed: () => {
        tab.got.confirmed += 1;
      },
    });
    return tab;
  });
  try {
    await waitFor(() => tabs.every((t) => t.got.confirmed === 1), { what: 'three confirmations' });
    assert.deepEqual(tabs.map((t) => t.client.tabRole), ['leader', 'follower', 'follower']);
    // Paced, so that the leader crashes in the middle of the stream.
    const writing = sql(...Array.from({ length: 40 }, (_, n) => [addThumbnail(user, `row-${n}`), 'SELECT pg_sleep(0.02)']).flat());
    await waitFor(() => tabs[1].got.ids.length >= 3, { what: 'the first events' });
    tabs[0].crash();
    await writing;
    const expected = (await rows(`SELECT id FROM thumbnails WHERE user_id = '${user}' ORDER BY id`)).map((r) => r[0]);
    assert.equal(expected.length, 40);
    await waitFor(() => tabs.slice(1).every((t) => t.got.ids.length >= 40), { what: 'every row in both tabs' });
    await sql(addThumbnail(user, 'last'));
    await waitFor(() => tabs.slice(1).every((t) => t.got.ids.length >= 41), { what: 'the last row' });
    for (const tab of tabs.slice(1)) assert.deepEqual(tab.got.ids.slice(0, 40), expected);
    assert.deepEqual(tabs[1].got.ids, tabs[2].got.ids);
    assert.equal(tabs[1].client.tabRole, 'leader');
    assert.ok(tabs[0].got.ids.length < 40);
  } finally {
    tabs.forEach((t) => t.client.close());
  }
});
