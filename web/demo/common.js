// Shared by the demo's shop (shop.js) and farmer view (farmer.js): the demo
// session, API calls, the transport chip, toasts, presence dots, formatting.

import { connect, defaults } from '/rowcast.js';

/**
 * The demo's identity: a token from /demo/session (demo only: a real shop
 * has its own login). Asked again when rowcast.js or the API says the token
 * expired.
 */
export function demoSession(as, params = '') {
  let current = null;
  const load = async () => {
    const r = await fetch(`/demo/session?as=${as}${params}`, { cache: 'no-store' });
    if (!r.ok) throw new Error(`demo session: ${r.status}`);
    current = await r.json();
    return current;
  };
  return {
    get: async (refresh = false) => (current && !refresh ? current : load()),
    token: async (how = {}) => (await (current && !how.refresh ? current : load())).token,
  };
}

/** rowcast.js options from the page's query string (`/?transports=sse,poll&upgradeDelay=1000`), for trying the fallback by hand. */
export function sdkOptions() {
  const q = new URLSearchParams(location.search);
  const o = {};
  if (q.get('transports')) o.transports = q.get('transports').split(',').filter(Boolean);
  for (const [k, v] of Object.entries(defaults)) {
    if (typeof v === 'number' && q.has(k) && Number.isFinite(Number(q.get(k)))) o[k] = Number(q.get(k));
  }
  return o;
}

export function openStream(session, topics, extra = {}) {
  const rc = connect(location.origin, { token: session.token, topics, ...sdkOptions(), ...extra });
  window.rowcastClient = rc; // for the browser tests and the curious
  return rc;
}

/** A market API call: the fetch Response (rowcast.js reads it); one retry with a fresh token on 401. */
export async function api(session, method, path, body) {
  const send = async (refresh) => {
    const token = await session.token({ refresh });
    const headers = { Authorization: `Bearer ${token}` };
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    return fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  };
  const r = await send(false);
  return r.status === 401 ? send(true) : r;
}

export async function apiJson(session, method, path, body) {
  const r = await api(session, method, path, body);
  const data = await r.json().catch(() => null);
  if (!r.ok) throw Object.assign(new Error((data && data.message) || `HTTP ${r.status}`), { status: r.status, body: data });
  return data;
}

const TRANSPORT_NAMES = { ws: 'WebSocket', sse: 'Server-Sent Events', poll: 'Polling' };

/** The small chip saying how live the page is and over what. */
export function statusChip(el, rc) {
  const paint = () => {
    const t = TRANSPORT_NAMES[rc.transport] || rc.transport;
    const text = {
      live: `Live · ${t}`,
      degraded: `Live · ${t} (fallback)`,
      connecting: 'Connecting…',
      offline: 'Offline · retrying',
    }[rc.status];
    el.dataset.status = rc.status;
    el.dataset.transport = rc.transport;
    el.title = rc.status === 'degraded'
      ? `WebSocket unavailable: updates arrive over ${t}. Still live, just a little slower.`
      : `Real-time updates: ${rc.status}, over ${t}`;
    el.innerHTML = `<span class="led"></span><span class="label">${esc(text)}</span>`;
  };
  rc.on('rowcast:status', paint);
  paint();
}

export function toast(kind, title, text = '', ms = 6000) {
  const box = document.getElementById('toasts');
  const el = document.createElement('div');
  el.className = `toast ${kind}`;
  el.setAttribute('role', 'status');
  el.innerHTML = `<div class="icon">${kind === 'error' ? '!' : kind === 'info' ? 'i' : '✓'}</div>
    <div><strong>${esc(title)}</strong>${text ? `<span>${esc(text)}</span>` : ''}</div>`;
  box.appendChild(el);
  setTimeout(() => el.remove(), ms);
  return el;
}

/** FR-021's dots: the server's status (online < 5 min, away < 60 min, offline). */
export function paintDot(el, status) {
  const s = status || 'offline';
  el.classList.remove('online', 'away', 'offline');
  el.classList.add(s);
  el.dataset.status = s;
  el.title = { online: 'Farmer online', away: 'Farmer away', offline: 'Farmer offline' }[s];
}

export const presenceWords = { online: 'online', away: 'away', offline: 'offline' };

export function money(cents) {
  return `$${(Number(cents || 0) / 100).toFixed(2)}`;
}

/**
 * "3 lbs", "1 bunch", "12 ears", "2 loaves": the rule of the market's SQL
 * (market.unit_for, sql/market/014_unit_words.sql), so that a dialog's
 * button says what its message says.
 */
export function qtyText(q, unit) {
  const n = Number(q);
  const u = String(unit || '');
  const l = u.toLowerCase();
  let w;
  if (!u) w = u;
  else if (n === 1) w = l === 'lbs' ? u.slice(0, -1) : u;
  else if (l === 'lb') w = `${u}s`;
  else if (['lbs', 'oz', 'g', 'kg', 'mg', 'l', 'ml', 'dozen', 'each', 'ea', 'pcs'].includes(l)) w = u;
  else if (['loaf', 'leaf', 'half', 'calf', 'shelf', 'sheaf'].includes(l)) w = `${u.slice(0, -1)}ves`;
  else if (['knife', 'life'].includes(l)) w = `${u.slice(0, -2)}ves`;
  else if (['potato', 'tomato', 'mango'].includes(l)) w = `${u}es`;
  else if (/(s|sh|ch|x|z)$/i.test(u)) w = `${u}es`;
  else if (/[^aeiou]y$/i.test(u)) w = `${u.slice(0, -1)}ies`;
  else w = `${u}s`;
  if (u === u.toUpperCase() && u !== l) w = w.toUpperCase();
  return `${trim(n)} ${w}`.trim();
}

function trim(n) {
  return Number.isInteger(n) ? String(n) : String(Number(n.toFixed(3)));
}

const PALETTE = [
  [/tomato|strawberr|apple|cider|beet|plum/i, '#d4583f', '#e98a5c'],
  [/corn|peach|butter|cheddar|egg|honey/i, '#e4a73a', '#f2c766'],
  [/zucchini|basil|kale|spinach|pear/i, '#4f8a4a', '#86b86b'],
  [/carrot|pumpkin|squash/i, '#e07b2e', '#f3a65a'],
  [/garlic|milk|yogurt/i, '#a89f8c', '#d6cdb8'],
];

/** The produce tile's colours, by what the product is. */
export function tileStyle(name) {
  const hit = PALETTE.find(([re]) => re.test(name)) || [null, '#7a8f5a', '#a8b98a'];
  return `background: linear-gradient(135deg, ${hit[1]}, ${hit[2]})`;
}

/**
 * One message of a conversation, as both pages show it: `mine` on the right,
 * `label` (who wrote it) above the text; `data-from` and `data-message` for
 * the browser tests.
 */
export function messageItem(m, mine, label) {
  return `<li class="${mine ? 'mine' : 'theirs'}" data-from="${esc(m.from)}" data-message="${esc(m.messageId)}"><small>${esc(label)}</small>${esc(m.body)}</li>`;
}

export function esc(s) {
  return String(s ?? '').replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]);
}

export const NEXT_STATUS = { PENDING: 'CONFIRMED', CONFIRMED: 'PREPARING', PREPARING: 'READY', READY: 'COMPLETED' };
export const STATUS_WORDS = {
  PENDING: 'Awaiting confirmation',
  CONFIRMED: 'Confirmed',
  PREPARING: 'Being prepared',
  READY: 'Ready for pickup',
  COMPLETED: 'Completed',
  CANCELLED: 'Cancelled',
};
