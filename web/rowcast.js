// rowcast.js: the browser client of rowcast. One ES module, no dependencies.
//
//   import { connect } from '/rowcast.js';
//   const rc = connect('https://shop.example', { token: () => getToken(), topics: ['farm-7'] });
//   rc.on('inventory.updated', ({ productId, newQuantity }, meta) => ...);
//
// What it does once, so that apps do not have to (README, "Browser client"):
// - one cursor for the whole session, resumed on every reconnect and every
//   transport switch: no event lost, none repeated;
// - WebSocket first; SSE when the WebSocket cannot be opened or keeps
//   failing; HTTP polling (long polls, or every 5 s when long requests are
//   cut) when SSE fails too; back up to the WebSocket as soon as it works;
// - reconnects with exponential backoff and jitter, honours Retry-After;
// - asks the `token` callback for a fresh token when the server says the
//   old one expired (HTTP 401, WS close 1008, SSE `: token expired`);
// - tells the server why it is not on a WebSocket (`fallback=<reason>`) and
//   how long it was without one (`gap=<seconds>`), for the fallback SLO;
// - optimistic updates confirmed by transaction id (`optimistic()`).
//
// Everything the module needs from its environment (WebSocket, fetch, timers,
// clock, randomness) can be passed in `options`, which is how the unit tests
// (web/test/) drive it without a network.

const VERSION = '0.1.0';

/** Defaults of every tunable; each is an option of the same name. */
export const defaults = Object.freeze({
  transports: ['ws', 'sse', 'poll'],
  snapshot: false,
  /** Consecutive failures of one transport before the next one is tried. */
  attempts: 2,
  /** A connection that lived this long (ms) counts as working: failures reset. */
  stableAfter: 10000,
  /** Reconnect delay: min(backoffMax, backoffBase * 2^n), times a random 0.5–1. */
  backoffBase: 500,
  backoffMax: 30000,
  /**
   * After a WebSocket close 1012 (the node restarts), failures to reconnect
   * within this (ms) do not move the client down to SSE or polling, which
   * reach the same servers: it keeps retrying the WebSocket with backoff.
   */
  restartGrace: 30000,
  /** On SSE or polling, first try to go back up to the WebSocket after this (ms), doubling to upgradeMax. */
  upgradeDelay: 5000,
  upgradeMax: 60000,
  /** Long-poll wait (s), and the short-poll period (ms) used when long requests are cut (FR-021: 5 s). */
  pollWait: 25,
  pollInterval: 5000,
  /** A WebSocket must open, an SSE stream send its first bytes, within this (ms). */
  openTimeout: 10000,
  /** Nothing heard on an open stream for this long (ms): it is dead, reconnect. */
  idleTimeout: 45000,
  /** WebSocket: a ping message this often (ms), so that idleTimeout can notice a dead socket. */
  pingInterval: 20000,
  /** activity() reports at most once per this (ms). */
  activityInterval: 15000,
  /** optimistic(): resolve anyway when the confirming change has not arrived within this (ms). */
  confirmTimeout: 10000,
});

const LEVEL_STATUS = ['live', 'degraded'];

/** An error the SDK reports: a refused request, a refused topic, a bad token. */
export class RowcastError extends Error {
  constructor(message, fields = {}) {
    super(message);
    this.name = 'RowcastError';
    Object.assign(this, fields);
  }
}

/** Opens a client. See README, "Browser client", for every option and event. */
export function connect(baseUrl, options = {}) {
  return new Rowcast(baseUrl, options);
}

export class Rowcast {
  constructor(baseUrl, options = {}) {
    const g = globalThis;
    this.options = { ...defaults, ...options };
    const o = this.options;
    this.base = String(baseUrl || (g.location && g.location.origin) || '').replace(/\/+$/, '');
    this._WebSocket = o.WebSocket || g.WebSocket;
    this._fetch = o.fetch || (g.fetch && g.fetch.bind(g));
    const clock = o.clock || {};
    this._now = clock.now || (() => Date.now());
    this._setTimeout = clock.setTimeout || ((f, ms) => g.setTimeout(f, ms));
    this._clearTimeout = clock.clearTimeout || ((t) => g.clearTimeout(t));
    this._random = o.random || Math.random;
    this._transports = (o.transports || defaults.transports).filter((t) =>
      t === 'ws' ? !!this._WebSocket : t === 'sse' || t === 'poll' ? !!this._fetch : false);
    if (this._transports.length === 0) throw new RowcastError('no usable transport', { code: 'no_transport' });

    this._topics = new Set(o.topics || []);
    /** A topic given to connect() that no transport can ask for: the client stops at its first connect (as on a server's `bad_topic`). */
    const badStart = [...this._topics].map(topicProblem).find((m) => m);
    this._badStart = badStart ? new RowcastError(badStart, { code: 'bad_topic' }) : null;
    /** Topics subscribe() added that no stream has opened with yet (see _onEnd's `fatal`). */
    this._addedSince = new Set();
    /** The resume cursor: the id of the last event received. */
    this.cursor = o.cursor || null;
    /** Before the first event: the position the session started at (see _startPosition). */
    this._origin = null;
    this._token = undefined;
    this._tokenStale = true;
    this._tokenRefreshed = false;
    this.status = 'connecting';
    this.transport = this._transports[0];
    this._level = 0;
    this._failures = 0;
    this._backoffN = 0;
    this._cycleFailed = 0;
    this._conn = null;
    this._probe = null;
    this._probeDelay = o.upgradeDelay;
    this._timers = new Map();
    this._handlers = new Map();
    this._pending = [];
    /** Changes held back by pending optimistic writes, in arrival order (see _onEnvelope). */
    this._held = [];
    this._seq = 0;
    /** tx → the arrival number of the first change carrying it (the last 1000). */
    this._seenTx = new Map();
    this._seenTxOrder = [];
    /** On SSE or polling because the WebSocket failed; whether one ever opened. */
    this._fallback = false;
    this._wsEverOpened = false;
    this._wsDownSince = null;
    /** Until when a close 1012 keeps the client on its first transport (see restartGrace). */
    this._restartUntil = 0;
    this._pollShort = false;
    this._closed = false;
    this._activityAt = -Infinity;
    this._activityWanted = false;
    this._readyWaiters = [];
    this.stats = { events: 0, connects: 0, switches: 0, resyncs: 0 };
    this._schedule('reconnect', 0, () => this._connectNow());
  }

  // ------------------------------------------------------------------ public

  /** The subscribed topics. */
  get topics() {
    return [...this._topics];
  }

  /** Registers `fn` for an event name, `'*'` (every change) or a `rowcast:` event; returns a function that removes it. */
  on(name, fn) {
    if (!this._handlers.has(name)) this._handlers.set(name, new Set());
    this._handlers.get(name).add(fn);
    return () => this.off(name, fn);
  }

  off(name, fn) {
    const set = this._handlers.get(name);
    if (set) set.delete(fn);
  }

  /** Resolves when the client is first (or next) live on any transport. */
  ready() {
    if ((this._conn && this._conn.live) || this._topicless()) return Promise.resolve();
    return new Promise((resolve) => this._readyWaiters.push(resolve));
  }

  /**
   * Adds topics. On a WebSocket they start live (see _subscribeFromStart); SSE
   * and polling reopen with the cursor. A topic no transport can ask for (see
   * topicProblem) is not added: `rowcast:error` `bad_topic` says so, and the
   * others are added.
   */
  subscribe(topics) {
    if (this._closed) return;
    const asked = [].concat(topics);
    const bad = asked.filter((t) => topicProblem(t));
    if (bad.length) this._error(new RowcastError(topicProblem(bad[0]), { code: 'bad_topic', topics: bad }));
    const added = [...new Set(asked.filter((t) => !topicProblem(t) && !this._topics.has(t)))];
    if (added.length === 0) return;
    added.forEach((t) => this._topics.add(t));
    const c = this._conn;
    if (!c || c.kind !== 'ws' || !c.live) added.forEach((t) => this._addedSince.add(t));
    if (!c) {
      if (!this._timers.has('reconnect')) this._retryLater(0);
      return;
    }
    if (c.kind !== 'ws' || !c.live) return this._reopen();
    if (c.startWaiting) added.forEach((t) => c.startWaiting.add(t));
    else if (!c.fed && !this._resumeFrom() && !this.options.snapshot) this._subscribeFromStart(c, added);
    else c.subscribeMore(added);
  }

  /** Removes topics; their events stop at once (in-flight ones are dropped, see _onEnvelope). */
  unsubscribe(topics) {
    const removed = [].concat(topics).filter((t) => this._topics.delete(t));
    if (removed.length === 0 || this._closed) return;
    removed.forEach((t) => this._addedSince.delete(t));
    const c = this._conn;
    if (!c) return;
    if (c.kind !== 'ws' || !c.live) return this._reopen();
    // topics still waiting for their start position were never sent
    const sent = c.startWaiting ? removed.filter((t) => !c.startWaiting.delete(t)) : removed;
    if (sent.length) c.queue('unsubscribe', sent);
  }

  /**
   * Presence: this user is active. Throttled to one report per
   * `activityInterval`; a call inside the interval is sent at its end.
   * Needs a token (anonymous users have no presence).
   */
  activity() {
    if (this._closed || !this.options.token) return;
    const wait = this._activityAt + this.options.activityInterval - this._now();
    if (wait > 0) {
      this._activityWanted = true;
      if (!this._timers.has('activity')) this._schedule('activity', wait, () => this._sendActivity());
      return;
    }
    this._sendActivity();
  }

  /**
   * An optimistic change: `apply()` now, then `request()` (a fetch Response,
   * or a promise of the answer's JSON). On an error answer or a 409:
   * `rollback(error)` and the returned promise rejects with a RowcastError
   * (`status`, `code`, `body`, `conflicts`). On success the optimistic state
   * stays until the change carrying the answer's `tx` arrives through the
   * stream (then it resolves `{ body, tx, confirmedBy: 'stream' }`), or
   * `confirmTimeout` passes (`confirmedBy: 'timeout'`). An answer without a
   * `tx`, or `confirm: false`, resolves at once (`confirmedBy: 'answer'`).
   * `stale(data, meta)`: events for which it is true and that arrive before
   * the confirmation describe the state before this write; they are held back
   * (so the UI never flickers back) and dropped once confirmed, or delivered
   * in order on rollback or timeout. A lost connection rolls nothing back.
   */
  optimistic({ apply, request, rollback, stale, confirm = true, timeout } = {}) {
    const p = { stale: typeof stale === 'function' ? stale : null, tx: undefined, done: false, timer: null };
    this._pending.push(p);
    // changes held back already describe the state before this write too
    for (const e of this._held) if (this._holds(p, e.data, e.meta)) e.holders.add(p);
    return new Promise((resolve, reject) => {
      try {
        if (apply) apply();
      } catch (e) {
        this._settlePending(p);
        reject(e);
        return;
      }
      Promise.resolve()
        .then(() => request())
        .then(readAnswer)
        .then(
          (body) => {
            const tx = body && body.tx != null ? String(body.tx) : null;
            p.confirmed = (how) => resolve({ body, tx, confirmedBy: how });
            if (!confirm || tx === null) return this._settlePending(p, 'answer');
            p.tx = tx;
            // the change may have come through the stream before the answer
            const own = this._held.find((e) => e.meta.tx === tx);
            const at = own ? own.seq : this._seenTx.get(tx);
            if (at !== undefined) return this._settlePending(p, 'stream', at);
            p.timer = this._setTimeout(() => this._settlePending(p, 'timeout'), timeout ?? this.options.confirmTimeout);
            return undefined;
          },
          (err) => {
            // rolled back first: what it held is newer than what it restores
            try {
              if (rollback) rollback(err);
            } finally {
              this._settlePending(p);
              reject(err);
            }
          },
        );
    });
  }

  /** Closes the client for good. */
  close() {
    if (this._closed) return;
    this._closed = true;
    for (const t of this._timers.values()) this._clearTimeout(t);
    this._timers.clear();
    this._drop(this._probe);
    this._probe = null;
    this._drop(this._conn);
    this._conn = null;
    this._setStatus('offline');
  }

  // ------------------------------------------------------------- internals

  _emit(name, ...args) {
    const set = this._handlers.get(name);
    if (!set) return;
    for (const fn of [...set]) {
      try {
        fn(...args);
      } catch (e) {
        (globalThis.console || { error() {} }).error('rowcast: a handler of', name, 'threw', e);
      }
    }
  }

  _dispatch(event, data, meta) {
    this._emit(event, data, meta);
    this._emit('*', data, meta);
  }

  _error(err) {
    this._emit('rowcast:error', err);
  }

  _schedule(name, ms, fn) {
    this._clearTimer(this._timers.get(name));
    const t = this._setTimeout(() => {
      if (this._timers.get(name) === t) this._timers.delete(name);
      fn();
    }, Math.max(0, ms));
    this._timers.set(name, t);
  }

  _clearTimer(t) {
    if (t !== undefined && t !== null) this._clearTimeout(t);
  }

  _unschedule(name) {
    this._clearTimer(this._timers.get(name));
    this._timers.delete(name);
  }

  _backoff(n) {
    const o = this.options;
    const d = Math.min(o.backoffMax, o.backoffBase * 2 ** Math.min(n, 20));
    return d * (0.5 + this._random() * 0.5);
  }

  _setStatus(status) {
    const transport = this._conn ? this._conn.kind : this._transports[this._level];
    if (status === this.status && transport === this.transport) return;
    const previous = this.status;
    this.status = status;
    this.transport = transport;
    this._emit('rowcast:status', status, { transport, previous });
  }

  /** The token to use now: the callback's answer, asked again when the last one was refused. */
  async _currentToken() {
    const t = this.options.token;
    if (!t) return null;
    if (typeof t === 'string') return t;
    if (this._tokenStale || this._token === undefined) {
      const refresh = this._token !== undefined;
      this._token = (await t({ refresh })) || null;
      this._tokenRefreshed = refresh;
      this._tokenStale = false;
    }
    return this._token;
  }

  _kind() {
    return this._transports[this._level];
  }

  /** Opens the current level's transport, with the token and start position it needs. */
  async _connectNow() {
    if (this._closed || this._conn) return;
    if (this._badStart) {
      this._error(this._badStart);
      this._setStatus('offline');
      return;
    }
    if (this._topics.size === 0 && !this._topiclessSocket()) return; // nothing to stream yet
    const gen = (this._gen = (this._gen || 0) + 1);
    let token;
    try {
      token = await this._currentToken();
    } catch (e) {
      this._error(new RowcastError('the token callback failed', { code: 'token_callback', cause: e }));
      return this._retryLater(this._backoff(this._backoffN++));
    }
    if (this._closed || gen !== this._gen || this._conn) return;
    const kind = this._kind();
    if (kind !== 'poll' && !this._resumeFrom() && !this.options.snapshot && this._topics.size) {
      const at = await this._startPosition(token);
      if (this._closed || gen !== this._gen || this._conn) return;
      if (at && !this._resumeFrom()) this._origin = at;
    }
    this.stats.connects++;
    this._conn = this._open(kind, token);
    this._setStatus(this.status === 'offline' ? 'offline' : 'connecting');
  }

  /**
   * Before the first event there is no cursor, so a stream that drops before
   * any event would resume "from now" and lose what was committed in between.
   * A position from a poll without cursor closes that hole (only when no
   * snapshot was asked for: a snapshot reconnect is state-complete by itself).
   * A position is the log's, whatever the topics: a poll refused for one
   * topic (403 `forbidden`, or 503 `unavailable` naming a topic the policy
   * failed for: each refuses the whole request) is asked again without it,
   * so that one refused topic leaves the others their position.
   * Returns it (or null), for the caller to keep as `_origin`.
   */
  async _startPosition(token) {
    let topics = this.topics;
    while (topics.length) {
      try {
        const r = await this._fetch(this._url('/v1/poll', { topics: topics.join(',') }), {
          headers: bearer(token),
          cache: 'no-store',
        });
        if (r.ok) {
          const body = await r.json();
          if (body && typeof body.cursor === 'string') return body.cursor;
        } else if (r.status === 401) {
          this._tokenStale = true;
        } else if (r.status === 403 || r.status === 503) {
          // a topic denied (403 `forbidden`), or one the policy failed for
          // (503 `unavailable` naming it): asked again without it
          const body = await r.json().catch(() => null);
          const refused = body && (body.error === 'forbidden' || body.error === 'unavailable') ? body.topic : undefined;
          if (typeof refused === 'string' && topics.includes(refused)) {
            topics = topics.filter((t) => t !== refused);
            continue;
          }
        }
      } catch (_) {
        // the stream will tell what is wrong
      }
      return null;
    }
    return null;
  }

  /**
   * The first topics of a client that started without any (no position yet,
   * see _startPosition): the WebSocket's first subscribe opens at a start
   * position taken now. Topics added meanwhile join that subscribe.
   */
  async _subscribeFromStart(c, topics) {
    c.startWaiting = new Set(topics);
    const at = await this._startPosition(c.token);
    const waiting = [...c.startWaiting].filter((t) => this._topics.has(t));
    c.startWaiting = null;
    // on a new connection, its own start subscribes every topic
    if (this._closed || c !== this._conn || c.ended) return;
    if (at && !this._resumeFrom()) this._origin = at;
    if (waiting.length) c.subscribeMore(waiting);
  }

  _url(path, params) {
    const q = Object.entries(params)
      .filter(([, v]) => v !== undefined && v !== null && v !== '')
      .map(([k, v]) => `${encodeURIComponent(k)}=${encodeURIComponent(v)}`)
      .join('&');
    return `${this.base}${path}${q ? `?${q}` : ''}`;
  }

  /** Where the next stream starts: the cursor, else the session's origin. */
  _resumeFrom() {
    return this.cursor || this._origin || null;
  }

  /** The `fallback` report for SSE and polling: `ws_blocked` if no WebSocket of this client ever opened, else `ws_failed`. */
  _fallbackParam() {
    if (this._transports[0] !== 'ws') return undefined;
    if (!this._fallback) return 'none';
    return this._wsEverOpened ? 'ws_failed' : 'ws_blocked';
  }

  _gapParam() {
    if (this._wsDownSince === null) return undefined;
    const s = Math.min(86400, Math.max(0, (this._now() - this._wsDownSince) / 1000));
    return s.toFixed(3);
  }

  _open(kind, token, probe = false) {
    if (kind === 'ws') return new WsConn(this, token, probe);
    if (kind === 'sse') return new SseConn(this, token);
    return new PollConn(this, token);
  }

  _drop(c) {
    if (c) c.close();
  }

  /** Reopens the current stream (new topics on SSE / polling), resuming at the cursor. */
  _reopen() {
    const c = this._conn;
    if (!c) return;
    this._conn = null;
    c.close();
    this._schedule('reconnect', 0, () => this._connectNow());
  }

  _retryLater(ms) {
    this._schedule('reconnect', ms, () => this._connectNow());
  }

  // -- called by the connections

  _onLive(c) {
    if (c !== this._conn) return;
    this._addedSince.clear();
    this._restartUntil = 0;
    c.live = true;
    c.liveAt = this._now();
    this._cycleFailed = 0;
    this._tokenRefreshed = false;
    if (c.kind === 'ws') {
      this._fallback = false;
      this._level = 0;
      this._unschedule('probe');
    } else if (this._transports[0] === 'ws' && !this._probe) {
      this._schedule('probe', this._probeDelay * (0.75 + this._random() * 0.5), () => this._startProbe());
    }
    this._setStatus(this._level === 0 ? LEVEL_STATUS[0] : LEVEL_STATUS[1]);
    if (this._activityWanted) this._sendActivity();
    this._resolveReady();
  }

  /**
   * An SSE or polling stream refused for one of its topics (the server
   * refuses the whole request) reopens without it. With none left there is
   * nothing to open: the server has answered, so the client is as ready as a
   * WebSocket without topics (`live`, or `degraded` on a fallback) until
   * `subscribe()` opens a stream.
   */
  _afterRefusal() {
    if (this._topics.size > 0 || this._topiclessSocket()) {
      this._setStatus('connecting');
      return this._retryLater(0);
    }
    this._setStatus(this._level === 0 ? LEVEL_STATUS[0] : LEVEL_STATUS[1]);
    this._resolveReady();
    return undefined;
  }

  /** Live with nothing to stream (see _afterRefusal; or every topic unsubscribed while live). */
  _topicless() {
    return !this._conn && this._topics.size === 0 && !this._topiclessSocket()
      && (this.status === LEVEL_STATUS[0] || this.status === LEVEL_STATUS[1]);
  }

  /**
   * Whether a client with no topics keeps a socket open: a WebSocket with a
   * token (it authenticates, and can report presence). Without a token there
   * is nothing to say on it, and a server with JWT would close it after
   * `--auth-timeout`: it opens with the first topics, as SSE and polling do.
   */
  _topiclessSocket() {
    return this._kind() === 'ws' && !!this.options.token;
  }

  /** `ready()`'s waiters go on. */
  _resolveReady() {
    const waiters = this._readyWaiters;
    this._readyWaiters = [];
    waiters.forEach((w) => w());
  }

  /**
   * One change from the stream: advances the cursor, then delivers it, unless
   * an optimistic write holds it back (see `optimistic`).
   *
   * The optimistic contract, kept here and in `_settlePending`: a change that
   * a pending write's `stale` matches describes the state before that write;
   * it is held (by every pending write it matches, and by a write started
   * while it is held) and delivered once none holds it any more, in the
   * order changes arrived. The change carrying a
   * write's `tx` confirms it, and drops what that write held: older state,
   * superseded by it. Held or not, no change is delivered after a newer one
   * that the same writes held, and a confirmation shown while a later write
   * is pending is itself held by that write (no flicker back).
   */
  _onEnvelope(c, env) {
    if (c !== this._conn || this._closed) return;
    if (!this._topics.has(env.topic) && c.unsubscribing && c.unsubscribing.has(env.topic) && this._topics.size > 0) {
      // sent before the server took the unsubscribe: it may also belong to a
      // topic still subscribed, under which the server now sends such
      // changes; resume from before it (the cursor has not moved past it)
      this._reopen();
      return;
    }
    if (typeof env.id === 'string') this.cursor = env.id;
    this._origin = null;
    this.stats.events++;
    const seq = ++this._seq;
    const tx = env.tx == null ? null : String(env.tx);
    if (tx !== null) this._rememberTx(tx, seq);
    if (!this._topics.has(env.topic)) return;
    const meta = { event: env.event, topic: env.topic, cursor: env.id, tx, ts: env.ts, transport: c.kind };
    const data = env.data;
    for (const p of [...this._pending]) {
      if (!p.done && p.tx !== undefined && tx === p.tx) this._settlePending(p, 'stream', seq);
    }
    const holders = new Set(this._pending.filter((p) => !p.done && this._holds(p, data, meta)));
    if (holders.size) this._held.push({ seq, event: env.event, data, meta, holders });
    else this._dispatch(env.event, data, meta);
  }

  /** Whether pending write `p` holds this change back (its `stale`; one that throws holds nothing). */
  _holds(p, data, meta) {
    if (!p.stale) return false;
    try {
      return !!p.stale(data, meta);
    } catch (_) {
      return false;
    }
  }

  /**
   * An optimistic write is over: confirmed (`how` 'stream', by the change at
   * `seq`: what it held before that change is dropped), settled by its
   * answer or its timeout, or failed (`how` undefined). What no pending
   * write holds any more is delivered, in order.
   */
  _settlePending(p, how, seq) {
    if (p.done) return;
    p.done = true;
    this._clearTimer(p.timer);
    this._pending = this._pending.filter((x) => x !== p);
    if (seq !== undefined) this._held = this._held.filter((e) => !(e.holders.has(p) && e.seq < seq));
    if (how && p.confirmed) p.confirmed(how);
    const free = [];
    this._held = this._held.filter((e) => {
      e.holders.delete(p);
      if (e.holders.size) return true;
      free.push(e);
      return false;
    });
    for (const e of free) this._dispatch(e.event, e.data, e.meta);
  }

  _rememberTx(tx, seq) {
    if (this._seenTx.has(tx)) return;
    this._seenTx.set(tx, seq);
    this._seenTxOrder.push(tx);
    if (this._seenTxOrder.length > 1000) this._seenTx.delete(this._seenTxOrder.shift());
  }

  _onResync(c, msg) {
    if (c !== this._conn) return;
    this._resynced(msg.topics || this.topics, msg.reason, msg.cursor);
  }

  /**
   * The server could not resume: counted, and told. `cursor`: where the
   * stream carries on, so that a reconnect before its first event resumes
   * from there instead of asking with the cursor that could not be resumed.
   */
  _resynced(topics, reason, cursor) {
    this.stats.resyncs++;
    if (cursor) this.cursor = cursor;
    this._emit('rowcast:resync', { topics, reason, snapshot: !!this.options.snapshot });
  }

  /**
   * A cursor the server cannot read (`bad_cursor`) is dropped, and the
   * stream opens again from a start position taken now (see
   * _startPosition; none with `snapshot`, whose reopening is
   * state-complete by itself), which is `rc.cursor` when the resync is told.
   */
  async _resyncFromNow() {
    this.cursor = null;
    this._origin = null;
    let at = null;
    if (!this.options.snapshot && this._topics.size) {
      try {
        at = await this._startPosition(await this._currentToken());
      } catch (_) {
        // the reconnect will tell what is wrong
      }
    }
    if (this._closed) return undefined;
    this._resynced(this.topics, 'bad_cursor', this._resumeFrom() ? null : at);
    return this._conn ? undefined : this._retryLater(0);
  }

  _onDenied(c, topics) {
    topics.forEach((t) => this._topics.delete(t));
    this._emit('rowcast:denied', { topics });
  }

  /**
   * The server's `rowcast.authorize` raised for `topic` (503 / WS
   * `unavailable` naming it): dropped like a denied topic, so that the
   * others carry on, and reported; `subscribe()` asks for it again.
   */
  _onPolicyFailed(topic, message) {
    this._topics.delete(topic);
    this._error(new RowcastError(message || 'the policy failed for this topic', { code: 'unavailable', topic }));
  }

  /**
   * Topics a later `subscribe()` added that the server refused as malformed
   * (`bad_topic`, e.g. over `--max-topic-len`) or too many
   * (`too_many_topics`): dropped and reported (`error.topics`); the others
   * carry on.
   */
  _refuseAdded(code, message, topics) {
    topics.forEach((t) => {
      this._topics.delete(t);
      this._addedSince.delete(t);
    });
    this._error(new RowcastError(message || code, { code, topics }));
  }

  /**
   * A connection ended. `info.kind`: 'failure' (could not open, broke, cut),
   * 'retry' (the server asked to come back later), 'auth' (token refused),
   * 'bad_cursor', 'forbidden' (a topic refused; `info.topic`) or 'fatal'.
   */
  _onEnd(c, info) {
    if (c === this._probe) return this._probeFailed(c, info);
    if (c !== this._conn) return;
    this._conn = null;
    if (this._closed) return;
    const now = this._now();
    const lived = c.live ? now - c.liveAt : -1;
    const stable = lived >= this.options.stableAfter;
    if (c.kind === 'ws') {
      // without a working WebSocket from now on (the gap the next one reports)
      if (this._wsDownSince === null) this._wsDownSince = now;
    }
    if (stable) {
      this._failures = 0;
      this._backoffN = 0;
      this._probeDelay = this.options.upgradeDelay;
    }
    if (c.fromLevel !== undefined && !c.live) {
      // a hand-over to the WebSocket that did not make it: back where we were, at once
      this._level = c.fromLevel;
      this._probeDelay = Math.min(this.options.upgradeMax, this._probeDelay * 2);
      this._setStatus('connecting');
      return this._retryLater(0);
    }
    switch (info.kind) {
      case 'auth': {
        // a fresh token from the callback; a refused fresh one is a failure like any other
        const again = this._tokenRefreshed || typeof this.options.token !== 'function';
        this._tokenStale = true;
        if (again) {
          this._error(new RowcastError('the server refused the token', { code: 'unauthorized', reason: info.reason }));
          this._setStatus('offline');
          return this._retryLater(this._backoff(this._backoffN++));
        }
        this._setStatus('connecting');
        return this._retryLater(0);
      }
      case 'forbidden':
        this._onDenied(c, [info.topic]);
        return this._afterRefusal();
      case 'policy_failed':
        this._onPolicyFailed(info.topic, info.message);
        return this._afterRefusal();
      case 'bad_cursor':
        this._setStatus('connecting');
        return this._resyncFromNow();
      case 'fatal':
        if ((info.code === 'bad_topic' || info.code === 'too_many_topics') && this._addedSince.size) {
          // refused for what a later subscribe() added: those go, the others carry on
          this._refuseAdded(info.code, info.message, [...this._addedSince]);
          return this._afterRefusal();
        }
        this._error(new RowcastError(info.message || 'refused', { code: info.code, status: info.status }));
        this._setStatus('offline');
        return undefined;
      case 'retry': {
        if (info.restart) this._restartUntil = now + this.options.restartGrace;
        this._setStatus('connecting');
        // 1012 (the node restarts): at once, unless it came before the
        // connection was stable (then the backoff, so that it cannot loop)
        if (info.retryAfter === 0 && stable) return this._retryLater(0);
        const wait = stable ? this._backoff(0) : this._backoff(this._backoffN++);
        return this._retryLater(Math.max(info.retryAfter || 0, wait));
      }
      default: {
        if (stable) {
          this._setStatus('connecting');
          return this._retryLater(this._backoff(0) / 2);
        }
        if (this._level === 0 && now < this._restartUntil) {
          // the node said it restarts: not a failure of the transport
          this._setStatus('connecting');
          return this._retryLater(this._backoff(this._backoffN++));
        }
        this._failures++;
        this._backoffN++;
        if (this._failures < this.options.attempts) {
          this._setStatus(this._cycleFailed > 0 ? 'offline' : 'connecting');
          return this._retryLater(this._backoff(this._backoffN - 1));
        }
        return this._moveDown(c);
      }
    }
  }

  /** The current transport keeps failing: the next one, or back to the first when all failed. */
  _moveDown(c) {
    this._failures = 0;
    if (this._level + 1 < this._transports.length) {
      if (this._transports[0] === 'ws' && this._level === 0) this._fallback = true;
      this._level++;
      this.stats.switches++;
      this._setStatus(this._cycleFailed > 0 ? 'offline' : 'connecting');
      return this._retryLater(this._cycleFailed > 0 ? this._backoff(this._backoffN - 1) : 0);
    }
    // nothing works: the server (or the network) is down, not one transport
    this._cycleFailed++;
    this._level = 0;
    this._pollShort = false;
    this._setStatus('offline');
    return this._retryLater(this._backoff(this._backoffN - 1));
  }

  // -- going back up to the WebSocket

  async _startProbe() {
    if (this._closed || this._probe || !this._conn || !this._conn.live || this._level === 0) return;
    let token;
    try {
      token = await this._currentToken();
    } catch (_) {
      token = this._token;
    }
    if (this._closed || this._probe || !this._conn || this._level === 0) return;
    this._probe = this._open('ws', token, true);
  }

  /**
   * The probe's WebSocket is open: the hand-over. The lower stream stops
   * first (nothing it still had in flight is delivered), then the WebSocket
   * subscribes from the cursor of the last event delivered: neither loss nor
   * repeat.
   */
  _onProbeOpen(p) {
    if (p !== this._probe) return;
    this._probe = null;
    const old = this._conn;
    p.fromLevel = this._level;
    this._conn = p;
    this._drop(old);
    this.stats.switches++;
    p.start();
  }

  _probeFailed(p, _info) {
    this._probe = null;
    if (this._wsDownSince === null) this._wsDownSince = this._now();
    this._probeDelay = Math.min(this.options.upgradeMax, this._probeDelay * 2);
    if (this._conn && this._conn.live && this._level > 0) {
      this._schedule('probe', this._probeDelay * (0.75 + this._random() * 0.5), () => this._startProbe());
    }
  }

  async _sendActivity() {
    this._unschedule('activity');
    this._activityWanted = false;
    this._activityAt = this._now();
    const c = this._conn;
    if (c && c.kind === 'ws' && c.live) {
      c.send({ type: 'activity' });
      return;
    }
    if (!c || !c.live) {
      this._activityWanted = true; // said when a stream is up
      return;
    }
    try {
      const token = await this._currentToken();
      if (!token) return;
      const r = await this._fetch(this._url('/v1/presence/activity', {}), { method: 'POST', headers: bearer(token) });
      if (r.status === 401) this._tokenStale = true;
    } catch (_) {
      // presence is best effort
    }
  }
}

/**
 * Why a topic cannot be asked for on every transport, or null: the server's
 * rule (README "Limits and hostile input"; `check_topic`), plus what a URL's
 * comma-separated `topics=` cannot carry (a comma, spaces around it). Its
 * length is the server's to judge (`--max-topic-len`).
 */
function topicProblem(t) {
  if (typeof t !== 'string' || t === '') return 'a topic is a non-empty string';
  if (t.includes(',')) return `topic ${JSON.stringify(t)} has a comma`;
  if (/^ | $/.test(t)) return `topic ${JSON.stringify(t)} has spaces around it`;
  if (/[\u0000-\u001f\u007f-\u009f\u00ad\u061c\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u206f\ufeff]/.test(t)) {
    return `topic ${JSON.stringify(t)} has a control, zero-width or bidi character`;
  }
  return null;
}

/** `Authorization: Bearer` when there is a token. */
function bearer(token) {
  return token ? { Authorization: `Bearer ${token}` } : {};
}

/** The JSON of an answer: a Response (an error status rejects) or a plain value. */
async function readAnswer(r) {
  if (!r || typeof r !== 'object' || typeof r.status !== 'number' || typeof r.json !== 'function') return r;
  let body = null;
  try {
    const text = await r.text();
    body = text ? JSON.parse(text) : null;
  } catch (_) {
    body = null;
  }
  if (r.ok) return body;
  const b = body || {};
  throw new RowcastError(b.message || `request failed with status ${r.status}`, {
    status: r.status,
    code: b.error || 'http_error',
    body,
    conflicts: Array.isArray(b.conflicts) ? b.conflicts : undefined,
  });
}

function retryAfterMs(r) {
  const v = r.headers && r.headers.get && r.headers.get('retry-after');
  const s = v ? Number(v) : NaN;
  return Number.isFinite(s) ? s * 1000 : 1000;
}

async function errorBody(r) {
  try {
    return JSON.parse(await r.text());
  } catch (_) {
    return null;
  }
}

/**
 * What an HTTP refusal of a stream means for the client (the error bodies of
 * README "Polling"): the `kind` `_onEnd` understands.
 */
function httpEnd(status, body, retryAfter) {
  const code = body && typeof body.error === 'string' ? body.error : null;
  if (status === 401 && code === 'unauthorized') return { kind: 'auth', expired: body.reason === 'expired', reason: body.reason };
  if (status === 403 && code === 'forbidden' && body.topic) return { kind: 'forbidden', topic: body.topic };
  if (status === 503 && code === 'unavailable' && body.topic) return { kind: 'policy_failed', topic: body.topic, message: body.message };
  if (status === 403 && code === 'forbidden_origin') return { kind: 'fatal', code, status, message: body.message };
  if (status === 400 && code === 'bad_cursor') return { kind: 'bad_cursor' };
  if (status === 400 && code) return { kind: 'fatal', code, status, message: body.message };
  if ((status === 429 || status === 503) && code) return { kind: 'retry', retryAfter };
  // anything else (a proxy's answer, no rowcast body): this transport does not get through
  return { kind: 'failure', status };
}

// ---------------------------------------------------------------- WebSocket

class WsConn {
  constructor(rc, token, probe) {
    this.rc = rc;
    this.kind = 'ws';
    this.token = token;
    this.live = false;
    this.opened = false;
    this.ended = false;
    this.probe = probe;
    this.awaiting = new Set();
    /** The server has this connection's subscription (a subscribe was answered). */
    this.fed = false;
    /** Topics waiting for their start position (rc._subscribeFromStart). */
    this.startWaiting = null;
    /** Subscribes and unsubscribes of this task, not yet sent (see queue). */
    this.outbox = [];
    /** Topics of live subscribes not yet answered: a `bad_topic` / `too_many_topics` refuses them. */
    this.pendingSub = new Set();
    /** Topics unsubscribed, until the server says so: their changes in flight may also be a remaining topic's. */
    this.unsubscribing = new Set();
    this.authError = null;
    const url = rc._url('/v1/ws', { gap: rc._gapParam() }).replace(/^http/, 'ws');
    try {
      this.ws = new rc._WebSocket(url);
    } catch (e) {
      this.ws = null;
      rc._setTimeout(() => this.end({ kind: 'failure' }), 0);
      return;
    }
    this.openTimer = rc._setTimeout(() => this.end({ kind: 'failure', timeout: true }), rc.options.openTimeout);
    this.ws.onopen = () => this.onOpen();
    this.ws.onmessage = (m) => this.onMessage(m);
    this.ws.onclose = (e) => this.onClose(e);
    this.ws.onerror = () => {};
  }

  onOpen() {
    if (this.ended) return;
    this.opened = true;
    this.rc._wsEverOpened = true;
    // the server counted this session and its gap: a new gap starts at the next loss
    this.rc._wsDownSince = null;
    this.rc._clearTimer(this.openTimer);
    this.heard();
    if (this.probe) this.rc._onProbeOpen(this);
    else this.start();
  }

  /** Authenticates (first message, before any subscription) and subscribes from the cursor. */
  start() {
    const rc = this.rc;
    if (this.token) this.send({ type: 'auth', token: this.token });
    // with or without topics: a quiet socket must still be heard within idleTimeout
    this.pinger = setIntervalVia(rc, rc.options.pingInterval, () => this.send({ type: 'ping' }));
    const topics = rc.topics;
    if (topics.length === 0) return rc._onLive(this);
    topics.forEach((t) => this.awaiting.add(t));
    this.subscribeFrom(topics);
  }

  /** The subscribe that opens the connection's subscription: at the cursor, with the snapshot option. */
  subscribeFrom(topics) {
    const rc = this.rc;
    const cursor = rc._resumeFrom();
    const msg = { type: 'subscribe', topics, snapshot: !!rc.options.snapshot };
    if (cursor) msg.cursor = cursor;
    this.send(msg);
  }

  /** Topics added while live: live once the server has a subscription (it takes a cursor on the first only). */
  subscribeMore(topics) {
    if (this.fed) return this.queue('subscribe', topics);
    topics.forEach((t) => this.pendingSub.add(t));
    return this.subscribeFrom(topics);
  }

  /**
   * A `subscribe` or `unsubscribe` while live, sent at the end of the
   * current task: the calls of one task go as one message per run of the
   * same kind (a loop of `subscribe()` calls is one message, well within the
   * server's `--max-msgs-per-sec`), each with the topics still wanted then.
   */
  queue(type, topics) {
    // from now on, not only once sent: an event of these topics already on
    // its way is told apart at once (see _onEnvelope)
    if (type === 'unsubscribe') topics.forEach((t) => this.unsubscribing.add(t));
    const last = this.outbox[this.outbox.length - 1];
    if (last && last.type === type) last.topics.push(...topics);
    else this.outbox.push({ type, topics: [...topics] });
    if (this.outbox.length === 1 && last === undefined) Promise.resolve().then(() => this.flush());
  }

  flush() {
    const out = this.outbox;
    this.outbox = [];
    if (this.ended) return;
    const has = (t) => this.rc._topics.has(t);
    for (const m of out) {
      const wanted = m.type === 'subscribe' ? has : (t) => !has(t);
      // subscribed again in the same task: not unsubscribed after all
      if (m.type === 'unsubscribe') m.topics.filter(has).forEach((t) => this.unsubscribing.delete(t));
      const topics = [...new Set(m.topics.filter(wanted))];
      if (topics.length === 0) continue;
      // a live subscribe is told apart until the server answers it: see onError
      if (m.type === 'subscribe') topics.forEach((t) => this.pendingSub.add(t));
      this.send({ type: m.type, topics });
    }
  }

  send(obj) {
    if (this.ws && this.ws.readyState === 1) {
      try {
        this.ws.send(JSON.stringify(obj));
      } catch (_) {
        // the close event follows
      }
    }
  }

  heard() {
    const rc = this.rc;
    rc._clearTimer(this.idleTimer);
    this.idleTimer = rc._setTimeout(() => this.end({ kind: 'failure', idle: true }), rc.options.idleTimeout);
  }

  settle(topic) {
    this.awaiting.delete(topic);
    if (!this.live && this.awaiting.size === 0) this.rc._onLive(this);
  }

  onMessage(m) {
    if (this.ended) return;
    this.heard();
    let msg;
    try {
      msg = JSON.parse(typeof m.data === 'string' ? m.data : '');
    } catch (_) {
      return;
    }
    const rc = this.rc;
    switch (msg.type) {
      case 'event':
        rc._onEnvelope(this, msg);
        break;
      case 'subscribed':
        if ((msg.topics || []).length) this.fed = true;
        (msg.topics || []).forEach((t) => {
          this.pendingSub.delete(t);
          this.settle(t);
        });
        break;
      case 'unsubscribed':
        (msg.topics || []).forEach((t) => this.unsubscribing.delete(t));
        break;
      case 'resync':
        rc._onResync(this, msg);
        break;
      case 'error':
        this.onError(msg);
        break;
      default:
        break; // pong, authenticated
    }
  }

  onError(msg) {
    const rc = this.rc;
    switch (msg.code) {
      case 'forbidden':
        if (msg.topic) {
          this.pendingSub.delete(msg.topic);
          rc._onDenied(this, [msg.topic]);
          this.settle(msg.topic);
        }
        break;
      case 'unauthorized':
        this.authError = msg;
        break; // close 1008 follows
      case 'bad_cursor':
        this.end({ kind: 'bad_cursor' });
        break;
      case 'authorize_rate_limited':
        if (!this.live) this.end({ kind: 'retry', retryAfter: 1000 });
        else rc._error(new RowcastError(msg.message || msg.code, { code: msg.code }));
        break;
      case 'unavailable':
        if (msg.topic) {
          // the policy failed for this topic only: the connection carries on
          this.pendingSub.delete(msg.topic);
          rc._onPolicyFailed(msg.topic, msg.message);
          this.settle(msg.topic);
        }
        break; // else close 1013 follows
      case 'cursor_ahead':
        break; // close 1013 follows
      case 'bad_topic':
      case 'too_many_topics':
        // opening: the end says what it means (_onEnd's `fatal`); live: the
        // topics of the subscribe it refused, not yet answered, are dropped
        if (!this.live) this.end({ kind: 'fatal', code: msg.code, message: msg.message });
        else {
          const refused = [...this.pendingSub];
          this.pendingSub.clear();
          rc._refuseAdded(msg.code, msg.message, refused);
        }
        break;
      default:
        rc._error(new RowcastError(msg.message || msg.code, { code: msg.code }));
    }
  }

  onClose(e) {
    if (this.ended) return;
    const code = e && e.code;
    const reason = (e && e.reason) || '';
    if (code === 1008 && (reason === 'token expired' || reason === 'invalid token' || this.authError)) {
      const expired = reason === 'token expired' || /expired/.test((this.authError && this.authError.message) || '');
      // the error message's `reason` (as HTTP's 401 body gives it), else the close frame's
      return this.end({ kind: 'auth', expired, reason: (this.authError && this.authError.reason) || reason });
    }
    if ([1012, 1013, 4008, 4010, 1001].includes(code) || (code === 1008 && /rate/.test(reason))) {
      return this.end({ kind: 'retry', retryAfter: code === 1012 ? 0 : undefined, restart: code === 1012 });
    }
    return this.end({ kind: 'failure', code });
  }

  end(info) {
    if (this.ended) return;
    this.ended = true;
    this.cleanup();
    this.rc._onEnd(this, info);
  }

  cleanup() {
    const rc = this.rc;
    rc._clearTimer(this.openTimer);
    rc._clearTimer(this.idleTimer);
    if (this.pinger) this.pinger.stop();
    if (this.ws) {
      this.ws.onopen = this.ws.onmessage = this.ws.onclose = null;
      try {
        this.ws.close(1000);
      } catch (_) {
        // already closed
      }
    }
  }

  /** Closed by the client: nothing more is delivered or reported. */
  close() {
    if (this.ended) return;
    this.ended = true;
    this.cleanup();
  }
}

/** A repeating timer made of the injectable one-shot timers. */
function setIntervalVia(rc, ms, fn) {
  let t;
  let stopped = false;
  const tick = () => {
    if (stopped) return;
    fn();
    t = rc._setTimeout(tick, ms);
  };
  t = rc._setTimeout(tick, ms);
  return {
    stop() {
      stopped = true;
      rc._clearTimer(t);
    },
  };
}

// ---------------------------------------------------------------------- SSE

/**
 * Server-Sent Events read with fetch() rather than EventSource: it sees the
 * status and body of a refusal (401 `expired`, 403, 410), the closing
 * comment (`: token expired`), and can time out a proxy that buffers the
 * stream; EventSource hides all three.
 */
class SseConn {
  constructor(rc, token) {
    this.rc = rc;
    this.kind = 'sse';
    this.live = false;
    this.ended = false;
    this.abort = typeof AbortController === 'function' ? new AbortController() : null;
    this.lastComment = null;
    const cursor = rc._resumeFrom();
    const url = rc._url('/v1/events', {
      topics: rc.topics.join(','),
      lastEventId: cursor,
      snapshot: rc.options.snapshot ? 'true' : undefined,
      fallback: rc._fallbackParam(),
    });
    this.openTimer = rc._setTimeout(() => this.end({ kind: 'failure', timeout: true }), rc.options.openTimeout);
    this.run(url, token).catch(() => this.end({ kind: 'failure' }));
  }

  /** Read with `fetch`, so the token goes in a header (never in the URL, where logs keep it). */
  async run(url, token) {
    const rc = this.rc;
    const r = await rc._fetch(url, {
      headers: { Accept: 'text/event-stream', ...bearer(token) },
      cache: 'no-store',
      signal: this.abort ? this.abort.signal : undefined,
    });
    if (this.ended) return;
    const type = (r.headers && r.headers.get && r.headers.get('content-type')) || '';
    if (!r.ok || !type.startsWith('text/event-stream')) {
      const body = r.ok ? null : await errorBody(r);
      return this.end(r.ok ? { kind: 'failure', status: r.status } : httpEnd(r.status, body, retryAfterMs(r)));
    }
    const reader = r.body.getReader();
    const decoder = new TextDecoder();
    let buf = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (this.ended) {
        try {
          reader.cancel();
        } catch (_) {
          // gone
        }
        return;
      }
      if (done) break;
      if (!this.live) {
        rc._clearTimer(this.openTimer);
        rc._onLive(this);
      }
      this.heard();
      buf += decoder.decode(value, { stream: true });
      let i;
      while ((i = buf.search(/\r?\n\r?\n/)) >= 0) {
        const block = buf.slice(0, i);
        buf = buf.slice(i).replace(/^\r?\n\r?\n/, '');
        this.onBlock(block);
        if (this.ended) return;
      }
    }
    this.end(this.endInfo());
  }

  heard() {
    const rc = this.rc;
    rc._clearTimer(this.idleTimer);
    this.idleTimer = rc._setTimeout(() => this.end({ kind: 'failure', idle: true }), rc.options.idleTimeout);
  }

  onBlock(block) {
    let event = 'message';
    const data = [];
    for (const line of block.split(/\r?\n/)) {
      if (line.startsWith(':')) this.lastComment = line.slice(1).trim();
      else if (line.startsWith('event:')) event = line.slice(6).trim();
      else if (line.startsWith('data:')) data.push(line.slice(5).replace(/^ /, ''));
    }
    if (data.length === 0) return;
    let msg;
    try {
      msg = JSON.parse(data.join('\n'));
    } catch (_) {
      return;
    }
    if (event === 'resync' || msg.type === 'resync') this.rc._onResync(this, msg);
    else this.rc._onEnvelope(this, msg);
  }

  /** How the stream ended, from its last comment (README: `: token expired`, ...). */
  endInfo() {
    const c = this.lastComment || '';
    if (c === 'token expired') return { kind: 'auth', expired: true, reason: 'expired' };
    if (c === 'try again later' || c.startsWith('slow consumer') || c.startsWith('cursor expired')) {
      return { kind: 'retry', retryAfter: c.startsWith('cursor expired') ? 0 : undefined };
    }
    return { kind: 'failure', eof: true };
  }

  end(info) {
    if (this.ended) return;
    this.ended = true;
    this.cleanup();
    this.rc._onEnd(this, info);
  }

  cleanup() {
    this.rc._clearTimer(this.openTimer);
    this.rc._clearTimer(this.idleTimer);
    if (this.abort) this.abort.abort();
  }

  close() {
    if (this.ended) return;
    this.ended = true;
    this.cleanup();
  }
}

// ------------------------------------------------------------------ polling

/**
 * HTTP polling: a first poll with `wait=0` (live at once), then long polls
 * (`wait=pollWait`) back to back; when a long request is cut (network error,
 * 502/504, or no answer within wait + openTimeout) it polls every
 * `pollInterval` with `wait=0` instead (FR-021's 5-second fallback). The
 * first poll of the session carries `fallback`.
 */
class PollConn {
  constructor(rc, token) {
    this.rc = rc;
    this.kind = 'poll';
    this.token = token;
    this.live = false;
    this.ended = false;
    this.first = true;
    this.controller = null;
    /** A 410's resync, told with the next answer (before its events), at its position. */
    this.resync = null;
    this.loop().catch(() => this.end({ kind: 'failure' }));
  }

  async loop() {
    const rc = this.rc;
    while (!this.ended) {
      const short = rc._pollShort;
      const cursor = rc._resumeFrom();
      const params = {
        topics: rc.topics.join(','),
        cursor,
        // the first poll answers at once (live now, not after a quiet wait,
        // and a proxy that cuts long requests cannot fail it); then long polls
        wait: cursor && !short && this.live ? rc.options.pollWait : 0,
        snapshot: !cursor && rc.options.snapshot ? 'true' : undefined,
        limit: !cursor && rc.options.snapshot ? 10000 : undefined,
        fallback: this.first ? rc._fallbackParam() || 'none' : undefined,
      };
      const outcome = await this.request(rc._url('/v1/poll', params), params.wait);
      if (this.ended) return;
      if (outcome.cut) {
        if (this.live && !short) {
          rc._pollShort = true; // long requests do not get through: FR-021's 5-second polling
          continue;
        }
        return this.end({ kind: 'failure' });
      }
      if (outcome.end) return this.end(outcome.end);
      if (!outcome.resync) this.first = false;
      const body = outcome.body;
      if (!this.live) rc._onLive(this);
      if (this.resync && !outcome.resync) {
        // told before the answer's events, as on the other transports (with
        // `snapshot`, they are the state that follows it)
        rc._onResync(this, { ...this.resync, cursor: typeof body.cursor === 'string' ? body.cursor : undefined });
        this.resync = null;
        if (this.ended) return;
      }
      for (const env of body.events || []) {
        rc._onEnvelope(this, env);
        if (this.ended) return;
      }
      if (this.ended) return;
      if (typeof body.cursor === 'string') {
        rc.cursor = body.cursor;
        rc._origin = null;
      }
      const full = (body.events || []).length >= (params.limit || 1000);
      if (!full && (short || params.wait === 0)) await this.sleep(short ? rc.options.pollInterval : 0);
    }
  }

  async request(url, wait) {
    const rc = this.rc;
    this.controller = typeof AbortController === 'function' ? new AbortController() : null;
    const timer = rc._setTimeout(() => {
      this.timedOut = true;
      if (this.controller) this.controller.abort();
    }, wait * 1000 + rc.options.openTimeout);
    this.timedOut = false;
    try {
      const r = await rc._fetch(url, {
        headers: bearer(this.token),
        cache: 'no-store',
        signal: this.controller ? this.controller.signal : undefined,
      });
      if (r.status === 410) {
        const body = (await errorBody(r)) || {};
        rc.cursor = null;
        rc._origin = null;
        // told once the next answer gives the position polling carries on from
        this.resync = { topics: rc.topics, reason: body.error || 'cursor_expired' };
        // not a session yet for the server: the next poll reports the fallback
        return { body: { events: [] }, resync: true };
      }
      if ([502, 504, 408].includes(r.status)) return { cut: true };
      if (!r.ok) return { end: httpEnd(r.status, await errorBody(r), retryAfterMs(r)) };
      const body = await r.json();
      if (!body || !Array.isArray(body.events)) return { cut: true };
      return { body };
    } catch (_) {
      return { cut: true };
    } finally {
      rc._clearTimer(timer);
    }
  }

  sleep(ms) {
    return new Promise((resolve) => {
      this.wake = resolve;
      this.sleepTimer = this.rc._setTimeout(resolve, ms);
    });
  }

  end(info) {
    if (this.ended) return;
    this.ended = true;
    this.cleanup();
    this.rc._onEnd(this, info);
  }

  cleanup() {
    this.rc._clearTimer(this.sleepTimer);
    if (this.controller) this.controller.abort();
    if (this.wake) this.wake();
  }

  close() {
    if (this.ended) return;
    this.ended = true;
    this.cleanup();
  }
}

export const version = VERSION;
export default { connect, Rowcast, RowcastError, defaults, version };
