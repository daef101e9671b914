// Rows that leave or enter a filtered postgres_changes binding (issue 13's move-outs): Supabase
// Realtime sends such a binding nothing when an UPDATE takes a row out of its filter; pgrelay
// sends a DELETE carrying the old record's key only, and an INSERT with the new values when an
// UPDATE brings a row in (docs/supabase.md, section 2), through the unmodified realtime-js.
import assert from 'node:assert/strict';
import { after, describe, test } from 'node:test';
import { client, integration, q, sql, subscribed, userToken, waitFor } from '../testlib.js';

const clients = [];
after(async () => Promise.all(clients.map((c) => c.disconnect())));

describe('rows moving in and out of a filtered binding', integration, () => {
  test('a row leaving the filter is a DELETE with its key, one entering it an INSERT', async () => {
    const alice = `alice-moves-${process.pid}`;
    const realtime = client({ token: userToken(alice) });
    clients.push(realtime);
    const bindings = {
      p1: { event: '*', filter: 'project_id=eq.p1' },
      p1Updates: { event: 'UPDATE', filter: 'project_id=eq.p1' },
      clicks: { event: '*', filter: 'share_click_count=gt.5' },
      all: { event: '*' },
    };
    const got = Object.fromEntries(Object.keys(bindings).map((name) => [name, []]));
    let channel = realtime.channel('moves');
    for (const [name, binding] of Object.entries(bindings)) {
      channel = channel.on('postgres_changes', { schema: 'public', table: 'thumbnails', ...binding },
        ({ commit_timestamp, ...change }) => got[name].push(change));
    }
    await subscribed(channel);
    const where = `WHERE user_id = ${q(alice)} AND title = 'moving'`;
    await sql(
      `INSERT INTO thumbnails (user_id, project_id, title) VALUES (${q(alice)}, 'p1', 'moving')`,
      `UPDATE thumbnails SET project_id = 'p2' ${where}`, // out of p1
      `UPDATE thumbnails SET share_click_count = 9 ${where}`, // into clicks
      `UPDATE thumbnails SET project_id = 'p1' ${where}`, // back into p1
      `UPDATE thumbnails SET share_click_count = 2 ${where}`, // out of clicks
      `INSERT INTO thumbnails (user_id, project_id, title) VALUES (${q(alice)}, 'p9', 'probe')`,
    );
    // Changes arrive in commit order: once the probe is in, every earlier change is too.
    await waitFor(() => got.all.some((change) => change.new.title === 'probe'), { what: 'the probe' });
    const id = got.all[0].new.id;
    const row = (changes) => ({ id, user_id: alice, project_id: 'p1', title: 'moving', share_click_count: 0, ...changes });
    const base = { schema: 'public', table: 'thumbnails', errors: null };
    const insert = (values) => ({ ...base, eventType: 'INSERT', new: values, old: {} });
    const update = (values) => ({ ...base, eventType: 'UPDATE', new: values, old: { id } });
    const removal = { ...base, eventType: 'DELETE', new: {}, old: { id } };
    assert.deepEqual(got.p1, [
      insert(row()),
      removal,
      insert(row({ share_click_count: 9 })),
      update(row({ share_click_count: 2 })),
    ]);
    assert.deepEqual(got.p1Updates, [update(row({ share_click_count: 2 }))]);
    assert.deepEqual(got.clicks, [
      insert(row({ project_id: 'p2', share_click_count: 9 })),
      update(row({ share_click_count: 9 })),
      removal,
    ]);
    assert.deepEqual(got.all.map((change) => change.eventType),
      ['INSERT', 'UPDATE', 'UPDATE', 'UPDATE', 'UPDATE', 'INSERT']);
  });
});
