// Candlesticks, triple-barrier levels and exits in plain SVG.  The server
// sends at most a few thousand points (bucketed by ClickHouse) and each bar's
// barrier levels (computed there by the label's code); zoom and pan fetch a
// new window.  A click on a bar draws its levels; "every bar" draws them all.
"use strict";
(function () {
  const NS = "http://www.w3.org/2000/svg";
  const box = document.getElementById("chart");
  const linesBox = document.getElementById("lines");
  const note = document.getElementById("chart-note");
  const every = document.getElementById("all-levels");
  const picked = document.getElementById("picked");
  let data = JSON.parse(document.getElementById("chart-data").textContent);
  const hint = picked ? picked.textContent : "";
  let selected = null;   // ts of the bar whose levels are drawn

  function el(name, attrs, parent) {
    const e = document.createElementNS(NS, name);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    if (parent) parent.appendChild(e);
    return e;
  }
  const utc = ms => new Date(ms).toISOString().replace("T", " ").replace(/\.000Z|Z/, " UTC");

  function draw() {
    box.replaceChildren();
    linesBox.replaceChildren();
    const c = data.candles;
    if (!c.length) { box.textContent = "No candles in this window."; return; }
    const W = Math.max(box.clientWidth, 320), H = 420, pad = 50;
    const svg = el("svg", {viewBox: `0 0 ${W} ${H}`, height: H, role: "img",
                           "aria-label": `${data.instrument} ${data.granularity} candlesticks`}, box);
    let lo = Infinity, hi = -Infinity;
    for (const [, , h, l] of c) { lo = Math.min(lo, l); hi = Math.max(hi, h); }
    const exits = [];
    const index = new Map(c.map((k, i) => [k[0], i]));
    for (const row of data.labels) {
      const [ts, label, barrier, bars, ret, flags] = row;
      const i = index.get(ts);
      if (i === undefined || label === null || bars === null || ret === null) continue;
      const price = c[i][4] * (1 + ret);
      exits.push({ts, i, j: i + bars, label, barrier, bars, flags, price});
      lo = Math.min(lo, price); hi = Math.max(hi, price);
    }
    const lv = data.levels ? data.levels.rows : [];
    const shown = lv.filter(r => r[1] !== null && ((every && every.checked) || r[0] === selected) && index.has(r[0]));
    for (const [, up, down] of shown) { lo = Math.min(lo, down); hi = Math.max(hi, up); }
    const span = (hi - lo) || 1;
    const step = (W - pad - 10) / c.length;
    const x = i => pad + (i + 0.5) * step;
    const y = p => 10 + (hi - p) / span * (H - 40);
    for (let t = 0; t <= 4; t++) {
      const p = lo + span * t / 4;
      el("line", {x1: pad, x2: W - 10, y1: y(p), y2: y(p), stroke: "#eee"}, svg);
      el("text", {x: 2, y: y(p) + 4, "font-size": 10, fill: "#5f6b76"}, svg).textContent = p.toPrecision(6);
    }
    el("text", {x: pad, y: H - 6, "font-size": 10, fill: "#5f6b76"}, svg).textContent = utc(c[0][0]);
    el("text", {x: W - 10, y: H - 6, "font-size": 10, fill: "#5f6b76", "text-anchor": "end"}, svg).textContent =
      utc(c[c.length - 1][0]);
    const bw = Math.max(step * 0.7, 1);
    c.forEach(([t, o, h, l, cl], i) => {
      const up = cl >= o, col = up ? "#2e7d32" : "#c62828";
      el("line", {x1: x(i), x2: x(i), y1: y(h), y2: y(l), stroke: col}, svg);
      el("rect", {x: x(i) - bw / 2, y: y(Math.max(o, cl)), width: bw, height: Math.max(Math.abs(y(o) - y(cl)), 1),
                  fill: up ? "#fff" : col, stroke: col, class: "candle", "data-ts": t}, svg);
    });
    const xAt = j => j < c.length ? x(j) : x(c.length - 1) + (j - c.length + 1) * step;
    for (const [ts, up, down, vts, sg] of shown) {
      const i = index.get(ts), j = i + data.levels.horizon, one = ts === selected;
      const g = el("g", {class: one ? "levels picked" : "levels", "data-ts": ts, "data-upper": up,
                         "data-lower": down, "data-vertical": vts === null ? "" : vts,
                         "data-sigma": sg}, svg);
      const x2 = one ? xAt(j) : x(i) + step / 2, x1 = one ? x(i) : x(i) - step / 2;
      el("line", {x1, x2, y1: y(up), y2: y(up), stroke: "#2e7d32", "stroke-dasharray": one ? "4 3" : ""}, g);
      el("line", {x1, x2, y1: y(down), y2: y(down), stroke: "#c62828", "stroke-dasharray": one ? "4 3" : ""}, g);
      if (one) el("line", {x1: x2, x2, y1: y(up), y2: y(down), stroke: "#5f6b76", "stroke-dasharray": "4 3"}, g);
      el("title", {}, g).textContent = `${utc(ts)}: upper ${up.toPrecision(6)}, lower ${down.toPrecision(6)}, ` +
        (vts === null ? "vertical barrier past the data" : `vertical barrier ${utc(vts)}`);
    }
    if (picked) {
      const r = lv.find(r => r[0] === selected);
      picked.textContent = !data.levels ? "" : selected === null ? hint :
        !r || r[1] === null ? `${utc(selected)}: no sigma yet, no barriers.` :
        `${utc(r[0])}: upper ${r[1].toPrecision(6)}, lower ${r[2].toPrecision(6)} ` +
        `(close × (1 + ${data.levels.pt} σ) and × (1 − ${data.levels.sl} σ), σ ${r[4] === null ? "?" : r[4].toPrecision(4)}), ` +
        (r[3] === null ? "vertical barrier past the data" : `vertical barrier ${utc(r[3])} (${data.levels.horizon} bars)`) +
        (data.levels.sided ? "; drawn for a long position" : "") + ".";
    }
    svg.addEventListener("click", ev => {
      if (!data.levels) return;
      const r = svg.getBoundingClientRect();
      const i = Math.round(((ev.clientX - r.left) * W / r.width - pad) / step - 0.5);
      if (i < 0 || i >= c.length) return;
      selected = c[i][0] === selected ? null : c[i][0];
      draw();
    });
    const colour = {1: "#2e7d32", "-1": "#c62828", 0: "#5f6b76"};
    for (const e of exits) {
      const g = el("g", {class: "exit", "data-ts": e.ts, "data-label": e.label, "data-barrier": e.barrier,
                         "data-exit-bars": e.bars, "data-flags": e.flags}, svg);
      const xe = xAt(e.j);
      const col = colour[e.label];
      el("line", {x1: x(e.i), y1: y(c[e.i][4]), x2: xe, y2: y(e.price), stroke: col, "stroke-opacity": 0.35}, g);
      const s = Math.max(Math.min(step, 6), 3);
      const shape = e.label > 0 ? `M${xe},${y(e.price) - s} l${s},${2 * s} l${-2 * s},0 z`
                  : e.label < 0 ? `M${xe},${y(e.price) + s} l${s},${-2 * s} l${-2 * s},0 z`
                  : `M${xe},${y(e.price) - s} l${s},${s} l${-s},${s} l${-s},${-s} z`;
      el("path", {d: shape, fill: col}, g);
      if (e.flags & 2) el("circle", {cx: xe, cy: y(e.price), r: s * 1.8, fill: "none", stroke: "#ef6c00"}, g);
      if (e.flags & 16) el("rect", {x: xe - s * 1.8, y: y(e.price) - s * 1.8, width: s * 3.6, height: s * 3.6,
                                    fill: "none", stroke: "#6a1b9a"}, g);
      el("title", {}, g).textContent = `${utc(e.ts)}: label ${e.label}, exit after ${e.bars} bars at ` +
        `${e.price.toPrecision(6)}${e.flags & 2 ? ", ambiguous" : ""}${e.flags & 16 ? ", resolved" : ""}`;
    }
    for (const [name, pts] of Object.entries(data.lines)) {
      const vals = pts.map(p => p[1]).filter(v => v !== null);
      if (!vals.length) continue;
      const a = Math.min(...vals), b = Math.max(...vals), h = 90;
      const s2 = el("svg", {viewBox: `0 0 ${W} ${h}`, height: h, class: "line", "data-name": name}, linesBox);
      const d = pts.map(([t, v]) => {
        const i = index.get(t);
        return (i === undefined || v === null) ? "" : `${x(i).toFixed(1)},${(5 + (b - v) / ((b - a) || 1) * (h - 20)).toFixed(1)}`;
      }).filter(Boolean).join(" ");
      el("polyline", {points: d, fill: "none", stroke: "#1565c0"}, s2);
      el("text", {x: 2, y: h - 4, "font-size": 10, fill: "#5f6b76"}, s2).textContent = `${name} (${a.toPrecision(4)} … ${b.toPrecision(4)})`;
    }
  }

  async function load(from, to) {
    const q = new URLSearchParams();
    if (data.source) q.set("source", data.source);
    if (data.set) q.set("set", data.set);
    q.set("from", new Date(from).toISOString());
    q.set("to", new Date(to).toISOString());
    const r = await fetch(box.dataset.src + "?" + q.toString(), {cache: "no-store"});
    const body = await r.json();
    if (!r.ok) { note.textContent = String(body.detail); return; }
    data = body;
    note.textContent = `${data.bars.toLocaleString("en")} bars in view` +
      (data.bucket_ms ? `, drawn as ${data.candles.length.toLocaleString("en")} buckets` : "") + ". " + data.note;
    history.replaceState(null, "", location.pathname + "?" + q.toString());
    draw();
  }

  document.querySelectorAll("[data-zoom]").forEach(b => b.addEventListener("click", () => {
    const mid = (data.from_ms + data.to_ms) / 2, half = (data.to_ms - data.from_ms) / 2 * Number(b.dataset.zoom);
    load(Math.max(mid - half, data.first_ms), Math.min(mid + half, data.last_ms));
  }));
  document.querySelectorAll("[data-pan]").forEach(b => b.addEventListener("click", () => {
    const w = data.to_ms - data.from_ms, d = w * Number(b.dataset.pan);
    const from = Math.min(Math.max(data.from_ms + d, data.first_ms), Math.max(data.last_ms - w, data.first_ms));
    load(from, from + w);
  }));
  if (every) every.addEventListener("change", draw);
  window.addEventListener("resize", draw);
  draw();
})();
