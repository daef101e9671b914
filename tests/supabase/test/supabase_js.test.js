// The same app code through supabase-js's createClient, pointed at pgrelay by its URL alone:
// createClient(relayUrl, anonKey) connects to <relayUrl>/realtime/v1/websocket.
import assert from 'node:assert/strict';
import { after, describe, test } from 'node:test';
import { createClient } from '@supabase/supabase-js';
import { WebSocket } from 'ws';
import { RELAY_URL, anonKey, integration, q, sleep, sql, subscribed, userToken, waitFor } from '../testlib.js';

const supabases = [];
after(async () => Promise.all(supabases.map((s) => s.removeAllChannels())));

describe('supabase-js createClient', integration, () => {
  test('supabase.channel(...).on("postgres_changes") receives the signed-in user\'s rows', async () => {
    const user = `sb-${process.pid}`;
    const supabase = createClient(RELAY_URL, anonKey(), {
      accessToken: async () => userToken(user), // the app's session token (third-party auth)
      realtime: { transport: WebSocket },
    });
    supabases.push(supabase);
    // createClient hands the token to realtime a few microtasks later; a channel subscribed in
    // the same tick joins with the apikey alone, on Supabase as here (an app subscribes later).
    await sleep(10);
    const got = [];
    const channel = supabase
      .channel('todos')
      .on('postgres_changes', { event: 'INSERT', schema: 'public', table: 'thumbnails' },
        (payload) => got.push([payload.eventType, payload.new.title]));
    await subscribed(channel);
    await sql(
      `INSERT INTO thumbnails (user_id, project_id, title) VALUES (${q(user)}, 'p1', 'mine')`,
      `INSERT INTO thumbnails (user_id, project_id, title) VALUES ('someone-else', 'p1', 'theirs')`,
    );
    await waitFor(() => got.length >= 1, { what: 'the insert' });
    await sleep(300);
    assert.deepEqual(got, [['INSERT', 'mine']]);
  });
});
