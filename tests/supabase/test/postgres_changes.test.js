// The unmodified @supabase/realtime-js against a real relay and a real PostgreSQL: the
// postgres_changes API of an existing Supabase app, pointed at pgrelay.
import assert from 'node:assert/strict';
import { after, describe, test } from 'node:test';
import { postgresChangesFilter } from '@supabase/realtime-js';
import { client, integration, q, sleep, sql, subscribed, userToken, waitFor } from '../testlib.js';

const clients = [];
function open(options) {
  const realtime = client(options);
  clients.push(realtime);
  return realtime;
}
after(async () => Promise.all(clients.map((c) => c.disconnect())));

let n = 0;
const fresh = (name) => `${name}-${process.pid}-${++n}`; // a user of this test only
const insert = (user, title, project = 'p1') =>
  `INSERT INTO thumbnails (user_id, project_id, title) VALUES (${q(user)}, ${q(project)}, ${q(title)})`;

describe('postgres_changes through pgrelay', integration, () => {
  test('INSERT, UPDATE and DELETE each fire once with the payload Supabase sends', async () => {
    const alice = fresh('alice');
    const got = [];
    const channel = open({ token: userToken(alice) })
      .channel('room1')
      .on('postgres_changes', { event: '*', schema: 'public', table: 'thumbnails' }, (p) => got.push(p));
    await subscribed(channel);
    await sql(
      insert(alice, 'hello'),
      `UPDATE thumbnails SET title = 'changed' WHERE user_id = ${q(alice)}`,
      `DELETE FROM thumbnails WHERE user_id = ${q(alice)}`,
    );
    await waitFor(() => got.length >= 3, { what: 'three changes' });
    await sleep(300);
    assert.equal(got.length, 3);
    for (const change of got) {
      assert.match(change.commit_timestamp, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
    }
    const id = got[0].new.id;
    assert.equal(typeof id, 'number');
    const row = { id, user_id: alice, project_id: 'p1', title: 'hello', share_click_count: 0 };
    assert.deepEqual(
      got.map(({ commit_timestamp, ...rest }) => rest),
      [
        { schema: 'public', table: 'thumbnails', eventType: 'INSERT', new: row, old: {}, errors: null },
        { schema: 'public', table: 'thumbnails', eventType: 'UPDATE', new: { ...row, title: 'changed' },
          old: { id }, errors: null },
        { schema: 'public', table: 'thumbnails', eventType: 'DELETE', new: {}, old: { id }, errors: null },
      ],
    );
  });

  test('two users never see each other\'s rows', async () => {
    const [alice, bob] = [fresh('alice'), fresh('bob')];
    const seen = { [alice]: [], [bob]: [] };
    for (const user of [alice, bob]) {
      const channel = open({ token: userToken(user) })
        .channel('shared-name')
        .on('postgres_changes', { event: 'INSERT', schema: 'public', table: 'thumbnails' }, (p) =>
          seen[user].push(p.new.user_id));
      await subscribed(channel);
    }
    await sql(insert(alice, 'a1'), insert(bob, 'b1'), insert(alice, 'a2'));
    await waitFor(() => seen[alice].length >= 2 && seen[bob].length >= 1, { what: 'the rows' });
    await sleep(300);
    assert.deepEqual(seen, { [alice]: [alice, alice], [bob]: [bob] });
  });

  test('each event type and * select their changes, bindings of one channel apart', async () => {
    const alice = fresh('alice');
    const got = { INSERT: 0, UPDATE: 0, DELETE: 0, '*': 0 };
    let channel = open({ token: userToken(alice) }).channel('types');
    for (const event of Object.keys(got)) {
      channel = channel.on('postgres_changes', { event, schema: 'public', table: 'thumbnails' },
        (p) => { got[event] += 1; if (event !== '*') assert.equal(p.eventType, event); });
    }
    await subscribed(channel);
    await sql(insert(alice, 't'), `UPDATE thumbnails SET title = 'u' WHERE user_id = ${q(alice)}`,
      `UPDATE thumbnails SET title = 'v' WHERE user_id = ${q(alice)}`,
      `DELETE FROM thumbnails WHERE user_id = ${q(alice)}`);
    await waitFor(() => got['*'] >= 4, { what: 'four changes' });
    await sleep(300);
    assert.deepEqual(got, { INSERT: 1, UPDATE: 2, DELETE: 1, '*': 4 });
  });

  test('every filter operator, not. and comma AND select exactly their rows', async () => {
    const alice = fresh('alice');
    const titles = ['a', 'b', 'c', 'd', 'e'];
    const filters = {
      eq: 'title=eq.c',
      neq: 'title=neq.c',
      lt: 'title=lt.c',
      lte: 'title=lte.c',
      gt: 'title=gt.c',
      gte: 'title=gte.c',
      in: 'title=in.(a,e,zz)',
      notEq: 'title=not.eq.c',
      notIn: 'title=not.in.(a,e)',
      and: 'title=gt.a,title=lt.e,project_id=eq.p1',
      builder: postgresChangesFilter().in('title', ['b', 'd']).neq('project_id', 'p9').build(),
      quoted: 'title=in.("a",b)',
    };
    const got = Object.fromEntries(Object.keys(filters).map((name) => [name, []]));
    let channel = open({ token: userToken(alice) }).channel('filters');
    for (const [name, filter] of Object.entries(filters)) {
      channel = channel.on('postgres_changes',
        { event: 'INSERT', schema: 'public', table: 'thumbnails', filter },
        (p) => got[name].push(p.new.title));
    }
    await subscribed(channel);
    await sql(...titles.map((title) => insert(alice, title)));
    await waitFor(() => got.gte.length >= 3, { what: 'the gte rows' });
    await sleep(500);
    for (const list of Object.values(got)) list.sort();
    assert.deepEqual(got, {
      eq: ['c'], neq: ['a', 'b', 'd', 'e'], lt: ['a', 'b'], lte: ['a', 'b', 'c'],
      gt: ['d', 'e'], gte: ['c', 'd', 'e'], in: ['a', 'e'], notEq: ['a', 'b', 'd', 'e'],
      notIn: ['b', 'c', 'd'], and: ['b', 'c', 'd'], builder: ['b', 'd'], quoted: ['a', 'b'],
    });
  });

  test('an unsupported operator is a system error and matches nothing', async () => {
    const alice = fresh('alice');
    const system = [];
    const got = [];
    const channel = open({ token: userToken(alice) })
      .channel('bad-filter')
      .on('system', {}, (p) => system.push(p))
      .on('postgres_changes', { event: '*', schema: 'public', table: 'thumbnails',
        filter: 'title=like.a%' }, (p) => got.push(p));
    await subscribed(channel);
    await waitFor(() => system.length >= 1, { what: 'the system message' });
    await sql(insert(alice, 'abc'));
    await sleep(500);
    assert.deepEqual(system, [{
      extension: 'postgres_changes', status: 'error', channel: 'bad-filter',
      message: 'Error parsing `filter` params: operator like is not supported by pgrelay (use eq, neq, in, lt, lte, gt, gte)',
    }]);
    assert.deepEqual(got, []);
  });

  test('serializer 1.0.0 (JSON objects) works as 2.0.0 does', async () => {
    const alice = fresh('alice');
    const got = [];
    const channel = open({ token: userToken(alice), vsn: '1.0.0' })
      .channel('v1-serializer')
      .on('postgres_changes', { event: 'INSERT', schema: 'public', table: 'thumbnails' },
        (p) => got.push(p.new.title));
    await subscribed(channel);
    await sql(insert(alice, 'one'));
    await waitFor(() => got.length >= 1, { what: 'the insert' });
    assert.deepEqual(got, ['one']);
  });

  test('leave, then join the same topic again', async () => {
    const alice = fresh('alice');
    const realtime = open({ token: userToken(alice) });
    const got = [];
    const first = realtime.channel('again')
      .on('postgres_changes', { event: 'INSERT', schema: 'public', table: 'thumbnails' },
        (p) => got.push(`first:${p.new.title}`));
    await subscribed(first);
    assert.equal(await first.unsubscribe(), 'ok');
    await sql(insert(alice, 'while-away'));
    await sleep(300);
    const second = realtime.channel('again')
      .on('postgres_changes', { event: 'INSERT', schema: 'public', table: 'thumbnails' },
        (p) => got.push(`second:${p.new.title}`));
    await subscribed(second);
    await sql(insert(alice, 'back'));
    await waitFor(() => got.length >= 1, { what: 'the insert' });
    await sleep(300);
    assert.deepEqual(got, ['second:back']);
  });

  test('a refreshed token keeps the channel; an expired one closes it', async () => {
    const alice = fresh('alice');
    const realtime = open({ token: userToken(alice, 3) });
    const statuses = [];
    const system = [];
    const got = [];
    const channel = realtime.channel('expiry')
      .on('system', {}, (p) => system.push(p))
      .on('postgres_changes', { event: 'INSERT', schema: 'public', table: 'thumbnails' },
        (p) => got.push(p.new.title));
    await new Promise((resolve) => channel.subscribe((status) => {
      statuses.push(status);
      if (status === 'SUBSCRIBED') resolve();
    }));
    await realtime.setAuth(userToken(alice, 3600)); // pushes access_token to the channel
    await sleep(4000); // past the first token's exp
    await sql(insert(alice, 'after-refresh'));
    await waitFor(() => got.length >= 1, { what: 'a change after the refresh' });
    await realtime.setAuth(userToken(alice, 1));
    await waitFor(() => statuses.includes('CLOSED'), { timeoutMs: 15_000, what: 'CLOSED' });
    assert.deepEqual(got, ['after-refresh']);
    assert.deepEqual(system.at(-1), {
      extension: 'system', status: 'error', message: 'Token has expired', channel: 'expiry',
    });
  });

  test('a private channel is refused with its reason', async () => {
    const channel = open({ token: userToken(fresh('alice')) })
      .channel('secret', { config: { private: true } });
    await assert.rejects(subscribed(channel), /PrivateChannelsNotSupported/);
  });

  test('broadcast and presence are answered as unsupported; postgres_changes go on', async () => {
    const alice = fresh('alice');
    const got = [];
    const channel = open({ token: userToken(alice) })
      .channel('mixed', { config: { broadcast: { ack: true } } })
      .on('broadcast', { event: 'cursor' }, () => got.push('broadcast'))
      .on('postgres_changes', { event: 'INSERT', schema: 'public', table: 'thumbnails' },
        (p) => got.push(p.new.title));
    await subscribed(channel);
    const sent = await channel.send({ type: 'broadcast', event: 'cursor', payload: { x: 1 } });
    assert.equal(sent, 'error');
    await sql(insert(alice, 'still-here'));
    await waitFor(() => got.length >= 1, { what: 'the insert' });
    assert.deepEqual(got, ['still-here']);
  });
});
