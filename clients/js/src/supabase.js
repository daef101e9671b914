// Resume for @supabase/realtime-js channels served by pgrelay (docs/supabase.md, "Resume").
//
// Supabase Realtime delivers changes only while the socket is up. pgrelay can replay what a
// channel missed during a drop: each postgres_changes binding that carries a `cursor` in the
// channel's join (null: from now) gets its pushes with their cursor, and a rejoin with the last
// one replays exactly the changes after it, or says reset when it cannot. `resumable(channel)`
// opts a channel's bindings in and keeps their cursors current; realtime-js itself rejoins after
// a drop, with the same join payload, so the cursors travel with it. Unmodified realtime-js:
// only its public objects are read (channel.bindings, the client's socket message hook).

/**
 * Opts a channel's postgres_changes bindings in to pgrelay's resume; call after the `.on(...)`
 * calls and before `subscribe()`. `onReset(reason, info)` is told when a binding's cursor could
 * not be replayed from (`cursor_expired`, `epoch_changed`): refetch what that binding shows.
 * (An overflow of the relay's queue for the socket errors the channel; realtime-js rejoins and
 * the binding resumes from its cursor, so no reset is needed.) Returns the channel.
 */
export function resumable(channel, { onReset = () => {}, cursors = {} } = {}) {
  const bindings = () => channel.bindings.postgres_changes ?? [];
  for (const binding of bindings()) {
    if (!('cursor' in binding.filter)) binding.filter.cursor = cursors[bindingKey(binding.filter)] ?? null;
  }
  const set = (ids, cursor) => {
    for (const binding of bindings()) {
      if (ids.includes(binding.id) && typeof cursor === 'string') binding.filter.cursor = cursor;
    }
  };
  channel.socket.socketAdapter.onMessage((message) => {
    if (message.topic !== channel.topic) return;
    const payload = message.payload ?? {};
    if (message.event === 'postgres_changes' && payload.cursor) {
      set(payload.ids ?? [], payload.cursor); // after the app's callbacks ran
    } else if (message.event === 'system' && payload.extension === 'postgres_changes') {
      for (const [id, cursor] of Object.entries(payload.cursors ?? {})) set([Number(id)], cursor);
      if (payload.reset) {
        set(payload.ids ?? [], payload.cursor);
        onReset(payload.reset, { ids: payload.ids ?? [], message: payload.message });
      }
    }
  });
  return channel;
}

/** The cursors of a resumable channel's bindings, to keep across a page reload (pass them back
 * as `resumable(channel, { cursors })`). */
export function channelCursors(channel) {
  const out = {};
  for (const binding of channel.bindings.postgres_changes ?? []) {
    if (typeof binding.filter.cursor === 'string') out[bindingKey(binding.filter)] = binding.filter.cursor;
  }
  return out;
}

function bindingKey({ event, schema, table, filter }) {
  return JSON.stringify([event ?? null, schema ?? null, table ?? null, filter ?? null]);
}
