/**
 * The token on an open socket, replaced before the relay closes the socket for its expiry: a
 * fresh token from the provider is sent as another `auth` when the one in use is due
 * (tokenCache.refreshAt), and asked for again every 5 s while the provider fails.
 */

import { MAX_TIMER_MS } from './token.js';

const RETRY_MS = 5_000; // a failed refresh is tried again this often, until the relay closes 4001

/** The token refresh of one client's sockets. `socket()` is the current socket, `ready()` says
 * whether the relay accepted its token, `send(message)` sends on it. */
export function reauth({ timer, tokens, now, report, socket, ready, send }) {
  const refreshTimer = timer();
  let refreshAt = Infinity; // when the token sent on the socket is due for replacement

  function schedule() {
    if (refreshAt === Infinity) return;
    const delay = refreshAt - now();
    if (delay > MAX_TIMER_MS) {
      refreshTimer.set(MAX_TIMER_MS, schedule);
      return;
    }
    refreshTimer.set(delay, refresh);
  }

  /** Replaces the token on the open socket before the relay closes it for expiry. */
  async function refresh() {
    const ws = socket();
    let value;
    try {
      value = await tokens.get(true);
    } catch (err) {
      report(err);
      if (socket() === ws && ready()) refreshTimer.set(RETRY_MS, refresh);
      return;
    }
    if (socket() !== ws || !ready()) return;
    refreshAt = tokens.refreshAt(value);
    send({ type: 'auth', token: value });
    schedule();
  }

  return {
    /** `value` was sent as the socket's token. */
    sent(value) {
      refreshAt = tokens.refreshAt(value);
    },
    /** The socket got ready: refresh its token when due. */
    start: schedule,
    /** The socket is gone. */
    stop() {
      refreshTimer.clear();
    },
  };
}
