/**
 * Keeping a query cache in step with row changes: the invalidation helper of @pgrelay/client
 * (createInvalidator) batches the keys to refetch; rules may also patch cached data at once
 * (`setQueryData`), so a change shows before any refetch. One adapter per cache library:
 * TanStack Query (queryCache) and SWR (swrCache); any object with invalidate(keys) and
 * set(key, update) works.
 *
 * A rule is createInvalidator's ({ table, schema?, filter?, ops?, columns?, when?, keys?,
 * resetKeys? }) with one more field:
 *   patch   [{ key, update }]: for each matching event, the cached data under `key` (or
 *           key(event)) becomes update(old, event). An event whose row was too large to send
 *           (truncated) cannot be applied: its key is invalidated instead. On a reset the
 *           static patch keys are invalidated, with resetKeys.
 * A list of rules with their keys is the app's canonical map from row changes to cache keys.
 */

import { createInvalidator } from '@pgrelay/client';

/** Subscribes the rules on `client` and applies them to `cache`; returns { flush, stop }. */
export function createCacheSync(client, rules, cache, options = {}) {
  if (typeof cache?.invalidate !== 'function' || typeof cache?.set !== 'function') {
    throw new TypeError('createCacheSync: cache needs invalidate(keys) and set(key, update)');
  }
  const { onError } = options;
  const report = (err) => {
    if (typeof onError === 'function') onError(err);
    else console.error('pgrelay: cache sync failed', err);
  };
  const invalidatorRules = rules.map((rule) => {
    const patches = rule.patch ?? [];
    const staticPatchKeys = patches.filter((p) => typeof p.key !== 'function').map((p) => p.key);
    const resetKeys = rule.resetKeys ?? [...(Array.isArray(rule.keys) ? rule.keys : []), ...staticPatchKeys];
    return {
      ...rule,
      resetKeys,
      keys(event) {
        const keys = typeof rule.keys === 'function' ? rule.keys(event) : (rule.keys ?? []);
        const stale = [];
        for (const { key, update } of patches) {
          const cacheKey = typeof key === 'function' ? key(event) : key;
          if (cacheKey === undefined || cacheKey === null) continue;
          if (event.row === null && event.op !== 'DELETE') {
            stale.push(cacheKey); // truncated: the row is refetched
            continue;
          }
          try {
            cache.set(cacheKey, (old) => update(old, event));
          } catch (err) {
            report(err);
            stale.push(cacheKey);
          }
        }
        return [...keys, ...stale];
      },
    };
  });
  return createInvalidator(client, invalidatorRules, {
    ...options,
    onInvalidate(keys) {
      cache.invalidate(keys);
      options.onInvalidate?.(keys);
    },
  });
}

/** TanStack Query: one invalidateQueries per batch (keys match as prefixes, as TanStack's own
 * queryKey filters do); patches with setQueriesData, so every query under the key is patched. */
export function queryCache(queryClient) {
  return {
    invalidate(keys) {
      queryClient.invalidateQueries({
        predicate: (query) => keys.some((key) => keyMatches(query.queryKey, key)),
      });
    },
    set(key, update) {
      queryClient.setQueriesData({ queryKey: key }, (old) => (old === undefined ? old : update(old)));
    },
  };
}

/** SWR: `mutate` from useSWRConfig() (or swr's global one). Keys are exact, as SWR's are. */
export function swrCache(mutate) {
  return {
    invalidate(keys) {
      for (const key of keys) mutate(key);
    },
    set(key, update) {
      mutate(key, (old) => (old === undefined ? old : update(old)), { revalidate: false });
    },
  };
}

/**
 * Applies a row change to a cached list of rows: an INSERT is appended, an UPDATE replaces its
 * row (merged over the cached one: columns the relay does not track are kept), a DELETE removes
 * it. Rows are matched on the primary key's columns (`old`, the key before the change, when the
 * event has it). A row that `belongs(row)` says is not of this list (another filter) is removed.
 * Anything but an array (nothing cached yet) is returned as is.
 */
export function patchRows(old, event, { belongs } = {}) {
  if (!Array.isArray(old)) return old;
  const key = event.old ?? event.pk ?? {};
  const columns = Object.keys(key);
  if (columns.length === 0) return old;
  const at = old.findIndex((row) => columns.every((c) => row?.[c] === key[c]));
  const leaves = event.row !== null && typeof belongs === 'function' && !belongs(event.row);
  if (event.op === 'DELETE' || leaves) return at < 0 ? old : old.filter((_, i) => i !== at);
  if (event.row === null) return old;
  if (at < 0) return [...old, event.row];
  const next = [...old];
  next[at] = { ...old[at], ...event.row };
  return next;
}

/** Whether `key` is a prefix of `queryKey`, objects in it matching when their listed fields
 * match (TanStack Query's partial key matching). */
export function keyMatches(queryKey, key) {
  if (!Array.isArray(key)) return partial(queryKey, key);
  if (!Array.isArray(queryKey) || key.length > queryKey.length) return false;
  return key.every((part, i) => partial(queryKey[i], part));
}

function partial(value, pattern) {
  if (pattern === value) return true;
  if (pattern === null || value === null || typeof pattern !== 'object' || typeof value !== 'object') return false;
  if (Array.isArray(pattern)) {
    return Array.isArray(value) && pattern.length === value.length && pattern.every((p, i) => partial(value[i], p));
  }
  return Object.keys(pattern).every((k) => partial(value[k], pattern[k]));
}
