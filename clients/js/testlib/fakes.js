// Fakes for the unit tests: a clock whose timers fire when told, a WebSocket driven by the test,
// and unsigned JWT-shaped tokens (the client reads exp, the relay is the one that verifies).

export const flush = () => new Promise((resolve) => setImmediate(resolve));

export class FakeClock {
  constructor(start = 1_700_000_000_000) {
    this.t = start;
    this.timers = new Map();
    this.seq = 0;
    this.requested = []; // every delay asked for, in order
    this.now = () => this.t;
    this.setTimeout = (fn, ms) => {
      const id = ++this.seq;
      this.requested.push(ms);
      this.timers.set(id, { at: this.t + ms, fn });
      return id;
    };
    this.clearTimeout = (id) => {
      this.timers.delete(id);
    };
  }

  get pending() {
    return this.timers.size;
  }

  /** Moves the clock forward, firing due timers in order and letting promises settle. */
  async advance(ms) {
    const end = this.t + ms;
    await flush();
    for (;;) {
      let next = null;
      for (const [id, timer] of this.timers) {
        if (timer.at <= end && (next === null || timer.at < next[1].at)) next = [id, timer];
      }
      if (next === null) break;
      this.timers.delete(next[0]);
      this.t = Math.max(this.t, next[1].at);
      next[1].fn();
      await flush();
    }
    this.t = end;
    await flush();
  }
}

export function fakeSockets() {
  const sockets = [];
  class FakeWebSocket {
    constructor(url) {
      this.url = url;
      this.readyState = 0;
      this.sent = [];
      this.closedWith = null;
      sockets.push(this);
    }
    send(data) {
      if (this.readyState !== 1) throw new Error('send on a socket that is not open');
      this.sent.push(JSON.parse(data));
    }
    close(code, reason) {
      this.readyState = 3;
      this.closedWith = { code, reason };
    }
    // -- the relay's side, driven by the test --
    open() {
      this.readyState = 1;
      this.onopen?.({});
    }
    receive(frame) {
      this.onmessage?.({ data: JSON.stringify(frame) });
    }
    serverClose(code = 1006, reason = '') {
      this.readyState = 3;
      this.onclose?.({ code, reason });
    }
    /** Opens, answers the auth message with `ready`. */
    async accept() {
      this.open();
      await flush();
      this.receive({ type: 'ready', user: 'alice', cursor: `${EPOCH}.0` });
    }
    of(type) {
      return this.sent.filter((m) => m.type === type);
    }
  }
  return { FakeWebSocket, sockets };
}

export const EPOCH = 'ab'.repeat(16);
export const cursor = (pos) => `${EPOCH}.${pos}`;

export function unsignedToken(claims) {
  const part = (value) => Buffer.from(JSON.stringify(value)).toString('base64url');
  return `${part({ alg: 'HS256', typ: 'JWT' })}.${part(claims)}.c2lnbmF0dXJl`;
}
