/**
 * A client with one socket of its own: one websocket (protocol v1) carrying every subscription,
 * resumed by cursor after any drop (subscriptions.js), with HTTP long-polling (longpoll.js) as
 * the fallback when websockets do not get through, and SSE (sse.js) as the streaming transport
 * on request. client.js is the public face that makes one; shared.js makes one for the leader tab.
 */

import { backoffDelay } from './backoff.js';
import { endpoints } from './endpoints.js';
import { RelayError, callbackCaller } from './errors.js';
import { keepalive } from './keepalive.js';
import { MAX_POLL_WAIT_S, longPoller } from './longpoll.js';
import { reauth } from './reauth.js';
import { sseTransport } from './sse.js';
import { stateCell, waitingState, wakeOnBrowserSignals } from './status.js';
import { handEvent, handReset, subscribeMessage, subscriptionRecord } from './subscriptions.js';
import { timerFactory } from './timers.js';
import { tokenCache } from './token.js';

const OPEN = 1; // WebSocket.OPEN, the same in every implementation
const CLOSE_AUTH = 4001; // the relay refused or timed out the token
const CLOSE_CLIENT = 4000; // our own closes (ping timeout, token provider failed)

/** A client with one websocket (or long-polls) of its own. */
export function createSocketClient(options) {
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
  const tokens = tokenCache(token, { now, refreshBeforeMs });

  /** id -> subscription; the only place subscriptions live. */
  const subs = new Map();
  let nextId = 1;

  const state = stateCell('connecting', call, onState);
  let lastEventAt = null; // when an event was last handed to a subscription
  let closed = false;
  let everLive = false; // a connection got ready (or a poll answered) at least once
  let pollUnsupported = !fetchImpl;

  let socket = null;
  let ready = false; // the relay accepted our token on `socket`
  let attempt = 0; // backoff attempts since the last stable connection
  let failedOpens = 0; // consecutive websockets that closed before `ready`

  const reconnectTimer = timer();
  const openTimer = timer(); // a handshake or auth that hangs is given up
  const stableTimer = timer();
  const wsRetryTimer = timer();

  const alive = keepalive({
    timer,
    pingIntervalMs,
    pongTimeoutMs,
    ready: () => ready,
    ping: () => send({ type: 'ping' }),
    drop: () => dropSocket('ping_timeout', false),
  });
  const tokenRefresh = reauth({
    timer,
    tokens,
    now,
    report,
    socket: () => socket,
    ready: () => ready,
    send,
  });
  const polls = longPoller({
    url: urls.poll,
    fetch: fetchImpl,
    subs,
    wait: Math.min(MAX_POLL_WAIT_S, Math.max(1, pollWaitS)),
    timer,
    backoffOptions,
    random,
    now,
    call,
    report,
    tokens,
    closed: () => closed,
    setState: state.set,
    waitingState: waiting,
    answered: () => {
      everLive = true;
    },
    deliverEvent,
    endSubscription,
    unavailable: (error) => {
      pollUnsupported = true;
      report(error);
      if (closed) return; // the app may close() from its onError handler
      stopPolling();
      scheduleReconnect();
    },
  });

  // -- plumbing -------------------------------------------------------------------------------

  function report(error) {
    if (typeof onError === 'function') call(onError, error);
  }

  function waiting() {
    return waitingState(everLive);
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
    if (!polls.active) state.set(waiting());
    let ws;
    try {
      ws = streams ? streams.open() : new WS(urls.ws);
    } catch (err) {
      report(new RelayError('connect_failed', 'could not create a WebSocket', { cause: err }));
      socketGone(CLOSE_CLIENT, 'constructor_failed', true);
      return;
    }
    socket = ws;
    alive.opened();
    openTimer.set(openTimeoutMs, () => {
      if (socket === ws && !ready) dropSocket('open_timeout', true);
    });
    const tokenPromise = tokens.get();
    tokenPromise.catch(() => {}); // handled in onopen; the socket may never open
    ws.onopen = () => {
      tokenPromise.then(
        (value) => {
          if (socket !== ws) return;
          tokenRefresh.sent(value);
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
    for (const t of [openTimer, stableTimer]) t.clear();
    tokenRefresh.stop();
    alive.stop();
    for (const sub of subs.values()) sub.sent = false;
    if (closed) return;
    if (code === CLOSE_AUTH) {
      tokens.forget(); // the next attempt asks the provider for a new token
      report(new RelayError('auth_refused', `the relay refused the token: ${reason}`, { reason }));
      if (closed) return; // the app may close() from its onError handler
    }
    failedOpens = failedOpen ? failedOpens + 1 : failedOpens;
    if (polls.active) {
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
    state.set(waiting());
    reconnectTimer.set(delay, connect);
  }

  function receive(data) {
    alive.heard();
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
        if (sub) handReset(sub, frame.reason, frame.cursor, call);
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
    if (polls.active) stopPolling(); // polls hand their cursors over to the socket
    reconnectTimer.clear();
    wsRetryTimer.clear();
    stableTimer.set(stableMs, () => {
      attempt = 0;
    });
    tokenRefresh.start();
    alive.start();
    for (const sub of [...subs.values()]) {
      if (!sub.sent) sendSubscribe(sub);
    }
    state.set('live');
  }

  function sendSubscribe(sub) {
    sub.sent = send(subscribeMessage(sub));
  }

  // -- long-polling (longpoll.js) -------------------------------------------------------------

  function startPolling() {
    reconnectTimer.clear();
    polls.start();
    if (WS) wsRetryTimer.set(wsRetryMs, connect);
  }

  function stopPolling() {
    polls.stop();
    wsRetryTimer.clear();
  }

  // -- subscriptions --------------------------------------------------------------------------

  function deliverEvent(sub, event) {
    lastEventAt = now();
    handEvent(sub, event, call);
  }

  function endSubscription(sub, error) {
    subs.delete(sub.id);
    polls.remove(sub);
    polls.update();
    call(sub.handlers.onError, error);
  }

  function subscribe(table, subOptions = {}, handlers = {}) {
    if (closed) throw new Error('pgrelay: the client is closed');
    if (typeof table !== 'string' || !table) throw new TypeError('subscribe: table is required');
    const sub = subscriptionRecord(`s${nextId++}`, table, subOptions, handlers);
    subs.set(sub.id, sub);
    if (polls.active) {
      polls.add(sub);
    } else if (ready) {
      sendSubscribe(sub);
    }
    return function unsubscribe() {
      if (subs.get(sub.id) !== sub) return;
      subs.delete(sub.id);
      polls.remove(sub);
      if (sub.sent && ready) send({ type: 'unsubscribe', id: sub.id });
      polls.update();
    };
  }

  // -- waking up: page visible again, network back, or the app asks ----------------------------

  function wake() {
    if (closed) return;
    if (!polls.active) {
      if (ready) alive.check();
      else if (socket === null) connect();
      return;
    }
    polls.wake();
    if (socket === null) connect();
  }

  const stopListening = wakeOnBrowserSignals(wake, () => {
    if (ready) alive.check();
    else if (state.value === 'connecting' || state.value === 'reconnecting') state.set('offline');
  });

  function close() {
    if (closed) return;
    closed = true;
    polls.stop();
    dropSocket('client_closed', false);
    timer.clearAll();
    subs.clear();
    stopListening();
    state.set('closed');
    state.clear();
  }

  if (WS) connect();
  else startPolling();

  return {
    subscribe,
    close,
    /** Tries again now instead of waiting out the backoff (a "retry now" button). */
    reconnect: wake,
    get state() {
      return state.value;
    },
    get lastEventAt() {
      return lastEventAt;
    },
    /** Calls listener(state) on every change of state; returns the function that stops it. */
    watchState: state.watch,
    tabRole: 'solo',
  };
}
