// The farmer's view: set quantities and advance orders, both optimistic and
// confirmed by their transaction's change; reports activity (presence);
// reads and answers shoppers' messages.

import {
  api, apiJson, demoSession, esc, messageItem, openStream, paintDot, presenceWords, qtyText, statusChip, toast, tileStyle,
  NEXT_STATUS, STATUS_WORDS,
} from '/demo/common.js';

const params = new URLSearchParams(location.search);
const session = demoSession('farmer', params.get('farm') ? `&farm=${encodeURIComponent(params.get('farm'))}` : '');
const products = new Map();
const orders = new Map(); // orderId -> { orderId, customerId, status }
const messages = new Map(); // messageId -> message
const drafts = new Map(); // customerId -> reply being typed (kept across re-renders)
const sending = new Set(); // customerIds whose reply is on its way
const bootedAt = Date.now();
/** What the Messages panel shows: the latest conversations, each's latest messages. */
const SHOWN_CONVERSATIONS = 30;
const SHOWN_MESSAGES = 30;
let rc;
let me;

const $ = (id) => document.getElementById(id);

async function boot() {
  me = await session.get();
  $('farm-title').textContent = me.farmName;
  document.title = `${me.farmName} · Farmer dashboard`;
  // the snapshot brings the current state of the farm's orders (and of
  // products that changed), and the messages still in the change log
  rc = openStream(session, [`farm-${me.farmId}`, `farm-${me.farmId}-orders`, `farm-${me.farmId}-messages`], { snapshot: true });
  statusChip($('status-chip'), rc);
  // what the stream says while the API answers is newer than (or as new as) the answer
  const seenQuantity = new Map();
  let presenceSeen = false;
  rc.on('inventory.updated', (d) => {
    const p = products.get(String(d.productId));
    if (!p) {
      seenQuantity.set(String(d.productId), d.newQuantity);
      return;
    }
    p.quantity = d.newQuantity;
    paintProduct(p);
  });
  rc.on('order.status.changed', (d) => {
    orders.set(d.orderId, { orderId: d.orderId, customerId: d.customerId, status: d.newStatus });
    renderOrders();
  });
  rc.on('message.sent', (d) => {
    const known = messages.has(d.messageId);
    messages.set(d.messageId, d);
    scheduleConversations();
    // a new question, not the history the snapshot replays (written before
    // this page opened: the demo's server and browser share a clock)
    if (!known && d.from === 'customer' && Number(d.timestamp) >= bootedAt) {
      toast('info', `Customer ${d.customerId} wrote`, d.body, 10000);
    }
  });
  rc.on('user.presence', (d) => {
    if (d.userId !== me.userId) return;
    presenceSeen = true;
    paintMe(d.status);
  });
  const list = await apiJson(session, 'GET', `/api/products?farm=${me.farmId}`);
  for (const p of list) {
    if (seenQuantity.has(p.productId)) p.quantity = seenQuantity.get(p.productId);
    products.set(p.productId, p);
  }
  renderInventory();
  paintMe('offline');
  // FR-021 presence: being here, and every interaction, is activity (rowcast.js throttles the reports)
  rc.activity();
  for (const ev of ['pointerdown', 'keydown', 'focus']) window.addEventListener(ev, () => rc.activity(), { passive: true });
  const r = await fetch(`/v1/presence?users=${me.userId}`).then((x) => x.json());
  const mine = (r.users || [])[0];
  // an event that came meanwhile (our own activity's, usually) is the newer news
  if (mine && !presenceSeen) paintMe(mine.status);
  document.body.dataset.ready = 'true';
}

function paintMe(status) {
  paintDot($('you-dot'), status);
  $('you-text').textContent = status === 'online' ? "You're online" : `You appear ${presenceWords[status]}`;
  $('you-online').dataset.status = status;
}

function renderInventory() {
  const body = $('inventory');
  body.innerHTML = '';
  for (const p of products.values()) {
    const tr = document.createElement('tr');
    tr.dataset.product = p.productId;
    tr.innerHTML = `
      <td><span class="swatch" style="${tileStyle(p.name)}">${esc(p.name[0])}</span>${esc(p.name)}</td>
      <td><div class="stepper"><button type="button" data-step="-1" aria-label="less">−</button><input type="number" min="0" step="1" data-qty-input aria-label="quantity"><button type="button" data-step="1" aria-label="more">+</button></div>
        <span class="unit">${esc(p.unit)}</span><span class="save-state" data-save></span></td>
      <td><button class="btn" type="button" data-save-button>Save</button></td>`;
    const input = tr.querySelector('input');
    input.value = String(p.quantity);
    tr.querySelectorAll('[data-step]').forEach((b) =>
      b.addEventListener('click', () => {
        input.value = String(Math.max(0, Number(input.value || 0) + Number(b.dataset.step)));
      }));
    tr.querySelector('[data-save-button]').addEventListener('click', () => setQuantity(p.productId, Number(input.value)));
    input.addEventListener('keydown', (e) => {
      if (e.key === 'Enter') setQuantity(p.productId, Number(input.value));
    });
    body.appendChild(tr);
  }
}

/** The server's value, unless the farmer is typing in that field. */
function paintProduct(p) {
  const tr = document.querySelector(`tr[data-product="${p.productId}"]`);
  if (!tr) return;
  const input = tr.querySelector('input');
  if (document.activeElement !== input) input.value = String(p.quantity);
  tr.dataset.quantity = String(p.quantity);
}

/** Optimistic: shown at once; settled when the change carrying its tx comes back; rolled back on refusal. */
async function setQuantity(productId, quantity) {
  const p = products.get(productId);
  const before = p.quantity;
  const state = document.querySelector(`tr[data-product="${productId}"] [data-save]`);
  try {
    await rc.optimistic({
      apply: () => {
        p.quantity = quantity;
        paintProduct(p);
        state.className = 'save-state';
        state.textContent = 'Saving…';
      },
      request: () => api(session, 'PATCH', `/api/products/${productId}`, { quantity }),
      rollback: () => {
        p.quantity = before;
        paintProduct(p);
      },
      // older inventory changes of this product must not flash back over the new value
      stale: (d) => String(d.productId) === productId,
    });
    state.className = 'save-state ok';
    state.textContent = 'Saved ✓';
    toast('success', `${p.name}: ${qtyText(quantity, p.unit)}`, 'Shoppers see it now');
  } catch (e) {
    state.className = 'save-state err';
    state.textContent = 'Not saved';
    toast('error', 'Could not save the quantity', e.message);
  }
}

function renderOrders() {
  const box = $('farm-orders');
  box.innerHTML = '';
  const list = [...orders.values()].sort((a, b) => Number(b.orderId) - Number(a.orderId));
  const open = list.filter((o) => NEXT_STATUS[o.status]);
  $('order-count').textContent = `${open.length} open`;
  for (const o of list) {
    const next = NEXT_STATUS[o.status];
    const card = document.createElement('div');
    card.className = 'order-card';
    card.dataset.order = o.orderId;
    card.dataset.status = o.status;
    card.innerHTML = `<div class="who"><strong>Order #${esc(o.orderId)}</strong><span>Customer ${esc(o.customerId)}</span></div>
      <span class="pill ${esc(o.status)}">${esc(STATUS_WORDS[o.status] || o.status)}</span>
      ${next ? `<button class="advance" type="button">Mark ${esc(STATUS_WORDS[next].toLowerCase())}</button>` : ''}`;
    if (next) card.querySelector('.advance').addEventListener('click', () => advance(o.orderId, next));
    box.appendChild(card);
  }
  if (list.length === 0) box.innerHTML = '<div class="cart-empty">No orders yet.</div>';
}

async function advance(orderId, status) {
  const o = orders.get(orderId);
  const before = o.status;
  try {
    await rc.optimistic({
      apply: () => {
        o.status = status;
        renderOrders();
      },
      request: () => api(session, 'POST', `/api/orders/${orderId}/status`, { status }),
      rollback: () => {
        o.status = before;
        renderOrders();
      },
      stale: (d) => String(d.orderId) === orderId,
    });
  } catch (e) {
    toast('error', 'Could not update the order', e.message);
  }
}

/**
 * Renders the Messages panel once per frame, however many messages came
 * (a snapshot replays the whole history, one event at a time).
 */
let renderPending = false;
function scheduleConversations() {
  if (renderPending) return;
  renderPending = true;
  requestAnimationFrame(() => {
    renderPending = false;
    renderConversations();
  });
}

/**
 * One conversation per customer, the latest first, each with its reply box
 * (at most SHOWN_CONVERSATIONS, each with its SHOWN_MESSAGES latest).
 */
function renderConversations() {
  const box = $('conversations');
  // keep what is being typed, and where the caret is
  for (const t of box.querySelectorAll('textarea')) drafts.set(t.dataset.customer, t.value);
  const active = document.activeElement;
  const focused = active && active.tagName === 'TEXTAREA' && box.contains(active)
    ? { customer: active.dataset.customer, start: active.selectionStart, end: active.selectionEnd }
    : null;
  const byCustomer = new Map();
  for (const m of [...messages.values()].sort((a, b) => Number(a.messageId) - Number(b.messageId))) {
    if (!byCustomer.has(m.customerId)) byCustomer.set(m.customerId, []);
    byCustomer.get(m.customerId).push(m);
  }
  const latest = (list) => Number(list[list.length - 1].messageId);
  const conversations = [...byCustomer.entries()].sort((a, b) => latest(b[1]) - latest(a[1]));
  box.innerHTML = '';
  $('message-count').textContent = conversations.length ? `${conversations.length} conversation${conversations.length === 1 ? '' : 's'}` : '';
  if (conversations.length === 0) {
    box.innerHTML = '<div class="cart-empty">No messages yet.</div>';
    return;
  }
  // the latest ones, and always those being written to (a draft, a reply
  // on its way, the box in focus), wherever the others push them
  const inUse = (id) => Boolean(drafts.get(id)) || sending.has(id) || (focused && focused.customer === id);
  const shownList = conversations.filter((c, i) => i < SHOWN_CONVERSATIONS || inUse(c[0]));
  for (const [customerId, list] of shownList) {
    const div = document.createElement('div');
    div.className = 'conversation';
    div.dataset.customer = customerId;
    const shown = list.slice(-SHOWN_MESSAGES);
    const earlier = list.length - shown.length;
    const items = shown.map((m) => {
      const about = m.productId && products.get(m.productId) ? ` · about ${products.get(m.productId).name}` : '';
      return messageItem(m, m.from === 'farmer', m.from === 'farmer' ? 'You' : `Customer ${customerId}${about}`);
    }).join('');
    const busy = sending.has(customerId);
    div.innerHTML = `<div class="who">Customer ${esc(customerId)}${earlier ? ` <small>${earlier} earlier</small>` : ''}</div><ol class="thread">${items}</ol>
      <form class="reply"><textarea rows="2" required aria-label="Reply" data-customer="${esc(customerId)}"${busy ? ' disabled' : ''}></textarea><button class="btn primary" type="submit"${busy ? ' disabled' : ''}>${busy ? 'Sending…' : 'Reply'}</button></form>`;
    const text = div.querySelector('textarea');
    text.value = drafts.get(customerId) || '';
    div.querySelector('form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      reply(customerId, text.value);
    });
    box.appendChild(div);
    const thread = div.querySelector('.thread');
    thread.scrollTop = thread.scrollHeight;
    if (focused && focused.customer === customerId) {
      text.focus();
      text.setSelectionRange(focused.start, focused.end);
    }
  }
  if (conversations.length > shownList.length) {
    const more = document.createElement('div');
    more.className = 'cart-empty';
    more.textContent = `${conversations.length - shownList.length} older conversations not shown`;
    box.appendChild(more);
  }
}

/** Sends a reply once: the box empties at once (its text back on a failure). */
async function reply(customerId, body) {
  if (sending.has(customerId)) return;
  sending.add(customerId);
  // the box empties now (a render reads the drafts from the boxes first)
  const boxOf = () => document.querySelector(`.conversation[data-customer="${customerId}"] textarea`);
  const setText = (text) => {
    const box = boxOf();
    if (box) box.value = text;
    drafts.set(customerId, text);
  };
  setText('');
  renderConversations();
  try {
    const m = await apiJson(session, 'POST', `/api/farms/${me.farmId}/customers/${customerId}/messages`, { body });
    delete m.tx;
    messages.set(m.messageId, m);
  } catch (e) {
    // the text back, to be mended and sent again
    setText(body);
    toast('error', 'The reply was not sent. Try again.', e.message);
  } finally {
    sending.delete(customerId);
    renderConversations();
    const box = boxOf();
    if (box) box.focus();
  }
}

boot().catch((e) => {
  console.error(e);
  toast('error', 'The dashboard could not load', e.message);
});
