// Driven by tests/supabase/test_restart.py over stdin/stdout: a realtime-js app (resumable or
// not) whose relay is restarted under it; prints what its callbacks received, as JSON lines.
import { createInterface } from 'node:readline';
import { resumable } from '../../../clients/js/src/supabase.js';
import { client, subscribed, userToken } from '../testlib.js';

const [user, mode] = process.argv.slice(2);
const lines = createInterface({ input: process.stdin });
const say = (value) => process.stdout.write(JSON.stringify(value) + '\n');
const statuses = [];
const got = [];
const realtime = client({ token: userToken(user) });
let channel = realtime.channel('restart')
  .on('postgres_changes', { event: 'INSERT', schema: 'public', table: 'thumbnails' },
    (p) => got.push(p.new.title));
if (mode === 'resume') channel = resumable(channel, { onReset: (reason) => say({ reset: reason }) });
await new Promise((resolve) => channel.subscribe((status) => {
  statuses.push(status);
  if (status === 'SUBSCRIBED') resolve();
}));
say({ subscribed: true });
for await (const line of lines) {
  const command = JSON.parse(line);
  if (command.report) say({ got, statuses });
  if (command.wait) {
    const deadline = Date.now() + 20_000;
    while (got.length < command.wait && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    await new Promise((r) => setTimeout(r, 300));
    say({ got, statuses });
  }
  if (command.exit) break;
}
await realtime.disconnect();
process.exit(0);
