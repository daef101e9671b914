/**
 * The pgrelay client: one websocket (protocol v1) carrying every subscription, resumed by cursor
 * after any drop, with HTTP long-polling as the fallback when websockets do not get through.
 *
 * Nothing is queued for later sending: a subscription is (re)sent from the subscription table
 * each time a connection becomes ready, so what is buffered is bounded by what the app holds.
 *
 * In a browser with Web Locks and BroadcastChannel, the tabs of one user share one such client
 * (shared.js): createClient returns a tab's view of it, with the same interface. Otherwise it is
 * a client with a socket of its own (socket.js).
 */

import { endpoints } from './endpoints.js';
import { RelayError } from './errors.js';
import { createSharedClient, sharing } from './shared.js';
import { createSocketClient } from './socket.js';

export { endpoints, RelayError };

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
