// Type declarations for @pgrelay/react.
import type { ReactNode } from 'react';
import type {
  CacheKey,
  ClientOptions,
  ConnectionState,
  Filter,
  InvalidationRule,
  Invalidator,
  InvalidatorOptions,
  Op,
  RelayClient,
  RelayEvent,
  Row,
  SubscribeHandlers,
  TabRole,
} from '@pgrelay/client';

export interface RelayProviderProps {
  /** A client the app made (and closes). */
  client?: RelayClient;
  /** Or createClient's options: the provider makes the client on mount and closes it on
   * unmount. Read once: remount with another `key` to change them. */
  options?: ClientOptions;
  children?: ReactNode;
}

/** Makes one client available to the hooks below it: put it at the app's root. */
export declare function RelayProvider(props: RelayProviderProps): ReactNode;

/** The provider's client; null until the provider has made it. */
export declare function useRelayClient(): RelayClient | null;

export interface RelayStatus {
  state: ConnectionState;
  /** Events flow: over a websocket ('live') or long-polls ('polling'). Green in a Live badge. */
  live: boolean;
  /** state === 'live' */
  connected: boolean;
  /** state === 'polling' */
  polling: boolean;
  /** state === 'reconnecting' or 'connecting' */
  reconnecting: boolean;
  /** state === 'offline' (the browser says there is no network) */
  offline: boolean;
  /** When this tab last got an event (ms since the epoch), or null. */
  lastEventAt: number | null;
  /** How long ago, re-read every tickMs; null before the first event. */
  lastEventAgeMs: number | null;
  /** This tab's part in sharing one socket; null without a client. */
  role: TabRole | null;
}

/** The connection, for a Live indicator. tickMs (default 1000; 0: off) re-reads the age of the
 * last event. */
export declare function useRelayStatus(options?: { tickMs?: number }): RelayStatus;

export interface UseSubscriptionOptions {
  filter?: Filter;
  ops?: Op[];
  coalesceMs?: number;
  schema?: string;
  since?: string;
  /** false holds the subscription off (default true). */
  enabled?: boolean;
}

/** Subscribes for the component's life: once, through re-renders and StrictMode's double
 * mount; again (once) when the table or the options change by value. The latest handlers are
 * called. */
export declare function useSubscription<R extends Row = Row>(
  table: string,
  options?: UseSubscriptionOptions,
  handlers?: SubscribeHandlers<R>,
): void;

// -- cache sync --------------------------------------------------------------------------------

/** Sets cached data under `key` (or key(event)) to update(old, event), at once. */
export interface CachePatch<R extends Row = Row, D = any> {
  key: CacheKey | ((event: RelayEvent<R>) => CacheKey | null | undefined);
  update(old: D, event: RelayEvent<R>): D;
}

/** An invalidation rule of @pgrelay/client (keys are invalidated in batches; `keys` may be
 * left out) with patches applied to the cache as each event arrives. */
export interface CacheRule<R extends Row = Row> extends Omit<InvalidationRule<R>, 'keys'> {
  keys?: InvalidationRule<R>['keys'];
  patch?: CachePatch<R>[];
}

/** What a cache library offers: invalidate (refetch) these keys, or set one key's data. */
export interface CacheAdapter {
  invalidate(keys: CacheKey[]): void;
  set(key: CacheKey, update: (old: any) => any): void;
}

export interface CacheSyncOptions extends Partial<Omit<InvalidatorOptions, 'timers'>> {
  timers?: InvalidatorOptions['timers'];
}

/** Subscribes the rules on the client and keeps the cache in step; stop() ends it. */
export declare function createCacheSync(
  client: Pick<RelayClient, 'subscribe'>,
  rules: CacheRule[],
  cache: CacheAdapter,
  options?: CacheSyncOptions,
): Invalidator;

/** What this needs of TanStack Query's QueryClient. */
export interface QueryClientLike {
  invalidateQueries(filters: { predicate: (query: { queryKey: readonly unknown[] }) => boolean }): unknown;
  setQueriesData(filters: { queryKey: readonly unknown[] }, updater: (old: any) => any): unknown;
}

/** TanStack Query: one invalidateQueries per batch (keys match as prefixes); patches with
 * setQueriesData. */
export declare function queryCache(queryClient: QueryClientLike): CacheAdapter;

/** SWR: `mutate` from useSWRConfig(); patches do not revalidate. */
export declare function swrCache(mutate: (key: any, data?: any, options?: any) => unknown): CacheAdapter;

/** Applies a row change to a cached array of rows (by primary key); anything else as is. */
export declare function patchRows<R extends Row = Row>(
  old: R[] | undefined,
  event: RelayEvent<R>,
  options?: { belongs?(row: R): boolean },
): R[] | undefined;

/** Whether `key` is a prefix of `queryKey` (objects match on their listed fields). */
export declare function keyMatches(queryKey: unknown, key: unknown): boolean;

/** createCacheSync for the component's life, with the provider's client. */
export declare function useCacheSync(rules: CacheRule[], cache: CacheAdapter | null, options?: CacheSyncOptions): void;

/** useCacheSync on a TanStack QueryClient (useQueryClient()). */
export declare function useQueryCacheSync(
  queryClient: QueryClientLike | null,
  rules: CacheRule[],
  options?: CacheSyncOptions,
): void;

/** useCacheSync on SWR's mutate (useSWRConfig().mutate). */
export declare function useSWRCacheSync(
  mutate: ((key: any, data?: any, options?: any) => unknown) | null,
  rules: CacheRule[],
  options?: CacheSyncOptions,
): void;
