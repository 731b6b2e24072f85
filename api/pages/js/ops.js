// The operations console: orders per second, the stock audit, workers and
// partitions, dead letters (with replay), products (create, restock,
// deactivate). Everything comes from the admin endpoints of the HTTP API,
// polled; a poll never overlaps the previous one of the same kind.

import { all, call, newKey, Problem } from "./api.js";
import { $, ago, clock, count, h, replace, setText, shortId, syncList } from "./dom.js";
import { lineChart } from "./chart.js";
import { clearNotice, notify, onSignIn } from "./page.js";
import { claims, expired, forget, stash, takeFromFragment, token } from "./session.js";

const ACTIVITY_SECONDS = 300;
const RESTOCK = "checkline.restock."; // + product id: {key, quantity} until answered

// --------------------------------------------------- problems in words --

function describe(err) {
  if (!(err instanceof Problem)) return "Something went wrong. Please try again.";
  if (err.status === 401) {
    $("#sign-in").hidden = false;
    return "The token was refused (expired or not valid): paste a new admin token.";
  }
  if (err.status === 403) return "This token is not an admin's: the console needs the admin role.";
  return err.message;
}

// ------------------------------------------------------------ account --

function renderAccount() {
  const c = claims();
  if (token() && c && !expired(c)) {
    replace(
      $("#account"),
      h("span", { text: `Signed in as ${c.sub}` }),
      " ",
      h("button", { type: "button", class: "link", text: "Sign out", onclick: () => { forget(); renderAccount(); } }),
    );
    $("#sign-in").hidden = true;
    if (!c.roles.includes("admin")) notify("This token is not an admin's: the console needs the admin role.");
  } else {
    replace($("#account"), h("span", { class: "muted", text: token() ? "The token has expired." : "Not signed in" }));
    $("#sign-in").hidden = false;
  }
}

// -------------------------------------------------------------- polls --

/** Runs `task` now and every `ms`, never two at once, only while signed in. */
function every(ms, task) {
  let running = false;
  const run = async () => {
    if (running || !token() || document.hidden) return;
    running = true;
    try {
      await task();
    } catch (err) {
      notify(describe(err));
    } finally {
      running = false;
    }
  };
  run();
  setInterval(run, ms);
  return run;
}

// ----------------------------------------------------------- activity --

async function pollActivity() {
  const { data } = await call("GET", `/v1/admin/activity?seconds=${ACTIVITY_SECONDS}`);
  const points = data.points;
  const last = points.slice(-5);
  const rate = (key) => Math.round(last.reduce((n, p) => n + p[key], 0) / Math.max(1, last.length));
  const peak = (key) => Math.max(0, ...points.map((p) => p[key]));
  const accepted = rate("accepted");
  const decided = rate("decided");
  replace(
    $("#rates"),
    h("span", { class: "rate accepted" }, h("strong", { text: count(accepted) }), " accepted/s"),
    h("span", { class: "rate decided" }, h("strong", { text: count(decided) }), " decided/s"),
    h("span", { class: "muted small", text: `(last 5 s; peak ${count(peak("accepted"))} and ${count(peak("decided"))})` }),
  );
  lineChart(
    $("#chart"),
    points,
    [
      { key: "accepted", label: "accepted", className: "accepted" },
      { key: "decided", label: "decided", className: "decided" },
    ],
    `Orders per second over the last ${ACTIVITY_SECONDS / 60} minutes: now ${accepted} accepted and ${decided} decided per second; peaks ${peak("accepted")} and ${peak("decided")}.`,
  );
}

// -------------------------------------------------------------- audit --

async function pollAudit() {
  const { data } = await call("GET", "/v1/admin/audit");
  const audit = $("#audit");
  const broken = data.products.filter((p) => p.state === "unbalanced");
  const settling = data.products.filter((p) => p.state === "settling");
  audit.className = `audit ${data.holds ? "ok" : "bad"}`;
  audit.dataset.holds = String(data.holds);
  if (!data.holds) {
    setText(audit, `Invariant 1 does not hold for ${broken.length} product${broken.length === 1 ? "" : "s"}.`);
  } else if (settling.length) {
    setText(audit, `Holds. ${settling.length} product${settling.length === 1 ? " has" : "s have"} cart lines settling.`);
  } else {
    setText(audit, `Holds for all ${count(data.products.length)} products: stock + units taken = initial stock + restocks.`);
  }
  syncList($("#audit-details"), broken, (p) => p.id, (p) => {
    const el = h("li");
    return {
      el,
      update(x) {
        const expected = x.initial_stock + x.restocked;
        const found = x.stock + x.held + x.taken_units + x.returning_units;
        setText(el, `${x.sku}: expected ${count(expected)} units, found ${count(found)} (stock ${x.stock}, held ${x.held}, taken ${x.taken_units}, returning ${x.returning_units})`);
      },
    };
  });
}

// -------------------------------------------------- workers, partitions --

async function pollStats() {
  const { data } = await call("GET", "/v1/admin/stats");
  stats = data;
  syncList($("#partitions tbody"), data.partitions, (p) => p.partition, (p) => {
    const cells = [h("th", { scope: "row", text: p.partition }), h("td", { class: "owner" }), h("td", { class: "num backlog" }), h("td", { class: "last" })];
    const el = h("tr", { "data-partition": p.partition }, cells);
    return {
      el,
      update(x) {
        setText(cells[1], x.owner ?? "none");
        cells[1].classList.toggle("bad", !x.owner);
        setText(cells[2], count(x.pending));
        setText(cells[3], x.last_decided_at ? `${clock(x.last_decided_at, true)} (${ago(x.last_decided_at)})` : "never");
        el.dataset.owner = x.owner ?? "";
      },
    };
  });
  const owners = new Map();
  for (const p of data.partitions) {
    if (!p.owner) continue;
    if (!owners.has(p.owner)) owners.set(p.owner, []);
    owners.get(p.owner).push(p);
  }
  const workers = [...owners.entries()].sort(([a], [b]) => a.localeCompare(b)).map(([id, parts]) => ({ id, parts }));
  syncList($("#workers"), workers, (w) => w.id, () => {
    const el = h("li");
    return {
      el,
      update(w) {
        const backlog = w.parts.reduce((n, p) => n + p.pending, 0);
        setText(el, `${w.id}: ${w.parts.length} partition${w.parts.length === 1 ? "" : "s"} (${w.parts.map((p) => p.partition).join(", ")}), backlog ${count(backlog)}`);
        el.dataset.worker = w.id;
      },
    };
  });
  if (workers.length === 0) replace($("#workers"), h("li", { class: "bad", text: "No worker holds a partition." }));
  else $("#workers").querySelector(":scope > li:not([data-worker])")?.remove();
  const unowned = data.partitions.filter((p) => !p.owner).length;
  setText($("#unowned"), unowned ? `${unowned} partition${unowned === 1 ? "" : "s"} without an owner.` : "Every partition has an owner.");
  renderProducts();
}

// ------------------------------------------------------- dead letters --

async function pollDeadLetters() {
  const { data } = await call("GET", "/v1/admin/dead-letters?limit=50");
  setText(
    $("#dead-summary"),
    data.total === 0 ? "None: every queued message was processed." : `${count(data.total)} dead letter${data.total === 1 ? "" : "s"}${data.total > data.items.length ? `, the oldest ${data.items.length} shown` : ""}.`,
  );
  syncList($("#dead-letters tbody"), data.items, (d) => d.sequence, (d) => {
    const payload = h("code", { class: "payload" });
    const replay = h("button", { type: "button", text: "Replay" });
    replay.addEventListener("click", () => replayLetter(d.sequence, replay));
    const reason = h("td", { class: "reason" });
    const el = h(
      "tr",
      { "data-sequence": d.sequence },
      h("th", { scope: "row", text: d.sequence }),
      h("td", { text: clock(d.stored_at, true) }),
      h("td", { text: d.partition ?? "?" }),
      reason,
      h("td", {}, payload),
      h("td", {}, replay),
    );
    return {
      el,
      update(x) {
        setText(reason, x.reason);
        setText(payload, x.payload_bytes > x.payload.length ? `${x.payload}… (${count(x.payload_bytes)} bytes)` : x.payload);
        replay.setAttribute("aria-label", `Replay dead letter ${x.sequence}`);
      },
    };
  });
}

async function replayLetter(sequence, button) {
  button.disabled = true;
  try {
    const { data } = await call("POST", `/v1/admin/dead-letters/${sequence}/replay`, { retry: false });
    notify(`Dead letter ${sequence} was queued again on ${data.subject}.`);
  } catch (err) {
    notify(describe(err));
    button.disabled = false;
  }
  await refreshDeadLetters();
}

// ----------------------------------------------------------- products --

let catalog = [];
let stats = null;

async function loadProducts() {
  catalog = await all("/v1/products?limit=100", { max: 2000 });
  renderProducts();
}

function productRow(p) {
  const id = p.id;
  const cells = {
    sku: h("th", { scope: "row" }),
    name: h("td", { class: "name" }),
    stock: h("td", { class: "num stock" }),
    reserved: h("td", { class: "num" }),
    sold: h("td", { class: "num" }),
    state: h("td"),
  };
  const toggle = h("button", { type: "button", class: "link" });
  cells.state.append(h("span", { class: "state-text" }), " ", toggle);
  toggle.addEventListener("click", () => setActive(id, toggle.dataset.next === "true", toggle));
  const qtyId = `restock-${id}`;
  const label = h("label", { for: qtyId, class: "visually-hidden" });
  const qty = h("input", { id: qtyId, type: "number", min: 1, value: 10, inputmode: "numeric", class: "short" });
  const add = h("button", { type: "button", text: "Restock" });
  add.addEventListener("click", () => restock(id, Number(qty.value), add));
  const el = h(
    "tr",
    { "data-product-id": id },
    cells.sku, cells.name, cells.stock, cells.reserved, cells.sold, cells.state,
    h("td", {}, h("div", { class: "row" }, label, qty, add)),
  );
  return {
    el,
    update(x) {
      const s = stats?.products.find((q) => q.id === x.id);
      setText(cells.sku, x.sku);
      setText(cells.name, x.name);
      setText(cells.stock, count(s?.stock ?? x.stock));
      setText(cells.reserved, count(s?.reserved_units ?? x.reserved ?? 0));
      setText(cells.sold, s ? count(s.confirmed_units) : "");
      setText(cells.state.querySelector(".state-text"), x.active ? "on sale" : "off sale");
      setText(toggle, x.active ? "Deactivate" : "Activate");
      toggle.dataset.next = String(!x.active);
      toggle.setAttribute("aria-label", `${x.active ? "Deactivate" : "Activate"} ${x.sku}`);
      setText(label, `Units to add to ${x.sku}`);
      add.setAttribute("aria-label", `Restock ${x.sku}`);
    },
  };
}

function renderProducts() {
  const sorted = [...catalog].sort((a, b) => a.sku.localeCompare(b.sku));
  syncList($("#products tbody"), sorted, (p) => p.id, productRow);
}

async function setActive(id, active, button) {
  button.disabled = true;
  try {
    const { data } = await call("PATCH", `/v1/products/${id}`, { body: { active }, retry: true });
    catalog = catalog.map((p) => (p.id === id ? data : p));
    renderProducts();
  } catch (err) {
    notify(describe(err));
  } finally {
    button.disabled = false;
  }
}

/** A restock's key is kept until it is answered, so a retry adds once. */
async function restock(id, quantity, button) {
  if (!Number.isInteger(quantity) || quantity < 1) {
    notify("Restock: give a whole number of units, 1 or more.");
    return;
  }
  let pending = stash.get(RESTOCK + id);
  if (!pending || pending.quantity !== quantity) {
    pending = { key: newKey(), quantity };
    stash.set(RESTOCK + id, pending);
  }
  button.disabled = true;
  try {
    const { status, data } = await call("POST", `/v1/products/${id}/restock`, {
      body: { quantity },
      key: pending.key,
      onWait: (secs, why) => notify(`${why} Trying again in ${secs} s.`),
    });
    stash.remove(RESTOCK + id);
    const sku = catalog.find((p) => p.id === id)?.sku ?? shortId(id);
    notify(status === 200 ? `${sku}: ${count(quantity)} units added; stock is ${count(data.stock)}.` : `${sku}: the restock is queued and will be applied in turn.`);
    await Promise.all([loadProducts(), refreshStats()]);
  } catch (err) {
    if (err instanceof Problem && err.status >= 400 && err.status < 500) stash.remove(RESTOCK + id);
    notify(describe(err));
  } finally {
    button.disabled = false;
  }
}

async function createProduct(event) {
  event.preventDefault();
  const form = event.target;
  const value = (name) => form.elements[name].value.trim();
  const body = {
    sku: value("sku"),
    name: value("name"),
    price_cents: Number(value("price_cents")),
    stock: Number(value("stock")),
  };
  if (value("max_per_customer")) body.max_per_customer = Number(value("max_per_customer"));
  const submit = form.querySelector("button[type=submit]");
  submit.disabled = true;
  try {
    const { data } = await call("POST", "/v1/products", { body, retry: false });
    notify(`${data.sku} was created with ${count(data.stock)} units.`);
    form.reset();
    await Promise.all([loadProducts(), refreshStats()]);
  } catch (err) {
    notify(describe(err));
  } finally {
    submit.disabled = false;
  }
}

// -------------------------------------------------------------- start --

let refreshStats = async () => {};
let refreshDeadLetters = async () => {};

function start() {
  takeFromFragment();
  renderAccount();
  onSignIn(() => {
    renderAccount();
    for (const poll of [refreshStats, refreshDeadLetters, refreshActivity, refreshAudit, loadProducts]) poll();
  });
  $("#create-product").addEventListener("submit", createProduct);
  const refreshActivity = every(2000, pollActivity);
  const refreshAudit = every(5000, pollAudit);
  refreshStats = every(2000, pollStats);
  refreshDeadLetters = every(5000, pollDeadLetters);
  every(10000, loadProducts);
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden) for (const poll of [refreshStats, refreshActivity]) poll();
  });
}

start();
