// Type declarations for @pgrelay/client (protocol v1).

/** What a Live indicator shows. */
export type ConnectionState =
  | 'connecting' // never connected yet: first attempts
  | 'live' // websocket (or SSE stream) open and authenticated
  | 'reconnecting' // was connected (or polling); waiting out the backoff or trying again
  | 'offline' // the browser reports no network (navigator.onLine === false)
  | 'polling' // websockets do not get through: HTTP long-polling, same cursors
  | 'closed'; // client.close() was called

export type Op = 'INSERT' | 'UPDATE' | 'DELETE';

/** A JSON scalar, or {in: [scalars]}: the column equals it, or one of them. */
export type FilterValue = string | number | boolean | null | { in: Array<string | number | boolean | null> };

/** Conditions on columns, all of which must hold. */
export type Filter = Record<string, FilterValue>;

export type Row = Record<string, unknown>;

/** One row change. The same shape over websockets and long-polling. */
export interface RelayEvent<R extends Row = Row> {
  type: 'event';
  /** Opaque: where this event sits in the relay's log. The client tracks it for you. */
  cursor: string;
  schema: string;
  table: string;
  op: Op;
  /** The row's primary key (after the change). */
  pk: Record<string, unknown>;
  /** New values (INSERT, UPDATE) or old ones (DELETE) of the tracked columns; null if truncated
   * or on a move-out. */
  row: R | null;
  /** Primary key before the change (UPDATE and DELETE). */
  old?: Record<string, unknown>;
  /** Tracked columns an UPDATE changed, sorted; [] for INSERT and DELETE. */
  changed: string[];
  /** Commit time, ISO 8601. */
  ts: string;
  /** The row was over the relay's size cap: `row` is null, refetch it by `pk`. */
  truncated?: boolean;
  /** Set when an UPDATE changed what this subscription sees. 'out': a move-out (op 'DELETE',
   * `row` null, `pk` the key the app knows the row by): remove it. 'in': an entry (op 'INSERT',
   * the new values): add it. */
  moved?: 'out' | 'in';
}

export type ResetReason = 'cursor_expired' | 'epoch_changed' | 'overflow' | (string & {});

export interface ResetInfo {
  /** cursor_expired: offline longer than the log keeps; epoch_changed: the database was
   * reinstalled or restored; overflow: this client fell too far behind. Refetch in all cases. */
  reason: ResetReason;
  /** Where the stream continues: events after the reset are delivered as usual. */
  cursor: string;
}

export interface SubscribeOptions {
  filter?: Filter;
  ops?: Op[];
  /** Batch UPDATEs of one row within this many ms into one event (websockets only: ignored
   * over SSE, whose stream has one order for all its subscriptions). */
  coalesceMs?: number;
  /** Schema of the table; by default the table name in any tracked schema. */
  schema?: string;
  /** Resume after this cursor (e.g. one the app persisted) instead of starting from now. */
  since?: string;
}

export interface SubscribeHandlers<R extends Row = Row> {
  onEvent?(event: RelayEvent<R>): void;
  /** Events were missed and cannot be replayed: refetch what this subscription covers. */
  onReset?(info: ResetInfo): void;
  /** The subscription failed (unknown_table, forbidden, bad_message, too_many_subscriptions,
   * bad_cursor...) and has ended; subscribe again to retry. */
  onError?(error: RelayError): void;
  /** The relay confirmed the subscription; called again after every reconnect. Data fetched
   * before the first call may predate the stream: fetch (or refetch) after it. */
  onSubscribed?(info: { cursor: string }): void;
}

export interface TimerFunctions {
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: any): void;
}

/** A WebSocket constructor: the browser's, or e.g. `WebSocket` from the "ws" package. */
export interface WebSocketConstructor {
  new (url: string, ...rest: any[]): WebSocketLike;
}

/** What the client uses of a WebSocket. `event` is the browser's Event, MessageEvent and
 * CloseEvent (it reads `data`, `code` and `reason`). */
export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((event: any) => any) | null;
  onmessage: ((event: any) => any) | null;
  onclose: ((event: any) => any) | null;
  onerror: ((event: any) => any) | null;
}

export interface ClientOptions {
  /** The relay's base URL: "wss://relay.example.com", "http://127.0.0.1:8080", "/relay"...
   * Websockets go to <url>/v1/ws, long-polls to <url>/v1/poll. */
  url: string;
  /** Returns a JWT for the current user; called again before it expires and after a 4001. */
  token: () => string | Promise<string>;
  /** 'websocket' (default), or 'sse': Server-Sent Events over fetch (GET <url>/v1/sse), for
   * networks that pass plain HTTP only. Either way the long-poll is the last fallback. */
  transport?: 'websocket' | 'sse';
  /** Defaults to globalThis.WebSocket. Without any, the client long-polls only. */
  WebSocket?: WebSocketConstructor;
  /** Defaults to globalThis.fetch. Without it, there is no long-polling fallback. */
  fetch?: typeof fetch;
  /** Overrides the long-poll endpoint (absolute, or relative to url). */
  pollUrl?: string;
  onState?(state: ConnectionState): void;
  /** Connection-level problems (auth_refused, token_failed, poll_unavailable, bad_frame,
   * callback_failed, token_user_changed...): informational, the client keeps retrying. With
   * tabs sharing a socket, the leader tab is told of its socket's problems. */
  onError?(error: RelayError): void;
  /** Full-jitter exponential backoff: delay = random(0, min(capMs, initialMs * 2^attempt)). */
  backoff?: { initialMs?: number; capMs?: number };
  /** Ask for a new token this long before the current one expires (default 60000). */
  refreshBeforeMs?: number;
  /** A connection up this long resets the backoff attempts (default 10000). */
  stableMs?: number;
  /** Consecutive websocket opens that fail before falling back to long-polling (default 3). */
  fallbackAfter?: number;
  /** While polling, try websockets again this often (default 30000). */
  wsRetryMs?: number;
  /** Seconds a long-poll may wait for an event, 1 to 25 (default 25). */
  pollWaitS?: number;
  /** Give up a websocket not ready (open and authenticated) after this long (default 15000). */
  openTimeoutMs?: number;
  /** Ping after this long without a frame; 0 disables (default 20000). */
  pingIntervalMs?: number;
  /** A ping unanswered this long drops the socket and reconnects (default 10000). */
  pongTimeoutMs?: number;
  /** Tabs of one origin and one user share one socket (default true): a leader tab, elected
   * with Web Locks, holds it and relays to the others over BroadcastChannel. Without both APIs
   * (Node, insecure origins), or with false, each client has a socket of its own. */
  shareTabs?: boolean;
  /** For tests: the Web Locks manager (default navigator.locks). */
  locks?: LockManagerLike | null;
  /** For tests: the BroadcastChannel constructor (default globalThis.BroadcastChannel). */
  BroadcastChannel?: { new (name: string): BroadcastChannelLike } | null;
  /** For tests: returns a number in [0, 1). */
  random?: () => number;
  /** For tests: timer functions. */
  timers?: TimerFunctions;
  /** For tests: the clock, in ms since the epoch. */
  now?: () => number;
}

/** What the client uses of navigator.locks. */
export interface LockManagerLike {
  request(name: string, options: { signal?: AbortSignal }, callback: (lock: unknown) => unknown): Promise<unknown>;
}

/** What the client uses of a BroadcastChannel. */
export interface BroadcastChannelLike {
  postMessage(message: unknown): void;
  close(): void;
  onmessage: ((event: { data: unknown }) => any) | null;
}

/** This tab's part in sharing one socket: 'leader' holds it, 'follower' uses the leader's,
 * 'solo' has its own (sharing off or unavailable, or a token without `sub`), 'joining' is
 * reading its token to find its user's tabs. */
export type TabRole = 'leader' | 'follower' | 'solo' | 'joining' | 'closed';

export interface RelayClient {
  /** Subscribes to a table's changes; returns the function that unsubscribes. */
  subscribe<R extends Row = Row>(
    table: string,
    options?: SubscribeOptions,
    handlers?: SubscribeHandlers<R>,
  ): () => void;
  /** Closes the connection and every timer; subscriptions end. */
  close(): void;
  /** Retries now instead of waiting out the backoff (also done when the page becomes visible
   * or the network comes back); on a live socket, checks it with a ping. */
  reconnect(): void;
  readonly state: ConnectionState;
  /** When an event was last handed to one of this client's subscriptions (ms since the epoch),
   * or null: the age of the last event, for a Live indicator. */
  readonly lastEventAt: number | null;
  /** Calls listener(state) on every change of `state`; returns the function that stops it. */
  watchState(listener: (state: ConnectionState) => void): () => void;
  readonly tabRole: TabRole;
}

export declare function createClient(options: ClientOptions): RelayClient;

export declare class RelayError extends Error {
  constructor(code: string, message: string, options?: { reason?: string; cause?: unknown });
  readonly code: string;
  /** For auth_refused: why the relay refused the token (expired, bad_signature...). */
  readonly reason?: string;
}

export declare function endpoints(
  url: string,
  pollUrl?: string,
): { ws: string; poll: string; sse: string };

// -- backoff and tokens ------------------------------------------------------------------------

export interface BackoffOptions {
  initialMs?: number;
  capMs?: number;
}
export declare const DEFAULT_BACKOFF: Readonly<{ initialMs: number; capMs: number }>;
/** min(capMs, initialMs * 2^attempt) */
export declare function backoffCeiling(attempt: number, options?: BackoffOptions): number;
/** random() * backoffCeiling(attempt, options) */
export declare function backoffDelay(
  attempt: number,
  options?: BackoffOptions,
  random?: () => number,
): number;

/** The JWT's sub (no signature check), or null: tabs share a socket with their user's only. */
export declare function tokenSubject(token: string): string | null;
/** The JWT's exp in ms since the epoch (no signature check), or null. */
export declare function tokenExpiry(token: string): number | null;
/** Ms to wait before refreshing a token expiring at expMs; Infinity without expiry. */
export declare function refreshDelay(
  expMs: number | null,
  nowMs: number,
  refreshBeforeMs?: number,
): number;

// -- cache invalidation ------------------------------------------------------------------------

export type CacheKey = unknown;

export interface InvalidationRule<R extends Row = Row> {
  table: string;
  schema?: string;
  filter?: Filter;
  ops?: Op[];
  /** An UPDATE matches only if it changed one of these columns. */
  columns?: string[];
  when?(event: RelayEvent<R>): boolean;
  /** Cache keys to invalidate: an array of keys, or a function of the event returning one. */
  keys: CacheKey[] | ((event: RelayEvent<R>) => CacheKey[]);
  /** Keys to invalidate on a reset; default: `keys` when it is an array. */
  resetKeys?: CacheKey[];
}

export interface InvalidatorOptions {
  /** Called once per window with the de-duplicated keys. */
  onInvalidate(keys: CacheKey[]): void;
  /** Default 500. */
  windowMs?: number;
  /** Pending keys are handed over at once when this many pile up (default 1000). */
  maxKeys?: number;
  onReset?(info: { table: string; schema?: string; reason: ResetReason }): void;
  onError?(error: unknown): void;
  timers?: TimerFunctions;
}

export interface Invalidator {
  flush(): void;
  /** Unsubscribes; pending keys are dropped. */
  stop(): void;
}

export declare function createInvalidator(
  client: Pick<RelayClient, 'subscribe'>,
  rules: InvalidationRule[],
  options: InvalidatorOptions,
): Invalidator;

export declare function matches(rule: InvalidationRule, event: RelayEvent): boolean;

// -- @supabase/realtime-js channels served by pgrelay (src/supabase.js) ------------------------

/** The parts of a realtime-js RealtimeChannel the resume helper reads. */
export interface ResumableChannel {
  topic: string;
  bindings: Record<string, Array<{ id?: number | string; filter: Record<string, unknown> }>>;
  socket: { socketAdapter: { onMessage(callback: (message: any) => void): void } };
}

export interface ResumableOptions {
  /** A binding's cursor could not be replayed from: refetch what it shows. */
  onReset?(reason: ResetReason, info: { ids: Array<number | string>; message?: string }): void;
  /** Cursors kept from an earlier page (channelCursors). */
  cursors?: Record<string, string>;
}

/** Opts the channel's postgres_changes bindings in to pgrelay's resume; before subscribe(). */
export declare function resumable<C extends ResumableChannel>(channel: C, options?: ResumableOptions): C;

/** The bindings' cursors, to pass back as `resumable(channel, { cursors })` after a reload. */
export declare function channelCursors(channel: ResumableChannel): Record<string, string>;
