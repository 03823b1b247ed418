"""Accounts, API keys and market orders in PostgreSQL. Knows nothing of HTTP.

Every order is one transaction that first locks its account row, so orders on one account
apply one after another and can never overdraw it; amounts are exact Decimals end to end.
An API key is ``th_<key_id>_<secret>``: the key id finds the row, and the secret's SHA-256 is
compared in constant time. Keys are 256-bit random strings, so a fast hash is enough (a slow
password hash protects guessable passwords, which these are not).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from decimal import ROUND_DOWN, Decimal, localcontext
from typing import Any, NamedTuple

import asyncpg

from .store import Store, unavailable_as_error
from .wire import Tick, format_ts

KEY_PREFIX = "th_"
_BASIS_PLACES = Decimal(1).scaleb(-18)

SQL_CREATE_ACCOUNT = "INSERT INTO accounts (name, cash) VALUES ($1, $2) RETURNING id"
SQL_ACCOUNT_BY_NAME = "SELECT id FROM accounts WHERE name = $1"
SQL_ADD_KEY = "INSERT INTO api_keys (key_id, account_id, secret_hash) VALUES ($1, $2, $3)"
SQL_REVOKE = "UPDATE api_keys SET revoked_at = now() WHERE key_id = $1 AND revoked_at IS NULL"
SQL_REVOKE_ACCOUNT = "UPDATE api_keys SET revoked_at = now() WHERE account_id = $1 AND revoked_at IS NULL"
SQL_KEY = "SELECT account_id, secret_hash FROM api_keys WHERE key_id = $1 AND revoked_at IS NULL"
SQL_LIST = """
SELECT a.id, a.name, a.cash, a.created_at, count(k.key_id) FILTER (WHERE k.revoked_at IS NULL) AS keys
FROM accounts a LEFT JOIN api_keys k ON k.account_id = a.id GROUP BY a.id ORDER BY a.id
"""
SQL_LOCK_ACCOUNT = "SELECT id, name, cash, created_at FROM accounts WHERE id = $1 FOR UPDATE"
SQL_ACCOUNT = "SELECT id, name, cash, created_at FROM accounts WHERE id = $1"
SQL_POSITION = "SELECT qty, cost_basis, realized FROM positions WHERE account_id = $1 AND symbol = $2"
SQL_POSITIONS = "SELECT symbol, qty, cost_basis, realized FROM positions WHERE account_id = $1 ORDER BY symbol"
SQL_SAVE_POSITION = """
INSERT INTO positions (account_id, symbol, qty, cost_basis, realized) VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (account_id, symbol) DO UPDATE SET qty = $3, cost_basis = $4, realized = $5
"""
SQL_SET_CASH = "UPDATE accounts SET cash = $2 WHERE id = $1"
_ORDER_COLUMNS = (
    "id, symbol, side, qty, price, amount, realized, cash_after, tick_id, tick_ts, filled_at, price_source, last_price"
)
SQL_INSERT_ORDER = f"""
INSERT INTO orders (account_id, symbol, side, qty, price, amount, realized, cash_after, tick_id, tick_ts,
                    idempotency_key, price_source, last_price)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) RETURNING {_ORDER_COLUMNS}
"""
#: What the account's fills paid over the last trade price: the spread, buying at the ask, selling at the bid.
SQL_SPREAD_PAID = """
SELECT coalesce(sum(CASE side WHEN 'buy' THEN price - last_price ELSE last_price - price END * qty), 0)
FROM orders WHERE account_id = $1 AND last_price IS NOT NULL
"""
SQL_ORDER_BY_KEY = f"SELECT {_ORDER_COLUMNS} FROM orders WHERE account_id = $1 AND idempotency_key = $2"
SQL_ORDER = f"SELECT {_ORDER_COLUMNS} FROM orders WHERE account_id = $1 AND id = $2"
SQL_ORDERS = f"SELECT {_ORDER_COLUMNS} FROM orders WHERE account_id = $1 AND id < $2 ORDER BY id DESC LIMIT $3"


class AccountExists(Exception):
    """An account with that name already exists."""


class UnknownAccount(Exception):
    """No account with that name."""


class OrderRejected(Exception):
    """The order cannot be filled; nothing was changed. ``code`` names the reason."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def decimal_text(value: Decimal) -> str:
    """A Decimal as plain positional text (never ``1E-8``)."""
    return format(value, "f")


def removed_basis(basis: Decimal, qty: Decimal, held: Decimal) -> Decimal:
    """The part of a position's cost ``basis`` that selling ``qty`` of ``held`` takes away.

    Exact when the share has at most 18 places; otherwise rounded down to 18, so it never exceeds
    the basis held (rounding to nearest could, leaving a negative basis).
    """
    if qty == held:
        return basis
    with localcontext() as ctx:
        ctx.prec = 80  # exact for any basis x qty we accept
        removed = basis * qty / held
        if removed.as_tuple().exponent < -18:
            removed = removed.quantize(_BASIS_PLACES, rounding=ROUND_DOWN)
    return min(removed, basis)


def new_key() -> tuple[str, bytes, str]:
    """(key_id, secret hash, full key); the full key is shown once and never stored."""
    key_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    return key_id, _hash(secret), f"{KEY_PREFIX}{key_id}_{secret}"


def _hash(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def split_key(full: str) -> tuple[str, str] | None:
    if not full.startswith(KEY_PREFIX) or len(full) > 200:
        return None
    key_id, sep, secret = full[len(KEY_PREFIX) :].partition("_")
    if not sep or len(key_id) != 16 or not secret:
        return None
    return key_id, secret


class Fill(NamedTuple):
    """The price a market order fills at, which one it is (``ask``, ``bid`` or ``last``), and the last
    trade price then."""

    price: str
    source: str
    last: str


@dataclass(frozen=True)
class Order:
    id: int
    symbol: str
    side: str
    qty: Decimal
    price: Decimal
    amount: Decimal
    realized: Decimal
    cash_after: Decimal
    tick_id: int
    tick_ts: Any
    filled_at: Any
    price_source: str = "last"
    last_price: Decimal | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "symbol": self.symbol,
            "side": self.side,
            "qty": decimal_text(self.qty),
            "price": decimal_text(self.price),
            "amount": decimal_text(self.amount),
            "realized": decimal_text(self.realized),
            "cash_after": decimal_text(self.cash_after),
            "tick_id": str(self.tick_id),
            "tick_ts": format_ts(self.tick_ts),
            "filled_at": format_ts(self.filled_at),
            "price_source": self.price_source,
            "last_price": decimal_text(self.last_price) if self.last_price is not None else None,
        }


def _order(row: asyncpg.Record) -> Order:
    return Order(**dict(row))


class Accounts:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def create(self, name: str, cash: Decimal) -> str:
        """Create an account with ``cash``; return its first API key."""
        key_id, secret_hash, full = new_key()
        with unavailable_as_error():
            async with self.store.pool.acquire() as conn, conn.transaction():
                try:
                    account_id = await conn.fetchval(SQL_CREATE_ACCOUNT, name, cash)
                except asyncpg.UniqueViolationError:
                    raise AccountExists(name) from None
                await conn.execute(SQL_ADD_KEY, key_id, account_id, secret_hash)
        return full

    async def issue_key(self, name: str, revoke_others: bool = False) -> str:
        """A new API key for an existing account (optionally revoking its other keys)."""
        key_id, secret_hash, full = new_key()
        with unavailable_as_error():
            async with self.store.pool.acquire() as conn, conn.transaction():
                account_id = await conn.fetchval(SQL_ACCOUNT_BY_NAME, name)
                if account_id is None:
                    raise UnknownAccount(name)
                if revoke_others:
                    await conn.execute(SQL_REVOKE_ACCOUNT, account_id)
                await conn.execute(SQL_ADD_KEY, key_id, account_id, secret_hash)
        return full

    async def revoke(self, key_id: str) -> bool:
        with unavailable_as_error():
            return await self.store.pool.execute(SQL_REVOKE, key_id) == "UPDATE 1"

    async def list(self) -> list[dict[str, Any]]:
        with unavailable_as_error():
            rows = await self.store.pool.fetch(SQL_LIST)
        return [{**dict(r), "cash": decimal_text(r["cash"])} for r in rows]

    async def authenticate(self, full_key: str) -> int | None:
        """The account id of a valid, unrevoked key; None otherwise."""
        parts = split_key(full_key)
        if parts is None:
            return None
        key_id, secret = parts
        with unavailable_as_error():
            row = await self.store.pool.fetchrow(SQL_KEY, key_id)
        expected = row["secret_hash"] if row is not None else b"\0" * 32
        matches = hmac.compare_digest(_hash(secret), expected)
        return row["account_id"] if row is not None and matches else None

    async def place(
        self,
        account_id: int,
        symbol: str,
        side: str,
        qty: Decimal,
        tick: Tick,
        idempotency_key: str | None,
        fill: Fill | None = None,
    ) -> tuple[Order, bool]:
        """Fill a market order at ``fill`` (default: ``tick``'s price); (order, replayed). ``tick`` is the
        latest tick of the symbol, whose price is the last trade's. Raises OrderRejected."""
        fill = fill or Fill(tick.price, "last", tick.price)
        with unavailable_as_error():
            async with self.store.pool.acquire() as conn, conn.transaction():
                account = await conn.fetchrow(SQL_LOCK_ACCOUNT, account_id)
                if idempotency_key is not None:
                    existing = await conn.fetchrow(SQL_ORDER_BY_KEY, account_id, idempotency_key)
                    if existing is not None:
                        order = _order(existing)
                        if (order.symbol, order.side, order.qty) != (symbol, side, qty):
                            raise OrderRejected(
                                "idempotency_conflict", "this Idempotency-Key was used for a different order"
                            )
                        return order, True
                position = await conn.fetchrow(SQL_POSITION, account_id, symbol)
                held, basis, realized = position if position is not None else (Decimal(0), Decimal(0), Decimal(0))
                cash = account["cash"]
                price = Decimal(fill.price)
                with localcontext() as ctx:
                    ctx.prec = 80  # exact for any price x qty we accept
                    amount = price * qty
                    if side == "buy":
                        if amount > cash:
                            raise OrderRejected(
                                "insufficient_cash", f"costs {decimal_text(amount)}, cash is {decimal_text(cash)}"
                            )
                        cash, held, basis, gain = cash - amount, held + qty, basis + amount, Decimal(0)
                    else:
                        if qty > held:
                            raise OrderRejected(
                                "insufficient_position", f"selling {decimal_text(qty)}, holding {decimal_text(held)}"
                            )
                        removed = removed_basis(basis, qty, held)
                        cash, held, basis, gain = cash + amount, held - qty, basis - removed, amount - removed
                await conn.execute(SQL_SAVE_POSITION, account_id, symbol, held, basis, realized + gain)
                await conn.execute(SQL_SET_CASH, account_id, cash)
                row = await conn.fetchrow(
                    SQL_INSERT_ORDER,
                    account_id,
                    symbol,
                    side,
                    qty,
                    price,
                    amount,
                    gain,
                    cash,
                    tick.id,
                    tick.time,
                    idempotency_key,
                    fill.source,
                    Decimal(fill.last),
                )
        return _order(row), False

    async def orders(self, account_id: int, limit: int, before: int | None = None) -> list[Order]:
        """The account's orders, newest first."""
        with unavailable_as_error():
            rows = await self.store.pool.fetch(SQL_ORDERS, account_id, before or (1 << 62), limit)
        return [_order(r) for r in rows]

    async def order(self, account_id: int, order_id: int) -> Order | None:
        """The account's order ``order_id``; None if there is none, or it is another account's."""
        with unavailable_as_error():
            row = await self.store.pool.fetchrow(SQL_ORDER, account_id, order_id)
        return _order(row) if row is not None else None

    async def summary(self, account_id: int, prices: dict[str, Tick]) -> dict[str, Any]:
        """Cash, positions with average cost, realized and unrealized P&L at the latest prices."""
        with unavailable_as_error():
            async with self.store.pool.acquire() as conn:
                account = await conn.fetchrow(SQL_ACCOUNT, account_id)
                rows = await conn.fetch(SQL_POSITIONS, account_id)
                spread_paid = await conn.fetchval(SQL_SPREAD_PAID, account_id)
        positions, realized_total, unrealized_total, value_total = [], Decimal(0), Decimal(0), Decimal(0)
        with localcontext() as ctx:
            ctx.prec = 80
            for symbol, qty, basis, realized in rows:
                tick = prices.get(symbol)
                price = Decimal(tick.price) if tick is not None else None
                value = qty * price if price is not None else None
                unrealized = value - basis if value is not None else None
                realized_total += realized
                unrealized_total += unrealized or 0
                value_total += value or 0
                positions.append(
                    {
                        "symbol": symbol,
                        "qty": decimal_text(qty),
                        "avg_cost": decimal_text((basis / qty).quantize(_BASIS_PLACES).normalize()) if qty else None,
                        "cost_basis": decimal_text(basis),
                        "price": decimal_text(price) if price is not None else None,
                        "market_value": decimal_text(value) if value is not None else None,
                        "unrealized_pnl": decimal_text(unrealized) if unrealized is not None else None,
                        "realized_pnl": decimal_text(realized),
                    }
                )
            equity = account["cash"] + value_total
        return {
            "account": {"id": account["id"], "name": account["name"], "created_at": format_ts(account["created_at"])},
            "cash": decimal_text(account["cash"]),
            "positions": positions,
            "realized_pnl": decimal_text(realized_total),
            "unrealized_pnl": decimal_text(unrealized_total),
            "equity": decimal_text(equity),
            "spread_paid": decimal_text(spread_paid),
        }
