// A fake clock and a fake rowcast server for the unit tests of rowcast.js.
//
// The server keeps one change log and speaks the three transports the way
// README "Protocol" describes them (WebSocket messages and close codes, SSE
// frames and comments, poll answers and error bodies), so that a test can
// block transports, cut connections and expire tokens, and then check that
// the client saw every change of the log exactly once, in order.

export class Clock {
  constructor() {
    this.t = 1_000_000;
    this.queue = [];
    this.seq = 0;
    this.now = () => this.t;
    this.setTimeout = (fn, ms) => {
      const id = ++this.seq;
      this.queue.push({ id, at: this.t + Math.max(0, ms || 0), fn });
      return id;
    };
    this.clearTimeout = (id) => {
      this.queue = this.queue.filter((x) => x.id !== id);
    };
  }

  /** Runs every timer due within `ms`, letting promises settle between them. */
  async advance(ms) {
    const end = this.t + ms;
    for (let guard = 0; guard < 100000; guard++) {
      await settle();
      this.queue.sort((a, b) => a.at - b.at || a.id - b.id);
      const next = this.queue[0];
      if (!next || next.at > end) break;
      this.queue.shift();
      this.t = next.at;
      next.fn();
    }
    this.t = end;
    await settle();
  }
}

/** Lets pending promise chains (fetch, stream reads) run. */
export async function settle() {
  for (let i = 0; i < 20; i++) await new Promise((r) => setImmediate(r));
}

const json = (status, body, headers = {}) =>
  new Response(JSON.stringify(body), { status, headers: { 'content-type': 'application/json', ...headers } });

export class FakeServer {
  constructor(clock) {
    this.clock = clock;
    this.log = [];
    this.block = { ws: false, sse: false, poll: false, longPoll: false };
    this.ws = new Set();
    this.sse = new Set();
    this.waiting = new Set();
    /** Every request the client made: { kind, url, params, token }. */
    this.requests = [];
    this.expired = new Set();
    this.api = null;
    const server = this;
    this.WebSocket = class FakeWebSocket {
      constructor(url) {
        this.url = url;
        this.readyState = 0;
        this.sent = [];
        server.acceptWs(this);
      }
      send(text) {
        const msg = JSON.parse(text);
        this.sent.push(msg);
        server.onWsMessage(this, msg);
      }
      close() {
        if (this.readyState === 3) return;
        this.readyState = 3;
        server.ws.delete(this);
      }
      serverClose(code, reason = '') {
        if (this.readyState === 3) return;
        this.readyState = 3;
        server.ws.delete(this);
        if (this.onclose) this.onclose({ code, reason });
      }
      push(obj) {
        if (this.readyState === 1 && this.onmessage) this.onmessage({ data: JSON.stringify(obj) });
      }
    };
    this.fetch = (url, init = {}) => this.onFetch(url, init);
  }

  position() {
    return `c${this.log.length}`;
  }

  /** Appends a change and pushes it to every live stream subscribed to its topic. */
  publish(topic, event, data, tx = null) {
    const env = { type: 'event', id: `c${this.log.length + 1}`, topic, event, data, ts: this.clock.t, tx };
    this.log.push(env);
    for (const w of this.ws) if (w.topics && w.topics.has(topic)) w.push(env);
    for (const s of this.sse) if (s.topics.has(topic)) s.send(frame(env));
    for (const p of [...this.waiting]) if (p.topics.has(topic)) p.wake();
    return env;
  }

  /** The changes after `cursor` on `topics` (no cursor: none, the position is now). */
  after(cursor, topics) {
    const from = cursor ? Number(String(cursor).slice(1)) : this.log.length;
    return this.log.slice(from).filter((e) => topics.has(e.topic));
  }

  params(url) {
    const u = new URL(url);
    return { path: u.pathname, q: Object.fromEntries(u.searchParams) };
  }

  // -- WebSocket

  acceptWs(w) {
    const { q } = this.params(w.url.replace(/^ws/, 'http'));
    this.requests.push({ kind: 'ws', url: w.url, params: q });
    if (this.block.ws) {
      this.clock.setTimeout(() => w.serverClose(1006), 5);
      return;
    }
    this.ws.add(w);
    this.clock.setTimeout(() => {
      if (w.readyState !== 0) return;
      w.readyState = 1;
      if (w.onopen) w.onopen();
    }, 5);
  }

  onWsMessage(w, msg) {
    if (msg.type === 'auth') {
      if (this.expired.has(msg.token)) {
        w.push({ type: 'error', code: 'unauthorized', message: 'token has expired', reason: 'expired' });
        w.serverClose(1008, 'invalid token');
        return;
      }
      w.token = msg.token;
      w.push({ type: 'authenticated', sub: 'x' });
    } else if (msg.type === 'subscribe') {
      // as a topic over --max-topic-len: the whole message is refused
      if (msg.topics.some((t) => t.startsWith('long-'))) {
        w.push({ type: 'error', code: 'bad_topic', message: 'topic too long' });
        return;
      }
      if (msg.cursor && !/^c\d+$/.test(msg.cursor)) {
        w.push({ type: 'error', code: 'bad_cursor', message: 'malformed cursor' });
        return;
      }
      const denied = msg.topics.filter((t) => t.startsWith('secret-'));
      // as a policy that raises for these topics
      const failed = msg.topics.filter((t) => t.startsWith('boom-'));
      const allowed = msg.topics.filter((t) => !t.startsWith('secret-') && !t.startsWith('boom-'));
      for (const t of denied) w.push({ type: 'error', code: 'forbidden', topic: t, message: 'no' });
      for (const t of failed) w.push({ type: 'error', code: 'unavailable', topic: t, message: 'policy failed' });
      // as the server: the subscribe that opens the subscription (the first with an allowed topic) honours the cursor
      const first = !w.fed;
      if (allowed.length) w.fed = true;
      w.topics = w.topics || new Set();
      allowed.forEach((t) => w.topics.add(t));
      if (allowed.length) w.push({ type: 'subscribed', topics: allowed });
      if (first) for (const e of this.after(msg.cursor, w.topics)) w.push(e);
    } else if (msg.type === 'unsubscribe') {
      msg.topics.forEach((t) => w.topics.delete(t));
      w.push({ type: 'unsubscribed', topics: msg.topics });
    } else if (msg.type === 'ping') {
      w.push({ type: 'pong' });
    } else if (msg.type === 'activity') {
      this.activity = (this.activity || 0) + 1;
    }
  }

  /** Cuts every open WebSocket (a proxy killing them, a network drop). */
  dropWs(code = 1006, reason = '') {
    for (const w of [...this.ws]) w.serverClose(code, reason);
  }

  dropSse(comment) {
    for (const s of [...this.sse]) s.end(comment);
  }

  // -- HTTP

  async onFetch(url, init) {
    const { path, q } = this.params(url);
    const auth = (init.headers && (init.headers.Authorization || init.headers.authorization)) || '';
    const token = q.token || (auth.startsWith('Bearer ') ? auth.slice(7) : null);
    const kind = path === '/v1/events' ? 'sse' : path === '/v1/poll' ? 'poll' : path;
    this.requests.push({ kind, url, params: q, token, method: init.method || 'GET' });
    await null;
    if (token && this.expired.has(token) && (kind === 'sse' || kind === 'poll')) {
      return json(401, { error: 'unauthorized', reason: 'expired', message: 'token expired' });
    }
    const cursor = kind === 'sse' ? q.lastEventId : q.cursor;
    if ((kind === 'sse' || kind === 'poll') && cursor && !/^c\d+$/.test(cursor)) {
      return json(400, { error: 'bad_cursor', message: 'malformed cursor' });
    }
    if (kind === 'sse') return this.openSse(q, init);
    if (kind === 'poll') return this.poll(q, init);
    if (path === '/v1/presence/activity') {
      this.activity = (this.activity || 0) + 1;
      return new Response(null, { status: 204 });
    }
    if (this.api) return this.api(path, init);
    return json(404, { error: 'not_found' });
  }

  openSse(q, init) {
    if (this.block.sse) return new Response('blocked by proxy', { status: 403, headers: { 'content-type': 'text/plain' } });
    const topics = new Set(q.topics.split(','));
    if ([...topics].some((t) => t.startsWith('long-'))) return json(400, { error: 'bad_topic', message: 'topic too long' });
    const denied = [...topics].find((t) => t.startsWith('secret-'));
    if (denied) return json(403, { error: 'forbidden', topic: denied, message: 'no' });
    const failed = [...topics].find((t) => t.startsWith('boom-'));
    if (failed) return json(503, { error: 'unavailable', topic: failed, message: 'policy failed' });
    const server = this;
    let conn;
    const body = new ReadableStream({
      start(controller) {
        conn = {
          topics,
          open: true,
          send(text) {
            if (conn.open) controller.enqueue(new TextEncoder().encode(text));
          },
          end(comment) {
            if (!conn.open) return;
            if (comment) controller.enqueue(new TextEncoder().encode(`: ${comment}\n\n`));
            conn.open = false;
            server.sse.delete(conn);
            controller.close();
          },
        };
        server.sse.add(conn);
        conn.send('retry: 2000\n\n');
        for (const e of server.after(q.lastEventId, topics)) conn.send(frame(e));
        if (init.signal) {
          init.signal.addEventListener('abort', () => {
            if (!conn.open) return;
            conn.open = false;
            server.sse.delete(conn);
            controller.error(new Error('aborted'));
          });
        }
      },
    });
    return new Response(body, { status: 200, headers: { 'content-type': 'text/event-stream' } });
  }

  poll(q, init) {
    if (this.block.poll) return Promise.reject(new TypeError('network error'));
    const topics = new Set(q.topics.split(','));
    if ([...topics].some((t) => t.startsWith('long-'))) return json(400, { error: 'bad_topic', message: 'topic too long' });
    // as the server: the whole request is refused for its first denied topic
    const denied = [...topics].find((t) => t.startsWith('secret-'));
    if (denied) return json(403, { error: 'forbidden', topic: denied, message: 'no' });
    const failed = [...topics].find((t) => t.startsWith('boom-'));
    if (failed) return json(503, { error: 'unavailable', topic: failed, message: 'policy failed' });
    if (!q.cursor) {
      // a snapshot: the last change of each topic, in log order
      const last = new Map();
      if (q.snapshot === 'true') for (const e of this.log) if (topics.has(e.topic)) last.set(e.topic, e);
      return json(200, { events: [...last.values()], cursor: this.position() });
    }
    if (Number(q.cursor.slice(1)) > this.log.length + 1000) return json(410, { error: 'cursor_unknown' });
    const answer = () => {
      const events = this.after(q.cursor, topics);
      const last = this.position();
      return json(200, { events, cursor: last });
    };
    const wait = Number(q.wait || 0);
    if (this.after(q.cursor, topics).length || wait === 0) return answer();
    return new Promise((resolve, reject) => {
      const p = {
        topics,
        wake: () => {
          this.waiting.delete(p);
          this.clock.clearTimeout(p.timer);
          resolve(answer());
        },
      };
      p.timer = this.clock.setTimeout(() => {
        this.waiting.delete(p);
        if (this.block.longPoll) reject(new TypeError('connection reset by proxy'));
        else resolve(answer());
      }, this.block.longPoll ? 3000 : wait * 1000);
      this.waiting.add(p);
      if (init.signal) {
        init.signal.addEventListener('abort', () => {
          this.waiting.delete(p);
          this.clock.clearTimeout(p.timer);
          reject(new Error('aborted'));
        });
      }
    });
  }
}

function frame(e) {
  return `id: ${e.id}\nevent: ${e.event}\ndata: ${JSON.stringify(e)}\n\n`;
}
