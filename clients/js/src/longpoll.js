/**
 * HTTP long-polling, the fallback when websockets do not get through: one loop of requests per
 * subscription, each asking for what came after the subscription's cursor, until the socket
 * client (socket.js) stops them because a websocket got ready again.
 *
 * The socket client hands in what the loops share with it (its subscriptions, tokens, state and
 * delivery) as `deps`; the loops report back through it.
 */

import { backoffDelay } from './backoff.js';
import { RelayError } from './errors.js';
import { handReset, pollRequest } from './subscriptions.js';

/** The relay holds a long-poll at most this long (seconds). */
export const MAX_POLL_WAIT_S = 25;
const QUICK_POLL_MS = 1000; // an empty answer faster than this waits this long before the next

/**
 * The long-poll loops of one client. `deps`: url, fetch, subs (id -> record), wait (seconds),
 * timer, backoffOptions, random, now, call, report, tokens (tokenCache), closed(), setState,
 * waitingState, answered() (a poll was answered), deliverEvent, endSubscription,
 * unavailable(error) (the relay serves no long-polling: the loops are to stop, for websockets).
 */
export function longPoller(deps) {
  const { subs, timer, call, report, now } = deps;
  let active = false;

  function start() {
    active = true;
    for (const sub of subs.values()) add(sub);
    update();
  }

  function stop() {
    for (const sub of subs.values()) remove(sub);
    active = false;
  }

  /** Starts the loop of one subscription. */
  function add(sub) {
    const loop = {
      timer: timer(),
      controller: null,
      attempt: 0,
      ok: false, // the last request was answered
      confirmed: false, // onSubscribed was called for this loop
      stopped: false,
    };
    sub.poll = loop;
    run(sub, loop);
  }

  /** Stops the loop of one subscription (its request aborted). */
  function remove(sub) {
    const loop = sub.poll;
    if (!loop) return;
    loop.stopped = true;
    loop.timer.clear();
    loop.controller?.abort();
    sub.poll = null;
  }

  /** 'polling' while some loop's last request was answered, else waiting. */
  function update() {
    if (!active || deps.closed()) return;
    let anyOk = subs.size === 0;
    for (const sub of subs.values()) anyOk ||= sub.poll?.ok === true;
    deps.setState(anyOk ? 'polling' : deps.waitingState());
  }

  /** Loops waiting out a backoff ask again now. */
  function wake() {
    for (const sub of subs.values()) {
      const loop = sub.poll;
      if (loop?.timer.pending) {
        loop.timer.clear();
        run(sub, loop);
      }
    }
  }

  /** One long-poll request of one subscription, then the next, until remove. */
  async function run(sub, loop) {
    if (loop.stopped) return;
    const controller = new AbortController();
    loop.controller = controller;
    const guard = timer(); // a request the network silently lost must not hang forever
    guard.set((deps.wait + 15) * 1000, () => controller.abort());
    const since = sub.cursor;
    const started = now();
    let status = 0;
    let body = null;
    try {
      const value = await deps.tokens.get();
      if (loop.stopped) return;
      const response = await deps.fetch(pollRequest(deps.url, sub, since, deps.wait), {
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
    if (loop.stopped || deps.closed()) return;

    if (status === 200 && body !== null && typeof body.cursor === 'string') {
      loop.attempt = 0;
      loop.ok = true;
      deps.answered();
      update();
      const events = Array.isArray(body.events) ? body.events : [];
      if (body.reset) {
        handReset(sub, body.reset.reason, body.cursor, call);
        if (!loop.confirmed && !loop.stopped) {
          call(sub.handlers.onSubscribed, { cursor: body.cursor });
        }
      } else {
        for (const event of events) {
          if (loop.stopped) return; // a callback unsubscribed or closed the client
          deps.deliverEvent(sub, event);
        }
        if (loop.stopped) return;
        sub.cursor = body.cursor;
        if (!loop.confirmed) call(sub.handlers.onSubscribed, { cursor: body.cursor });
      }
      loop.confirmed = true;
      if (loop.stopped) return;
      const quick = !body.reset && since && events.length === 0 && now() - started < QUICK_POLL_MS;
      if (quick) loop.timer.set(QUICK_POLL_MS, () => run(sub, loop));
      else run(sub, loop);
      return;
    }
    if (status === 400) {
      deps.endSubscription(sub, new RelayError(body?.code ?? 'bad_request', body?.error ?? 'bad request'));
      return;
    }
    if (status === 404) {
      // This relay has no long-polling: websockets only, from now on.
      deps.unavailable(new RelayError('poll_unavailable', 'the relay does not serve long-polling'));
      return;
    }
    if (status === 401) {
      deps.tokens.forget();
      const reason = body?.reason ?? 'unknown';
      report(new RelayError('auth_refused', `the relay refused the token: ${reason}`, { reason }));
      if (deps.closed()) return; // the app may close() from its onError handler
    }
    loop.ok = false;
    update();
    loop.timer.set(backoffDelay(loop.attempt, deps.backoffOptions, deps.random), () => run(sub, loop));
    loop.attempt += 1;
  }

  return {
    start,
    stop,
    add,
    remove,
    update,
    wake,
    /** The client is polling (else it is on, or waiting for, a websocket). */
    get active() {
      return active;
    },
  };
}
