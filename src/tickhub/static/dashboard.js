// tickhub dashboard: one EventSource on /stream, /health for the sources, candles for the chosen symbol.
"use strict";

const HISTORY = 120;              // prices kept per symbol for the sparkline
const rows = new Map();           // symbol -> {tr, prices, first, last}
let lastId = null;
let selected = null;
let source = null;
let dirty = new Set();

const $ = (sel) => document.querySelector(sel);

function setLink(live) {
  const link = $("#link");
  link.textContent = live ? "live" : "reconnecting";
  link.className = "link " + (live ? "live" : "connecting");
}

function connect() {
  // The browser resumes by itself with Last-Event-ID; if it gives up (e.g. a 503 while the hub
  // restarts) we open a new stream from the last id we saw.
  const url = lastId ? `/stream?last_event_id=${encodeURIComponent(lastId)}` : "/stream";
  source = new EventSource(url);
  source.onopen = () => setLink(true);
  source.onerror = () => {
    setLink(false);
    if (source.readyState === EventSource.CLOSED) {
      setTimeout(connect, 500 + Math.random() * 1000);
    }
  };
  source.addEventListener("snapshot", (e) => {
    for (const tick of JSON.parse(e.data).ticks) apply(tick);
    seen(e.lastEventId);
  });
  source.addEventListener("tick", (e) => { apply(JSON.parse(e.data)); seen(e.lastEventId); });
  source.addEventListener("resync", (e) => console.info("resync", e.data));
}

function seen(id) {
  if (!id) return;
  lastId = id;
  document.body.dataset.lastId = id;
  $("#last-id").textContent = id;
}

function row(symbol) {
  let r = rows.get(symbol);
  if (r) return r;
  const tr = document.createElement("tr");
  tr.dataset.symbol = symbol;
  tr.innerHTML = `<td class="symbol"></td><td class="num price"></td><td class="num change"></td>
    <td class="src"></td><td class="num age"></td><td><svg class="spark" viewBox="0 0 160 28"
    preserveAspectRatio="none"><polyline points=""/></svg></td>`;
  tr.querySelector(".symbol").textContent = symbol;
  tr.addEventListener("click", () => select(symbol));
  const body = $("#market tbody");
  const after = [...body.children].find((other) => other.dataset.symbol > symbol);
  body.insertBefore(tr, after || null);
  r = { tr, prices: [], first: null, last: null };
  rows.set(symbol, r);
  if (!selected) select(symbol);
  return r;
}

function apply(tick) {
  const r = row(tick.symbol);
  const price = Number(tick.price);
  if (r.first === null) r.first = price;
  r.prices.push(price);
  if (r.prices.length > HISTORY) r.prices.shift();
  r.last = tick;
  dirty.add(tick.symbol);
}

function render() {
  for (const symbol of dirty) {
    const r = rows.get(symbol);
    const prices = r.prices;
    const price = prices[prices.length - 1];
    const before = prices.length > 1 ? prices[prices.length - 2] : price;
    const cell = r.tr.querySelector(".price");
    cell.textContent = r.last.price;
    cell.className = "num price " + (price > before ? "up" : price < before ? "down" : "");
    const change = r.first ? ((price - r.first) / r.first) * 100 : 0;
    const changeCell = r.tr.querySelector(".change");
    changeCell.textContent = (change >= 0 ? "+" : "") + change.toFixed(2) + "%";
    changeCell.className = "num change " + (change > 0 ? "up" : change < 0 ? "down" : "");
    r.tr.querySelector(".src").textContent = r.last.source;
    const lo = Math.min(...prices), hi = Math.max(...prices), span = hi - lo || 1;
    const step = 160 / Math.max(1, HISTORY - 1);
    r.tr.querySelector("polyline").setAttribute("points",
      prices.map((p, i) => `${(i * step).toFixed(1)},${(26 - ((p - lo) / span) * 24).toFixed(1)}`).join(" "));
  }
  dirty = new Set();
  requestAnimationFrame(render);
}

function ages() {
  const now = Date.now();
  for (const r of rows.values()) {
    if (!r.last) continue;
    const age = Math.max(0, (now - Date.parse(r.last.ts)) / 1000);
    r.tr.querySelector(".age").textContent = age < 60 ? `${age.toFixed(1)}s` : `${Math.floor(age / 60)}m`;
  }
}

async function health() {
  try {
    const response = await fetch("/health", { cache: "no-store" });
    const report = await response.json();
    const strip = $("#sources");
    strip.replaceChildren();
    for (const [name, s] of Object.entries(report.sources || {})) {
      const chip = document.createElement("div");
      chip.className = "source " + s.state;
      chip.dataset.source = name;
      const lag = s.lag_ms === null ? "—" : `${Math.round(s.lag_ms)} ms`;
      chip.innerHTML = `<strong></strong> <span class="state"></span> · lag ${lag} · rejects ${s.rejected}`;
      chip.querySelector("strong").textContent = name;
      chip.querySelector(".state").textContent = s.state;
      strip.appendChild(chip);
    }
  } catch (err) {
    // the hub is restarting; the next poll will tell
  }
}

function select(symbol) {
  selected = symbol;
  for (const r of rows.values()) r.tr.classList.toggle("selected", r.tr.dataset.symbol === symbol);
  $("#chart-symbol").textContent = symbol;
  candles();
}

async function candles() {
  if (!selected) return;
  const interval = $("#chart-interval").value;
  try {
    const response = await fetch(`/prices/${encodeURIComponent(selected)}/candles?interval=${interval}&limit=60`);
    if (response.ok) draw((await response.json()).candles);
  } catch (err) {
    // try again on the next tick of the timer
  }
}

function draw(list) {
  const canvas = $("#chart");
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  if (!list.length) return;
  const highs = list.map((c) => Number(c.high)), lows = list.map((c) => Number(c.low));
  const hi = Math.max(...highs), lo = Math.min(...lows), span = hi - lo || 1;
  const y = (v) => 10 + (1 - (v - lo) / span) * (canvas.height - 20);
  const w = canvas.width / 60;
  list.forEach((c, i) => {
    const [o, h, l, cl] = [c.open, c.high, c.low, c.close].map(Number);
    const x = i * w + w / 2;
    ctx.strokeStyle = ctx.fillStyle = cl >= o ? "#3fb950" : "#f85149";
    ctx.beginPath(); ctx.moveTo(x, y(h)); ctx.lineTo(x, y(l)); ctx.stroke();
    ctx.fillRect(x - w * 0.35, Math.min(y(o), y(cl)), w * 0.7, Math.max(1, Math.abs(y(o) - y(cl))));
  });
}

$("#chart-interval").addEventListener("change", candles);
connect();
requestAnimationFrame(render);
setInterval(ages, 1000);
setInterval(health, 2000);
setInterval(candles, 2000);
health();
