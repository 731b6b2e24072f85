// Server-sent events read over `fetch`, because `EventSource` cannot send an
// `Authorization` header (an order's stream needs the buyer's token).
//
// `follow` reads one stream, calls `onEvent` for each event, and reconnects
// when the connection drops (sending `Last-Event-ID`, waiting out `429` and
// `503`), until `onEvent` returns `false`, `done()` says a stream that ended
// has nothing more to say, or the signal aborts.

import { Problem, headers, readProblem, retryAfter, sleep } from "./api.js";

/** Splits a chunked text stream into SSE events. */
export class Parser {
  constructor() {
    this.buffer = "";
    this.reset();
  }

  reset() {
    this.event = "message";
    this.data = [];
  }

  /** Feeds text; returns the events completed by it. */
  push(text) {
    this.buffer += text;
    const events = [];
    let newline;
    while ((newline = this.buffer.indexOf("\n")) >= 0) {
      let line = this.buffer.slice(0, newline);
      this.buffer = this.buffer.slice(newline + 1);
      if (line.endsWith("\r")) line = line.slice(0, -1);
      if (line === "") {
        if (this.data.length > 0) {
          events.push({ event: this.event, data: this.data.join("\n"), id: this.id ?? null });
        }
        this.reset();
        continue;
      }
      if (line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? "" : line.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "event") this.event = value;
      else if (field === "data") this.data.push(value);
      else if (field === "id") this.id = value;
    }
    return events;
  }
}

/**
 * Follows the stream at `path`. Options: `signal`, `done()` (asked when the
 * server ends the stream: true stops, false reconnects), `onState(state)`
 * with "open" or "reconnecting". A 4xx other than 429 throws a `Problem`.
 */
export async function follow(path, onEvent, { signal, done = () => false, onState } = {}) {
  let lastId = null;
  let failures = 0;
  while (!signal?.aborted) {
    try {
      const extra = { Accept: "text/event-stream" };
      if (lastId !== null) extra["Last-Event-ID"] = lastId;
      const response = await fetch(path, { headers: headers(extra), signal, cache: "no-store" });
      if (response.status === 429 || response.status === 503) {
        await readProblem(response);
        onState?.("reconnecting");
        await sleep(retryAfter(response) * 1000, signal);
        continue;
      }
      if (!response.ok) throw new Problem(response.status, await readProblem(response));
      onState?.("open");
      failures = 0;
      const parser = new Parser();
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      for (;;) {
        const { value, done: ended } = await reader.read();
        if (ended) break;
        for (const event of parser.push(value)) {
          if (event.id !== null) lastId = event.id;
          if (onEvent(event) === false) {
            await reader.cancel().catch(() => {});
            return;
          }
        }
      }
      if (done()) return;
    } catch (err) {
      if (signal?.aborted) return;
      if (err instanceof Problem) throw err;
    }
    failures += 1;
    onState?.("reconnecting");
    await sleep(Math.min(10, 2 ** Math.min(failures, 4) / 2) * 1000, signal).catch(() => {});
  }
}
