/**
 * The pgrelay client: one websocket (protocol v1) carrying every subscription, resumed by cursor
 * after any drop, with HTTP long-polling as the fallback when websockets do not get through.
 *
 * Nothing is queued for later sending: a subscription is (re)sent from the subscription table
 * each time a connection becomes ready, so what is buffered is bounded by what the app holds.
 *
 * In a browser with Web Locks and BroadcastChannel, the tabs of one user share one such client
 * (shared.js): createClient returns a tab's view of it, with the same interface.
 */

import { backoffDelay } from './backoff.js';
import { RelayError, callbackCaller } from './errors.js';
import { createSharedClient, sharing } from './shared.js';
import { sseTransport } from './sse.js';
import { timerFactory } from './timers.js';
import { MAX_TIMER_MS, refreshDelay, tokenExpiry } from './token.js';

export { RelayError };

const WS_PATH = '/v1/ws';
const POLL_PATH = '/v1/poll';
const SSE_PATH = '/v1/sse';
const OPEN = 1; // WebSocket.OPEN, the same in every implementation
const CLOSE_AUTH = 4001; // the relay refused or timed out the token
const CLOSE_CLIENT = 4000; // our own closes (ping timeout, token provider failed)
const MAX_POLL_WAIT_S = 25;
const QUICK_POLL_MS = 1000; // an empty answer faster than this waits this long before the next

/** The websocket, long-poll and SSE endpoints under a base URL (http(s) or ws(s), any path prefix). */
export function endpoints(url, pollUrl) {
  const base = new URL(url, globalThis.location?.href);
  const at = (path, schemes) => {
    const u = new URL(base.href);
    if (schemes[u.protocol]) u.protocol = schemes[u.protocol];
    u.pathname = u.pathname.replace(/\/+$/, '') + path;
    u.search = '';
    u.hash = '';
    return u.href;
  };
  const toHttp = { 'ws:': 'http:', 'wss:': 'https:' };
  return {
    ws: at(WS_PATH, { 'http:': 'ws:', 'https:': 'wss:' }),
    poll: pollUrl ? new URL(pollUrl, at('/', toHttp)).href : at(POLL_PATH, toHttp),
    sse: at(SSE_PATH, toHttp),
  };
}

/** A client: shared by the tabs of one user where the browser allows (option shareTabs), else
 * one socket of its own. */
export function createClient(options) {
  const { url, token } = options ?? {};
  if (typeof url !== 'string' || !url) throw new TypeError('createClient: url is required');
  if (typeof token !== 'function') throw new TypeError('createClient: token must be a function');
  if (![undefined, 'websocket', 'sse'].includes(options.transport)) {
    throw new TypeError("createClient: transport is 'websocket' or 'sse'");
  }
  const given = (name) => (options[name] === undefined ? globalThis[name] : options[name]);
  if (!given('WebSocket') && !given('fetch')) {
    throw new TypeError('createClient: no WebSocket (pass one, e.g. from "ws") and no fetch');
  }
  const apis = sharing(options);
  if (apis !== null) return createSharedClient(options, apis, createSocketClient);
  return createSocketClient(options);
}

/** A client with one websocket (or long-polls) of its own. */
function createSocketClient(options) {
  const {
    url,
    token,
    transport = 'websocket',
    WebSocket: webSocket = globalThis.WebSocket,
    fetch: fetchImpl = globalThis.fetch?.bind(globalThis),
    pollUrl,
    onState,
    onError,
    backoff = {},
    refreshBeforeMs = 60_000,
    stableMs = 10_000,
    fallbackAfter = 3,
    wsRetryMs = 30_000,
    pollWaitS = MAX_POLL_WAIT_S,
    openTimeoutMs = 15_000,
    pingIntervalMs = 20_000,
    pongTimeoutMs = 10_000,
    random = Math.random,
    timers = globalThis,
    now = Date.now,
  } = options ?? {};
  const call = callbackCaller(onError); // an exception in an app callback never breaks us
  const urls = endpoints(url, pollUrl);
  // The streaming transport: a websocket, or SSE over fetch shaped like one (sse.js).
  const streams =
    transport === 'sse' && fetchImpl
      ? sseTransport({
          url: urls.sse,
          fetch: fetchImpl,
          subscriptions: () => [...subs.values()].map(subscribeMessage),
          timers,
        })
      : null;
  const WS = transport === 'sse' ? streams && streams.open : webSocket;
  const backoffOptions = {
    initialMs: backoff?.initialMs ?? 500,
    capMs: backoff?.capMs ?? 30_000,
  };
  const timer = timerFactory(timers);
  const wait = Math.min(MAX_POLL_WAIT_S, Math.max(1, pollWaitS));

  /** id -> subscription; the only place subscriptions live. */
  const subs = new Map();
  let nextId = 1;

  let state = 'connecting';
  const watchers = new Set(); // watchState listeners
  let lastEventAt = null; // when an event was last handed to a subscription
  let closed = false;
  let everLive = false; // a connection got ready (or a poll answered) at least once
  let mode = WS ? 'ws' : 'poll';
  let pollUnsupported = !fetchImpl;

  let socket = null;
  let ready = false; // the relay accepted our token on `socket`
  let attempt = 0; // backoff attempts since the last stable connection
  let failedOpens = 0; // consecutive websockets that closed before `ready`
  let received = 0; // frames received on the current socket: the keepalive's evidence
  let receivedAtTick = 0;

  let cachedToken = null; // { token, refreshAt }
  let socketRefreshAt = Infinity; // when the token sent on `socket` is due for replacement
  let pendingToken = null;

  const reconnectTimer = timer();
  const openTimer = timer(); // a handshake or auth that hangs is given up
  const refreshTimer = timer();
  const stableTimer = timer();
  const pingTimer = timer();
  const pongTimer = timer();
  const wsRetryTimer = timer();

  // -- plumbing -------------------------------------------------------------------------------

  function setState(next) {
    if (next === state) return;
    state = next;
    call(onState, next);
    for (const listener of [...watchers]) call(listener, next);
  }

  function report(error) {
    if (typeof onError === 'function') call(onError, error);
  }


  function offline() {
    return globalThis.navigator?.onLine === false;
  }

  function waitingState() {
    if (offline()) return 'offline';
    return everLive ? 'reconnecting' : 'connecting';
  }

  /** A token from the cache while it is fresh, else from the app's provider (one call at once). */
  function getToken(fresh = false) {
    if (!fresh && cachedToken && now() < cachedToken.refreshAt) {
      return Promise.resolve(cachedToken.token);
    }
    if (!pendingToken) {
      pendingToken = (async () => {
        try {
          const value = await token();
          if (typeof value !== 'string' || !value) {
            throw new TypeError('the token provider must return a non-empty string');
          }
          const at = now();
          cachedToken = {
            token: value,
            refreshAt: at + refreshDelay(tokenExpiry(value), at, refreshBeforeMs),
          };
          return value;
        } catch (err) {
          throw err instanceof RelayError
            ? err
            : new RelayError('token_failed', 'the token provider failed', { cause: err });
        } finally {
          pendingToken = null;
        }
      })();
    }
    return pendingToken;
  }

  // -- websocket ------------------------------------------------------------------------------

  function send(message) {
    if (socket === null || socket.readyState !== OPEN) return false;
    socket.send(JSON.stringify(message));
    return true;
  }

  function connect() {
    if (closed || socket !== null || !WS) return;
    reconnectTimer.clear();
    wsRetryTimer.clear();
    if (mode === 'ws') setState(waitingState());
    let ws;
    try {
      ws = streams ? streams.open() : new WS(urls.ws);
    } catch (err) {
      report(new RelayError('connect_failed', 'could not create a WebSocket', { cause: err }));
      socketGone(CLOSE_CLIENT, 'constructor_failed', true);
      return;
    }
    socket = ws;
    received = 0;
    receivedAtTick = 0;
    openTimer.set(openTimeoutMs, () => {
      if (socket === ws && !ready) dropSocket('open_timeout', true);
    });
    const tokenPromise = getToken();
    tokenPromise.catch(() => {}); // handled in onopen; the socket may never open
    ws.onopen = () => {
      tokenPromise.then(
        (value) => {
          if (socket !== ws) return;
          socketRefreshAt = refreshTime(value);
          send({ type: 'auth', token: value });
        },
        (err) => {
          if (socket !== ws) return;
          report(err);
          dropSocket('token_unavailable', false);
        },
      );
    };
    ws.onmessage = (event) => {
      if (socket === ws) receive(event.data);
    };
    ws.onclose = (event) => {
      if (socket !== ws) return;
      const code = event?.code ?? 1006;
      socketGone(code, event?.reason ?? '', !ready && code !== CLOSE_AUTH);
    };
    ws.onerror = () => {}; // a close event follows with what is known
  }

  /** Abandons the current socket at once (its close event is not waited for). */
  function dropSocket(reason, failedOpen) {
    const ws = socket;
    if (ws === null) return;
    ws.onopen = ws.onmessage = ws.onclose = null;
    ws.onerror = () => {};
    try {
      ws.close(CLOSE_CLIENT, reason);
    } catch {
      // already closing
    }
    socketGone(CLOSE_CLIENT, reason, failedOpen);
  }

  function socketGone(code, reason, failedOpen) {
    socket = null;
    ready = false;
    for (const t of [openTimer, refreshTimer, stableTimer, pingTimer, pongTimer]) t.clear();
    for (const sub of subs.values()) sub.sent = false;
    if (closed) return;
    if (code === CLOSE_AUTH) {
      cachedToken = null; // the next attempt asks the provider for a new token
      report(new RelayError('auth_refused', `the relay refused the token: ${reason}`, { reason }));
      if (closed) return; // the app may close() from its onError handler
    }
    failedOpens = failedOpen ? failedOpens + 1 : failedOpens;
    if (mode === 'poll') {
      wsRetryTimer.set(wsRetryMs, connect);
      return;
    }
    if (!pollUnsupported && failedOpens >= fallbackAfter) {
      startPolling();
      return;
    }
    scheduleReconnect();
  }

  function scheduleReconnect() {
    const delay = backoffDelay(attempt, backoffOptions, random);
    attempt += 1;
    setState(waitingState());
    reconnectTimer.set(delay, connect);
  }

  function receive(data) {
    received += 1;
    let frame;
    try {
      frame = JSON.parse(typeof data === 'string' ? data : String(data));
    } catch {
      frame = null;
    }
    if (frame === null || typeof frame !== 'object') {
      report(new RelayError('bad_frame', 'the relay sent a frame that is not a JSON object'));
      return;
    }
    const sub = subs.get(frame.type === 'event' || frame.type === 'reset' ? frame.sub : frame.id);
    switch (frame.type) {
      case 'event':
        if (sub) {
          const { sub: _id, ...event } = frame;
          deliverEvent(sub, event);
        }
        return;
      case 'subscribed':
        if (sub) {
          sub.cursor = frame.cursor;
          call(sub.handlers.onSubscribed, { cursor: frame.cursor });
        }
        return;
      case 'reset':
        if (sub) deliverReset(sub, frame.reason, frame.cursor);
        return;
      case 'error':
        if (frame.id !== undefined && frame.request !== 'unsubscribe') {
          // A refused subscribe names its id: that subscription failed. (A refused unsubscribe
          // names the id too, with request 'unsubscribe': never a live subscription's failure.)
          if (sub) endSubscription(sub, new RelayError(frame.code, frame.message));
        } else {
          report(new RelayError(frame.code, frame.message));
        }
        return;
      case 'ready':
        onReady();
        return;
      default: // pong, unsubscribed, auth_ok: nothing to do beyond counting as a sign of life
    }
  }

  function onReady() {
    ready = true;
    everLive = true;
    failedOpens = 0;
    openTimer.clear();
    if (mode === 'poll') stopPolling(); // polls hand their cursors over to the socket
    mode = 'ws';
    reconnectTimer.clear();
    wsRetryTimer.clear();
    stableTimer.set(stableMs, () => {
      attempt = 0;
    });
    scheduleRefresh();
    armKeepalive();
    for (const sub of [...subs.values()]) {
      if (!sub.sent) sendSubscribe(sub);
    }
    setState('live');
  }

  function subscribeMessage(sub) {
    const message = { type: 'subscribe', id: sub.id, table: sub.table };
    if (sub.schema !== undefined) message.schema = sub.schema;
    if (sub.filter !== undefined) message.filter = sub.filter;
    if (sub.ops !== undefined) message.ops = sub.ops;
    if (sub.coalesceMs !== undefined) message.coalesce_ms = sub.coalesceMs;
    if (sub.cursor) message.since = sub.cursor;
    return message;
  }

  function sendSubscribe(sub) {
    sub.sent = send(subscribeMessage(sub));
  }

  function refreshTime(value) {
    return cachedToken?.token === value ? cachedToken.refreshAt : now();
  }

  function scheduleRefresh() {
    if (socketRefreshAt === Infinity) return;
    const delay = socketRefreshAt - now();
    if (delay > MAX_TIMER_MS) {
      refreshTimer.set(MAX_TIMER_MS, scheduleRefresh);
      return;
    }
    refreshTimer.set(delay, refresh);
  }

  /** Replaces the token on the open socket before the relay closes it for expiry. */
  async function refresh() {
    const ws = socket;
    let value;
    try {
      value = await getToken(true);
    } catch (err) {
      report(err);
      if (socket === ws && ready) refreshTimer.set(5_000, refresh); // until the relay closes 4001
      return;
    }
    if (socket !== ws || !ready) return;
    socketRefreshAt = refreshTime(value);
    send({ type: 'auth', token: value });
    scheduleRefresh();
  }

  function armKeepalive() {
    if (pingIntervalMs > 0) pingTimer.set(pingIntervalMs, keepaliveTick);
  }

  function keepaliveTick() {
    if (!ready) return;
    if (received === receivedAtTick) checkAlive();
    receivedAtTick = received;
    armKeepalive();
  }

  /** Pings the relay; a socket that stays silent for pongTimeoutMs is dropped and reconnected. */
  function checkAlive() {
    if (!ready || pongTimer.pending) return;
    const before = received;
    send({ type: 'ping' });
    pongTimer.set(pongTimeoutMs, () => {
      if (ready && received === before) dropSocket('ping_timeout', false);
    });
  }

  // -- long-polling ---------------------------------------------------------------------------

  function startPolling() {
    mode = 'poll';
    reconnectTimer.clear();
    for (const sub of subs.values()) startPoll(sub);
    updatePollState();
    if (WS) wsRetryTimer.set(wsRetryMs, connect);
  }

  function stopPolling() {
    for (const sub of subs.values()) stopPoll(sub);
    wsRetryTimer.clear();
    mode = 'ws';
  }

  function startPoll(sub) {
    const loop = {
      timer: timer(),
      controller: null,
      attempt: 0,
      ok: false, // the last request was answered
      confirmed: false, // onSubscribed was called for this loop
      stopped: false,
    };
    sub.poll = loop;
    runPoll(sub, loop);
  }

  function stopPoll(sub) {
    const loop = sub.poll;
    if (!loop) return;
    loop.stopped = true;
    loop.timer.clear();
    loop.controller?.abort();
    sub.poll = null;
  }

  function updatePollState() {
    if (mode !== 'poll' || closed) return;
    let anyOk = subs.size === 0;
    for (const sub of subs.values()) anyOk ||= sub.poll?.ok === true;
    setState(anyOk ? 'polling' : waitingState());
  }

  function pollRequest(sub, since) {
    const u = new URL(urls.poll);
    u.searchParams.set('table', sub.table);
    if (sub.schema !== undefined) u.searchParams.set('schema', sub.schema);
    if (since) u.searchParams.set('since', since);
    if (sub.filter !== undefined) u.searchParams.set('filter', JSON.stringify(sub.filter));
    if (sub.ops !== undefined) u.searchParams.set('ops', sub.ops.join(','));
    u.searchParams.set('wait', String(wait));
    return u.href;
  }

  /** One long-poll request of one subscription, then the next, until stopPoll. */
  async function runPoll(sub, loop) {
    if (loop.stopped) return;
    const controller = new AbortController();
    loop.controller = controller;
    const guard = timer(); // a request the network silently lost must not hang forever
    guard.set((wait + 15) * 1000, () => controller.abort());
    const since = sub.cursor;
    const started = now();
    let status = 0;
    let body = null;
    try {
      const value = await getToken();
      if (loop.stopped) return;
      const response = await fetchImpl(pollRequest(sub, since), {
        headers: { Authorization: `Bearer ${value}` },
        signal: controller.signal,
      });
      status = response.status;
      body = await response.json().catch(() => null);
    } catch (err) {
      if (!loop.stopped && err instanceof RelayError) report(err);
      // network failure or timeout: retried below with backoff
    } finally {
      guard.clear();
      loop.controller = null;
    }
    if (loop.stopped || closed) return;

    if (status === 200 && body !== null && typeof body.cursor === 'string') {
      loop.attempt = 0;
      loop.ok = true;
      everLive = true;
      updatePollState();
      const events = Array.isArray(body.events) ? body.events : [];
      if (body.reset) {
        deliverReset(sub, body.reset.reason, body.cursor);
        if (!loop.confirmed && !loop.stopped) {
          call(sub.handlers.onSubscribed, { cursor: body.cursor });
        }
      } else {
        for (const event of events) {
          if (loop.stopped) return; // a callback unsubscribed or closed the client
          deliverEvent(sub, event);
        }
        if (loop.stopped) return;
        sub.cursor = body.cursor;
        if (!loop.confirmed) call(sub.handlers.onSubscribed, { cursor: body.cursor });
      }
      loop.confirmed = true;
      if (loop.stopped) return;
      const quick = !body.reset && since && events.length === 0 && now() - started < QUICK_POLL_MS;
      if (quick) loop.timer.set(QUICK_POLL_MS, () => runPoll(sub, loop));
      else runPoll(sub, loop);
      return;
    }
    if (status === 400) {
      endSubscription(sub, new RelayError(body?.code ?? 'bad_request', body?.error ?? 'bad request'));
      return;
    }
    if (status === 404) {
      // This relay has no long-polling: websockets only, from now on.
      pollUnsupported = true;
      report(new RelayError('poll_unavailable', 'the relay does not serve long-polling'));
      stopPolling();
      scheduleReconnect();
      return;
    }
    if (status === 401) {
      cachedToken = null;
      const reason = body?.reason ?? 'unknown';
      report(new RelayError('auth_refused', `the relay refused the token: ${reason}`, { reason }));
      if (closed) return; // the app may close() from its onError handler
    }
    loop.ok = false;
    updatePollState();
    loop.timer.set(backoffDelay(loop.attempt, backoffOptions, random), () => runPoll(sub, loop));
    loop.attempt += 1;
  }

  // -- subscriptions --------------------------------------------------------------------------

  function deliverEvent(sub, event) {
    if (typeof event?.cursor === 'string') sub.cursor = event.cursor;
    lastEventAt = now();
    call(sub.handlers.onEvent, event);
  }

  function deliverReset(sub, reason, cursor) {
    if (typeof cursor === 'string') sub.cursor = cursor;
    call(sub.handlers.onReset, { reason, cursor });
  }

  function endSubscription(sub, error) {
    subs.delete(sub.id);
    stopPoll(sub);
    updatePollState();
    call(sub.handlers.onError, error);
  }

  function subscribe(table, subOptions = {}, handlers = {}) {
    if (closed) throw new Error('pgrelay: the client is closed');
    if (typeof table !== 'string' || !table) throw new TypeError('subscribe: table is required');
    const { filter, ops, coalesceMs, schema, since } = subOptions;
    const sub = {
      id: `s${nextId++}`,
      table,
      schema,
      filter,
      ops: ops === undefined ? undefined : [...ops],
      coalesceMs,
      cursor: since ?? null,
      handlers,
      sent: false,
      poll: null,
    };
    subs.set(sub.id, sub);
    if (mode === 'poll') {
      startPoll(sub);
    } else if (ready) {
      sendSubscribe(sub);
    }
    return function unsubscribe() {
      if (subs.get(sub.id) !== sub) return;
      subs.delete(sub.id);
      stopPoll(sub);
      if (sub.sent && ready) send({ type: 'unsubscribe', id: sub.id });
      updatePollState();
    };
  }

  // -- waking up: page visible again, network back, or the app asks ----------------------------

  function wake() {
    if (closed) return;
    if (mode === 'ws') {
      if (ready) checkAlive();
      else if (socket === null) connect();
      return;
    }
    for (const sub of subs.values()) {
      const loop = sub.poll;
      if (loop?.timer.pending) {
        loop.timer.clear();
        runPoll(sub, loop);
      }
    }
    if (socket === null) connect();
  }

  const onVisibility = () => {
    if (globalThis.document?.visibilityState === 'visible') wake();
  };
  const onOffline = () => {
    if (ready) checkAlive();
    else if (state === 'connecting' || state === 'reconnecting') setState('offline');
  };
  const events = typeof globalThis.addEventListener === 'function' ? globalThis : null;
  const doc = typeof globalThis.document?.addEventListener === 'function' ? globalThis.document : null;
  events?.addEventListener('online', wake);
  events?.addEventListener('offline', onOffline);
  doc?.addEventListener('visibilitychange', onVisibility);

  function close() {
    if (closed) return;
    closed = true;
    for (const sub of subs.values()) stopPoll(sub);
    dropSocket('client_closed', false);
    timer.clearAll();
    subs.clear();
    events?.removeEventListener('online', wake);
    events?.removeEventListener('offline', onOffline);
    doc?.removeEventListener('visibilitychange', onVisibility);
    setState('closed');
    watchers.clear();
  }

  if (mode === 'poll') startPolling();
  else connect();

  return {
    subscribe,
    close,
    /** Tries again now instead of waiting out the backoff (a "retry now" button). */
    reconnect: wake,
    get state() {
      return state;
    },
    get lastEventAt() {
      return lastEventAt;
    },
    /** Calls listener(state) on every change of state; returns the function that stops it. */
    watchState(listener) {
      watchers.add(listener);
      return () => watchers.delete(listener);
    },
    tabRole: 'solo',
  };
}
