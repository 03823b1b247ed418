// Exact arithmetic on the hub's decimal strings ("1234.50"): what the page shows is computed from the
// text with BigInt, never through a float that rounds. Floats are for chart coordinates only.
const DECIMAL = /^(-?)(\d+)(?:\.(\d+))?$/;

/** {units, scale} of a decimal string (value = units / 10^scale), or null if it is not one. */
export function parse(text) {
  const m = typeof text === "string" ? DECIMAL.exec(text) : null;
  if (!m) return null;
  const fraction = m[3] || "";
  const units = BigInt(m[2] + fraction);
  return { units: m[1] ? -units : units, scale: fraction.length };
}

/** The decimal string of units / 10^scale, with exactly `scale` fractional digits. */
export function format(units, scale) {
  const sign = units < 0n ? "-" : "";
  const digits = (units < 0n ? -units : units).toString().padStart(scale + 1, "0");
  if (scale === 0) return sign + digits;
  return `${sign}${digits.slice(0, -scale)}.${digits.slice(-scale)}`;
}

/** Fractional digits written in a decimal string (0 for none or not a decimal). */
export function places(text) {
  const value = parse(text);
  return value ? value.scale : 0;
}

// Both operands as units of the finer scale.
function aligned(a, b) {
  const x = parse(a), y = parse(b);
  if (!x || !y) return null;
  const scale = Math.max(x.scale, y.scale);
  return [x.units * 10n ** BigInt(scale - x.scale), y.units * 10n ** BigInt(scale - y.scale), scale];
}

/** -1, 0 or 1 as a < b, a = b, a > b; null if either is not a decimal string. */
export function compare(a, b) {
  const v = aligned(a, b);
  if (!v) return null;
  return v[0] < v[1] ? -1 : v[0] > v[1] ? 1 : 0;
}

/** a + b, at the finer of their scales (as PostgreSQL's numeric sum writes it). */
export function add(a, b) {
  const v = aligned(a, b);
  return v ? format(v[0] + v[1], v[2]) : null;
}

/** a - b, at the finer of their scales; negative when b > a. */
export function subtract(a, b) {
  const v = aligned(a, b);
  return v ? format(v[0] - v[1], v[2]) : null;
}

// n / d rounded half away from zero (d > 0).
function divideRounded(n, d) {
  const q = n / d, r = n % d;
  if (2n * (r < 0n ? -r : r) >= d) return n < 0n ? q - 1n : q + 1n;
  return q;
}

/** The spread ask - bid in basis points of the mid price, (ask - bid) / ((ask + bid) / 2) * 10^4,
 *  rounded half away from zero to `digits` places; null when either side is missing or both are 0. */
export function spreadBps(bid, ask, digits = 2) {
  const v = aligned(ask, bid);
  if (!v || v[0] + v[1] <= 0n) return null;
  const scaled = (v[0] - v[1]) * 20000n * 10n ** BigInt(digits);
  return format(divideRounded(scaled, v[0] + v[1]), digits);
}

/** (to - from) / from in percent, rounded half away from zero to `digits` places; null if from is 0. */
export function percentChange(from, to, digits = 2) {
  const v = aligned(to, from);
  if (!v || v[1] === 0n) return null;
  const scaled = (v[0] - v[1]) * 100n * 10n ** BigInt(digits);
  const d = v[1] < 0n ? -v[1] : v[1];
  return format(divideRounded(v[1] < 0n ? -scaled : scaled, d), digits);
}
