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
