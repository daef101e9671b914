/**
 * A subscription as a client with a socket of its own keeps it: the request as the app made
 * it, and its cursor, the one place it resumes from. Every frame handed to the app moves the
 * cursor on, and every (re)subscribe, on any transport, asks for what came after it (`since`).
 * Nothing else is queued: a subscription is sent again from its record each time a connection
 * becomes ready.
 */

/** The record of subscription `id` on `table`, with the app's options and handlers. */
export function subscriptionRecord(id, table, subOptions, handlers) {
  const { filter, ops, coalesceMs, schema, since } = subOptions;
  return {
    id,
    table,
    schema,
    filter,
    ops: ops === undefined ? undefined : [...ops],
    coalesceMs,
    cursor: since ?? null,
    handlers,
    sent: false, // the subscribe went out on the current socket
    poll: null, // its long-poll loop (longpoll.js), while polling
  };
}

/** The protocol v1 subscribe message of a subscription, resuming after its cursor. */
export function subscribeMessage(sub) {
  const message = { type: 'subscribe', id: sub.id, table: sub.table };
  if (sub.schema !== undefined) message.schema = sub.schema;
  if (sub.filter !== undefined) message.filter = sub.filter;
  if (sub.ops !== undefined) message.ops = sub.ops;
  if (sub.coalesceMs !== undefined) message.coalesce_ms = sub.coalesceMs;
  if (sub.cursor) message.since = sub.cursor;
  return message;
}

/** Hands an event to the app; its cursor is the subscription's from now. */
export function handEvent(sub, event, call) {
  if (typeof event?.cursor === 'string') sub.cursor = event.cursor;
  call(sub.handlers.onEvent, event);
}

/** Hands a reset to the app; its cursor (where the app's refetch stands) is the subscription's. */
export function handReset(sub, reason, cursor, call) {
  if (typeof cursor === 'string') sub.cursor = cursor;
  call(sub.handlers.onReset, { reason, cursor });
}

/** The long-poll request of a subscription after `since`, waiting at most `wait` seconds. */
export function pollRequest(pollUrl, sub, since, wait) {
  const u = new URL(pollUrl);
  u.searchParams.set('table', sub.table);
  if (sub.schema !== undefined) u.searchParams.set('schema', sub.schema);
  if (since) u.searchParams.set('since', since);
  if (sub.filter !== undefined) u.searchParams.set('filter', JSON.stringify(sub.filter));
  if (sub.ops !== undefined) u.searchParams.set('ops', sub.ops.join(','));
  u.searchParams.set('wait', String(wait));
  return u.href;
}
