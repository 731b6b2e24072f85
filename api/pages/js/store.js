// The storefront: products with live stock, a cart, checkout (with or
// without a hold), the order's decision as it happens, pay or cancel.
//
// One checkout is one idempotency key. The key and the cart it was made for
// are kept in session storage before the request leaves, so a double click,
// a reload or a retry after `429`/`503` sends the same key with the same
// body and finds the same order; a new key is made only once the previous
// checkout has an answer.

import { all, call, newKey, Problem } from "./api.js";
import { $, clock, count, h, money, remaining, replace, setText, shortId, syncList } from "./dom.js";
import { clearNotice, notify, onSignIn } from "./page.js";
import { claims, expired, forget, stash, takeFromFragment, token } from "./session.js";
import { follow } from "./sse.js";

const CART = "checkline.cart"; // [{product_id, quantity}], in the order added
const CHECKOUT = "checkline.checkout"; // {key, body, order_id}: a checkout not answered yet
const SHOWN = "checkline.order"; // id of the order on show

const FINAL = new Set(["confirmed", "rejected", "expired", "cancelled"]);
const LINE_MAX = 100;

const STATUS = {
  pending: ["Waiting", "Your order is in line; it is decided in turn."],
  reserved: ["Held for you", "The items are yours until the time runs out: pay to keep them."],
  confirmed: ["Confirmed", "Thank you: the items are yours."],
  rejected: ["Not possible", ""],
  expired: ["Hold ran out", "The time ran out before payment; the items went back on sale."],
  cancelled: ["Cancelled", "Nothing was taken."],
};

const REASONS = {
  sold_out: (name) => `${name} was sold out when your order's turn came.`,
  insufficient_stock: (name) => `There was not enough ${name} left for the quantity you asked.`,
  limit_exceeded: (name) => `That is more ${name} than one customer may buy.`,
  product_unavailable: (name) => `${name} is no longer for sale.`,
  idempotency_key_reused: () => "This checkout was sent again with a different cart, so it was refused.",
};

const products = new Map(); // id → Product, with the latest stock event merged in
let productsLoaded = false;
let busy = false; // a checkout request is on its way
let following = null; // AbortController of the order stream being followed

// --------------------------------------------------- problems in words --

/**
 * A problem in words: the server's `detail`, naming the product if any
 * (the document names it; for a cart of one line, it is that line's).
 */
function describe(err, lines = []) {
  if (!(err instanceof Problem)) return "Something went wrong. Please try again.";
  if (err.status === 401) {
    showSignIn();
    return "Your token was refused (expired or not valid): paste a new one.";
  }
  const productId = err.doc?.product_id ?? (err.code === "sold_out" && lines.length === 1 ? lines[0].product_id : null);
  const name = productId ? productName(productId) : null;
  return name ? `${name}: ${err.message}` : err.message;
}

const productName = (id) => products.get(id)?.name ?? `product ${shortId(id)}`;

// ------------------------------------------------------------ account --

function showSignIn() {
  $("#sign-in").hidden = false;
  renderAccount();
}

function renderAccount() {
  const account = $("#account");
  const c = claims();
  if (token() && c && !expired(c)) {
    replace(
      account,
      h("span", { text: `Signed in as ${c.sub}` }),
      " ",
      h("button", { type: "button", class: "link", text: "Sign out", onclick: signOut }),
    );
    if (!c.roles.includes("customer")) notify("This token is not a customer's: it cannot place orders.");
  } else {
    replace(account, h("span", { class: "muted", text: token() ? "Your token has expired." : "Not signed in" }));
    $("#sign-in").hidden = false;
  }
  renderCheckout();
}

function signOut() {
  forget();
  stash.remove(SHOWN);
  following?.abort();
  $("#order-panel").hidden = true;
  $("#orders-panel").hidden = true;
  renderAccount();
}

// ----------------------------------------------------------- products --

function stockText(p) {
  if (!p.active) return "Not for sale";
  if (p.stock > 0) return `${count(p.stock)} left`;
  return "Sold out";
}

function stockNote(p) {
  if (!p.active || p.stock > 0) return "";
  const reserved = p.reserved ?? 0;
  if (reserved <= 0) return "";
  const when = p.next_release_at ? `, may come back at ${clock(p.next_release_at)}` : ", may come back";
  return `${count(reserved)} in other carts${when}`;
}

/** Whether a new order for the product can be taken in now. */
const buyable = (p) => p.active && (p.stock > 0 || (p.held ?? 0) > 0);

function productCard(p) {
  const qtyId = `qty-${p.id}`;
  const name = h("h3", { class: "name" });
  const price = h("p", { class: "price" });
  const stock = h("p", { class: "stock" });
  const note = h("p", { class: "note small" });
  const qty = h("input", { id: qtyId, type: "number", min: 1, max: LINE_MAX, value: 1, inputmode: "numeric" });
  const label = h("label", { for: qtyId, class: "visually-hidden" });
  const add = h("button", { type: "button", text: "Add to cart" });
  add.addEventListener("click", () => addToCart(p.id, Number(qty.value)));
  const el = h("li", { class: "card", "data-product-id": p.id }, name, price, stock, note, h("div", { class: "row" }, label, qty, add));
  return {
    el,
    update(product) {
      setText(name, product.name);
      setText(price, money(product.price_cents));
      setText(stock, stockText(product));
      setText(note, stockNote(product));
      setText(label, `Quantity of ${product.name}`);
      add.setAttribute("aria-label", `Add to cart: ${product.name}`);
      el.classList.toggle("sold-out", product.active && product.stock === 0);
      el.dataset.stock = String(product.stock);
      add.disabled = !buyable(product);
      if (product.max_per_customer) qty.max = String(Math.min(LINE_MAX, product.max_per_customer));
    },
  };
}

function renderProducts() {
  const list = [...products.values()].sort((a, b) => a.sku.localeCompare(b.sku));
  syncList($("#products"), list, (p) => p.id, productCard);
  renderCart();
}

/** Applies a stock event to the product it names. */
function applyStock(event) {
  const known = products.get(event.product_id);
  if (!known) {
    // A product created after the page loaded.
    call("GET", `/v1/products/${event.product_id}`)
      .then(({ data }) => {
        products.set(data.id, data);
        renderProducts();
      })
      .catch(() => {});
    return;
  }
  products.set(event.product_id, {
    ...known,
    stock: event.stock,
    reserved: event.reserved ?? known.reserved ?? 0,
    held: event.held ?? 0,
    next_release_at: event.next_release_at ?? null,
  });
}

/**
 * Live stock: the stream of every product's stock changes is opened first,
 * then the list is read, then the events that arrived meanwhile are applied
 * in order, so no change falls between the list and the stream. The same
 * again after every reconnect (a stream that fell behind is ended by the
 * server, and what it missed is only in the list).
 */
function watchStock() {
  let early = null; // events buffered while the list is read; null when live
  let first = true;
  let loaded;
  const ready = new Promise((resolve) => (loaded = resolve));

  async function resync() {
    early = [];
    try {
      for (const p of await all("/v1/products?limit=100", { max: 1000 })) products.set(p.id, p);
    } catch (err) {
      notify(describe(err));
    }
    const buffered = early;
    early = null;
    productsLoaded = true;
    for (const data of buffered) applyStock(data);
    if (products.size === 0) setText($("#stock-state"), "No products yet.");
    renderProducts();
    loaded();
  }

  follow(
    "/v1/products/events",
    (event) => {
      if (event.event !== "stock") return;
      const data = JSON.parse(event.data);
      if (early) {
        early.push(data);
        return;
      }
      applyStock(data);
      renderProducts();
    },
    {
      onState(state) {
        setText($("#stock-state"), state === "open" ? "Stock is live." : "Reconnecting to live stock…");
        if (state === "open") {
          first = false;
          resync();
        }
      },
    },
  ).catch((err) => notify(describe(err)));
  // Without the stream (after 3 s), the list is read anyway: the page still
  // works, with the stock as it was.
  setTimeout(() => {
    if (first && !productsLoaded) resync();
  }, 3000);
  return ready;
}

// --------------------------------------------------------------- cart --

const cart = () => stash.get(CART) ?? [];
const checkoutOpen = () => stash.get(CHECKOUT) !== null;

function addToCart(productId, quantity) {
  if (checkoutOpen()) return;
  const qty = Number.isInteger(quantity) && quantity > 0 ? Math.min(quantity, LINE_MAX) : 1;
  const lines = cart();
  const line = lines.find((l) => l.product_id === productId);
  if (line) line.quantity = Math.min(LINE_MAX, line.quantity + qty);
  else lines.push({ product_id: productId, quantity: qty });
  stash.set(CART, lines);
  renderCart();
  setText($("#checkout-state"), `${productName(productId)} added to the cart.`);
}

function setQuantity(productId, quantity) {
  if (checkoutOpen()) return;
  const lines = cart()
    .map((l) => (l.product_id === productId ? { ...l, quantity } : l))
    .filter((l) => l.quantity > 0);
  stash.set(CART, lines);
  renderCart();
}

function cartLine(line) {
  const qtyId = `cart-qty-${line.product_id}`;
  const name = h("span", { class: "name" });
  const label = h("label", { for: qtyId, class: "visually-hidden" });
  const qty = h("input", { id: qtyId, type: "number", min: 0, max: LINE_MAX, inputmode: "numeric" });
  qty.addEventListener("change", () => {
    const n = Math.floor(Number(qty.value));
    setQuantity(line.product_id, Number.isFinite(n) ? Math.max(0, Math.min(n, LINE_MAX)) : 0);
  });
  const amount = h("span", { class: "amount" });
  const remove = h("button", { type: "button", class: "link", text: "Remove" });
  remove.addEventListener("click", () => setQuantity(line.product_id, 0));
  const el = h("li", { "data-product-id": line.product_id }, name, label, qty, amount, remove);
  return {
    el,
    update(l) {
      const p = products.get(l.product_id);
      setText(name, productName(l.product_id));
      setText(label, `Quantity of ${productName(l.product_id)} in the cart`);
      remove.setAttribute("aria-label", `Remove ${productName(l.product_id)} from the cart`);
      if (document.activeElement !== qty) qty.value = String(l.quantity);
      setText(amount, p ? money(p.price_cents * l.quantity) : "");
      const locked = checkoutOpen();
      qty.disabled = locked;
      remove.disabled = locked;
    },
  };
}

function renderCart() {
  const lines = cart();
  syncList($("#cart"), lines, (l) => l.product_id, cartLine);
  $("#cart-empty").hidden = lines.length > 0;
  const total = lines.reduce((sum, l) => sum + (products.get(l.product_id)?.price_cents ?? 0) * l.quantity, 0);
  const totalEl = $("#cart-total");
  totalEl.hidden = lines.length === 0;
  setText(totalEl, `Total ${money(total)}`);
  renderCheckout();
}

function renderCheckout() {
  const button = $("#checkout");
  const open = checkoutOpen();
  button.disabled = busy || open || cart().length === 0 || !token();
  setText(button, busy || open ? "Checking out…" : "Check out");
  $("#hold").disabled = busy || open;
}

// ----------------------------------------------------------- checkout --

/** Starts a checkout of the cart, or goes on with the one not answered yet. */
async function checkout() {
  if (busy) return;
  if (!token()) {
    showSignIn();
    notify("Sign in with a customer token to check out.");
    return;
  }
  let record = stash.get(CHECKOUT);
  if (!record) {
    const lines = cart().map((l) => ({ product_id: l.product_id, quantity: l.quantity }));
    if (lines.length === 0) return;
    const body = { lines };
    const hold = $("#hold").value;
    if (hold) body.reserve_secs = Number(hold);
    // Kept before it is sent: whatever happens next, a retry sends the same.
    record = { key: newKey(), body, order_id: null };
    stash.set(CHECKOUT, record);
  }
  await submit(record);
}

async function submit(record) {
  busy = true;
  renderCart();
  clearNotice();
  const state = $("#checkout-state");
  setText(state, "Sending your order…");
  try {
    const { status, data } = await call("POST", "/v1/orders", {
      body: record.body,
      key: record.key,
      onWait: (secs, why) => setText(state, `${why} Trying again in ${secs} s (the same checkout, never twice).`),
    });
    record.order_id = data.id;
    stash.set(CHECKOUT, record);
    setText(state, status === 200 ? "This checkout was already sent: here is its order." : "Order accepted: it is decided in turn.");
    showOrder(data);
  } catch (err) {
    if (err instanceof Problem && err.status >= 400 && err.status < 500) {
      // Refused: nothing was queued. The checkout is over; the cart stays.
      stash.remove(CHECKOUT);
      setText(state, "");
    } else {
      setText(state, "Not sent yet: “Try again” sends the same checkout.");
      showRetry(record);
    }
    notify(describe(err, record.body.lines));
  } finally {
    busy = false;
    renderCart();
  }
}

function showRetry(record) {
  const state = $("#checkout-state");
  state.append(" ", h("button", { type: "button", class: "link", text: "Try again", onclick: () => submit(record) }));
}

/** What a decision means for the cart and the checkout that made it. */
function settle(order) {
  const record = stash.get(CHECKOUT);
  if (record && record.order_id === order.id && order.status !== "pending") {
    stash.remove(CHECKOUT);
    if (order.status === "reserved" || order.status === "confirmed") stash.set(CART, []);
    setText($("#checkout-state"), "");
    renderCart();
  }
  if (order.status !== "pending") loadOrders();
}

// -------------------------------------------------------------- order --

function lineName(line) {
  return productName(line.product_id);
}

function renderOrder(order) {
  const panel = $("#order-panel");
  panel.hidden = false;
  panel.dataset.orderId = order.id;
  panel.dataset.status = order.status;
  const [title, words] = STATUS[order.status] ?? [order.status, ""];
  let why = words;
  if (order.status === "rejected") {
    const failed = order.rejected_product_id ?? order.lines?.[0]?.product_id;
    const reason = REASONS[order.reason];
    why = reason ? reason(failed ? productName(failed) : "A product") : `Refused: ${order.reason}.`;
  }
  const lines = (order.lines ?? []).map((l) =>
    h(
      "li",
      {},
      h("span", { text: `${lineName(l)} × ${l.quantity}` }),
      l.unit_price_cents !== null && l.unit_price_cents !== undefined
        ? h("span", { class: "amount", text: money(l.unit_price_cents * l.quantity) })
        : null,
    ),
  );
  const parts = [
    h("p", { class: `status status-${order.status}` }, h("strong", { class: "status-name", text: title }), why ? ` ${why}` : ""),
    h("ul", { class: "lines" }, lines),
  ];
  if (order.total_cents !== null && order.total_cents !== undefined) {
    parts.push(h("p", { class: "total", text: `Total ${money(order.total_cents)}` }));
  }
  if (order.status === "reserved" && order.reserved_until) {
    parts.push(
      h(
        "p",
        { class: "countdown" },
        "Time left to pay: ",
        h("time", { datetime: order.reserved_until, "data-until": order.reserved_until, text: remaining(order.reserved_until) }),
        ` (until ${clock(order.reserved_until, true)})`,
      ),
    );
  }
  const actions = [];
  if (order.status === "reserved") {
    actions.push(h("button", { type: "button", class: "primary", text: "Pay", onclick: () => act(order, "confirm") }));
  }
  if (order.status === "reserved" || order.status === "pending") {
    actions.push(h("button", { type: "button", text: "Cancel order", onclick: () => act(order, "cancel") }));
  }
  if (actions.length) parts.push(h("div", { class: "row actions" }, actions));
  parts.push(h("p", { class: "muted small", title: order.id, text: `Order ${shortId(order.id)} · placed ${clock(order.created_at, true)}` }));
  replace($("#order"), parts);
}

/** Shows an order and follows its decision live until it is final. */
function showOrder(order) {
  following?.abort();
  stash.set(SHOWN, order.id);
  renderOrder(order);
  settle(order);
  if (FINAL.has(order.status)) return;
  const controller = new AbortController();
  following = controller;
  let last = order;
  follow(
    `/v1/orders/${order.id}/events`,
    (event) => {
      if (event.event !== "order" || controller.signal.aborted) return undefined;
      last = JSON.parse(event.data);
      renderOrder(last);
      settle(last);
      return FINAL.has(last.status) ? false : undefined;
    },
    { signal: controller.signal, done: () => FINAL.has(last.status) },
  ).catch((err) => notify(describe(err)));
}

/** Pay (confirm) or cancel; both are safe to send again. */
async function act(order, action) {
  clearNotice();
  const buttons = $("#order").querySelectorAll("button");
  buttons.forEach((b) => (b.disabled = true));
  try {
    const { data } = await call("POST", `/v1/orders/${order.id}/${action}`, {
      retry: true,
      onWait: (secs, why) => notify(`${why} Trying again in ${secs} s.`),
    });
    clearNotice();
    showOrder(data);
  } catch (err) {
    notify(describe(err));
    buttons.forEach((b) => (b.disabled = false));
    // The order moved on (expired, say): show where it is now.
    if (err instanceof Problem && err.status === 409) {
      call("GET", `/v1/orders/${order.id}`).then(({ data }) => showOrder(data)).catch(() => {});
    }
  }
}

// ------------------------------------------------------------- orders --

function orderRow(order) {
  const text = h("span");
  const show = h("button", { type: "button", class: "link", text: "Show" });
  const el = h("li", { "data-order-id": order.id }, text, " ", show);
  let current = order;
  show.addEventListener("click", () => showOrder(current));
  return {
    el,
    update(o) {
      current = o;
      const items = (o.lines ?? []).reduce((n, l) => n + l.quantity, 0);
      const total = o.total_cents !== null && o.total_cents !== undefined ? ` · ${money(o.total_cents)}` : "";
      setText(text, `${clock(o.created_at)} · ${STATUS[o.status]?.[0] ?? o.status} · ${items} item${items === 1 ? "" : "s"}${total}`);
      show.setAttribute("aria-label", `Show order ${shortId(o.id)}`);
    },
  };
}

let ordersLoading = null;
function loadOrders() {
  if (!token() || ordersLoading) return;
  ordersLoading = call("GET", "/v1/orders?limit=10")
    .then(({ data }) => {
      $("#orders-panel").hidden = data.items.length === 0;
      syncList($("#orders"), data.items, (o) => o.id, orderRow);
    })
    .catch((err) => {
      if (err instanceof Problem && err.status === 401) notify(describe(err));
    })
    .finally(() => (ordersLoading = null));
}

// -------------------------------------------------------------- start --

/** Picks up where a reload left off: a checkout not answered, an order on show. */
async function resume() {
  if (!token()) return;
  const record = stash.get(CHECKOUT);
  if (record && !record.order_id) {
    await submit(record);
    return;
  }
  const id = record?.order_id ?? stash.get(SHOWN);
  if (id) {
    try {
      const { data } = await call("GET", `/v1/orders/${id}`);
      showOrder(data);
    } catch (err) {
      if (err instanceof Problem && err.status === 404) {
        stash.remove(SHOWN);
        stash.remove(CHECKOUT);
        renderCart();
      } else notify(describe(err));
    }
  }
}

function start() {
  takeFromFragment();
  onSignIn(() => {
    renderAccount();
    loadOrders();
  });
  $("#checkout").addEventListener("click", checkout);
  $("#sign-in").hidden = !!token();
  renderAccount();
  renderCart();
  // Countdowns tick here, once a second, for whatever is on show.
  setInterval(() => {
    for (const el of document.querySelectorAll("[data-until]")) setText(el, remaining(el.dataset.until));
  }, 1000);
  watchStock().then(() => {
    renderCart();
    resume();
    loadOrders();
  });
}

start();
