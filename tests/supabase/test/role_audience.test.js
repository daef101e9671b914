// Audiences naming a role: a public gallery for anonymous visitors (the anon key alone) and
// signed-in users, private rows for their owner only. The gallery table and its audience
// function are set up by tests/supabase/test_realtime_js.py (GALLERY).
import assert from 'node:assert/strict';
import { after, describe, test } from 'node:test';
import { client, integration, q, sleep, sql, subscribed, userToken, waitFor } from '../testlib.js';

const clients = [];
after(async () => Promise.all(clients.map((c) => c.disconnect())));

async function watch(name, token, table = 'gallery') {
  const realtime = client(token ? { token } : {});
  clients.push(realtime);
  const got = [];
  const channel = realtime.channel(`${name}-${table}`)
    .on('postgres_changes', { event: '*', schema: 'public', table }, (p) => got.push(p.new.title ?? p.old.id));
  await subscribed(channel);
  return got;
}

describe('role audiences', integration, () => {
  test('public rows reach anonymous visitors and signed-in users; private rows only their owner', async () => {
    const owner = `dave-${process.pid}`;
    const anon = await watch('anon');
    const anonThumbs = await watch('anon', null, 'thumbnails');
    const carol = await watch('carol', userToken(`carol-${process.pid}`));
    const dave = await watch('dave', userToken(owner));
    await sql(
      `INSERT INTO gallery (owner, public, title) VALUES (${q(owner)}, true, 'sunset')`,
      `INSERT INTO gallery (owner, public, title) VALUES (${q(owner)}, false, 'diary')`,
      `INSERT INTO thumbnails (user_id, project_id, title) VALUES (${q(owner)}, 'p1', 'thumb')`,
    );
    await waitFor(() => dave.length >= 2 && anon.length >= 1 && carol.length >= 1, { what: 'the rows' });
    await sleep(500);
    assert.deepEqual({ anon, anonThumbs, carol, dave }, {
      anon: ['sunset'], anonThumbs: [], carol: ['sunset'], dave: ['sunset', 'diary'],
    });
  });
});

describe('rows leaving and entering a role audience', integration, () => {
  test('a public row made private is a DELETE with its key for the role holders, and back an INSERT', async () => {
    const owner = `erin-${process.pid}`;
    const watchers = {};
    for (const [name, token] of [['anon', null], ['frank', userToken(`frank-${process.pid}`)], ['erin', userToken(owner)]]) {
      const realtime = client(token ? { token } : {});
      clients.push(realtime);
      const got = [];
      const channel = realtime.channel(`hand-over-${name}`)
        .on('postgres_changes', { event: '*', schema: 'public', table: 'gallery', filter: `owner=eq.${owner}` },
          ({ commit_timestamp, ...change }) => got.push(change));
      await subscribed(channel);
      watchers[name] = got;
    }
    const where = `WHERE owner = ${q(owner)} AND title <> 'probe'`;
    await sql(
      `INSERT INTO gallery (owner, public, title) VALUES (${q(owner)}, true, 'harbour')`,
      `UPDATE gallery SET public = false ${where}`, // out of role:anon and role:authenticated
      `UPDATE gallery SET title = 'secret' ${where}`, // private: the owner only
      `UPDATE gallery SET public = true, title = 'harbour at night' ${where}`, // back in
      `INSERT INTO gallery (owner, public, title) VALUES (${q(owner)}, true, 'probe')`,
    );
    const done = (got) => got.some((change) => change.new.title === 'probe');
    await waitFor(() => Object.values(watchers).every(done), { what: 'the probe everywhere' });
    const id = watchers.erin[0].new.id;
    const base = { schema: 'public', table: 'gallery', errors: null };
    const row = (values) => ({ id, owner, public: true, title: 'harbour', ...values });
    const probe = { ...base, eventType: 'INSERT', new: { ...watchers.erin.at(-1).new }, old: {} };
    const visitor = [
      { ...base, eventType: 'INSERT', new: row(), old: {} },
      { ...base, eventType: 'DELETE', new: {}, old: { id } },
      { ...base, eventType: 'INSERT', new: row({ title: 'harbour at night' }), old: {} },
      probe,
    ];
    assert.deepEqual(watchers.anon, visitor);
    assert.deepEqual(watchers.frank, visitor);
    assert.deepEqual(watchers.erin, [
      { ...base, eventType: 'INSERT', new: row(), old: {} },
      { ...base, eventType: 'UPDATE', new: row({ public: false }), old: { id } },
      { ...base, eventType: 'UPDATE', new: row({ public: false, title: 'secret' }), old: { id } },
      { ...base, eventType: 'UPDATE', new: row({ title: 'harbour at night' }), old: { id } },
      probe,
    ]);
    assert.ok(!JSON.stringify([watchers.anon, watchers.frank]).includes('secret'));
  });
});
