import { MAX_TIMER_MS } from './token.js';

/** Timers that remember which are pending, so close() can clear every one of them. */
export function timerFactory(impl) {
  // Called as plain functions: a browser's setTimeout refuses another `this` than window.
  const setTimer = impl.setTimeout;
  const clearTimer = impl.clearTimeout;
  const pending = new Set();
  function timer() {
    let handle = null;
    const t = {
      set(ms, fn) {
        t.clear();
        const delay = Math.min(MAX_TIMER_MS, Math.max(0, ms));
        const h = setTimer(() => {
          if (handle !== h) return;
          handle = null;
          pending.delete(t);
          fn();
        }, delay);
        handle = h;
        pending.add(t);
      },
      clear() {
        if (handle === null) return;
        clearTimer(handle);
        handle = null;
        pending.delete(t);
      },
      get pending() {
        return handle !== null;
      },
    };
    return t;
  }
  timer.clearAll = () => {
    for (const t of [...pending]) t.clear();
  };
  return timer;
}
