/**
 * Server-Sent Events as the client's transport (`transport: 'sse'`): one `fetch` of GET /v1/sse
 * carrying every subscription, shaped like a WebSocket so the client's connection logic (auth,
 * ready, backoff, long-poll fallback, keepalive) runs unchanged over it.
 *
 * The relay sends the websocket's frames as SSE blocks (docs/protocol.md, section 12). A stream's
 * subscriptions are fixed by its request, so subscribing or unsubscribing opens the stream again,
 * from where it stands: the stream's last id (its position) says every subscription has
 * everything up to it, and each subscription's own position is kept across streams and
 * reconnects, so events at or before it are never handed over twice.
 *
 * fetch, not EventSource: the token travels in the Authorization header (EventSource cannot set
 * one, and a token in the URL would end up in logs). For EventSource itself, see the README.
 */

const CONNECTING = 0;
const OPEN = 1;
const CLOSED = 3;
const CLOSE_AUTH = 4001;
const CLOSE_POLICY = 1008;
const CLOSE_ABNORMAL = 1006;

/** Where a cursor stands, comparable within one epoch: [epoch, position]. */
function where(cursor) {
  const dot = typeof cursor === 'string' ? cursor.lastIndexOf('.') : -1;
  return dot < 0 ? null : [cursor.slice(0, dot), Number(cursor.slice(dot + 1))];
}

/** True when cursor a is at or before b in the same epoch. */
function notAfter(a, b) {
  const x = where(a);
  const y = where(b);
  return x !== null && y !== null && x[0] === y[0] && x[1] <= y[1];
}

/**
 * An incremental text/event-stream parser (WHATWG HTML 9.2.6): feed it decoded text; it calls
 * `dispatch({ event, data, id, comment })` per block. `data` is null for a block without data
 * lines (a comment, or an id alone), `id` undefined when the block set none.
 */
export function eventStreamParser(dispatch) {
  let buffer = '';
  let first = true;
  let block = { event: '', data: [], id: undefined, comment: false };
  const line = (text) => {
    if (text === '') {
      const { event, data, id, comment } = block;
      block = { event: '', data: [], id: undefined, comment: false };
      if (data.length || id !== undefined || comment) {
        dispatch({ event: event || 'message', data: data.length ? data.join('\n') : null, id, comment });
      }
      return;
    }
    if (text.startsWith(':')) {
      block.comment = true;
      return;
    }
    const colon = text.indexOf(':');
    const name = colon < 0 ? text : text.slice(0, colon);
    let value = colon < 0 ? '' : text.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (name === 'event') block.event = value;
    else if (name === 'data') block.data.push(value);
    else if (name === 'id' && !value.includes('\0')) block.id = value;
  };
  return {
    push(text) {
      buffer += text;
      if (first && buffer.length) {
        if (buffer.charCodeAt(0) === 0xfeff) buffer = buffer.slice(1);
        first = false;
      }
      for (;;) {
        const match = /\r\n|\r|\n/.exec(buffer);
        // A lone CR at the end may be the first half of a CRLF: wait for what follows.
        if (match === null || (match[0] === '\r' && match.index === buffer.length - 1)) return;
        line(buffer.slice(0, match.index));
        buffer = buffer.slice(match.index + match[0].length);
      }
    },
  };
}

/**
 * The transport for one client: `open()` makes one WebSocket-shaped stream per connection
 * attempt. `subscriptions()` returns the client's subscribe messages (the stream opens with all of
 * them); each subscription's position survives the streams.
 */
export function sseTransport({ url, fetch: fetchImpl, subscriptions, timers = globalThis }) {
  const positions = new Map(); // subscription id -> cursor it has everything up to
  return {
    open: () => new SseStream({ url, fetchImpl, subscriptions, positions, timers }),
    forget: (id) => positions.delete(id),
  };
}

class SseStream {
  constructor({ url, fetchImpl, subscriptions, positions, timers }) {
    this.url = url;
    this.readyState = CONNECTING;
    this.onopen = this.onmessage = this.onclose = this.onerror = null;
    this.fetchImpl = fetchImpl;
    this.subscriptions = subscriptions;
    this.positions = positions;
    this.timers = timers;
    this.token = null;
    this.subs = new Map(); // id -> subscribe message: what the stream carries
    this.from = new Map(); // id -> the cursor its events must come after, on this stream
    this.confirmed = new Set(); // ids whose `subscribed` the client has seen
    this.readySeen = false;
    this.position = null; // the stream's last id
    this.endReason = null; // the error the relay ended the stream with
    this.controller = null;
    this.reopenTimer = null;
    Promise.resolve().then(() => {
      if (this.readyState !== CONNECTING) return;
      this.readyState = OPEN; // nothing to open yet: the stream starts with the token
      this.onopen?.({});
    });
  }

  send(data) {
    if (this.readyState !== OPEN) throw new Error('send on a stream that is not open');
    const message = JSON.parse(data);
    if (message.type === 'auth') {
      const first = this.token === null;
      this.token = message.token;
      if (first) this.start();
      else this.reopenSoon(); // a refreshed token: the stream goes on with it, from its position
    } else if (message.type === 'subscribe' && !this.subs.has(message.id)) {
      this.reopenSoon(); // with the client's subscriptions as they are then (a batch)
    } else if (message.type === 'unsubscribe') {
      this.confirmed.delete(message.id);
      this.positions.delete(message.id);
      this.emit({ type: 'unsubscribed', id: message.id });
      this.reopenSoon();
    }
    // ping: no answer; the stream's heartbeats are the evidence of life
  }

  close(code = 1000, reason = '') {
    if (this.readyState === CLOSED) return;
    this.end(code, reason);
  }

  // -- the stream -------------------------------------------------------------------------------

  start() {
    this.subs = this.current();
    if (this.subs.size) this.connect();
    else this.idle();
  }

  /** The client's subscriptions now: the one record of them. */
  current() {
    return new Map(this.subscriptions().map((message) => [message.id, message]));
  }

  /** No subscription: nothing to stream until one comes; the client may go on as ready. */
  idle() {
    this.controller?.abort();
    this.controller = null;
    if (!this.readySeen) {
      this.readySeen = true;
      this.emit({ type: 'ready' });
    }
  }

  reopenSoon() {
    if (this.token === null || this.reopenTimer !== null || this.readyState !== OPEN) return;
    this.reopenTimer = this.timers.setTimeout(() => {
      this.reopenTimer = null;
      if (this.readyState !== OPEN) return;
      this.subs = this.current();
      if (this.subs.size) this.connect();
      else this.idle();
    }, 0);
  }

  /** The cursor the stream starts after: the earliest any subscription needs. */
  since() {
    this.from.clear();
    let earliest = null;
    for (const [id, message] of this.subs) {
      const from = this.positions.get(id) ?? message.since ?? this.position;
      if (!from) continue;
      this.from.set(id, from);
      if (earliest === null || (where(from)?.[1] ?? 0) < (where(earliest)?.[1] ?? 0)) earliest = from;
    }
    return earliest;
  }

  connect() {
    this.controller?.abort();
    const controller = new AbortController();
    this.controller = controller;
    this.endReason = null;
    const target = new URL(this.url);
    const subs = [...this.subs.values()].map(({ id, table, schema, filter, ops }) => ({
      id, table, schema, filter, ops, // coalesce_ms is for websockets: a stream has one order
    }));
    target.searchParams.set('subs', JSON.stringify(subs));
    const since = this.since();
    if (since) target.searchParams.set('since', since);
    this.fetchImpl(target.href, {
      headers: { Authorization: `Bearer ${this.token}`, Accept: 'text/event-stream' },
      cache: 'no-store',
      signal: controller.signal,
    }).then(
      (response) => this.read(response, controller),
      () => {
        if (this.controller === controller) this.end(CLOSE_ABNORMAL, 'network');
      },
    );
  }

  async read(response, controller) {
    if (this.controller !== controller) return;
    if (response.status !== 200) {
      const body = await response.json().catch(() => null);
      if (this.controller === controller) this.refused(response.status, body);
      return;
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    const parser = eventStreamParser((block) => {
      if (this.controller === controller) this.block(block);
    });
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (this.controller !== controller) {
          reader.cancel().catch(() => {});
          return;
        }
        if (done) break;
        parser.push(decoder.decode(value, { stream: true }));
      }
    } catch {
      if (this.controller !== controller) return;
    }
    const reason = this.endReason ?? 'stream_ended';
    this.end(reason === 'token_expired' ? CLOSE_AUTH : CLOSE_ABNORMAL, reason);
  }

  refused(status, body) {
    if (status === 401) {
      this.end(CLOSE_AUTH, body?.reason ?? 'unauthorized');
    } else if (status === 400 && body?.id !== undefined && this.subs.has(body.id)) {
      // One subscription is refused (unknown_table...): the client ends it; the others go on.
      this.subs.delete(body.id);
      this.emit({ type: 'error', code: body.code, message: body.error, id: body.id });
      this.reopenSoon();
    } else if (status === 400) {
      this.emit({ type: 'error', code: body?.code ?? 'bad_message', message: body?.error ?? '' });
      this.end(CLOSE_POLICY, body?.code ?? 'bad_request');
    } else {
      this.end(CLOSE_ABNORMAL, `http_${status}`);
    }
  }

  block({ data, id }) {
    if (id !== undefined) this.position = id;
    if (data === null) {
      // A heartbeat, or the stream's position: every subscription has everything up to it.
      if (id) for (const sub of this.subs.keys()) this.positions.set(sub, id);
      this.emit({ type: 'heartbeat' }); // a sign of life for the keepalive
      return;
    }
    let frame;
    try {
      frame = JSON.parse(data);
    } catch {
      frame = null;
    }
    if (frame === null || typeof frame !== 'object') {
      this.emit(frame); // the client reports a bad frame
      return;
    }
    switch (frame.type) {
      case 'ready':
        if (this.readySeen) return;
        this.readySeen = true;
        break;
      case 'subscribed':
        if (!this.subs.has(frame.id)) return;
        this.positions.set(frame.id, frame.cursor);
        if (this.confirmed.has(frame.id)) return;
        this.confirmed.add(frame.id);
        break;
      case 'event': {
        const from = this.from.get(frame.sub);
        if (from && notAfter(frame.cursor, from)) return; // it had this one already
        this.positions.set(frame.sub, frame.cursor);
        break;
      }
      case 'reset':
        this.positions.set(frame.sub, frame.cursor);
        this.from.delete(frame.sub);
        break;
      case 'error':
        if (frame.id === undefined) {
          this.endReason = frame.code; // the relay ends the stream: a reconnect follows
          return;
        }
        break;
      default:
    }
    this.emit(frame);
  }

  emit(frame) {
    if (this.readyState === OPEN) this.onmessage?.({ data: JSON.stringify(frame) });
  }

  end(code, reason) {
    this.readyState = CLOSED;
    this.controller?.abort();
    this.controller = null;
    if (this.reopenTimer !== null) this.timers.clearTimeout(this.reopenTimer);
    this.reopenTimer = null;
    Promise.resolve().then(() => this.onclose?.({ code, reason }));
  }
}
