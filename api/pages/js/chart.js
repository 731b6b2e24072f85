// A small line chart in SVG, drawn from numbers only (no library needed for
// two series of a few hundred points). Colours are told apart by a dash too.

const NS = "http://www.w3.org/2000/svg";
const HEIGHT = 180;
const LEFT = 48;
const RIGHT = 8;
const TOP = 10;
const BOTTOM = 24;

function svg(tag, attrs = {}, text) {
  const el = document.createElementNS(NS, tag);
  for (const [key, value] of Object.entries(attrs)) el.setAttribute(key, String(value));
  if (text !== undefined) el.textContent = text;
  return el;
}

/** A "nice" upper bound for the axis: 1, 2 or 5 times a power of ten. */
export function niceMax(value) {
  if (value <= 0) return 10;
  const power = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 5, 10]) if (step * power >= value) return step * power;
  return 10 * power;
}

/**
 * Draws `series` ([{key, label, className}]) of `points` ([{at, ...}], one
 * per interval, oldest first) into `container`, replacing what was there.
 * `summary` is the chart's text alternative.
 */
export function lineChart(container, points, series, summary) {
  // One unit of the drawing is one CSS pixel of the container, so the
  // labels keep their size at any width (redrawn on every refresh).
  const WIDTH = Math.max(240, Math.round(container.clientWidth || 600));
  const max = niceMax(Math.max(0, ...points.flatMap((p) => series.map((s) => p[s.key] ?? 0))));
  const plotWidth = WIDTH - LEFT - RIGHT;
  const plotHeight = HEIGHT - TOP - BOTTOM;
  const x = (i) => LEFT + (points.length > 1 ? (i * plotWidth) / (points.length - 1) : 0);
  const y = (v) => TOP + plotHeight - (v / max) * plotHeight;

  const root = svg("svg", { viewBox: `0 0 ${WIDTH} ${HEIGHT}`, width: WIDTH, height: HEIGHT, role: "img", class: "line-chart" });
  root.append(svg("title", {}, summary));
  for (const fraction of [0, 0.5, 1]) {
    const value = max * fraction;
    root.append(svg("line", { x1: LEFT, x2: WIDTH - RIGHT, y1: y(value), y2: y(value), class: "grid" }));
    root.append(svg("text", { x: LEFT - 6, y: y(value) + 4, class: "axis", "text-anchor": "end" }, Intl.NumberFormat().format(value)));
  }
  const span = points.length;
  root.append(svg("text", { x: LEFT, y: HEIGHT - 6, class: "axis" }, span >= 120 ? `−${Math.round(span / 60)} min` : `−${span} s`));
  root.append(svg("text", { x: WIDTH - RIGHT, y: HEIGHT - 6, class: "axis", "text-anchor": "end" }, "now"));
  for (const s of series) {
    const coords = points.map((p, i) => `${x(i).toFixed(1)},${y(p[s.key] ?? 0).toFixed(1)}`).join(" ");
    root.append(svg("polyline", { points: coords, class: `series ${s.className}` }));
  }
  container.replaceChildren(root);
}
