/**
 * Reconnect delays: exponential backoff with full jitter.
 *
 * The n-th retry (n = 0, 1, 2...) waits a uniformly random time in
 * [0, min(capMs, initialMs * 2^n)], so a crowd of clients that lost the relay at the same moment
 * spreads its reconnects over the whole window instead of arriving in waves.
 */

export const DEFAULT_BACKOFF = Object.freeze({ initialMs: 500, capMs: 30_000 });

/** The upper bound of the n-th delay: min(capMs, initialMs * 2^attempt). */
export function backoffCeiling(attempt, { initialMs = 500, capMs = 30_000 } = {}) {
  const n = Math.max(0, Math.floor(attempt));
  // 2^n overflows to Infinity long after it passed any cap: min() handles it.
  return Math.min(capMs, initialMs * 2 ** Math.min(n, 1024));
}

/** A delay for the n-th retry: random() * ceiling; `random` returns a number in [0, 1). */
export function backoffDelay(attempt, options = {}, random = Math.random) {
  return random() * backoffCeiling(attempt, options);
}
