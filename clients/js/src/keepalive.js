/**
 * The socket's keepalive: a socket that received nothing for a ping interval is pinged, and one
 * that then stays silent for the pong timeout is dropped (and so reconnected). Any frame counts
 * as a sign of life, not only a pong.
 */

/** The keepalive of one client's sockets. `ping()` sends a ping on the current socket,
 * `drop()` abandons it; `ready()` says whether the relay accepted the socket's token. */
export function keepalive({ timer, pingIntervalMs, pongTimeoutMs, ready, ping, drop }) {
  const pingTimer = timer();
  const pongTimer = timer();
  let received = 0; // frames received on the current socket: the keepalive's evidence
  let receivedAtTick = 0;

  function arm() {
    if (pingIntervalMs > 0) pingTimer.set(pingIntervalMs, tick);
  }

  function tick() {
    if (!ready()) return;
    if (received === receivedAtTick) check();
    receivedAtTick = received;
    arm();
  }

  /** Pings the relay; a socket that stays silent for pongTimeoutMs is dropped and reconnected. */
  function check() {
    if (!ready() || pongTimer.pending) return;
    const before = received;
    ping();
    pongTimer.set(pongTimeoutMs, () => {
      if (ready() && received === before) drop();
    });
  }

  return {
    /** A new socket: nothing received on it yet. */
    opened() {
      received = 0;
      receivedAtTick = 0;
    },
    /** A frame arrived on the current socket. */
    heard() {
      received += 1;
    },
    /** The socket got ready: ping it whenever it falls silent. */
    start: arm,
    /** The socket is gone. */
    stop() {
      pingTimer.clear();
      pongTimer.clear();
    },
    check,
  };
}
