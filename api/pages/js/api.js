// Calls to the checkline HTTP API, as any client makes them.
//
// Problems (RFC 9457 documents) become `Problem` errors carrying the
// server's `detail`, which the pages show in words. `429` and `503` are
// waited out for their `Retry-After` and the same request is sent again;
// a checkout sends its `Idempotency-Key` again with it, so however often it
// is retried it is one order.

import { token } from "./session.js";

/** An error answered by the API (or the network: status 0). */
export class Problem extends Error {
  constructor(status, doc = {}) {
    super(doc.detail || doc.title || `The server answered ${status}.`);
    this.status = status;
    this.code = doc.code || null;
    this.doc = doc;
  }
}

/** Resolves after `ms`, or rejects when `signal` aborts first. */
export function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener(
      "abort",
      () => {
        clearTimeout(timer);
        reject(signal.reason);
      },
      { once: true },
    );
  });
}

/** Seconds to wait from a `Retry-After` header (seconds or a date), 1–60. */
export function retryAfter(response) {
  const value = response.headers.get("Retry-After");
  let secs = Number(value);
  if (value && !Number.isFinite(secs)) secs = (Date.parse(value) - Date.now()) / 1000;
  if (!Number.isFinite(secs) || secs <= 0) secs = 1;
  return Math.min(60, Math.max(1, Math.ceil(secs)));
}

/** The problem document of a failed response (a bare one if it is not JSON). */
export async function readProblem(response) {
  try {
    const doc = await response.json();
    if (doc && typeof doc === "object") return doc;
  } catch {
    // Not a problem document (a proxy's page, say): described by the status.
  }
  return { status: response.status, title: response.statusText };
}

/** Request headers: JSON, the bearer token if there is one. */
export function headers(extra = {}) {
  const result = { Accept: "application/json", ...extra };
  const value = token();
  if (value) result.Authorization = `Bearer ${value}`;
  return result;
}

/**
 * Sends a request and returns `{status, data, headers}` for a 2xx.
 *
 * Options: `body` (sent as JSON), `key` (the `Idempotency-Key`), `signal`,
 * `onWait(seconds, why)` (told before each wait, to show it), `retry`
 * (whether a request that may not have arrived can be sent again: true for
 * reads and for requests with a key, or that are idempotent by nature,
 * such as confirm and cancel).
 */
export async function call(method, path, options = {}) {
  const { body, key, signal, onWait } = options;
  const retry = options.retry ?? (method === "GET" || key !== undefined);
  const extra = {};
  if (key !== undefined) extra["Idempotency-Key"] = key;
  if (body !== undefined) extra["Content-Type"] = "application/json";
  const init = {
    method,
    headers: headers(extra),
    body: body === undefined ? undefined : JSON.stringify(body),
    signal,
    cache: "no-store",
  };
  for (let attempt = 1; ; attempt += 1) {
    let response;
    try {
      response = await fetch(path, init);
    } catch (err) {
      if (signal?.aborted) throw err;
      if (!retry || attempt >= 8) {
        throw new Problem(0, { detail: "The server cannot be reached. Check the connection and try again." });
      }
      const wait = Math.min(8, 2 ** (attempt - 1));
      onWait?.(wait, "The server cannot be reached.");
      await sleep(wait * 1000, signal);
      continue;
    }
    // Refused before any work was done: the same request may be sent again.
    if ((response.status === 429 || response.status === 503) && attempt < 30) {
      const doc = await readProblem(response);
      const wait = retryAfter(response);
      onWait?.(wait, doc.detail || doc.title || "The server is busy.");
      await sleep(wait * 1000, signal);
      continue;
    }
    if (!response.ok) throw new Problem(response.status, await readProblem(response));
    const text = await response.text();
    return { status: response.status, data: text ? JSON.parse(text) : null, headers: response.headers };
  }
}

/** Every item of a cursor-paged list, up to `max` items. */
export async function all(path, { max = 1000, signal } = {}) {
  const items = [];
  let cursor = null;
  do {
    const separator = path.includes("?") ? "&" : "?";
    const url = cursor ? `${path}${separator}cursor=${encodeURIComponent(cursor)}` : path;
    const { data } = await call("GET", url, { signal });
    items.push(...data.items);
    cursor = data.next_cursor;
  } while (cursor && items.length < max);
  return items;
}

/** A fresh idempotency key. */
export function newKey() {
  if (crypto.randomUUID) return crypto.randomUUID();
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}
