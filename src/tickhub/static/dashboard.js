// tickhub dashboard: one EventSource on /stream, /health for the sources, a candle chart of the chosen symbol.
// Prices, quotes and spreads are shown as the hub's decimal text (decimal.js), never through a float.
import * as decimal from "./decimal.js";
import { CandleChart } from "./chart.js";

const HISTORY = 120; // prices kept per symbol for the sparkline
const NONE = "—"; // a field the source does not send
const rows = new Map(); // symbol -> {tr, cells, prices, first, last, quote}
let lastId = null;
let selected = null;
let source = null;
let dirty = new Set();
let resyncing = false;

const $ = (sel) => document.querySelector(sel);

let chart = null;
try {
  chart = new CandleChart($("#chart"), $("#chart-legend"));
} catch (err) {
  // the vendored chart did not load: the table still works
  $("#chart-legend").textContent = `chart unavailable: ${err.message}`;
}

// Read-only view for scripts and tests: what the chart holds for a symbol, exact and as drawn.
window.tickhubChart = Object.freeze({
  symbol: () => chart?.symbol ?? null,
  interval: () => chart?.interval ?? null,
  loads: () => chart?.loads ?? 0,
  candles: (symbol) => chart?.held(symbol) ?? null,
  drawn: (symbol) => chart?.drawn(symbol) ?? null,
});

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
    // The newest tick of each symbol: the chart may hold it already, so it is not counted again.
    for (const tick of JSON.parse(e.data).ticks) apply(tick, false);
    seen(e.lastEventId);
    if (resyncing && chart) chart.reload(); // ticks were skipped: the chart reads the hub's candles again
    resyncing = false;
  });
  source.addEventListener("tick", (e) => {
    apply(JSON.parse(e.data), true);
    seen(e.lastEventId);
  });
  source.addEventListener("resync", (e) => {
    console.info("resync", e.data);
    resyncing = true;
  });
}

function seen(id) {
  if (!id) return;
  lastId = id;
  document.body.dataset.lastId = id;
  $("#last-id").textContent = id;
}

const COLUMNS = ["symbol", "price", "change", "bid", "ask", "spread", "bps", "src", "age"];
const NUMERIC = new Set(["price", "change", "bid", "ask", "spread", "bps", "age"]);

function row(symbol) {
  let r = rows.get(symbol);
  if (r) return r;
  const tr = document.createElement("tr");
  tr.dataset.symbol = symbol;
  const cells = {};
  for (const name of COLUMNS) {
    const td = tr.appendChild(document.createElement("td"));
    td.className = td.dataset.base = (NUMERIC.has(name) ? "num " : "") + name;
    td.textContent = NONE;
    cells[name] = td;
  }
  cells.symbol.textContent = symbol;
  tr.insertAdjacentHTML("beforeend", `<td><svg class="spark" viewBox="0 0 160 28"
    preserveAspectRatio="none"><polyline points=""/></svg></td>`);
  tr.addEventListener("click", () => select(symbol));
  const body = $("#market tbody");
  const after = [...body.children].find((other) => other.dataset.symbol > symbol);
  body.insertBefore(tr, after || null);
  r = { tr, cells, prices: [], first: null, last: null, before: null, quote: null };
  rows.set(symbol, r);
  if (!selected) select(symbol);
  return r;
}

function apply(tick, counted) {
  const r = row(tick.symbol);
  if (r.first === null) r.first = tick.price;
  r.prices.push(Number(tick.price)); // sparkline coordinates only
  if (r.prices.length > HISTORY) r.prices.shift();
  r.before = r.last ? r.last.price : tick.price;
  r.last = tick;
  // A tick with no quote (a trade) leaves the last quote standing; the cells say it is older.
  if ("bid" in tick || "ask" in tick) {
    r.quote = { id: tick.id, ts: tick.ts, bid: tick.bid ?? null, ask: tick.ask ?? null,
      bidQty: tick.bid_qty ?? null, askQty: tick.ask_qty ?? null };
  }
  dirty.add(tick.symbol);
  if (chart) chart.tick(tick, counted);
}

function show(cell, text, className = "", title = "") {
  cell.textContent = text ?? NONE;
  cell.className = cell.dataset.base + (className ? " " + className : "");
  cell.title = title;
}

function render() {
  for (const symbol of dirty) {
    const r = rows.get(symbol);
    const { cells, last } = r;
    const move = decimal.compare(last.price, r.before);
    const trade = [last.qty && `qty ${last.qty}`, last.side, last.trade_id && `trade ${last.trade_id}`];
    show(cells.price, last.price, move > 0 ? "up" : move < 0 ? "down" : "", trade.filter(Boolean).join(" · "));
    const change = decimal.percentChange(r.first, last.price);
    const sign = change === null ? 0 : decimal.compare(change, "0");
    show(cells.change, change === null ? null : `${sign >= 0 ? "+" : ""}${change}%`, sign > 0 ? "up" : sign < 0 ? "down" : "");
    show(cells.src, last.source);
    quote(r);
    const prices = r.prices;
    const lo = Math.min(...prices), hi = Math.max(...prices), span = hi - lo || 1;
    const step = 160 / Math.max(1, HISTORY - 1);
    r.tr.querySelector("polyline").setAttribute("points",
      prices.map((p, i) => `${(i * step).toFixed(1)},${(26 - ((p - lo) / span) * 24).toFixed(1)}`).join(" "));
  }
  dirty = new Set();
  if (chart) chart.render();
  requestAnimationFrame(render);
}

// Bid, ask and the spread between them, absolute and in basis points of the mid price.
function quote(r) {
  const { cells, quote: q } = r;
  if (!q) return;
  const held = q.id !== r.last.id ? "held" : "";
  const when = held && `quote of ${q.ts}`;
  show(cells.bid, q.bid, held, [q.bidQty && `size ${q.bidQty}`, when].filter(Boolean).join(" · "));
  show(cells.ask, q.ask, held, [q.askQty && `size ${q.askQty}`, when].filter(Boolean).join(" · "));
  const spread = q.bid && q.ask ? decimal.subtract(q.ask, q.bid) : null;
  const crossed = spread !== null && decimal.compare(spread, "0") <= 0 ? "crossed" : "";
  const flags = [held, crossed].filter(Boolean).join(" ");
  show(cells.spread, spread, flags, crossed && "the bid is not below the ask");
  show(cells.bps, q.bid && q.ask ? decimal.spreadBps(q.bid, q.ask) : null, flags);
}

function ages() {
  const now = Date.now();
  for (const r of rows.values()) {
    if (!r.last) continue;
    const age = Math.max(0, (now - Date.parse(r.last.ts)) / 1000);
    r.cells.age.textContent = age < 60 ? `${age.toFixed(1)}s` : `${Math.floor(age / 60)}m`;
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
      const lag = s.lag_ms === null ? NONE : `${Math.round(s.lag_ms)} ms`;
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
  if (chart) chart.show(symbol, $("#chart-interval").value);
}

$("#chart-interval").addEventListener("change", () => selected && select(selected));
connect();
requestAnimationFrame(render);
setInterval(ages, 1000);
setInterval(health, 2000);
health();
