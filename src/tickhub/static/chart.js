// The candle chart of the selected symbol: TradingView Lightweight Charts (vendored, see VENDORED.md)
// drawing the hub's own candles (GET /prices/{symbol}/candles), kept current from the stream between
// refreshes. The page's figures stay decimal strings; the chart gets floats for its coordinates only.
import * as decimal from "./decimal.js";

const STEPS = { "1s": 1, "1m": 60, "5m": 300, "1h": 3600 }; // seconds per bucket, as the hub bins them
const LIMIT = 300; // buckets loaded when a symbol is shown (the route's default)
// The newest buckets are read again from the hub this often; the page's ?refresh= (seconds) changes
// it, 0 reads the candles only when the symbol or interval changes (the stream alone keeps them current).
const REFRESH = new URLSearchParams(location.search).get("refresh");
const REFRESH_MS = REFRESH !== null && Number(REFRESH) >= 0 ? Number(REFRESH) * 1000 : 2000;
const REPLAY_MS = 2000; // ticks this recent may not be persisted yet: applied again over a refresh
const UP = "#3fb950", DOWN = "#f85149", GRID = "#25303b", PANEL = "#171d24", TEXT = "#d8dee6";

// A tick's bucket (seconds since the epoch): the hub bins from 2000-01-01, a multiple of every step.
const bucketOf = (ts, step) => Math.floor(Date.parse(ts.slice(0, 19) + "Z") / 1000 / step) * step;
const startOf = (time) => new Date(time * 1000).toISOString().replace(/\.\d{3}Z$/, ".000000Z");
// Ticks are ordered as the hub orders a bucket's open and close: source time, then hub id.
const later = (a, b) => a[0] > b[0] || (a[0] === b[0] && BigInt(a[1]) > BigInt(b[1]));

function fromHub(c) {
  const time = bucketOf(c.start, 1);
  // A hub that does not report volume yet: no volume, never a made-up 0.
  const volume = typeof c.volume === "string" ? c.volume : null;
  const { open, high, low, close, count } = c;
  return { time, start: c.start, open, high, low, close, count, volume, vwap: c.vwap ?? null, openKey: null, closeKey: null };
}

export class CandleChart {
  constructor(container, legend) {
    const lib = window.LightweightCharts;
    this.legend = legend;
    this.symbol = null;
    this.interval = "1m";
    this.candles = []; // oldest first: {time, start, open, high, low, close, count, volume, openKey, closeKey}
    this.recent = []; // [{tick, at}] of the shown symbol, replayed over a refresh
    this.generation = 0; // a new symbol or interval discards answers to older requests
    this.pending = null; // performance.now() when the request in flight started
    this.loaded = false;
    this.unsure = Infinity; // the oldest bucket whose figures may miss or repeat a tick: read again
    this.newest = null; // [ts, id] of the newest tick applied: a tick before it came late
    this.loads = 0;
    this.redraw = false;
    this.lastDirty = false;
    this.precision = -1;
    this.chart = lib.createChart(container, {
      autoSize: true,
      layout: { background: { type: "solid", color: PANEL }, textColor: TEXT, attributionLogo: true },
      grid: { vertLines: { color: GRID }, horzLines: { color: GRID } },
      crosshair: { mode: lib.CrosshairMode.Normal },
      rightPriceScale: { borderColor: GRID, scaleMargins: { top: 0.08, bottom: 0.28 } },
      timeScale: { borderColor: GRID, timeVisible: true, secondsVisible: false },
    });
    this.prices = this.chart.addSeries(lib.CandlestickSeries, {
      upColor: UP, downColor: DOWN, wickUpColor: UP, wickDownColor: DOWN, borderVisible: false,
    });
    this.volumes = this.chart.addSeries(lib.HistogramSeries, {
      priceFormat: { type: "volume" }, priceScaleId: "volume", lastValueVisible: false, priceLineVisible: false,
    });
    this.volumes.priceScale().applyOptions({ scaleMargins: { top: 0.78, bottom: 0 } });
    this.chart.subscribeCrosshairMove((param) => this.showLegend(param.time));
    if (REFRESH_MS > 0) setInterval(() => this.refresh(false), REFRESH_MS);
  }

  /** Chart `symbol` in `interval` buckets, loaded afresh from the hub. */
  show(symbol, interval) {
    this.symbol = symbol;
    this.interval = interval;
    this.candles = [];
    this.recent = [];
    this.loaded = false;
    this.unsure = Infinity;
    this.newest = null;
    this.redraw = true;
    this.chart.applyOptions({ timeScale: { secondsVisible: STEPS[interval] < 60 } });
    this.refresh(true);
  }

  /** Load the shown symbol again (the stream had a gap: a resync). */
  reload() {
    if (this.symbol) this.refresh(true);
  }

  /** A tick from the stream. `counted` false: the hub may have counted it already (a snapshot's). */
  tick(tick, counted = true) {
    if (tick.symbol !== this.symbol) return;
    const at = performance.now();
    this.recent.push({ tick, at });
    const cutoff = (this.pending ?? at) - REPLAY_MS;
    while (this.recent[0].at < cutoff) this.recent.shift();
    if (this.loaded) this.apply(tick, counted);
  }

  apply(tick, counted) {
    const list = this.candles;
    const time = bucketOf(tick.ts, STEPS[this.interval]);
    const key = [tick.ts, tick.id];
    const price = tick.price;
    const inOrder = this.newest === null || later(key, this.newest);
    if (inOrder) this.newest = key;
    let i = list.length - 1;
    while (i >= 0 && list[i].time > time) i--;
    if (i >= 0 && list[i].time === time) {
      const c = list[i];
      if (decimal.compare(price, c.high) > 0) c.high = price;
      if (decimal.compare(price, c.low) < 0) c.low = price;
      // A bucket read from the hub has no key for its open and close: a tick in order is its new close;
      // a late one may precede its close or open, so the bucket is read again.
      if (c.closeKey === null ? inOrder : later(key, c.closeKey)) [c.close, c.closeKey] = [price, key];
      if (c.openKey !== null && later(c.openKey, key)) [c.open, c.openKey] = [price, key];
      if (!counted || (c.closeKey === null && !inOrder)) this.unsure = Math.min(this.unsure, time);
      if (counted) {
        c.count += 1;
        if (tick.qty) c.volume = c.volume === null ? tick.qty : decimal.add(c.volume, tick.qty);
        c.vwap = null; // the hub's, until the next refresh reads it again
      }
    } else {
      if (list.length >= LIMIT && i < 0) return; // older than the window shown
      const c = { time, start: startOf(time), open: price, high: price, low: price, close: price, count: 1,
        volume: tick.qty ?? null, vwap: null, openKey: key, closeKey: key };
      list.splice(++i, 0, c);
      if (list.length > LIMIT) {
        list.shift();
        this.redraw = true; // the series drops its oldest bar too
        return;
      }
    }
    if (i === list.length - 1) this.lastDirty = true;
    else this.redraw = true; // lightweight-charts updates its last bar in place; any other redraws all
  }

  /** Read the candles from the hub: all of them (`full`), or those from the oldest bucket not known exact. */
  async refresh(full) {
    if (!this.symbol) return;
    if (!full) {
      if (this.pending !== null) return;
      full = !this.loaded; // the first load failed (the hub was restarting): try it again
    }
    const generation = full ? ++this.generation : this.generation;
    const started = (this.pending = performance.now());
    const { symbol, interval } = this;
    const step = STEPS[interval];
    const list = this.candles;
    const newest = list.length ? list[list.length - 1].time : Math.floor(Date.now() / 1000 / step - 1) * step;
    const since = full ? null : Math.min(this.unsure, newest);
    const query = full ? `limit=${LIMIT}` : `since=${since}`;
    try {
      const response = await fetch(`/prices/${encodeURIComponent(symbol)}/candles?interval=${interval}&${query}`,
        { cache: "no-store" });
      if (!response.ok) return;
      const answer = (await response.json()).candles.map(fromHub);
      if (generation !== this.generation) return;
      this.candles = full ? answer : this.candles.filter((c) => c.time < since).concat(answer);
      this.loaded = true;
      // Ticks that arrived while the hub answered may be missing from it (not yet persisted): their
      // prices are applied again, counted only in a bucket newer than the answer; the next refresh
      // reads the buckets they were not counted in again.
      const answered = answer.length ? answer[answer.length - 1].time : -Infinity;
      this.unsure = answer.length ? answered : Infinity;
      this.newest = null; // the replay sets it again, in the order the ticks arrived
      for (const { tick, at } of this.recent) {
        if (at >= started - REPLAY_MS) this.apply(tick, bucketOf(tick.ts, step) > answered);
      }
      this.redraw = true;
      this.loads += 1;
    } catch (err) {
      // the hub is restarting: the next refresh asks again
    } finally {
      if (generation === this.generation) this.pending = null;
    }
  }

  /** Draw what changed since the last frame (called from requestAnimationFrame). */
  render() {
    if (this.redraw) {
      this.prices.setData(this.candles.map(bar));
      this.volumes.setData(this.candles.map(volumeBar));
      this.format();
      this.showLegend(null);
    } else if (this.lastDirty) {
      const last = this.candles[this.candles.length - 1];
      this.prices.update(bar(last));
      this.volumes.update(volumeBar(last));
      this.format();
      this.showLegend(null);
    }
    this.redraw = this.lastDirty = false;
  }

  // The price axis shows as many decimals as the prices have.
  format() {
    let digits = 0;
    for (const c of this.candles.slice(-20)) {
      digits = Math.max(digits, decimal.places(c.open), decimal.places(c.high), decimal.places(c.low), decimal.places(c.close));
    }
    digits = Math.min(digits, 10);
    if (digits === this.precision) return;
    this.precision = digits;
    this.prices.applyOptions({ priceFormat: { type: "price", precision: digits, minMove: 10 ** -digits } });
  }

  showLegend(time) {
    const list = this.candles;
    const c = (time && list.find((x) => x.time === time)) || list[list.length - 1];
    if (!c) {
      this.legend.textContent = "";
      return;
    }
    const parts = [`O ${c.open}`, `H ${c.high}`, `L ${c.low}`, `C ${c.close}`, `V ${c.volume ?? "—"}`];
    if (c.vwap) parts.push(`VWAP ${c.vwap}`);
    parts.push(`${c.count} tick${c.count === 1 ? "" : "s"}`, c.start.slice(0, 19).replace("T", " ") + " UTC");
    this.legend.textContent = parts.join("  ");
  }

  /** The candles the page holds for `symbol` (exact strings), or null if it is not the one shown. */
  held(symbol) {
    if (symbol !== this.symbol || !this.loaded) return null;
    return this.candles.map(({ start, open, high, low, close, volume, count }) => ({ start, open, high, low, close, volume, count }));
  }

  /** What the chart's two series hold for `symbol` (the floats it draws), or null. */
  drawn(symbol) {
    if (symbol !== this.symbol) return null;
    return {
      candles: this.prices.data().map(({ time, open, high, low, close }) => ({ time, open, high, low, close })),
      volume: this.volumes.data().map(({ time, value }) => ({ time, value: value ?? null })),
    };
  }
}

const bar = (c) => ({ time: c.time, open: Number(c.open), high: Number(c.high), low: Number(c.low), close: Number(c.close) });

function volumeBar(c) {
  if (c.volume === null) return { time: c.time }; // whitespace: no bar
  const up = decimal.compare(c.close, c.open) >= 0;
  return { time: c.time, value: Number(c.volume), color: up ? "rgba(63,185,80,.45)" : "rgba(248,81,73,.45)" };
}
