// The shopper's page: live product cards, farm pages (#farm-<id>), the cart
// with optimistic adds, FR-021's conflict dialog, order toasts, messages to
// farms ("Contact farmer").

import {
  api, apiJson, demoSession, esc, messageItem, money, openStream, paintDot, presenceWords, qtyText, statusChip, toast,
  tileStyle, STATUS_WORDS,
} from '/demo/common.js';

const params = new URLSearchParams(location.search);
const session = demoSession('customer', params.get('customer') ? `&customer=${encodeURIComponent(params.get('customer'))}` : '');
const products = new Map(); // productId -> product
const farms = new Map(); // farmId -> { farmId, name, farmerUserId, status }
const orders = new Map(); // orderId -> { orderId, farmId, status }
let cart = { items: [], totalCents: 0 };
let rc;
let me;
const conflicts = []; // queued FR-021 conflicts, shown one at a time
const messages = new Map(); // messageId -> message (ours and the farms' answers)
let talking = null; // { farmId, productId } while the message dialog is open

const $ = (id) => document.getElementById(id);

async function boot() {
  me = await session.get();
  for (const f of me.farms) farms.set(f.farmId, { ...f, status: 'offline' });
  $('cart-who').textContent = `customer ${me.sub}`;
  rc = openStream(session, [...farms.keys()].map((id) => `farm-${id}`).concat(`customer-${me.sub}`));
  statusChip($('status-chip'), rc);
  rc.on('inventory.updated', onInventory);
  rc.on('user.presence', onPresence);
  rc.on('order.status.changed', onOrder);
  rc.on('cart.adjusted', onCartAdjusted);
  rc.on('message.sent', onMessage);
  rc.on('rowcast:resync', () => refresh());
  rc.on('rowcast:error', (e) => console.warn('rowcast:', e.code, e.message));
  await rc.ready();
  await refresh();
  window.addEventListener('hashchange', render);
  $('checkout').addEventListener('click', checkout);
  $('cart-button').addEventListener('click', () => $('cart').scrollIntoView({ behavior: 'smooth' }));
  $('conflict-dialog').addEventListener('click', onConflictAction);
  $('farm-message').addEventListener('click', () => openMessage(currentFarm(), null, ''));
  $('message-form').addEventListener('submit', onMessageSubmit);
  $('message-dialog').addEventListener('close', () => {
    talking = null;
    showConflict(); // a conflict that waited behind "Contact farmer"
  });
  // Escape dismisses the conflict shown: it is dropped from the queue (a
  // checkout that still conflicts brings it back, once)
  $('conflict-dialog').addEventListener('cancel', () => {
    conflicts.shift();
    setTimeout(showConflict, 0);
  });
  document.body.dataset.ready = 'true';
}

/**
 * While refresh() waits for the API: what the stream said meanwhile
 * (quantities by product, presence by farm), which is as new as the
 * answers or newer, so it wins over them.
 */
let loading = null;

/** State from the API (after the stream is up, so that nothing changes unseen in between). */
async function refresh() {
  const seen = (loading = { quantity: new Map(), presence: new Map() });
  try {
    const [list, c, presence, mine] = await Promise.all([
      apiJson(session, 'GET', '/api/products'),
      apiJson(session, 'GET', '/api/cart'),
      fetch(`/v1/presence?users=${[...farms.values()].map((f) => f.farmerUserId).join(',')}`).then((r) => r.json()),
      myHistory(),
    ]);
    // orders and messages the stream did not bring since it started (a reload, another device)
    for (const o of mine.orders) if (!orders.has(o.orderId)) orders.set(o.orderId, o);
    for (const m of mine.messages) if (!messages.has(m.messageId)) messages.set(m.messageId, m);
    renderOrders();
    renderThread();
    products.clear();
    for (const p of list) {
      if (seen.quantity.has(p.productId)) p.quantity = seen.quantity.get(p.productId);
      products.set(p.productId, p);
    }
    for (const u of presence.users || []) {
      for (const f of farms.values()) {
        if (f.farmerUserId === u.userId && !seen.presence.has(f.farmId)) f.status = u.status;
      }
    }
    cart = c;
  } finally {
    if (loading === seen) loading = null;
  }
  render();
}

/**
 * This customer's orders, each in its latest status, and messages: the
 * snapshot of the `customer-<id>` topic (one `order.status.changed` per
 * order, every `message.sent`, within the change log's retention).
 */
async function myHistory() {
  const none = { orders: [], messages: [] };
  try {
    const token = await session.token({ refresh: false });
    const r = await fetch(`/v1/poll?topics=customer-${encodeURIComponent(me.sub)}&snapshot=true`, {
      headers: { Authorization: `Bearer ${token}` },
      cache: 'no-store',
    });
    if (!r.ok) return none;
    const events = (await r.json()).events || [];
    return {
      orders: events
        .filter((e) => e.event === 'order.status.changed')
        .map((e) => ({ orderId: e.data.orderId, farmId: e.data.farmId, status: e.data.newStatus })),
      messages: events.filter((e) => e.event === 'message.sent').map((e) => e.data),
    };
  } catch (_) {
    return none; // the stream brings new ones all the same
  }
}

function currentFarm() {
  const m = /^#farm-(\d+)$/.exec(location.hash);
  return m && farms.has(m[1]) ? m[1] : null;
}

function render() {
  const farm = currentFarm();
  renderNav(farm);
  renderHero(farm);
  const grid = $('products');
  grid.innerHTML = '';
  for (const p of products.values()) if (!farm || p.farmId === farm) grid.appendChild(card(p));
  renderCart();
}

function renderNav(farm) {
  const filters = $('filters');
  filters.innerHTML = '';
  const all = document.createElement('a');
  all.className = `filter${farm ? '' : ' active'}`;
  all.href = '#';
  all.textContent = 'All farms';
  filters.appendChild(all);
  for (const f of farms.values()) {
    const a = document.createElement('a');
    a.className = `filter${farm === f.farmId ? ' active' : ''}`;
    a.href = `#farm-${f.farmId}`;
    a.innerHTML = `<span class="dot" data-farm-dot="${f.farmId}"></span>${esc(f.name)}`;
    paintDot(a.querySelector('.dot'), f.status);
    filters.appendChild(a);
  }
  $('nav').innerHTML = '<a href="#" class="active">Shop</a><a href="/farmer" target="_blank" rel="noopener">For farmers</a>';
}

function renderHero(farm) {
  const f = farm && farms.get(farm);
  $('hero-title').textContent = f ? f.name : 'This week at the market';
  $('hero-text').textContent = f
    ? `Everything ${f.name} brought to market today. Quantities update live.`
    : 'Picked this morning by four family farms. Quantities update live as farmers restock and neighbours buy.';
  $('farm-online').hidden = !f;
  if (f) paintFarmOnline(f);
}

/** FR-021: "Sunny Valley Farm is online". */
function paintFarmOnline(f) {
  paintDot($('farm-online-dot'), f.status);
  $('farm-online-text').textContent = `${f.name} is ${presenceWords[f.status] || 'offline'}`;
  $('farm-online').dataset.status = f.status;
}

function stockLabel(p) {
  const q = Number(p.quantity);
  if (q <= 0) return ['Sold out', 'out'];
  if (q <= 5) return [`Only ${qtyText(q, p.unit)} left`, 'low'];
  return [`${qtyText(q, p.unit)} left`, ''];
}

function card(p) {
  const f = farms.get(p.farmId) || { name: p.farmName, status: 'offline' };
  const el = document.createElement('article');
  el.className = 'card';
  el.dataset.product = p.productId;
  const [stock, cls] = stockLabel(p);
  el.innerHTML = `
    <div class="tile" style="${tileStyle(p.name)}"><span class="stock ${cls}">${esc(stock)}</span>${esc(p.name[0])}</div>
    <div class="card-body">
      <h3>${esc(p.name)}</h3>
      <a class="farm-line" href="#farm-${esc(p.farmId)}"><span class="dot" data-farm-dot="${esc(p.farmId)}"></span>${esc(f.name)}</a>
      <div class="price">${money(p.priceCents)} <small>/ ${esc(p.unit)}</small></div>
      <div class="qty" data-qty data-quantity="${esc(p.quantity)}">${esc(qtyText(p.quantity, p.unit))} available</div>
      <div class="buy">
        <div class="stepper"><button type="button" data-step="-1" aria-label="less">−</button><input type="number" min="1" value="1" aria-label="quantity"><button type="button" data-step="1" aria-label="more">+</button></div>
        <button class="add" type="button" ${Number(p.quantity) <= 0 ? 'disabled' : ''}>Add to cart</button>
      </div>
    </div>`;
  paintDot(el.querySelector('.dot'), f.status);
  const input = el.querySelector('input');
  el.querySelectorAll('[data-step]').forEach((b) =>
    b.addEventListener('click', () => {
      input.value = Math.max(1, Number(input.value || 1) + Number(b.dataset.step));
    }));
  el.querySelector('.add').addEventListener('click', () => addToCart(p.productId, Number(input.value || 1)));
  return el;
}

// ------------------------------------------------------------------ live

function onInventory(d) {
  if (loading) loading.quantity.set(String(d.productId), d.newQuantity);
  const p = products.get(String(d.productId));
  if (!p) return;
  p.quantity = d.newQuantity;
  const el = document.querySelector(`[data-product="${p.productId}"]`);
  if (el) {
    const qty = el.querySelector('[data-qty]');
    qty.textContent = `${qtyText(p.quantity, p.unit)} available`;
    qty.dataset.quantity = String(p.quantity);
    qty.classList.remove('flash');
    void qty.offsetWidth; // restart the animation
    qty.classList.add('flash');
    const [stock, cls] = stockLabel(p);
    const badge = el.querySelector('.stock');
    badge.textContent = stock;
    badge.className = `stock ${cls}`;
    el.querySelector('.add').disabled = Number(p.quantity) <= 0;
  }
  // FR-021: in the cart and now out of stock (not while our own checkout is
  // placed: its purchase may be what emptied the stock, and a checkout that
  // lost the race gets the conflict dialog instead)
  const placing = $('checkout').dataset.placing === 'true';
  if (Number(d.newQuantity) === 0 && !placing && cart.items.some((i) => i.productId === p.productId)) {
    toast('info', `${p.name} ${/s$/i.test(p.name) ? 'are' : 'is'} now out of stock`);
  }
}

function onPresence(d) {
  for (const f of farms.values()) {
    if (f.farmerUserId !== d.userId && f.farmId !== d.farmId) continue;
    if (loading) loading.presence.set(f.farmId, d.status);
    f.status = d.status;
    document.querySelectorAll(`[data-farm-dot="${f.farmId}"]`).forEach((dot) => paintDot(dot, f.status));
    if (currentFarm() === f.farmId) paintFarmOnline(f);
    if (talking && talking.farmId === f.farmId) paintMessagePresence(f);
  }
}

function onOrder(d) {
  const known = orders.get(d.orderId);
  orders.set(d.orderId, { orderId: d.orderId, farmId: d.farmId, status: d.newStatus });
  renderOrders();
  if (!known || known.status !== d.newStatus) {
    toast(d.newStatus === 'CANCELLED' ? 'error' : 'success', d.message, `Order #${d.orderId} · ${farmName(d.farmId)}`);
  }
}

/** FR-021 "Server wins, customer told": a cart line no longer fits. */
function onCartAdjusted(d) {
  reloadCart();
  if (d.adjusted === null || d.adjusted === undefined) {
    toast('info', d.message);
    return;
  }
  // sold out: the line is removed from the cart (reloaded above), and
  // FR-021's "now out of stock" notification (onInventory) tells it; no
  // dialog besides, and the line's conflict, queued or shown, has nothing
  // left to decide
  if (Number(d.adjusted) === 0) {
    dropConflict(d.productId);
    return;
  }
  queueConflict(d);
}

function farmName(id) {
  return (farms.get(String(id)) || {}).name || `Farm ${id}`;
}

// ------------------------------------------------------------------ cart

async function reloadCart() {
  try {
    cart = await apiJson(session, 'GET', '/api/cart');
    renderCart();
  } catch (e) {
    console.warn(e);
  }
}

function renderCart() {
  const ul = $('cart-lines');
  ul.innerHTML = '';
  for (const i of cart.items) {
    const li = document.createElement('li');
    li.className = `cart-line${i.pending ? ' pending' : ''}${i.status && i.status !== 'ok' ? ' short' : ''}`;
    li.dataset.cartLine = i.productId;
    li.dataset.quantity = String(i.requested);
    const sub = i.status && i.status !== 'ok' ? i.message : `${qtyText(i.requested, i.unit)} · ${i.farmName || ''}`;
    li.innerHTML = `<span class="name">${esc(i.name)}</span><span class="line-total">${money(i.lineCents)}</span>
      <span class="sub">${esc(sub)}</span><button class="remove" type="button">Remove</button>`;
    li.querySelector('.remove').addEventListener('click', () => removeLine(i.productId));
    ul.appendChild(li);
  }
  $('cart-empty').hidden = cart.items.length > 0;
  $('cart-total').textContent = money(cart.totalCents);
  $('cart-count').textContent = String(cart.items.length);
  const placing = $('checkout').dataset.placing === 'true';
  // enabled while a line does not fit (`ready` false): the checkout's 409
  // opens FR-021's dialog for it, whose choices fix the cart
  $('checkout').disabled = placing || cart.items.length === 0 || cart.items.some((i) => i.pending);
}

/** FR-021's optimistic add: the line shows at once; a failure takes it back and says so. */
async function addToCart(productId, quantity) {
  const p = products.get(productId);
  const before = cart;
  try {
    const { body } = await rc.optimistic({
      apply: () => {
        const items = cart.items.filter((i) => i.productId !== productId);
        const had = cart.items.find((i) => i.productId === productId);
        const requested = (had ? Number(had.requested) : 0) + quantity;
        items.push({
          productId, name: p.name, unit: p.unit, farmName: p.farmName, requested,
          lineCents: Math.round(p.priceCents * requested), status: 'ok', pending: true,
        });
        cart = { ...cart, items, totalCents: items.reduce((s, i) => s + i.lineCents, 0) };
        renderCart();
      },
      request: () => api(session, 'POST', '/api/cart/items', { productId, quantity }),
      rollback: () => {
        cart = before;
        renderCart();
      },
      confirm: false, // a cart edit emits no change: its answer is the state
    });
    cart = body;
    renderCart();
    toast('success', `Added ${qtyText(quantity, p.unit)} of ${p.name}`, 'In your cart');
  } catch (e) {
    if (e.code === 'quantity_unavailable') {
      // the API's words end in FR-021's question, which the conflict dialog
      // answers; here the add was simply refused
      const why = String(e.message || '').replace(/\s*Adjust quantity\?\s*$/, '');
      toast('error', why || 'Not that many available.', 'Choose a smaller quantity.');
    } else {
      toast('error', 'Failed to add to cart. Try again.', e.message || '');
    }
  }
}

async function removeLine(productId) {
  try {
    cart = await apiJson(session, 'DELETE', `/api/cart/items/${productId}`);
    renderCart();
  } catch (e) {
    toast('error', 'Could not remove it. Try again.', e.message);
  }
}

/** Checkout: on a 409 the conflict dialog; on success the order's own change confirms it (its tx). */
async function checkout() {
  const btn = $('checkout');
  try {
    const { body } = await rc.optimistic({
      apply: () => {
        btn.dataset.placing = 'true';
        btn.disabled = true;
        btn.textContent = 'Placing order…';
      },
      request: () => api(session, 'POST', '/api/checkout'),
      rollback: () => {
        btn.dataset.placing = 'false';
        btn.textContent = 'Checkout';
        renderCart();
      },
    });
    for (const o of body.orders || []) {
      if (!orders.has(o.orderId)) orders.set(o.orderId, { orderId: o.orderId, farmId: o.farmId, status: o.status });
    }
    cart = { items: [], totalCents: 0 };
    btn.dataset.placing = 'false';
    btn.textContent = 'Checkout';
    renderCart();
    renderOrders();
    document.body.dataset.lastCheckout = 'ok';
  } catch (e) {
    document.body.dataset.lastCheckout = e.code || 'error';
    if (e.status === 409 && e.conflicts) {
      e.conflicts.forEach(queueConflict);
      reloadCart();
    } else {
      toast('error', e.code === 'cart_empty' ? 'Your cart is empty.' : 'Checkout failed. Try again.', e.message || '');
    }
  }
}

function renderOrders() {
  const list = $('order-list');
  list.innerHTML = '';
  const mine = [...orders.values()].sort((a, b) => Number(b.orderId) - Number(a.orderId)).slice(0, 6);
  for (const o of mine) {
    const row = document.createElement('div');
    row.className = 'order';
    row.dataset.order = o.orderId;
    row.innerHTML = `<span>#${esc(o.orderId)} · ${esc(farmName(o.farmId))}</span><span class="pill ${esc(o.status)}">${esc(STATUS_WORDS[o.status] || o.status)}</span>`;
    list.appendChild(row);
  }
  $('orders').hidden = mine.length === 0;
}

// -------------------------------------------------------------- conflicts

/** One queued conflict per cart line: a newer one for the same line replaces it. */
function queueConflict(c) {
  const at = conflicts.findIndex((q) => q.productId === c.productId);
  if (at >= 0) conflicts[at] = c;
  else conflicts.push(c);
  if (!$('conflict-dialog').open || at === 0) showConflict();
}

/** A line that left the cart: its conflict goes from the queue, and from the dialog if shown there. */
function dropConflict(productId) {
  const at = conflicts.findIndex((q) => q.productId === productId);
  if (at < 0) return;
  conflicts.splice(at, 1);
  const d = $('conflict-dialog');
  if (at === 0 && d.open) {
    d.close();
    showConflict();
  }
}

/** What a conflict (a checkout's, or a `cart.adjusted`) says is available. */
function availableOf(c) {
  return Number(c.available ?? c.adjusted ?? 0);
}

function showConflict() {
  const c = conflicts[0];
  // one dialog at a time: a conflict waits for the message being written
  if (!c || $('message-dialog').open) return;
  const available = availableOf(c);
  const options = c.options || ['adjust', 'remove', 'contact_farmer'];
  $('conflict-title').textContent = c.message;
  $('conflict-text').textContent = available > 0
    ? `${farmName(c.farmId)} updated ${c.name} while it was in your cart (you asked for ${qtyText(c.requested, c.unit)}).`
    : `${farmName(c.farmId)} sold the last of it while it was in your cart.`;
  const adjust = $('conflict-adjust');
  adjust.hidden = !options.includes('adjust') || available <= 0;
  adjust.textContent = `Adjust to ${qtyText(available, c.unit)}`;
  $('conflict-remove').hidden = !options.includes('remove');
  $('conflict-contact').hidden = !options.includes('contact_farmer');
  const d = $('conflict-dialog');
  d.dataset.product = c.productId;
  if (!d.open) d.showModal();
}

async function onConflictAction(ev) {
  const action = ev.target && ev.target.dataset && ev.target.dataset.action;
  if (!action) return;
  const c = conflicts.shift();
  $('conflict-dialog').close();
  if (!c) return;
  try {
    if (action === 'adjust') {
      cart = await apiJson(session, 'PATCH', `/api/cart/items/${c.productId}`, { quantity: availableOf(c) });
      toast('success', `Adjusted to ${qtyText(availableOf(c), c.unit)}`, c.name);
    } else if (action === 'remove') {
      // a line removed at 0 and then restocked is gone already (404
      // not_in_cart): what "remove" asked for is done
      cart = await apiJson(session, 'DELETE', `/api/cart/items/${c.productId}`).catch((e) => {
        if (e.body && e.body.error === 'not_in_cart') return apiJson(session, 'GET', '/api/cart');
        throw e;
      });
      toast('success', `Removed ${c.name} from your cart`);
    } else {
      // "Contact farmer": the message dialog, with a draft; the next
      // conflict waits until it closes
      const available = availableOf(c);
      const want = `${qtyText(c.requested, c.unit)} of ${c.name}`;
      openMessage(String(c.farmId), c.productId, available > 0
        ? `Hi! I'd like ${want}, but only ${qtyText(available, c.unit)} are available. Will you have more soon?`
        : `Hi! I'd like ${want}, but it has sold out. Will you have more soon?`);
      renderCart();
      return;
    }
  } catch (e) {
    toast('error', 'That did not work. Try again.', e.message);
    reloadCart();
  }
  renderCart();
  showConflict();
}

// --------------------------------------------------------------- messages

/** FR-021's messaging line: "Farmer is online - expect quick reply". */
const REPLY_WORDS = {
  online: 'Farmer is online - expect quick reply',
  away: 'Farmer is away - a reply may take a while',
  offline: 'Farmer is offline - they will reply when back',
};

/** The dialog to write to a farm (about a product, or not), with its conversation so far. */
function openMessage(farmId, productId, draft) {
  const f = farms.get(String(farmId));
  if (!f) return;
  talking = { farmId: f.farmId, productId: productId || null };
  $('message-title').textContent = f.name;
  paintMessagePresence(f);
  renderThread();
  $('message-body').value = draft;
  const d = $('message-dialog');
  d.dataset.farm = f.farmId;
  if (!d.open) d.showModal();
  $('message-body').focus();
}

function paintMessagePresence(f) {
  paintDot($('message-dot'), f.status);
  $('message-presence-text').textContent = REPLY_WORDS[f.status] || REPLY_WORDS.offline;
  $('message-presence').dataset.status = f.status;
}

function renderThread() {
  const ol = $('message-thread');
  ol.innerHTML = '';
  if (!talking) return;
  const mine = [...messages.values()]
    .filter((m) => m.farmId === talking.farmId)
    .sort((a, b) => Number(a.messageId) - Number(b.messageId))
    .slice(-50); // the latest
  ol.innerHTML = mine
    .map((m) => messageItem(m, m.from === 'customer', m.from === 'farmer' ? m.farmName : 'You'))
    .join('');
  ol.scrollTop = ol.scrollHeight;
}

async function onMessageSubmit(ev) {
  if (!ev.submitter || ev.submitter.value !== 'send') return; // Close
  ev.preventDefault(); // stay open: the answer comes into the thread
  if (!talking) return;
  const body = $('message-body').value;
  const send = $('message-send');
  send.disabled = true;
  try {
    const payload = { body };
    if (talking.productId) payload.productId = talking.productId;
    const m = await apiJson(session, 'POST', `/api/farms/${talking.farmId}/messages`, payload);
    delete m.tx;
    messages.set(m.messageId, m);
    renderThread();
    $('message-body').value = '';
    const f = farms.get(m.farmId);
    toast('success', `Message sent to ${m.farmName}`, REPLY_WORDS[(f && f.status) || 'offline']);
  } catch (e) {
    toast('error', 'The message was not sent. Try again.', e.message);
  } finally {
    send.disabled = false;
  }
}

/** A message of ours (from another tab too) or a farm's answer. */
function onMessage(d) {
  const known = messages.has(d.messageId);
  messages.set(d.messageId, d);
  if (talking && talking.farmId === d.farmId) renderThread();
  if (!known && d.from === 'farmer') toast('info', `${d.farmName} replied`, d.body, 10000);
}

boot().catch((e) => {
  console.error(e);
  toast('error', 'The market could not load', e.message);
});
