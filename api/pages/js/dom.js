// Small DOM helpers shared by both pages.
//
// Everything shown comes from the API, and some of it (a product's name, a
// dead letter's payload) is whatever someone typed: it is always set as
// text (`textContent`, text nodes), never parsed as HTML.

/** Builds an element: `h("li", {class: "x", text: name}, child, ...)`. */
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "text") el.textContent = String(value);
    else if (key.startsWith("on") && typeof value === "function") {
      el.addEventListener(key.slice(2), value);
    } else el.setAttribute(key, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

/** Appends children: nodes as they are, strings and numbers as text. */
export function append(el, children) {
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replaces an element's children. */
export function replace(el, ...children) {
  el.replaceChildren();
  append(el, children);
}

export const $ = (selector, root = document) => root.querySelector(selector);

const currency = new Intl.NumberFormat(undefined, { style: "currency", currency: "USD" });
const integer = new Intl.NumberFormat();

/** Integer cents as money. */
export const money = (cents) => currency.format(Number(cents) / 100);

/** A count, grouped for reading. */
export const count = (n) => integer.format(Number(n));

/** An RFC 3339 time as the reader's local clock time. */
export function clock(iso, seconds = false) {
  const options = { hour: "2-digit", minute: "2-digit" };
  if (seconds) options.second = "2-digit";
  return new Date(iso).toLocaleTimeString([], options);
}

/** Seconds until `iso` as m:ss (0:00 once passed). */
export function remaining(iso, now = Date.now()) {
  const left = Math.max(0, Math.ceil((Date.parse(iso) - now) / 1000));
  return `${Math.floor(left / 60)}:${String(left % 60).padStart(2, "0")}`;
}

/** "12 s ago", "3 min ago" for an RFC 3339 time. */
export function ago(iso, now = Date.now()) {
  if (!iso) return "never";
  const secs = Math.max(0, Math.round((now - Date.parse(iso)) / 1000));
  if (secs < 90) return `${secs} s ago`;
  if (secs < 5400) return `${Math.round(secs / 60)} min ago`;
  return `${Math.round(secs / 3600)} h ago`;
}

/** A short form of a UUID, for people (the full id stays in a title). */
export const shortId = (id) => String(id).slice(0, 8);

/**
 * Keeps a list element's children in step with `items`, keyed by `key`:
 * rows are created once and updated in place, so focus, typed input and
 * screen-reader position survive every refresh. `make(item)` returns
 * `{el, update(item)}`.
 */
export function syncList(container, items, key, make) {
  const rows = container._rows || (container._rows = new Map());
  const wanted = new Set();
  let previous = null;
  for (const item of items) {
    const id = key(item);
    wanted.add(id);
    let row = rows.get(id);
    if (!row) {
      row = make(item);
      rows.set(id, row);
    }
    row.update(item);
    const expected = previous ? previous.nextSibling : container.firstChild;
    if (expected !== row.el) container.insertBefore(row.el, expected);
    previous = row.el;
  }
  for (const [id, row] of rows) {
    if (!wanted.has(id)) {
      row.el.remove();
      rows.delete(id);
    }
  }
}

/** Sets an element's text only when it changed (no needless announcements). */
export function setText(el, text) {
  const value = String(text);
  if (el.textContent !== value) el.textContent = value;
}
