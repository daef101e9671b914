/**
 * Token expiry and user, read from the JWT itself: the payload's `exp` (seconds since the epoch)
 * and `sub`. The signature is not checked: the relay does that; the client only needs to know
 * when to ask its token provider for a new one, and which tabs may share a socket.
 */

import { RelayError } from './errors.js';

/** setTimeout's largest delay (about 24.8 days); longer ones fire at once in browsers. */
export const MAX_TIMER_MS = 2 ** 31 - 1;

/** Shortest wait before asking for another token, so a provider handing out tokens that are
 * already (nearly) expired cannot make the client spin. */
export const MIN_REFRESH_MS = 1000;

/** The token's `exp` in milliseconds since the epoch, or null when it has none or is no JWT. */
export function tokenExpiry(token) {
  const exp = claims(token)?.exp;
  return typeof exp === 'number' && Number.isFinite(exp) ? exp * 1000 : null;
}

/** The token's user (`sub`), or null when it has none or is no JWT. Tabs share a socket only
 * with tabs of the same user. */
export function tokenSubject(token) {
  const sub = claims(token)?.sub;
  return typeof sub === 'string' && sub ? sub : null;
}

/** The JWT's payload, not verified, or null. */
function claims(token) {
  if (typeof token !== 'string') return null;
  const parts = token.split('.');
  if (parts.length !== 3) return null;
  try {
    const payload = JSON.parse(base64UrlDecode(parts[1]));
    return payload !== null && typeof payload === 'object' ? payload : null;
  } catch {
    return null;
  }
}

/**
 * How long to wait, from `nowMs`, before replacing a token that expires at `expMs`:
 * `refreshBeforeMs` ahead of its expiry, or halfway through what is left of a token that lives
 * less than twice that. Never less than MIN_REFRESH_MS; Infinity when the token has no expiry.
 */
export function refreshDelay(expMs, nowMs, refreshBeforeMs = 60_000) {
  if (expMs === null || expMs === undefined) return Infinity;
  const left = expMs - nowMs;
  const lead = Math.min(refreshBeforeMs, left / 2);
  return Math.max(MIN_REFRESH_MS, left - lead);
}

/**
 * The app's token provider behind a cache: `get()` answers from the cache while the token is
 * fresh (until refreshDelay says to replace it), else calls the provider, one call at once;
 * `get(true)` always calls it. A provider that throws or returns no string fails with a
 * RelayError `token_failed`.
 */
export function tokenCache(provider, { now, refreshBeforeMs }) {
  let cached = null; // { token, refreshAt }
  let pending = null;
  return {
    get(fresh = false) {
      if (!fresh && cached && now() < cached.refreshAt) {
        return Promise.resolve(cached.token);
      }
      if (!pending) {
        pending = (async () => {
          try {
            const value = await provider();
            if (typeof value !== 'string' || !value) {
              throw new TypeError('the token provider must return a non-empty string');
            }
            const at = now();
            cached = {
              token: value,
              refreshAt: at + refreshDelay(tokenExpiry(value), at, refreshBeforeMs),
            };
            return value;
          } catch (err) {
            throw err instanceof RelayError
              ? err
              : new RelayError('token_failed', 'the token provider failed', { cause: err });
          } finally {
            pending = null;
          }
        })();
      }
      return pending;
    },
    /** When `value` (a token this cache handed out) is due for replacement: now if it is no
     * longer the cached one. */
    refreshAt(value) {
      return cached?.token === value ? cached.refreshAt : now();
    },
    /** Drops the cached token (the relay refused it): the next get() asks the provider. */
    forget() {
      cached = null;
    },
  };
}

function base64UrlDecode(text) {
  const base64 = text.replace(/-/g, '+').replace(/_/g, '/');
  const padded = base64 + '='.repeat((4 - (base64.length % 4)) % 4);
  const binary = atob(padded);
  const bytes = Uint8Array.from(binary, (c) => c.charCodeAt(0));
  return new TextDecoder().decode(bytes);
}
