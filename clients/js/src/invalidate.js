/**
 * Cache invalidation from row changes: rules map a table's events to cache keys, and the keys
 * that pile up within one window are handed to the app once, de-duplicated.
 *
 * A rule: { table, schema?, filter?, ops?, columns?, when?, keys, resetKeys? }
 *   ops      only these operations ('INSERT', 'UPDATE', 'DELETE'); all when absent
 *   columns  an UPDATE matches only if it changed one of these (INSERT and DELETE always match,
 *            move-outs and entries too; so does an UPDATE whose row was too large to send,
 *            whose changes are unknown)
 *   when     (event) => boolean, a last say on whether the event matches
 *   keys     an array of cache keys, or (event) => array of cache keys. A key is whatever the
 *            cache uses: an array for TanStack Query (['thumbnails', 7]), a string for SWR
 *   resetKeys  keys to invalidate when the relay says events were missed (a reset); defaults to
 *            `keys` when that is an array. options.onReset is told as well.
 *
 * Rules with the same table, schema and filter share one subscription.
 */

export function createInvalidator(client, rules, options = {}) {
  const {
    windowMs = 500,
    maxKeys = 1000,
    onInvalidate,
    onReset,
    onError,
    timers = globalThis,
  } = options;
  if (typeof onInvalidate !== 'function') {
    throw new TypeError('createInvalidator: onInvalidate is required');
  }
  const setTimer = timers.setTimeout;
  const clearTimer = timers.clearTimeout;
  const pending = new Map(); // identity -> key, in arrival order
  let handle = null;
  let stopped = false;

  function add(keys) {
    if (!Array.isArray(keys)) return;
    for (const key of keys) {
      const id = identity(key);
      if (pending.has(id)) continue;
      pending.set(id, key);
      if (pending.size >= maxKeys) {
        flush(); // the bound: a burst touching this many keys is handed over at once
        continue;
      }
      if (handle === null) handle = setTimer(flush, windowMs);
    }
  }

  function flush() {
    if (handle !== null) {
      clearTimer(handle);
      handle = null;
    }
    if (pending.size === 0 || stopped) return;
    const keys = [...pending.values()];
    pending.clear();
    guard(() => onInvalidate(keys));
  }

  function guard(fn) {
    try {
      fn();
    } catch (err) {
      if (typeof onError === 'function') onError(err);
      else console.error('pgrelay: invalidation failed', err);
    }
  }

  const groups = new Map();
  for (const rule of rules) {
    if (!rule || typeof rule.table !== 'string') throw new TypeError('a rule needs a table');
    const id = JSON.stringify([rule.schema ?? null, rule.table, rule.filter ?? null]);
    if (!groups.has(id)) groups.set(id, []);
    groups.get(id).push(rule);
  }

  const unsubscribes = [];
  for (const group of groups.values()) {
    const { table, schema, filter } = group[0];
    const ops = group.every((r) => r.ops)
      ? [...new Set(group.flatMap((r) => r.ops))]
      : undefined;
    const subOptions = { ops };
    if (schema !== undefined) subOptions.schema = schema;
    if (filter !== undefined) subOptions.filter = filter;
    const unsubscribe = client.subscribe(table, subOptions, {
      onEvent(event) {
        for (const rule of group) {
          if (!matches(rule, event)) continue;
          guard(() => add(typeof rule.keys === 'function' ? rule.keys(event) : rule.keys));
        }
      },
      onReset({ reason }) {
        for (const rule of group) {
          add(rule.resetKeys ?? (Array.isArray(rule.keys) ? rule.keys : []));
        }
        if (typeof onReset === 'function') guard(() => onReset({ table, schema, reason }));
      },
      onError(error) {
        if (typeof onError === 'function') onError(error);
      },
    });
    unsubscribes.push(unsubscribe);
  }

  return {
    /** Hands the pending keys over now. */
    flush,
    /** Ends the subscriptions; pending keys are dropped, not handed over. */
    stop() {
      stopped = true;
      if (handle !== null) clearTimer(handle);
      handle = null;
      pending.clear();
      for (const unsubscribe of unsubscribes) unsubscribe();
    },
  };
}

/** Whether an event matches a rule's ops, columns and `when`. */
export function matches(rule, event) {
  if (rule.ops && !rule.ops.includes(event.op)) return false;
  if (rule.columns && event.op === 'UPDATE' && !event.truncated) {
    const changed = event.changed ?? [];
    if (!rule.columns.some((column) => changed.includes(column))) return false;
  }
  return typeof rule.when === 'function' ? Boolean(rule.when(event)) : true;
}

function identity(key) {
  try {
    return JSON.stringify(key) ?? String(key);
  } catch {
    return String(key);
  }
}
