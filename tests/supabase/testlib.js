// Helpers for running the unmodified Supabase clients against a real relay, set by the
// environment (tests/supabase/test_realtime_js.py sets it):
//   RELAY_URL         the relay's base URL, e.g. http://127.0.0.1:8080
//   RELAY_JWT_SECRET  its HS256 secret (the "project's JWT secret"), to mint tokens here
//   RELAY_DSN         the database it relays, to write rows
//   RELAY_PYTHON      a Python with psycopg, which writes them
import { execFile } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { promisify } from 'node:util';
import { RealtimeClient } from '@supabase/realtime-js';
import { WebSocket } from 'ws';

export const RELAY_URL = process.env.RELAY_URL ?? '';
export const integration = RELAY_URL ? {} : { skip: 'RELAY_URL is not set' };
export const REALTIME_URL = RELAY_URL.replace(/^http/, 'ws') + '/realtime/v1';

const run = promisify(execFile);

/** An HS256 JWT with these claims, valid for ttlS seconds, signed with node:crypto. */
export function jwt(claims, { ttlS = 3600, secret = process.env.RELAY_JWT_SECRET ?? '' } = {}) {
  const now = Math.floor(Date.now() / 1000);
  const part = (value) => Buffer.from(JSON.stringify(value)).toString('base64url');
  const body = `${part({ alg: 'HS256', typ: 'JWT' })}.${part({ iat: now, exp: now + ttlS, ...claims })}`;
  return `${body}.${createHmac('sha256', secret).update(body).digest('base64url')}`;
}

/** Supabase's anon key: role anon, no sub. */
export const anonKey = () => jwt({ role: 'anon', iss: 'supabase' }, { ttlS: 10 * 365 * 86400 });
/** A signed-in user's access token. */
export const userToken = (sub, ttlS = 3600) => jwt({ sub, role: 'authenticated' }, { ttlS });

/** A RealtimeClient as supabase-js builds it: apikey the anon key, the user's token set. */
export function client({ token, vsn, ...options } = {}) {
  const realtime = new RealtimeClient(REALTIME_URL, {
    params: { apikey: anonKey(), ...(vsn ? { vsn } : {}) },
    transport: WebSocket,
    heartbeatIntervalMs: 25_000,
    ...options,
  });
  if (token) realtime.setAuth(token);
  return realtime;
}

/** Subscribes a channel; resolves with its status once SUBSCRIBED, rejects on an error. */
export function subscribed(channel) {
  return new Promise((resolve, reject) => {
    channel.subscribe((status, err) => {
      if (status === 'SUBSCRIBED') resolve(status);
      else if (status === 'CHANNEL_ERROR' || status === 'TIMED_OUT') reject(err ?? new Error(status));
    });
  });
}

const WRITE = [
  'import sys, psycopg',
  'with psycopg.connect(sys.argv[1], autocommit=True) as conn:',
  '    for statement in sys.argv[2:]:',
  '        conn.execute(statement)',
].join('\n');

/** Runs SQL statements in the relayed database, each committed on its own. */
export async function sql(...statements) {
  const python = process.env.RELAY_PYTHON || 'python3';
  await run(python, ['-c', WRITE, process.env.RELAY_DSN ?? '', ...statements]);
}

export const q = (s) => `'${String(s).replace(/'/g, "''")}'`;

export async function waitFor(predicate, { timeoutMs = 10_000, what = 'a condition' } = {}) {
  const deadline = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
