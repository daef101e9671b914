/**
 * React bindings for @pgrelay/client: a provider at the app root owning one client, hooks for
 * a Live indicator and for subscriptions, and cache sync for TanStack Query and SWR.
 *
 * Subscriptions and cache syncs made by a component end a moment after its effect is cleaned
 * up, not at once: when the same hook runs its effect again with the same subscription (React's
 * StrictMode mounts every component twice in development), it keeps the one it has. A change of
 * table or options ends the old subscription and makes the new one right away.
 */

import {
  createContext,
  createElement,
  useContext,
  useEffect,
  useRef,
  useState,
  useSyncExternalStore,
} from 'react';
import { createClient } from '@pgrelay/client';
import { createCacheSync, queryCache, swrCache } from './cache.js';

export { createCacheSync, keyMatches, patchRows, queryCache, swrCache } from './cache.js';

const RelayContext = createContext(null);

/**
 * Makes one client available to the hooks below it. Either `client` (the app made it and
 * closes it) or `options` (createClient's; the provider makes the client on mount and closes it
 * on unmount; later changes of `options` are ignored: remount with another `key` to change).
 */
export function RelayProvider({ client, options, children }) {
  const [owned, setOwned] = useState(null);
  const hold = useRef(null); // { client, closing } across StrictMode's second mount
  const given = client ?? null;
  useEffect(() => {
    if (given !== null) return undefined;
    let entry = hold.current;
    if (entry !== null && entry.closing !== null) {
      clearTimeout(entry.closing);
      entry.closing = null;
    } else {
      entry = { client: createClient(options), closing: null };
      hold.current = entry;
    }
    setOwned(entry.client);
    return () => {
      entry.closing = setTimeout(() => {
        entry.client.close();
        if (hold.current === entry) hold.current = null;
      }, 0);
    };
  }, [given]); // options are read once, on mount
  return createElement(RelayContext.Provider, { value: given ?? owned }, children);
}

/** The provider's client; null until the provider has made it (its first effect). */
export function useRelayClient() {
  return useContext(RelayContext);
}

const noWatch = () => () => {};

/**
 * The connection as a Live indicator shows it: `state` (connecting, live, polling,
 * reconnecting, offline, closed), `live` (events flow: over a websocket or long-polls),
 * `lastEventAt` and `lastEventAgeMs` (the age of the last event handed to this tab, re-read
 * every `tickMs`; 0 turns the ticking off). `role` is this tab's part in sharing one socket.
 */
export function useRelayStatus({ tickMs = 1000 } = {}) {
  const client = useRelayClient();
  const watch = useMemoOnce(client, (c) => (notify) => (c.watchState ? c.watchState(notify) : () => {}));
  const state = useSyncExternalStore(
    watch ?? noWatch,
    () => client?.state ?? 'connecting',
    () => 'connecting',
  );
  const [now, setNow] = useState(() => Date.now());
  useEffect(() => {
    if (!(tickMs > 0)) return undefined;
    const handle = setInterval(() => setNow(Date.now()), tickMs);
    return () => clearInterval(handle);
  }, [tickMs]);
  const lastEventAt = client?.lastEventAt ?? null;
  return {
    state,
    live: state === 'live' || state === 'polling',
    connected: state === 'live',
    polling: state === 'polling',
    reconnecting: state === 'reconnecting' || state === 'connecting',
    offline: state === 'offline',
    lastEventAt,
    lastEventAgeMs: lastEventAt === null ? null : Math.max(0, Math.max(now, Date.now()) - lastEventAt),
    role: client?.tabRole ?? null,
  };
}

/**
 * Subscribes to a table's changes for the component's life. `handlers` ({ onEvent, onReset,
 * onError, onSubscribed }) may be new functions on every render: the latest ones are called.
 * The subscription is made again only when the table or the options change (compared by value);
 * `enabled: false` holds it off.
 */
export function useSubscription(table, options = {}, handlers = {}) {
  const client = useRelayClient();
  const latest = useRef(handlers);
  latest.current = handlers;
  const { enabled = true, filter, ops, coalesceMs, schema, since } = options;
  const spec = { filter, ops, coalesceMs, schema, since };
  const identity = JSON.stringify([table, filter ?? null, ops ?? null, coalesceMs ?? null, schema ?? null, since ?? null]);
  useLasting(client && enabled ? identity : null, client, () =>
    client.subscribe(table, clean(spec), {
      onEvent: (event) => latest.current.onEvent?.(event),
      onReset: (info) => latest.current.onReset?.(info),
      onError: (error) => latest.current.onError?.(error),
      onSubscribed: (info) => latest.current.onSubscribed?.(info),
    }),
  );
}

/**
 * Keeps a cache in step with row changes while the component is mounted (createCacheSync).
 * `rules` and `cache` are read when it starts: define the rules once (the app's canonical map)
 * and pass the same cache; a different `rules` array or cache object starts it again.
 */
export function useCacheSync(rules, cache, options = {}) {
  const client = useRelayClient();
  const latest = useRef(options);
  latest.current = options;
  const ids = useIdentity([rules, cache]);
  useLasting(client && cache ? ids : null, client, () => {
    const sync = createCacheSync(client, rules, cache, {
      windowMs: options.windowMs,
      maxKeys: options.maxKeys,
      onInvalidate: (keys) => latest.current.onInvalidate?.(keys),
      onReset: (info) => latest.current.onReset?.(info),
      onError: (err) => latest.current.onError?.(err),
    });
    return () => sync.stop();
  });
}

/** useCacheSync for TanStack Query: invalidations and patches on this QueryClient. */
export function useQueryCacheSync(queryClient, rules, options) {
  const cache = useMemoOnce(queryClient, queryCache);
  useCacheSync(rules, cache, options);
}

/** useCacheSync for SWR: `mutate` from useSWRConfig(). */
export function useSWRCacheSync(mutate, rules, options) {
  const cache = useMemoOnce(mutate, swrCache);
  useCacheSync(rules, cache, options);
}

// -- internals ------------------------------------------------------------------------------

/** Runs start() (which returns its stop function) while `identity` stays the same; a cleanup
 * followed at once by an effect with the same identity (StrictMode) keeps what runs. */
function useLasting(identity, client, start) {
  const live = useRef(null); // { identity, client, stop, ending }
  useEffect(() => {
    if (identity === null) return undefined;
    let current = live.current;
    if (current !== null && current.ending !== null && current.identity === identity && current.client === client) {
      clearTimeout(current.ending);
      current.ending = null;
    } else {
      if (current !== null) end(current);
      current = { identity, client, stop: start(), ending: null };
      live.current = current;
    }
    return () => {
      current.ending = setTimeout(() => {
        end(current);
        if (live.current === current) live.current = null;
      }, 0);
    };
  }, [identity, client]); // not start: new on each render, identity says when it changed
}

function end(entry) {
  if (entry.ending !== null) clearTimeout(entry.ending);
  entry.ending = null;
  if (entry.stopped) return;
  entry.stopped = true;
  entry.stop();
}

/** A string naming these objects by identity: the same objects give the same string. */
function useIdentity(objects) {
  const seen = useRef(new WeakMap());
  const next = useRef(1);
  return objects
    .map((object) => {
      if (object === null || (typeof object !== 'object' && typeof object !== 'function')) return String(object);
      if (!seen.current.has(object)) seen.current.set(object, next.current++);
      return `#${seen.current.get(object)}`;
    })
    .join(' ');
}

function useMemoOnce(input, make) {
  const memo = useRef(null);
  if (memo.current === null || memo.current.input !== input) memo.current = { input, value: input ? make(input) : null };
  return memo.current.value;
}

function clean(spec) {
  const out = {};
  for (const [k, v] of Object.entries(spec)) if (v !== undefined) out[k] = v;
  return out;
}
