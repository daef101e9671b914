// A browser's tabs in one Node process, for the multi-tab tests: a Web Locks fake shared by the
// tabs (exclusive locks, FIFO queues, AbortSignal), Node's own BroadcastChannel, and a crash
// that ends a tab the way a browser does: its locks released, its channels closed, its timers
// and sockets dead, and none of its code running again.

/** One origin's lock manager; each tab gets its view with `forTab`. */
export class FakeLocks {
  constructor() {
    this.held = new Map(); // name -> { tab, release }
    this.queues = new Map(); // name -> [request]
  }

  forTab(tab) {
    return { request: (name, options, callback) => this.request(tab, name, options, callback) };
  }

  request(tab, name, options, callback) {
    if (typeof options === 'function') [options, callback] = [{}, options];
    return new Promise((resolve, reject) => {
      const signal = options?.signal;
      if (signal?.aborted) {
        reject(new DOMException('aborted', 'AbortError'));
        return;
      }
      const request = { tab, name, callback, resolve, reject };
      if (signal) {
        signal.addEventListener('abort', () => {
          const queue = this.queues.get(name) ?? [];
          const at = queue.indexOf(request);
          if (at >= 0) {
            queue.splice(at, 1);
            reject(new DOMException('aborted', 'AbortError'));
          }
        });
      }
      if (!this.queues.has(name)) this.queues.set(name, []);
      this.queues.get(name).push(request);
      this.grant(name);
    });
  }

  grant(name) {
    if (this.held.has(name)) return;
    const request = this.queues.get(name)?.shift();
    if (request === undefined) return;
    const hold = { tab: request.tab, released: false };
    const release = () => {
      if (hold.released) return;
      hold.released = true;
      if (this.held.get(name) === hold) this.held.delete(name);
      queueMicrotask(() => this.grant(name));
    };
    hold.release = release;
    this.held.set(name, hold);
    Promise.resolve()
      .then(() => request.callback({ name, mode: 'exclusive' }))
      .then(
        (value) => {
          release();
          request.resolve(value);
        },
        (err) => {
          release();
          request.reject(err);
        },
      );
  }

  /** Ends a tab: its held locks are released and its queued requests dropped. */
  crash(tab) {
    for (const queue of this.queues.values()) {
      for (let i = queue.length - 1; i >= 0; i -= 1) if (queue[i].tab === tab) queue.splice(i, 1);
    }
    for (const hold of [...this.held.values()]) if (hold.tab === tab) hold.release();
  }

  holder(name) {
    return this.held.get(name)?.tab ?? null;
  }
}

/** What a tab's client is given: its locks, channels, timers and (when given a WebSocket class)
 * sockets, all of which `crash` ends. */
export function fakeTab(locks, name, { timers = globalThis, WebSocket } = {}) {
  const channels = new Set();
  const handles = new Set();
  const sockets = new Set();
  let dead = false;
  class TabChannel extends BroadcastChannel {
    constructor(channelName) {
      super(channelName);
      channels.add(this);
    }
    postMessage(message) {
      if (!dead) super.postMessage(message);
    }
  }
  const socketClass = WebSocket && class TabWebSocket extends WebSocket {
    constructor(...args) {
      super(...args);
      sockets.add(this);
    }
  };
  return {
    name,
    options: {
      ...(socketClass ? { WebSocket: socketClass } : {}),
      locks: locks.forTab(name),
      BroadcastChannel: TabChannel,
      timers: {
        setTimeout(fn, ms) {
          if (dead) return null;
          const handle = timers.setTimeout(() => {
            handles.delete(handle);
            if (!dead) fn();
          }, ms);
          handles.add(handle);
          return handle;
        },
        clearTimeout(handle) {
          handles.delete(handle);
          timers.clearTimeout(handle);
        },
      },
    },
    channels,
    crash() {
      dead = true;
      for (const channel of channels) channel.close();
      for (const handle of handles) timers.clearTimeout(handle);
      for (const socket of sockets) socket.terminate?.();
      locks.crash(name);
    },
  };
}

/** Lets messages, lock grants and promises settle (real time: BroadcastChannel is async). */
export async function settle(rounds = 8) {
  for (let i = 0; i < rounds; i += 1) await new Promise((resolve) => setTimeout(resolve, 1));
}
