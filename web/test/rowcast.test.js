// Unit tests of rowcast.js's state machine (node --test web/test/), against
// the fake clock and server of fake.js. Run from the Rust suite by
// tests/suites/browser.rs (`sdk_unit_tests`).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { connect, RowcastError } from '../rowcast.js';
import { Clock, FakeServer, settle } from './fake.js';

function setup(options = {}) {
  const clock = new Clock();
  const server = new FakeServer(clock);
  const rc = connect('http://shop.test', {
    WebSocket: server.WebSocket,
    fetch: server.fetch,
    clock,
    random: () => 0.5,
    topics: ['farm-1'],
    ...options,
  });
  const seen = [];
  rc.on('*', (data, meta) => seen.push(meta.cursor));
  const statuses = [];
  rc.on('rowcast:status', (s, info) => statuses.push(`${s}/${info.transport}`));
  return { clock, server, rc, seen, statuses };
}

/** Advances the clock in steps until `cond()` holds (bounded). */
async function until(clock, cond, what, stepMs = 100, maxMs = 600_000) {
  for (let t = 0; t <= maxMs; t += stepMs) {
    if (cond()) return;
    await clock.advance(stepMs);
  }
  assert.fail(`never: ${what}`);
}

const ids = (server, topic = 'farm-1') => server.log.filter((e) => e.topic === topic).map((e) => e.id);

/** The WebSocket drops before any event and a change is committed before the reconnect: it is delivered, with no resync. */
async function aDropBeforeTheFirstEventLosesNothing(clock, server, rc, seen, resyncs) {
  server.dropWs(1006);
  assert.notEqual(rc.status, 'live');
  server.publish('farm-1', 'x', { n: 1 });
  await until(clock, () => rc.status === 'live', 'live again');
  server.publish('farm-1', 'x', { n: 2 });
  await settle();
  assert.deepEqual(seen, ids(server), 'the change committed while disconnected is delivered');
  assert.deepEqual(resyncs, []);
  rc.close();
}

test('WebSocket first: authenticates, subscribes from the start position, delivers with meta, status live', async () => {
  const { clock, server, rc, statuses } = setup({ token: () => 'tok-1' });
  server.publish('farm-1', 'inventory.updated', { productId: '1', newQuantity: 19 });
  const got = [];
  rc.on('inventory.updated', (data, meta) => got.push({ data, meta }));
  await until(clock, () => rc.status === 'live', 'live');
  assert.equal(rc.transport, 'ws');
  const ws = [...server.ws][0];
  assert.deepEqual(ws.sent[0], { type: 'auth', token: 'tok-1' }, 'the token goes in the first message, not the URL');
  assert.equal(ws.sent[1].type, 'subscribe');
  assert.deepEqual(ws.sent[1].topics, ['farm-1']);
  assert.equal(ws.sent[1].cursor, 'c1', 'the position taken before the stream opened');
  assert.ok(!ws.url.includes('tok-1'));
  const e = server.publish('farm-1', 'inventory.updated', { productId: '1', newQuantity: 15 }, '777');
  await settle();
  assert.equal(got.length, 1);
  assert.deepEqual(got[0].data, { productId: '1', newQuantity: 15 });
  assert.equal(got[0].meta.topic, 'farm-1');
  assert.equal(got[0].meta.cursor, e.id);
  assert.equal(got[0].meta.tx, '777');
  assert.equal(got[0].meta.transport, 'ws');
  assert.equal(rc.cursor, e.id);
  assert.equal(statuses.at(-1), 'live/ws');
  assert.ok(!statuses.includes('degraded/ws'));
  rc.close();
  assert.equal(rc.status, 'offline');
});

test('cursor hand-over: WS blocked -> SSE, SSE blocked -> polling, unblocked -> back on WS; every event once, in order', async () => {
  const { clock, server, rc, seen } = setup({ upgradeDelay: 4000, upgradeMax: 8000 });
  let n = 0;
  const write = () => server.publish('farm-1', 'inventory.updated', { productId: '1', newQuantity: ++n });
  await until(clock, () => rc.status === 'live', 'live on ws');
  for (let i = 0; i < 3; i++) write();
  await settle();

  // the WebSocket is blocked (and the open one cut): two failed attempts, then SSE
  server.block.ws = true;
  server.dropWs();
  write();
  await until(clock, () => rc.transport === 'sse' && rc.status === 'degraded', 'degraded on sse');
  const sseReq = server.requests.filter((r) => r.kind === 'sse').at(-1);
  // the WebSocket worked before it was blocked: ws_failed (ws_blocked is for a client none of whose WebSockets ever opened)
  assert.equal(sseReq.params.fallback, 'ws_failed', 'SSE reports why it is not on a WebSocket');
  assert.ok(sseReq.params.lastEventId, 'SSE resumes from the cursor');
  for (let i = 0; i < 3; i++) write();
  await settle();
  // probes of the WebSocket fail while it is blocked, and change nothing
  await clock.advance(9000);
  assert.equal(rc.transport, 'sse');
  write();

  // SSE blocked too: polling
  server.block.sse = true;
  server.dropSse();
  write();
  await until(clock, () => rc.transport === 'poll' && rc.status === 'degraded', 'degraded on poll');
  const firstPoll = server.requests.find((r) => r.kind === 'poll' && r.params.fallback);
  assert.equal(firstPoll.params.fallback, 'ws_failed', 'the first poll of the session reports the fallback');
  assert.ok(firstPoll.params.cursor, 'polling resumes from the cursor');
  assert.equal(server.requests.filter((r) => r.kind === 'poll' && r.params.fallback).length, 1, 'reported once');
  for (let i = 0; i < 3; i++) write();
  await clock.advance(2000);

  // unblocked: back up to the WebSocket, which reports its gap
  server.block.ws = false;
  server.block.sse = false;
  await until(clock, () => rc.transport === 'ws' && rc.status === 'live', 'back on ws', 100, 120_000);
  const back = server.requests.filter((r) => r.kind === 'ws').at(-1);
  assert.ok(Number(back.params.gap) > 10, `gap reported: ${back.params.gap}`);
  for (let i = 0; i < 3; i++) write();
  await settle();

  assert.deepEqual(seen, ids(server), 'every change exactly once, in commit order');
  assert.equal(seen.length, n);
  rc.close();
});

test('the hand-over to the WebSocket happens between two events: none lost, none repeated, even while writes continue', async () => {
  const { clock, server, rc, seen } = setup({ transports: ['ws', 'sse'], upgradeDelay: 1000 });
  server.block.ws = true;
  let n = 0;
  await until(clock, () => rc.transport === 'sse' && rc.status === 'degraded', 'on sse');
  server.block.ws = false;
  // a write every 50 ms across the probe and the switch
  for (let i = 0; i < 80; i++) {
    server.publish('farm-1', 'inventory.updated', { n: ++n });
    await clock.advance(50);
  }
  assert.equal(rc.transport, 'ws');
  assert.deepEqual(seen, ids(server));
  rc.close();
});

test('backoff: exponential with jitter, capped, across all transports while the server is down', async () => {
  const { clock, server, rc, statuses } = setup({ backoffBase: 500, backoffMax: 8000, attempts: 1 });
  server.block.ws = true;
  server.block.sse = true;
  server.block.poll = true;
  await clock.advance(120_000);
  // stream attempts (not the start-position polls made before a WS or SSE stream)
  const times = server.requests.filter((r) => ['ws', 'sse'].includes(r.kind) || (r.kind === 'poll' && r.params.fallback));
  assert.ok(times.length > 8, `${times.length} attempts`);
  assert.deepEqual(
    times.slice(0, 3).map((r) => r.kind),
    ['ws', 'sse', 'poll'],
    'one failure per transport (attempts: 1), then the next',
  );
  assert.equal(rc.status, 'offline');
  assert.ok(statuses.includes('offline/ws'));
  // after a whole cycle failed, attempts space out: never closer than the previous gap, at most the cap
  const at = [];
  const origFetch = server.requests.length;
  assert.ok(origFetch > 0);
  rc.close();
  // recompute spacing from a fresh client with timestamps
  const c2 = new Clock();
  const s2 = new FakeServer(c2);
  s2.block.ws = s2.block.sse = s2.block.poll = true;
  const stamps = [];
  const origWs = s2.acceptWs.bind(s2);
  s2.acceptWs = (w) => {
    stamps.push(c2.t);
    origWs(w);
  };
  const rc2 = connect('http://shop.test', {
    WebSocket: s2.WebSocket,
    fetch: s2.fetch,
    clock: c2,
    random: () => 0,
    topics: ['farm-1'],
    transports: ['ws'],
    backoffBase: 500,
    backoffMax: 8000,
  });
  await c2.advance(200_000);
  for (let i = 1; i < stamps.length; i++) at.push(stamps[i] - stamps[i - 1]);
  // random 0 -> half the nominal delay; each gap also holds the 5 ms the fake takes to refuse
  const nominal = at.map((d) => d - 5);
  assert.deepEqual(nominal.slice(0, 6), [250, 500, 1000, 2000, 4000, 4000]);
  assert.ok(nominal.every((d) => d <= 4000), 'capped at backoffMax (times the jitter)');
  rc2.close();
});

test('Retry-After of a 503 is honoured', async () => {
  const { clock, server, rc } = setup({ transports: ['poll'] });
  let refused = 0;
  const real = server.poll.bind(server);
  server.poll = (q, init) => {
    if (refused < 1 && q.cursor) {
      refused++;
      return new Response(JSON.stringify({ error: 'unavailable' }), {
        status: 503,
        headers: { 'content-type': 'application/json', 'retry-after': '7' },
      });
    }
    return real(q, init);
  };
  await until(clock, () => refused === 1, 'refused once');
  const t0 = clock.t;
  const before = server.requests.length;
  await clock.advance(6500);
  assert.equal(server.requests.length, before, 'nothing before Retry-After');
  await clock.advance(1000);
  assert.ok(server.requests.length > before);
  assert.ok(clock.t - t0 >= 7000);
  rc.close();
});

test('token refresh: SSE 401 expired -> the callback is asked again, the stream resumes from the cursor', async () => {
  let calls = 0;
  const asked = [];
  const { clock, server, rc, seen } = setup({
    transports: ['sse'],
    token: (how) => {
      asked.push(how.refresh);
      return `tok-${++calls}`;
    },
  });
  await until(clock, () => rc.status === 'live', 'live');
  server.publish('farm-1', 'a', {});
  await settle();
  // the token expires: the server ends the stream with the README's comment
  server.expired.add('tok-1');
  server.dropSse('token expired');
  server.publish('farm-1', 'b', {});
  await until(clock, () => rc.status === 'live' && calls === 2, 'live again with a new token');
  const last = server.requests.filter((r) => r.kind === 'sse').at(-1);
  assert.equal(last.token, 'tok-2');
  assert.equal(last.params.token, undefined, 'the token goes in a header, not the URL');
  assert.equal(last.params.lastEventId, 'c1');
  await settle();
  assert.deepEqual(seen, ids(server));
  assert.deepEqual(asked, [false, true], 'asked once to refresh');
  rc.close();
});

test('token refresh over the WebSocket: close 1008 "token expired", and a refused auth message', async () => {
  let calls = 0;
  const { clock, server, rc } = setup({ token: () => `tok-${++calls}` });
  await until(clock, () => rc.status === 'live', 'live');
  server.dropWs(1008, 'token expired');
  await until(clock, () => rc.status === 'live' && calls === 2, 'live with tok-2');
  assert.equal([...server.ws][0].sent[0].token, 'tok-2');
  // the token is already expired when it is sent: unauthorized + 1008 invalid token
  server.expired.add('tok-2');
  server.expired.add('tok-3');
  const errors = [];
  rc.on('rowcast:error', (e) => errors.push(e));
  server.dropWs(1006);
  // tok-2 refused -> tok-3 refused too: the app is told, and the client backs off
  await until(clock, () => errors.length > 0, 'an error');
  assert.ok(errors[0] instanceof RowcastError);
  assert.equal(errors[0].code, 'unauthorized');
  assert.equal(errors[0].reason, 'expired', 'the error message\'s reason, as over SSE and polling');
  assert.equal(rc.status, 'offline');
  server.expired.clear();
  await until(clock, () => rc.status === 'live', 'live again once the callback has a good token');
  rc.close();
});

test('optimistic: kept until the change with its tx arrives; older events for it are held back, then dropped', async () => {
  const { clock, server, rc } = setup();
  await until(clock, () => rc.status === 'live', 'live');
  let ui = 20;
  const shown = [];
  rc.on('inventory.updated', (d) => {
    if (d.productId === '1') ui = d.newQuantity;
    shown.push(d.newQuantity);
  });
  let answer;
  server.api = () => new Promise((r) => (answer = r));
  const done = rc.optimistic({
    apply: () => {
      ui = 15;
    },
    request: () => server.fetch('http://shop.test/api/products/1', { method: 'PATCH' }),
    rollback: () => assert.fail('no rollback'),
    stale: (d) => d.productId === '1',
  });
  assert.equal(ui, 15, 'applied at once');
  await settle();
  // a sale committed before the farmer's write arrives first: it would show 19
  server.publish('farm-1', 'inventory.updated', { productId: '1', newQuantity: 19 }, '500');
  server.publish('farm-1', 'inventory.updated', { productId: '2', newQuantity: 7 }, '501');
  await settle();
  assert.equal(ui, 15, 'the optimistic value stays');
  assert.deepEqual(shown, [7], 'the other product is not held');
  answer(new Response(JSON.stringify({ productId: '1', quantity: 15, tx: '502' }), { status: 200 }));
  await settle();
  let resolved = null;
  done.then((r) => (resolved = r));
  await settle();
  assert.equal(resolved, null, 'not before its change arrives');
  server.publish('farm-1', 'inventory.updated', { productId: '1', newQuantity: 15 }, '502');
  await settle();
  assert.deepEqual(resolved.confirmedBy, 'stream');
  assert.equal(resolved.tx, '502');
  assert.deepEqual(shown, [7, 15], 'never flickered back to 19');
  assert.equal(ui, 15);
  rc.close();
});

test('optimistic: the confirming change may arrive before the answer', async () => {
  const { clock, server, rc } = setup();
  await until(clock, () => rc.status === 'live', 'live');
  const shown = [];
  rc.on('inventory.updated', (d) => shown.push(d.newQuantity));
  let answer;
  server.api = () => new Promise((r) => (answer = r));
  const done = rc.optimistic({
    apply() {},
    request: () => server.fetch('http://shop.test/api/x', { method: 'PATCH' }),
    stale: (d) => d.productId === '1',
  });
  await settle();
  server.publish('farm-1', 'inventory.updated', { productId: '1', newQuantity: 19 }, '10');
  server.publish('farm-1', 'inventory.updated', { productId: '1', newQuantity: 15 }, '11');
  server.publish('farm-1', 'inventory.updated', { productId: '1', newQuantity: 14 }, '12');
  await settle();
  assert.deepEqual(shown, []);
  answer(new Response(JSON.stringify({ tx: '11' }), { status: 200 }));
  const r = await done;
  assert.equal(r.confirmedBy, 'stream');
  assert.deepEqual(shown, [15, 14], 'its own change and what came after, not what came before');
  rc.close();
});

test('optimistic: two overlapping writes of one thing: the newer one wins, nothing older is shown after it, no flicker', async () => {
  const { clock, server, rc } = setup();
  await until(clock, () => rc.status === 'live', 'live');
  const shown = [];
  rc.on('inventory.updated', (d) => shown.push(d.newQuantity));
  const answers = [];
  server.api = () => new Promise((r) => answers.push(r));
  const write = (q) => rc.optimistic({
    apply() {},
    request: () => server.fetch('http://shop.test/api/products/1', { method: 'PATCH', body: String(q) }),
    stale: (d) => d.productId === '1',
  });
  const answer = (i, tx) => answers[i](new Response(JSON.stringify({ productId: '1', tx }), { status: 200 }));
  // A: the first write's answer is late; the second's change and answer come first
  const one = write(11);
  const two = write(22);
  await settle();
  server.publish('farm-1', 'inventory.updated', { productId: '1', newQuantity: 11 }, '701');
  server.publish('farm-1', 'inventory.updated', { productId: '1', newQuantity: 22 }, '702');
  answer(1, '702');
  await settle();
  answer(0, '701');
  const [r1, r2] = await Promise.all([one, two]);
  assert.deepEqual([r1.confirmedBy, r2.confirmedBy], ['stream', 'stream']);
  assert.deepEqual(shown, [22], 'the first write\'s change, older, is not shown after the second\'s');
  // B: both answers in time: the first write's confirmation is not shown while the second is pending
  shown.length = 0;
  answers.length = 0;
  const three = write(33);
  const four = write(44);
  await settle();
  answer(0, '703');
  answer(1, '704');
  await settle();
  server.publish('farm-1', 'inventory.updated', { productId: '1', newQuantity: 33 }, '703');
  await settle();
  assert.deepEqual(shown, [], 'held by the later pending write');
  server.publish('farm-1', 'inventory.updated', { productId: '1', newQuantity: 44 }, '704');
  const [r3, r4] = await Promise.all([three, four]);
  assert.deepEqual([r3.confirmedBy, r4.confirmedBy], ['stream', 'stream']);
  assert.deepEqual(shown, [44], 'no flicker back to 33');
  // B2: the first write's change comes before the second write starts, its
  // answer while the second is pending (r14): still held, by the second
  shown.length = 0;
  answers.length = 0;
  const b1 = write(111);
  await settle();
  server.publish('farm-1', 'inventory.updated', { productId: '1', newQuantity: 111 }, '711');
  await settle();
  const b2 = write(222);
  await settle();
  answer(0, '711');
  assert.equal((await b1).confirmedBy, 'stream');
  assert.deepEqual(shown, [], 'not shown while the later write is pending');
  answer(1, '712');
  server.publish('farm-1', 'inventory.updated', { productId: '1', newQuantity: 222 }, '712');
  assert.equal((await b2).confirmedBy, 'stream');
  assert.deepEqual(shown, [222], 'no flicker back to 111');
  // C: the later write fails: what it held comes out after its rollback, in order
  shown.length = 0;
  answers.length = 0;
  const order = [];
  rc.on('inventory.updated', (d) => order.push(`shown ${d.newQuantity}`));
  const five = write(55);
  const six = rc.optimistic({
    apply() {},
    request: () => server.fetch('http://shop.test/api/products/1', { method: 'PATCH' }),
    rollback: () => order.push('rollback'),
    stale: (d) => d.productId === '1',
  });
  await settle();
  answer(0, '705');
  await settle();
  server.publish('farm-1', 'inventory.updated', { productId: '1', newQuantity: 55 }, '705');
  await settle();
  assert.equal((await five).confirmedBy, 'stream');
  assert.deepEqual(shown, []);
  answers[1](new Response(JSON.stringify({ error: 'forbidden', message: 'no' }), { status: 403 }));
  await assert.rejects(six);
  assert.deepEqual(order, ['rollback', 'shown 55']);
  rc.close();
});

test('optimistic: an error or a 409 rolls back and surfaces the conflicts; held events are delivered', async () => {
  const { clock, server, rc } = setup();
  await until(clock, () => rc.status === 'live', 'live');
  const shown = [];
  rc.on('inventory.updated', (d) => shown.push(d.newQuantity));
  const conflicts = [{ productId: '1', requested: 5, available: 3, message: 'Only 3 lbs available. Adjust quantity?' }];
  let answer;
  server.api = () => new Promise((r) => (answer = r));
  let rolledBack = null;
  const done = rc.optimistic({
    apply() {},
    request: () => server.fetch('http://shop.test/api/checkout', { method: 'POST' }),
    rollback: (e) => (rolledBack = e),
    stale: (d) => d.productId === '1',
  });
  await settle();
  server.publish('farm-1', 'inventory.updated', { productId: '1', newQuantity: 3 }, '9');
  await settle();
  answer(new Response(JSON.stringify({ result: 'conflict', error: 'checkout_conflict', conflicts, tx: null }), { status: 409 }));
  await assert.rejects(done, (e) => {
    assert.ok(e instanceof RowcastError);
    assert.equal(e.status, 409);
    assert.equal(e.code, 'checkout_conflict');
    assert.deepEqual(e.conflicts, conflicts);
    return true;
  });
  assert.equal(rolledBack.status, 409);
  assert.deepEqual(shown, [3], 'the held change is shown after the rollback');
  // a network error rolls back too
  let rb = 0;
  await assert.rejects(rc.optimistic({ apply() {}, request: () => Promise.reject(new TypeError('offline')), rollback: () => rb++ }));
  assert.equal(rb, 1);
  rc.close();
});

test('optimistic: a lost connection does not roll back; resume delivers the confirmation; bounded by confirmTimeout', async () => {
  const { clock, server, rc } = setup({ confirmTimeout: 10_000 });
  await until(clock, () => rc.status === 'live', 'live');
  server.api = () => new Response(JSON.stringify({ tx: '42' }), { status: 200 });
  let rb = 0;
  let res = null;
  rc.optimistic({ apply() {}, request: () => server.fetch('http://shop.test/api/x'), rollback: () => rb++ }).then((r) => (res = r));
  await settle();
  server.dropWs(1006);
  server.publish('farm-1', 'inventory.updated', { productId: '1' }, '42'); // committed while disconnected
  await until(clock, () => res !== null, 'confirmed after the resume', 50, 9000);
  assert.equal(res.confirmedBy, 'stream');
  assert.equal(rb, 0);
  // and one whose change never comes resolves after the timeout, without rollback
  let res2 = null;
  server.api = () => new Response(JSON.stringify({ tx: '43' }), { status: 200 });
  rc.optimistic({ apply() {}, request: () => server.fetch('http://shop.test/api/x'), rollback: () => rb++ }).then((r) => (res2 = r));
  await clock.advance(9_000);
  assert.equal(res2, null);
  await clock.advance(2_000);
  assert.equal(res2.confirmedBy, 'timeout');
  assert.equal(rb, 0);
  // confirm: false resolves on the answer
  const r3 = await rc.optimistic({ apply() {}, request: () => ({ items: [], tx: '44' }), confirm: false });
  assert.equal(r3.confirmedBy, 'answer');
  rc.close();
});

test('resync: a 410 on polling tells the app and polls again without a cursor, with a snapshot', async () => {
  const { clock, server, rc } = setup({ transports: ['poll'], snapshot: true, cursor: 'c999999' });
  const resyncs = [];
  rc.on('rowcast:resync', (r) => resyncs.push(r));
  await until(clock, () => resyncs.length > 0, 'resync');
  assert.equal(resyncs[0].reason, 'cursor_unknown');
  assert.equal(resyncs[0].snapshot, true);
  await clock.advance(100);
  const polls = server.requests.filter((r) => r.kind === 'poll');
  assert.equal(polls[0].params.cursor, 'c999999');
  const next = polls[1];
  assert.equal(next.params.cursor, undefined);
  assert.equal(next.params.snapshot, 'true');
  rc.close();
});

test('resync over the WebSocket is passed on to the app', async () => {
  const { clock, server, rc } = setup();
  await until(clock, () => rc.status === 'live', 'live');
  const resyncs = [];
  rc.on('rowcast:resync', (r) => resyncs.push(r));
  [...server.ws][0].push({ type: 'resync', topics: ['farm-1'], reason: 'cursor_expired', cursor: 'c0' });
  assert.deepEqual(resyncs, [{ topics: ['farm-1'], reason: 'cursor_expired', snapshot: false }]);
  assert.equal(rc.cursor, 'c0', 'a reconnect resumes from where the stream started');
  rc.close();
});

test('long polls that get cut: polling every 5 s with wait=0 (FR-021), still delivering every change', async () => {
  const { clock, server, rc, seen } = setup({ transports: ['poll'] });
  await until(clock, () => rc.status === 'live', 'live');
  server.block.longPoll = true;
  server.publish('farm-1', 'x', { n: 1 });
  await clock.advance(100);
  await clock.advance(4000); // the next long poll is cut after 3 s
  const before = server.requests.filter((r) => r.kind === 'poll').length;
  await clock.advance(20_000);
  const polls = server.requests.filter((r) => r.kind === 'poll').slice(before);
  assert.ok(polls.length >= 3 && polls.length <= 5, `${polls.length} polls in 20 s`);
  assert.ok(polls.every((p) => p.params.wait === '0'));
  server.publish('farm-1', 'x', { n: 2 });
  await clock.advance(5000);
  assert.deepEqual(seen, ids(server));
  assert.equal(rc.status, 'live', 'polling was the first choice here: not degraded');
  rc.close();
});

test('a proxy that cuts every long request from the start: live at once, then polling every 5 s', async () => {
  const { clock, server, rc, seen } = setup({ transports: ['poll'], cursor: 'c0' });
  server.block.longPoll = true;
  await clock.advance(100);
  assert.equal(rc.status, 'live', 'the first poll answers at once');
  await clock.advance(30_000);
  assert.equal(rc.status, 'live', 'a cut long poll turns polling short, not offline');
  const polls = server.requests.filter((r) => r.kind === 'poll');
  assert.equal(polls[0].params.wait, '0');
  assert.ok(polls.slice(-3).every((p) => p.params.wait === '0'), 'short polls');
  server.publish('farm-1', 'x', { n: 1 });
  await clock.advance(5000);
  assert.deepEqual(seen, ids(server));
  rc.close();
});

test('activity: throttled; a WebSocket message when on one, else POST /v1/presence/activity', async () => {
  const { clock, server, rc } = setup({ token: 't', activityInterval: 15_000 });
  await until(clock, () => rc.status === 'live', 'live');
  rc.activity();
  rc.activity();
  rc.activity();
  assert.equal(server.activity, 1, 'one report at once');
  await clock.advance(15_000);
  assert.equal(server.activity, 2, 'the calls inside the interval make one more at its end');
  await clock.advance(60_000);
  assert.equal(server.activity, 2);
  rc.close();
  const p = setup({ token: 't', transports: ['poll'] });
  await until(p.clock, () => p.rc.status === 'live', 'live');
  p.rc.activity();
  await settle();
  const post = p.server.requests.find((r) => r.kind === '/v1/presence/activity');
  assert.equal(post.method, 'POST');
  assert.equal(post.token, 't');
  p.rc.close();
});

test('topics: a refused one is reported and dropped, the others carry on; unsubscribe stops delivery; SSE reopens on subscribe', async () => {
  const { clock, server, rc, seen } = setup({ topics: ['farm-1', 'secret-1'] });
  const denied = [];
  rc.on('rowcast:denied', (d) => denied.push(...d.topics));
  await until(clock, () => rc.status === 'live', 'live');
  assert.deepEqual(denied, ['secret-1']);
  assert.deepEqual(rc.topics, ['farm-1']);
  rc.subscribe(['farm-2']);
  await settle(); // a subscribe goes at the end of the task (see the batching test)
  server.publish('farm-2', 'x', {});
  await settle();
  assert.equal(seen.length, 1);
  rc.unsubscribe(['farm-2']);
  [...server.ws][0].push({ type: 'event', id: 'c99', topic: 'farm-2', event: 'x', data: {} }); // in flight
  assert.equal(seen.length, 1, 'an event of an unsubscribed topic is dropped');
  rc.close();

  const s = setup({ transports: ['sse'] });
  await until(s.clock, () => s.rc.status === 'live', 'live');
  s.server.publish('farm-1', 'x', {});
  await settle();
  s.rc.subscribe(['farm-2']);
  await until(s.clock, () => s.rc.status === 'live' && s.server.requests.filter((r) => r.kind === 'sse').length === 2, 'reopened');
  const last = s.server.requests.filter((r) => r.kind === 'sse').at(-1);
  assert.equal(last.params.topics, 'farm-1,farm-2');
  assert.equal(last.params.lastEventId, 'c1');
  s.rc.close();
});

test('on SSE and polling a client whose every topic is denied is ready with nothing to stream, as on the WebSocket; subscribe opens the stream', async () => {
  for (const transport of ['ws', 'sse', 'poll']) {
    const { clock, server, rc, seen } = setup({ topics: ['secret-1'], transports: [transport] });
    const denied = [];
    rc.on('rowcast:denied', (d) => denied.push(...d.topics));
    let ready = false;
    rc.ready().then(() => { ready = true; });
    await until(clock, () => ready, `${transport}: ready`);
    assert.equal(rc.status, 'live', transport);
    assert.deepEqual(denied, ['secret-1'], transport);
    assert.deepEqual(rc.topics, [], transport);
    let again = false;
    rc.ready().then(() => { again = true; });
    await settle();
    assert.ok(again, `${transport}: ready() asked again resolves`);
    rc.subscribe(['farm-1']);
    await clock.advance(1000); // its start position taken, its stream open
    server.publish('farm-1', 'x', {});
    await until(clock, () => seen.length === 1, `${transport}: the subscribed topic streams`);
    rc.close();
  }
});

test('a client with no topics whose server cannot be reached is not ready: it waits for a topic to open a stream', async () => {
  const { clock, server, rc } = setup({ topics: [], attempts: 1 });
  server.block.ws = true;
  server.block.sse = true;
  server.block.poll = true;
  let ready = false;
  rc.ready().then(() => { ready = true; });
  await clock.advance(30_000);
  assert.equal(ready, false);
  assert.notEqual(rc.status, 'live');
  assert.notEqual(rc.status, 'degraded');
  rc.close();
});

test('a WebSocket that opens but keeps dropping is abandoned for SSE (fallback=ws_failed)', async () => {
  const { clock, server, rc } = setup({ stableAfter: 10_000 });
  for (let i = 0; i < 3; i++) {
    await until(clock, () => rc.status === 'live' && rc.transport === 'ws', 'live on ws');
    await clock.advance(1000);
    server.dropWs(1006);
    if (rc.transport === 'sse') break;
  }
  await until(clock, () => rc.transport === 'sse' && rc.status === 'degraded', 'on sse');
  assert.equal(server.requests.filter((r) => r.kind === 'sse').at(-1).params.fallback, 'ws_failed');
  rc.close();
});

test('no topics at connect: subscribe() takes a start position, so a drop before the first event loses nothing', async () => {
  const { clock, server, rc, seen } = setup({ topics: [], token: 'tok-1' });
  const resyncs = [];
  rc.on('rowcast:resync', (r) => resyncs.push(r));
  server.publish('farm-9', 'x', {}); // the position is not the log's start
  await until(clock, () => rc.status === 'live', 'live with no topics');
  rc.subscribe(['farm-1']);
  await until(clock, () => [...server.ws].some((w) => w.topics && w.topics.has('farm-1')), 'subscribed');
  const sub = [...server.ws][0].sent.find((m) => m.type === 'subscribe');
  assert.equal(sub.cursor, 'c1', 'the first subscribe opens at the start position taken for it');
  await aDropBeforeTheFirstEventLosesNothing(clock, server, rc, seen, resyncs);
});

test('a refused topic at connect: the start position comes from the allowed ones, so a drop before the first event loses nothing', async () => {
  const { clock, server, rc, seen } = setup({ topics: ['farm-1', 'secret-1'] });
  const resyncs = [];
  rc.on('rowcast:resync', (r) => resyncs.push(r));
  server.publish('farm-9', 'x', {}); // the position is not the log's start
  await until(clock, () => rc.status === 'live', 'live');
  const starts = server.requests.filter((r) => r.kind === 'poll');
  assert.deepEqual(starts.map((r) => r.params.topics), ['farm-1,secret-1', 'farm-1'], 'asked again without the refused topic');
  const sub = [...server.ws][0].sent.find((m) => m.type === 'subscribe');
  assert.equal(sub.cursor, 'c1', 'the stream opens at that position');
  await aDropBeforeTheFirstEventLosesNothing(clock, server, rc, seen, resyncs);
});

test('a cursor the server cannot read: one counted resync, and rc.cursor is where the stream carries on, on every transport', async () => {
  for (const transport of ['ws', 'sse', 'poll']) {
    const { clock, server, rc, seen } = setup({ cursor: 'garbage!!', transports: [transport] });
    const resyncs = [];
    rc.on('rowcast:resync', (r) => resyncs.push({ ...r, cursor: rc.cursor }));
    server.publish('farm-1', 'x', { n: 0 }); // before the client's start: not delivered
    await until(clock, () => resyncs.length > 0, `${transport}: resync`);
    await until(clock, () => rc.status === 'live', `${transport}: live`);
    assert.equal(resyncs.length, 1, transport);
    assert.equal(resyncs[0].reason, 'bad_cursor', transport);
    assert.equal(resyncs[0].cursor, 'c1', `${transport}: rc.cursor is the position the stream carries on from`);
    assert.equal(rc.stats.resyncs, 1, transport);
    server.publish('farm-1', 'x', { n: 1 });
    await until(clock, () => seen.length === 1, `${transport}: the next change`);
    assert.deepEqual(seen, ['c2'], transport);
    rc.close();
  }
  // a cursor polling cannot resume (410): rc.cursor is the position when told
  const { clock, server, rc } = setup({ cursor: 'c9999', transports: ['poll'] });
  const told = [];
  rc.on('rowcast:resync', (r) => told.push({ ...r, cursor: rc.cursor }));
  server.publish('farm-1', 'x', {});
  await until(clock, () => told.length > 0, 'poll: resync');
  assert.deepEqual(told, [{ topics: ['farm-1'], reason: 'cursor_unknown', snapshot: false, cursor: 'c1' }]);
  assert.equal(rc.stats.resyncs, 1);
  rc.close();
});

test('a topic the policy fails for is reported and dropped; the others carry on, on every transport', async () => {
  for (const transport of ['ws', 'sse', 'poll']) {
    const { clock, server, rc, seen } = setup({ topics: ['farm-1', 'boom-1'], transports: [transport] });
    const errors = [];
    rc.on('rowcast:error', (e) => errors.push(e));
    await until(clock, () => rc.status === 'live', `${transport}: live`);
    if (transport !== 'poll') {
      // the start position comes from the other topics
      const starts = server.requests.filter((r) => r.kind === 'poll').map((r) => r.params.topics);
      assert.deepEqual(starts, ['farm-1,boom-1', 'farm-1'], transport);
    }
    assert.deepEqual(errors.map((e) => [e.code, e.topic]), [['unavailable', 'boom-1']], transport);
    assert.deepEqual(rc.topics, ['farm-1'], transport);
    server.publish('farm-1', 'x', {});
    await until(clock, () => seen.length === 1, `${transport}: delivered`);
    rc.close();
  }
});

test('no topics at connect: several subscribe() calls while the start position is taken make one exact subscribe', async () => {
  const { clock, server, rc, seen } = setup({ topics: [], token: 'tok-1' });
  await until(clock, () => rc.status === 'live', 'live with no topics');
  rc.subscribe(['farm-1']);
  rc.subscribe(['farm-2', 'farm-3']);
  rc.unsubscribe(['farm-3']);
  await until(clock, () => [...server.ws].some((w) => w.topics && w.topics.size === 2), 'subscribed');
  const subs = [...server.ws][0].sent.filter((m) => m.type === 'subscribe');
  assert.deepEqual(subs.map((m) => [m.topics, m.cursor]), [[['farm-1', 'farm-2'], 'c0']]);
  assert.ok(![...server.ws][0].sent.some((m) => m.type === 'unsubscribe'), 'farm-3 was never sent, nor unsubscribed');
  server.publish('farm-2', 'x', {});
  await settle();
  assert.deepEqual(seen, ids(server, 'farm-2'));
  // a topic added once a cursor exists starts live, and a reconnect resumes it at the cursor with the others
  rc.subscribe(['farm-4']);
  await settle();
  assert.equal([...server.ws][0].sent.filter((m) => m.type === 'subscribe').at(-1).cursor, undefined);
  server.dropWs(1006);
  server.publish('farm-4', 'x', {});
  server.publish('farm-1', 'x', {});
  await until(clock, () => rc.status === 'live', 'live again');
  await settle();
  assert.deepEqual(seen, ids(server, 'farm-2').concat(['c2', 'c3']));
  rc.close();
});

test('no topics at connect: the WebSocket is pinged, so a quiet healthy one is not taken for dead', async () => {
  const { clock, server, rc, statuses } = setup({ topics: [], token: 'tok-1', pingInterval: 20_000, idleTimeout: 45_000 });
  await until(clock, () => rc.status === 'live', 'live with no topics');
  await clock.advance(200_000);
  assert.equal(server.requests.filter((r) => r.kind === 'ws').length, 1, 'one WebSocket, never reopened');
  assert.ok([...server.ws][0].sent.filter((m) => m.type === 'ping').length >= 9, 'pinged every 20 s');
  assert.equal(rc.status, 'live');
  assert.deepEqual(statuses, ['live/ws']);
  rc.close();
});

test('fallback=ws_blocked only when no WebSocket of this client ever opened; ws_failed once one did', async () => {
  // never opened: blocked from the start
  const a = setup({ transports: ['ws', 'sse'] });
  a.server.block.ws = true;
  await until(a.clock, () => a.rc.transport === 'sse' && a.rc.status === 'degraded', 'on sse');
  assert.equal(a.server.requests.filter((r) => r.kind === 'sse').at(-1).params.fallback, 'ws_blocked');
  // then a WebSocket opens (the probe going back up) but breaks before it is live: back on SSE, now ws_failed
  a.server.block.ws = false;
  const subscribeCloses = a.server.onWsMessage.bind(a.server);
  a.server.onWsMessage = (w, msg) => (msg.type === 'subscribe' ? w.serverClose(1006) : subscribeCloses(w, msg));
  const sseBefore = a.server.requests.filter((r) => r.kind === 'sse').length;
  await until(a.clock, () => a.server.requests.filter((r) => r.kind === 'sse').length > sseBefore, 'back on sse');
  assert.ok(a.server.requests.filter((r) => r.kind === 'ws').length > 2, 'the probe was a WebSocket');
  assert.equal(a.server.requests.filter((r) => r.kind === 'sse').at(-1).params.fallback, 'ws_failed');
  a.rc.close();

  // one opened and worked; later attempts are refused before opening: it did open once
  const b = setup({ transports: ['ws', 'sse'] });
  await until(b.clock, () => b.rc.status === 'live' && b.rc.transport === 'ws', 'live on ws');
  await b.clock.advance(30_000);
  b.server.block.ws = true;
  b.server.dropWs(1006);
  await until(b.clock, () => b.rc.transport === 'sse' && b.rc.status === 'degraded', 'on sse');
  assert.equal(b.server.requests.filter((r) => r.kind === 'sse').at(-1).params.fallback, 'ws_failed');
  b.rc.close();
});

test('close 1012 (the node restarts) after a stable connection: back at once; too early: the backoff', async () => {
  const { clock, server, rc } = setup({ transports: ['ws'], backoffBase: 500 });
  await until(clock, () => rc.status === 'live', 'live');
  await clock.advance(20_000);
  const opened = () => server.requests.filter((r) => r.kind === 'ws').length;
  const before = opened();
  server.dropWs(1012, 'server restart');
  await clock.advance(20);
  assert.equal(opened(), before + 1, 'a stable connection comes back at once');
  await until(clock, () => rc.status === 'live', 'live again', 10);
  // closed again before it was stable: the backoff (random 0.5 -> 375 ms of 250-500)
  server.dropWs(1012, 'server restart');
  await clock.advance(300);
  assert.equal(opened(), before + 1, 'an unstable one waits');
  await clock.advance(200);
  assert.equal(opened(), before + 2);
  rc.close();
});

test('a topic refused while opening a WebSocket is reported once', async () => {
  const { clock, server, rc } = setup({ transports: ['ws'] });
  const errors = [];
  rc.on('rowcast:error', (e) => errors.push(e.code));
  const real = server.onWsMessage.bind(server);
  server.onWsMessage = (w, msg) => {
    if (msg.type !== 'subscribe') return real(w, msg);
    return w.push({ type: 'error', code: 'bad_topic', message: 'topic too long' });
  };
  await until(clock, () => rc.status === 'offline', 'offline');
  assert.deepEqual(errors, ['bad_topic']);
  rc.close();
});

test('subscribe() and unsubscribe() calls of one task go as one message each', async () => {
  const { clock, server, rc } = setup();
  await until(clock, () => rc.status === 'live', 'live');
  for (let i = 0; i < 30; i++) rc.subscribe(`product-${i}`);
  await settle();
  const ws = [...server.ws][0];
  const subs = ws.sent.filter((m) => m.type === 'subscribe');
  assert.equal(subs.length, 2, 'the opening subscribe and one for the 30');
  assert.equal(subs[1].topics.length, 30);
  for (let i = 0; i < 30; i++) rc.unsubscribe(`product-${i}`);
  rc.subscribe('product-3'); // wanted again in the same task: not unsubscribed
  await settle();
  const unsubs = ws.sent.filter((m) => m.type === 'unsubscribe');
  assert.equal(unsubs.length, 1);
  assert.equal(unsubs[0].topics.length, 29);
  assert.ok(!unsubs[0].topics.includes('product-3'));
  assert.deepEqual(rc.topics.sort(), ['farm-1', 'product-3']);
  rc.close();
});

test('unsubscribe on a WebSocket: a change on its way under the dropped topic may be a remaining topic\'s: resumed from before it, not lost', async () => {
  const { clock, server, rc, seen } = setup({ topics: ['farm-1', 'product-2'] });
  await until(clock, () => rc.status === 'live', 'live');
  server.publish('farm-1', 'x', { n: 1 });
  await settle();
  rc.unsubscribe('product-2');
  // a change of product 2 on farm 1, sent under product-2 before the server took the unsubscribe
  const change = { type: 'event', id: `c${server.log.length + 1}`, topic: 'farm-1', event: 'x', data: { n: 2 }, ts: 0, tx: null };
  server.log.push(change);
  [...server.ws][0].push({ ...change, topic: 'product-2' });
  assert.deepEqual(seen, ['c1'], 'not delivered under the dropped topic');
  await until(clock, () => rc.status === 'live' && seen.length === 2, 'resumed');
  assert.deepEqual(seen, ['c1', 'c2'], 'delivered once, under the remaining topic');
  assert.deepEqual(rc.topics, ['farm-1']);
  rc.close();
});

test('topics no transport can carry are refused by the client alike on every transport; a later subscribe the server refuses drops only its topics', async () => {
  for (const transport of ['ws', 'sse', 'poll']) {
    // at connect: the client stops, as on the server's bad_topic, without a request
    const a = setup({ topics: ['farm-1', 'a,b'], transports: [transport] });
    const errors = [];
    a.rc.on('rowcast:error', (e) => errors.push(e.code));
    await a.clock.advance(1000);
    assert.deepEqual(errors, ['bad_topic'], transport);
    assert.equal(a.rc.status, 'offline', transport);
    assert.equal(a.server.requests.length, 0, `${transport}: nothing asked`);
    a.rc.close();

    const { clock, server, rc, seen } = setup({ transports: [transport] });
    const refused = [];
    rc.on('rowcast:error', (e) => refused.push([e.code, e.topics]));
    await until(clock, () => rc.status === 'live', `${transport}: live`);
    rc.subscribe(['x,y', ' farm-2', 'farm-3']);
    assert.deepEqual(refused, [['bad_topic', ['x,y', ' farm-2']]], transport);
    assert.deepEqual(rc.topics, ['farm-1', 'farm-3'], transport);
    // over the server's length limit (the fake's `long-` topics): dropped, the others carry on
    await clock.advance(1000); // the stream reopened with farm-3 (SSE, polling)
    rc.subscribe(['long-1']);
    await until(clock, () => refused.length === 2 && rc.status === 'live', `${transport}: refused, live again`);
    assert.deepEqual(refused[1], ['bad_topic', ['long-1']], transport);
    assert.deepEqual(rc.topics, ['farm-1', 'farm-3'], transport);
    server.publish('farm-3', 'x', {});
    await until(clock, () => seen.length === 1, `${transport}: the others still stream`);
    // and a reconnect opens without it
    server.dropWs(1006);
    server.dropSse();
    server.publish('farm-1', 'x', {});
    await until(clock, () => seen.length === 2, `${transport}: after a reconnect`);
    assert.equal(rc.status, 'live', transport);
    rc.close();
  }
});

test('resync on polling with a snapshot: told before the snapshot, as on the other transports', async () => {
  const { clock, server, rc } = setup({ transports: ['poll'], snapshot: true, cursor: 'c999999' });
  server.publish('farm-1', 'inventory.updated', { n: 1 });
  const order = [];
  rc.on('rowcast:resync', () => order.push('resync'));
  rc.on('inventory.updated', (d, meta) => order.push(`event ${meta.cursor}`));
  await until(clock, () => order.length >= 2, 'resync and snapshot');
  assert.deepEqual(order.slice(0, 2), ['resync', 'event c1']);
  rc.close();
});

test('a client with no topics and no token opens no WebSocket until it has topics (nothing to say on it)', async () => {
  const { clock, server, rc, seen } = setup({ topics: [] });
  await clock.advance(5000);
  assert.equal(server.requests.length, 0, 'nothing opened');
  assert.equal(rc.status, 'connecting');
  let ready = false;
  rc.ready().then(() => (ready = true));
  rc.subscribe('farm-1');
  await until(clock, () => ready && rc.status === 'live', 'live once subscribed');
  server.publish('farm-1', 'x', {});
  await until(clock, () => seen.length === 1, 'streams');
  rc.close();
});

test('a node restart (close 1012) that takes a while keeps the client on the WebSocket: no fallback within restartGrace', async () => {
  const { clock, server, rc, seen } = setup();
  await until(clock, () => rc.status === 'live', 'live');
  await clock.advance(20_000); // stable
  const before = server.requests.length;
  server.block.ws = true; // the node is down: its upgrades fail
  server.dropWs(1012, 'service restart');
  await clock.advance(8000);
  const since = server.requests.slice(before);
  assert.ok(since.filter((r) => r.kind === 'ws').length >= 3, 'retried on the WebSocket');
  assert.equal(since.filter((r) => r.kind === 'sse' || r.kind === 'poll').length, 0, 'no fallback');
  assert.equal(rc.status, 'connecting');
  server.block.ws = false; // back
  server.publish('farm-1', 'x', {});
  await until(clock, () => rc.status === 'live' && seen.length === 1, 'back on the WebSocket');
  assert.equal(rc.transport, 'ws');
  // past the grace, a WebSocket that keeps failing is left as before
  await clock.advance(20_000);
  server.block.ws = true;
  server.dropWs(1012, 'service restart');
  await until(clock, () => rc.transport === 'sse', 'down to SSE after the grace', 100, 120_000);
  rc.close();
});
