/**
 * One socket per browser: the shell that carries out TabCore's actions (tabs.js) with Web Locks
 * (`navigator.locks`) and BroadcastChannel, and runs the leader's websocket client.
 *
 * A tab's client first asks its token provider for a token and reads its user (`sub`): the
 * group, and so the lock and the channels, are that user's. A token without a `sub` cannot be
 * matched with other tabs' users: that client keeps a socket of its own. It then holds a lock
 * of its own for its whole life (the leader waits on it to learn that the tab is gone), opens
 * its channels, says hello and queues for the group's lock. The lock is released by the
 * browser when the tab closes or crashes, and the next member in the queue leads.
 *
 * The leader's websocket client gets its tokens from the leader tab's provider while that
 * returns a token of the group's user; otherwise it borrows one from the followers (borrow.js).
 */

import { backoffDelay } from './backoff.js';
import { BORROW_MS, tokenLending } from './borrow.js';
import { RelayError, callbackCaller } from './errors.js';
import { stateCell, wakeOnBrowserSignals } from './status.js';
import { TabCore, groupName, memberName } from './tabs.js';
import { timerFactory } from './timers.js';
import { tokenSubject } from './token.js';

export { BORROW_MS };

/** The locks and BroadcastChannel to share tabs with, or null: the option shareTabs is false,
 * or the environment has no Web Locks or no BroadcastChannel (Node, old browsers, workers
 * without them). */
export function sharing(options) {
  if (options?.shareTabs === false) return null;
  const locks = options?.locks ?? globalThis.navigator?.locks;
  const Channel = options?.BroadcastChannel ?? globalThis.BroadcastChannel;
  if (typeof locks?.request !== 'function' || typeof Channel !== 'function') return null;
  return { locks, BroadcastChannel: Channel };
}

/** A tab's client in its user's group; createSocketClient makes the leader's websocket client
 * (and this tab's own when its token names no user). */
export function createSharedClient(options, { locks, BroadcastChannel: Channel }, createSocketClient) {
  const {
    url,
    token,
    onState,
    onError,
    random = Math.random,
    timers = globalThis,
    now = Date.now,
  } = options;
  const call = callbackCaller(onError); // an exception in an app callback never breaks us
  const member = randomId(random);
  const core = new TabCore(member);
  const timer = timerFactory(timers);
  const handlers = new Map(); // subscription id -> the app's handlers
  let nextId = 1;
  const state = stateCell('connecting', call, onState);
  let lastEventAt = null;
  let closed = false;

  let user = null;
  let group = null; // { name, control, own, channels, watches, stop, releaseLead, releaseOwn }
  let solo = null; // this tab's own client, when its token names no user
  const soloSubs = new Map(); // subscription id -> the solo client's unsubscribe

  let inner = null; // the leader's websocket client
  const innerSubs = new Map(); // route key -> unsubscribe
  const tokens = tokenLending({
    token,
    user: () => user,
    member,
    now,
    timer,
    closed: () => closed,
    ask: (n) => run(core.askToken(n)),
    post: (message) => channelTo(null)?.postMessage(message),
  });

  // -- plumbing -------------------------------------------------------------------------------

  /** Carries out the core's actions, in order. */
  function run(actions) {
    for (const action of actions) {
      switch (action.type) {
        case 'post':
          channelTo(action.to)?.postMessage(action.message);
          break;
        case 'deliver':
          deliver(action);
          break;
        case 'state':
          state.set(action.state);
          break;
        case 'connect':
          connect();
          break;
        case 'disconnect':
          inner?.close();
          inner = null;
          innerSubs.clear();
          break;
        case 'inner-subscribe':
          innerSubscribe(action);
          break;
        case 'inner-unsubscribe':
          innerSubs.get(action.key)?.();
          innerSubs.delete(action.key);
          break;
        case 'watch':
          watch(action.member);
          break;
        case 'unwatch':
          unwatch(action.member);
          break;
        case 'wake':
          inner?.reconnect();
          break;
        case 'lend-token':
          tokens.lend(action.to, action.n);
          break;
        case 'token':
          tokens.received(action.n, action.token);
          break;
        default:
          throw new Error(`pgrelay: unknown action ${action.type}`);
      }
    }
  }

  function deliver({ id, kind, payload }) {
    const h = handlers.get(id);
    if (h === undefined) return;
    if (kind === 'event') {
      lastEventAt = now();
      call(h.onEvent, payload.event);
    } else if (kind === 'subscribed') {
      call(h.onSubscribed, { cursor: payload.cursor });
    } else if (kind === 'reset') {
      call(h.onReset, { reason: payload.reason, cursor: payload.cursor });
    } else {
      handlers.delete(id);
      call(h.onError, new RelayError(payload.code, payload.message));
    }
  }

  // -- the group: channels and locks ------------------------------------------------------------

  function channelTo(to) {
    if (group === null) return null;
    if (to === null) return group.control;
    let channel = group.channels.get(to);
    if (channel === undefined) {
      channel = new Channel(memberName(group.name, to));
      group.channels.set(to, channel);
    }
    return channel;
  }

  function listen(channel) {
    channel.onmessage = (event) => {
      if (!closed) run(core.receive(event.data));
    };
    return channel;
  }

  async function join(name) {
    const stop = new AbortController();
    group = { name, control: null, own: null, channels: new Map(), watches: new Map(), stop,
      releaseLead: null, releaseOwn: null };
    const g = group;
    // Our own lock first: a leader that heard from us and asked for it must wait for our end.
    const held = await new Promise((resolve) => {
      locks
        .request(memberName(name, member), { signal: stop.signal }, () => {
          resolve(true);
          return new Promise((release) => {
            g.releaseOwn = release;
          });
        })
        .catch(() => resolve(false));
    });
    if (!held || closed) return;
    g.control = listen(new Channel(name));
    g.own = listen(new Channel(memberName(name, member)));
    run(core.start());
    locks
      .request(name, { signal: stop.signal }, () => {
        if (closed) return undefined;
        run(core.lead(now()));
        return new Promise((release) => {
          g.releaseLead = release;
        });
      })
      .catch(() => {}); // aborted by close()
  }

  /** Tells the core when a follower is gone: its own lock is granted to us. */
  function watch(other) {
    if (group === null || group.watches.has(other)) return;
    const abort = new AbortController();
    group.watches.set(other, abort);
    locks
      .request(memberName(group.name, other), { signal: abort.signal }, () => {
        if (!closed && !abort.signal.aborted) run(core.memberGone(other));
      })
      .catch(() => {}); // aborted: unwatched
  }

  function unwatch(other) {
    if (group === null) return;
    group.watches.get(other)?.abort();
    group.watches.delete(other);
    group.channels.get(other)?.close();
    group.channels.delete(other);
  }

  // -- the leader's websocket client ---------------------------------------------------------

  function connect() {
    inner = createSocketClient({
      ...options,
      shareTabs: false,
      token: tokens.leaderToken,
      onState: (next) => {
        if (!closed) run(core.innerState(next));
      },
    });
    run(core.innerState(inner.state));
  }

  function innerSubscribe({ key, spec, since }) {
    innerSubs.get(key)?.();
    const subOptions = { ...spec };
    delete subOptions.table;
    if (since) subOptions.since = since;
    const relay = (kind) => (payload) => {
      if (!closed) run(core.relay(key, kind, payload));
    };
    innerSubs.set(key, inner.subscribe(spec.table, subOptions, {
      onEvent: (event) => relay('event')({ event }),
      onSubscribed: relay('subscribed'),
      onReset: relay('reset'),
      onError: (error) => {
        innerSubs.delete(key);
        relay('error')({ code: error.code, message: error.message });
      },
    }));
  }

  // -- starting: who is the user? ---------------------------------------------------------------

  async function start() {
    for (let attempt = 0; !closed; attempt += 1) {
      try {
        const value = await token();
        if (typeof value !== 'string' || !value) throw new TypeError('the token provider must return a non-empty string');
        user = tokenSubject(value);
        break;
      } catch (err) {
        call(onError, new RelayError('token_failed', 'the token provider failed', { cause: err }));
        await new Promise((resolve) => timer().set(backoffDelay(attempt, options.backoff, random), resolve));
      }
    }
    if (closed) return;
    if (user === null) goSolo();
    else await join(groupName(endpointOf(url), user));
  }

  /** A token without a user: this tab keeps a socket of its own, subscriptions moved over. */
  function goSolo() {
    solo = createSocketClient({ ...options, shareTabs: false, onState: state.set });
    for (const sub of core.subs.values()) soloSubscribe(sub.id, sub.spec, sub.cursor);
    core.subs.clear();
    state.set(solo.state);
  }

  function soloSubscribe(id, spec, since) {
    const { table, ...subOptions } = spec;
    if (since) subOptions.since = since;
    const h = handlers.get(id);
    soloSubs.set(id, solo.subscribe(table, subOptions, {
      ...h,
      onError: (error) => {
        handlers.delete(id);
        soloSubs.delete(id);
        call(h.onError, error);
      },
    }));
  }

  // -- the app's side ---------------------------------------------------------------------------

  function subscribe(table, subOptions = {}, h = {}) {
    if (closed) throw new Error('pgrelay: the client is closed');
    if (typeof table !== 'string' || !table) throw new TypeError('subscribe: table is required');
    const { filter, ops, coalesceMs, schema, since } = subOptions;
    const spec = { table };
    if (schema !== undefined) spec.schema = schema;
    if (filter !== undefined) spec.filter = filter;
    if (ops !== undefined) spec.ops = [...ops];
    if (coalesceMs !== undefined) spec.coalesceMs = coalesceMs;
    const id = `s${nextId++}`;
    handlers.set(id, h);
    if (solo !== null) soloSubscribe(id, spec, since ?? null);
    else run(core.subscribe(id, spec, since ?? null));
    return function unsubscribe() {
      if (handlers.get(id) !== h) return;
      handlers.delete(id);
      if (solo !== null) {
        soloSubs.get(id)?.();
        soloSubs.delete(id);
      } else {
        run(core.unsubscribe(id));
      }
    };
  }

  function wake() {
    if (closed) return;
    if (solo !== null) solo.reconnect();
    else run(core.wake());
  }

  // A follower that becomes visible (or gets its network back) asks the leader to retry now:
  // the leader may be a background tab whose timers the browser slows down.
  const stopListening = wakeOnBrowserSignals(wake);

  function close() {
    if (closed) return;
    run(core.close()); // the leader says it resigns before its channels close
    closed = true;
    solo?.close();
    timer.clearAll();
    tokens.cancel();
    if (group !== null) {
      group.stop.abort();
      for (const abort of group.watches.values()) abort.abort();
      group.releaseLead?.();
      group.releaseOwn?.();
      for (const channel of [group.control, group.own, ...group.channels.values()]) channel?.close();
    }
    handlers.clear();
    stopListening();
    state.set('closed');
    state.clear();
  }

  start().catch((err) => call(onError, new RelayError('share_failed', 'could not join the other tabs', { cause: err })));

  return {
    subscribe,
    close,
    reconnect: wake,
    get state() {
      return state.value;
    },
    get lastEventAt() {
      return solo !== null ? solo.lastEventAt : lastEventAt;
    },
    watchState: state.watch,
    /** 'leader' (this tab holds the socket), 'follower', 'solo' (a socket of its own) or
     * 'joining'; 'closed' after close(). */
    get tabRole() {
      if (closed) return 'closed';
      if (solo !== null) return 'solo';
      if (group?.control == null) return 'joining';
      return core.role;
    },
  };
}

function randomId(random) {
  if (typeof globalThis.crypto?.randomUUID === 'function') return globalThis.crypto.randomUUID();
  return `${Date.now().toString(36)}-${Math.floor(random() * 2 ** 52).toString(36)}`;
}

/** The relay's websocket URL, the group's first half (the same relay under another spelling
 * is another group, which only costs a socket). */
function endpointOf(url) {
  const base = new URL(url, globalThis.location?.href);
  base.protocol = base.protocol === 'https:' ? 'wss:' : base.protocol === 'http:' ? 'ws:' : base.protocol;
  base.search = '';
  base.hash = '';
  return base.href.replace(/\/+$/, '');
}
