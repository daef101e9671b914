/** The relay's endpoints under the one URL an app is given. */

const WS_PATH = '/v1/ws';
const POLL_PATH = '/v1/poll';
const SSE_PATH = '/v1/sse';

/** The websocket, long-poll and SSE endpoints under a base URL (http(s) or ws(s), any path prefix). */
export function endpoints(url, pollUrl) {
  const base = new URL(url, globalThis.location?.href);
  const at = (path, schemes) => {
    const u = new URL(base.href);
    if (schemes[u.protocol]) u.protocol = schemes[u.protocol];
    u.pathname = u.pathname.replace(/\/+$/, '') + path;
    u.search = '';
    u.hash = '';
    return u.href;
  };
  const toHttp = { 'ws:': 'http:', 'wss:': 'https:' };
  return {
    ws: at(WS_PATH, { 'http:': 'ws:', 'https:': 'wss:' }),
    poll: pollUrl ? new URL(pollUrl, at('/', toHttp)).href : at(POLL_PATH, toHttp),
    sse: at(SSE_PATH, toHttp),
  };
}
