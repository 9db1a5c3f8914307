// Types of rowcast.js (the browser client of rowcast). README: "Browser client".

export type Transport = 'ws' | 'sse' | 'poll';
/** live: on the first transport asked for; degraded: on a fallback (SSE or polling); offline: nothing gets through. */
export type Status = 'connecting' | 'live' | 'degraded' | 'offline';

/** Where a change came from: the envelope's fields. */
export interface EventMeta {
  /** The event name, e.g. "inventory.updated". */
  event: string;
  /** The subscribed topic it was delivered for. */
  topic: string;
  /** The resume cursor of this change (the envelope's `id`). */
  cursor: string;
  /** The id of the transaction that wrote it (decimal string), when the server sends it. */
  tx: string | null;
  /** When the writer emitted it, ms since the epoch. */
  ts: number;
  transport: Transport;
}

export interface StatusInfo {
  transport: Transport;
  previous: Status;
}

export interface ResyncInfo {
  topics: string[];
  reason: 'cursor_expired' | 'cursor_unknown' | 'bad_cursor' | string;
  /** true: the current state follows as events (the client asked for snapshots). */
  snapshot: boolean;
}

export interface TokenRequest {
  /** true when the server refused or expired the previous token. */
  refresh: boolean;
}

export interface Clock {
  now(): number;
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

export interface ConnectOptions {
  /** A token, or a function returning one (or a promise of one); called again when the server says it expired. */
  token?: string | ((req: TokenRequest) => string | null | undefined | Promise<string | null | undefined>);
  topics?: string[];
  /** Send the current state of the topics first (and again after a resync). Default false. */
  snapshot?: boolean;
  /** Start from this cursor (a previous session's `rc.cursor`). */
  cursor?: string;
  /** Transports in order of preference. Default ['ws', 'sse', 'poll']. */
  transports?: Transport[];
  attempts?: number;
  stableAfter?: number;
  backoffBase?: number;
  backoffMax?: number;
  /** After a WebSocket close 1012, ms during which reconnect failures keep the client on the WebSocket. */
  restartGrace?: number;
  upgradeDelay?: number;
  upgradeMax?: number;
  pollWait?: number;
  pollInterval?: number;
  openTimeout?: number;
  idleTimeout?: number;
  pingInterval?: number;
  activityInterval?: number;
  confirmTimeout?: number;
  /** Injected environment (tests, non-browser runtimes). */
  WebSocket?: unknown;
  fetch?: typeof fetch;
  clock?: Clock;
  random?: () => number;
}

export interface OptimisticOptions<T = any> {
  /** Applies the change to the UI at once. */
  apply?: () => void;
  /** Sends it: a fetch Response, or the answer's JSON. */
  request: () => Promise<Response | T> | Response | T;
  /** Undoes `apply` after an error answer (4xx/5xx, 409 conflicts) or a network error. */
  rollback?: (error: RowcastError | Error) => void;
  /** Events arriving before the confirmation for which this is true are held back (dropped once confirmed). */
  stale?: (data: any, meta: EventMeta) => boolean;
  /** Wait for the change carrying the answer's `tx`. Default true. */
  confirm?: boolean;
  /** ms; default `confirmTimeout` (10 s). */
  timeout?: number;
}

export interface OptimisticResult<T = any> {
  body: T;
  tx: string | null;
  confirmedBy: 'stream' | 'answer' | 'timeout';
}

export declare class RowcastError extends Error {
  /** HTTP status of a refused request. */
  status?: number;
  /** The error code: the answer's `error` (e.g. "checkout_conflict", "quantity_unavailable", "unauthorized"). */
  code?: string;
  /** The answer's body. */
  body?: any;
  /** The topic an `unavailable` error is about (the server's policy raised an error for it). */
  topic?: string;
  /** A 409 checkout's conflict list. */
  conflicts?: Array<{
    productId: string;
    name: string;
    unit: string;
    requested: number;
    available: number;
    options: string[];
    message: string;
    [k: string]: unknown;
  }>;
  /** `unauthorized`: what is wrong with the token (`expired`, `bad_signature`, ...). */
  reason?: string;
  /** `bad_topic` / `too_many_topics` for topics `subscribe()` added: the topics dropped. */
  topics?: string[];
}

export declare class Rowcast {
  readonly status: Status;
  readonly transport: Transport;
  /** The id of the last event received: where the next stream resumes. */
  readonly cursor: string | null;
  readonly topics: string[];
  readonly stats: { events: number; connects: number; switches: number; resyncs: number };

  on(event: 'rowcast:status', fn: (status: Status, info: StatusInfo) => void): () => void;
  on(event: 'rowcast:resync', fn: (info: ResyncInfo) => void): () => void;
  on(event: 'rowcast:denied', fn: (info: { topics: string[] }) => void): () => void;
  on(event: 'rowcast:error', fn: (error: RowcastError) => void): () => void;
  /** A change event by name, or '*' for every change. */
  on(event: string, fn: (data: any, meta: EventMeta) => void): () => void;
  off(event: string, fn: (...args: any[]) => void): void;
  ready(): Promise<void>;
  subscribe(topics: string | string[]): void;
  unsubscribe(topics: string | string[]): void;
  activity(): void;
  optimistic<T = any>(options: OptimisticOptions<T>): Promise<OptimisticResult<T>>;
  close(): void;
}

export declare const defaults: Readonly<Required<Omit<ConnectOptions, 'token' | 'topics' | 'cursor' | 'WebSocket' | 'fetch' | 'clock' | 'random'>>>;
export declare const version: string;
export declare function connect(baseUrl?: string, options?: ConnectOptions): Rowcast;

declare const rowcast: {
  connect: typeof connect;
  Rowcast: typeof Rowcast;
  RowcastError: typeof RowcastError;
  defaults: typeof defaults;
  version: string;
};
export default rowcast;
