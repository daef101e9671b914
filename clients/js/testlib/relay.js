// Helpers for the tests against a real relay, configured by the environment:
//   RELAY_URL         the relay's base URL, e.g. http://127.0.0.1:8080 (unset: those tests skip)
//   RELAY_JWT_SECRET  its HS256 secret, to mint tokens here
//   RELAY_DSN         the database it relays, to write rows
//   RELAY_PYTHON      a Python with psycopg, which writes them
import { execFile } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { promisify } from 'node:util';
import { WebSocket } from 'ws';

export const RELAY_URL = process.env.RELAY_URL ?? '';
export const integration = RELAY_URL ? {} : { skip: 'RELAY_URL is not set' };

const run = promisify(execFile);

/** An HS256 JWT signed with node:crypto. */
export function mintToken(sub, { ttlS = 3600, secret = process.env.RELAY_JWT_SECRET ?? '' } = {}) {
  const now = Date.now() / 1000;
  const part = (value) => Buffer.from(JSON.stringify(value)).toString('base64url');
  const body = `${part({ alg: 'HS256', typ: 'JWT' })}.${part({ sub, iat: Math.floor(now), exp: now + ttlS })}`;
  const signature = createHmac('sha256', secret).update(body).digest('base64url');
  return `${body}.${signature}`;
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

const READ = [
  'import json, sys, psycopg',
  'with psycopg.connect(sys.argv[1]) as conn:',
  '    print(json.dumps([list(r) for r in conn.execute(sys.argv[2]).fetchall()], default=str))',
].join('\n');

/** The rows of one query in the relayed database, each as an array of its values. */
export async function rows(statement) {
  const python = process.env.RELAY_PYTHON || 'python3';
  const { stdout } = await run(python, ['-c', READ, process.env.RELAY_DSN ?? '', statement]);
  return JSON.parse(stdout);
}

export function addThumbnail(user, title, project = 'p1') {
  const q = (s) => `'${s.replace(/'/g, "''")}'`;
  return `INSERT INTO thumbnails (user_id, project_id, title) VALUES (${q(user)}, ${q(project)}, ${q(title)})`;
}

export async function waitFor(predicate, { timeoutMs = 10_000, what = 'a condition' } = {}) {
  const deadline = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * A `ws` WebSocket whose connections can be refused at will: while `gate.down`, it dials a port
 * nothing listens on, so the handshake fails as when the relay is unreachable.
 */
export function gatedWebSocket() {
  const gate = { down: false, sockets: [], opens: [] };
  gate.WebSocket = class GatedWebSocket extends WebSocket {
    constructor(url, ...rest) {
      super(gate.down ? 'ws://127.0.0.1:1/v1/ws' : url, ...rest);
      gate.sockets.push(this);
      gate.opens.push(performance.now());
    }
  };
  return gate;
}
