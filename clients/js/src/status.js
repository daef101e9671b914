/**
 * What every client shows the app, whether it has a socket of its own (socket.js) or is a tab's
 * view of a shared one (shared.js): its state, told to onState and to watchState's listeners,
 * and the browser's signals (page visible again, network back or gone) that wake it.
 */

/** The client's state: `set` tells onState and every watcher of a change (through `call`, so an
 * app callback that throws breaks nothing). */
export function stateCell(initial, call, onState) {
  let state = initial;
  const watchers = new Set();
  return {
    get value() {
      return state;
    },
    set(next) {
      if (next === state) return;
      state = next;
      call(onState, next);
      for (const listener of [...watchers]) call(listener, next);
    },
    /** Calls listener(state) on every change of state; returns the function that stops it. */
    watch(listener) {
      watchers.add(listener);
      return () => watchers.delete(listener);
    },
    clear() {
      watchers.clear();
    },
  };
}

/** The state of a client waiting for a connection: 'offline' while the browser says it is,
 * else 'reconnecting' once it was live, else 'connecting'. */
export function waitingState(everLive) {
  if (globalThis.navigator?.onLine === false) return 'offline';
  return everLive ? 'reconnecting' : 'connecting';
}

/** Calls wake() when the network comes back or the page becomes visible, and offline() (if
 * given) when the network goes; returns the function that stops listening. */
export function wakeOnBrowserSignals(wake, offline) {
  const onVisibility = () => {
    if (globalThis.document?.visibilityState === 'visible') wake();
  };
  const events = typeof globalThis.addEventListener === 'function' ? globalThis : null;
  const doc = typeof globalThis.document?.addEventListener === 'function' ? globalThis.document : null;
  events?.addEventListener('online', wake);
  if (offline) events?.addEventListener('offline', offline);
  doc?.addEventListener('visibilitychange', onVisibility);
  return () => {
    events?.removeEventListener('online', wake);
    if (offline) events?.removeEventListener('offline', offline);
    doc?.removeEventListener('visibilitychange', onVisibility);
  };
}
