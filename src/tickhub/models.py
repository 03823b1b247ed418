"""The request bodies of the API, declared once as msgspec Structs.

A route decodes and validates its body with its model (:func:`tickhub.http.read_model`), and the
OpenAPI document describes the body from the same model (:mod:`tickhub.openapi`); the answers are
declared beside them in :mod:`tickhub.answers`. Three fields have rules JSON Schema types cannot
state (a quantity read exactly from its JSON text, an integer written ``96.0``, a symbol that is
ASCII as written): they are custom types, checked by :func:`decode_hook` and described by
:func:`schema_hook`.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal
from typing import Annotated, Any, ClassVar, Literal

from msgspec import Meta, Struct

from .wire import SYMBOL_RE

MAX_QTY = Decimal(10) ** 12
MAX_QTY_PLACES = 18
QTY_TEXT = re.compile(r"[0-9]+(\.[0-9]+)?")
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
SYMBOL_PATTERN = "^[A-Za-z0-9][A-Za-z0-9._:-]{0,39}$"

Side = Literal["buy", "sell"]


# --- request field types ----------------------------------------------------------------------


class Symbol(str):
    """A symbol as a client writes it (any case), upper-cased."""


class Quantity(Decimal):
    """A positive exact amount: a JSON number taken from its text, or a plain decimal string."""


class Int64(int):
    """A 64-bit integer; JSON has one number type, so ``96.0`` is 96."""


def exact_number(text: str) -> Decimal | float:
    """A JSON number of a custom-typed field as the Decimal of its text (``float_hook``)."""
    try:
        return Decimal(text)
    except ArithmeticError:  # an exponent past Decimal's range: a value every rule refuses
        return math.inf


def _symbol(value: object) -> Symbol:
    # Checked before upper-casing: str.upper() maps some non-ASCII letters onto ASCII (a long s to "S").
    if type(value) is not str or not value.isascii() or not SYMBOL_RE.match(value.upper()):
        raise ValueError("not a symbol")
    return Symbol(value.upper())


def _quantity(value: object) -> Quantity:
    # A string must be ASCII digits with an optional fraction: Decimal itself would also take
    # Arabic-Indic digits, "1_000", " 1", "1e5" or "NaN", which no client means as a quantity.
    if type(value) is str and len(value) <= 40 and QTY_TEXT.fullmatch(value):
        qty = Quantity(value)
    elif type(value) in (Decimal, int):  # not bool; a float only stands for an exponent out of range
        qty = Quantity(value)  # type: ignore[arg-type]
    else:
        raise ValueError("not a quantity")
    exponent = qty.as_tuple().exponent
    if not qty.is_finite() or not 0 < qty <= MAX_QTY or not isinstance(exponent, int) or exponent < -MAX_QTY_PLACES:
        raise ValueError("not a quantity")
    return qty


def _int64(value: object) -> Int64:
    if type(value) is Decimal and value.is_finite() and value == value.to_integral_value():
        value = int(value) if INT64_MIN <= value <= INT64_MAX else None  # compared first: 1e999999 is a long int
    if type(value) is not int or not INT64_MIN <= value <= INT64_MAX:
        raise ValueError("not a 64-bit integer")
    return Int64(value)


_DECODERS = {Symbol: _symbol, Quantity: _quantity, Int64: _int64}
_SCHEMAS: dict[type, dict[str, Any]] = {
    Symbol: {"type": "string", "pattern": SYMBOL_PATTERN, "description": "A symbol such as BTCUSD (any case)."},
    Quantity: {
        "oneOf": [
            {"type": "number", "exclusiveMinimum": 0, "maximum": 1e12, "multipleOf": 1e-18},
            {
                "type": "string",
                "pattern": r"^(?!0*(\.0*)?$)[0-9]{1,13}(\.[0-9]{1,18})?$",
                "description": "A positive decimal number, up to 18 decimal places.",
            },
        ],
        "description": "Exact: a JSON number is read from its text, never through a float.",
    },
    Int64: {"type": "integer", "minimum": INT64_MIN, "maximum": INT64_MAX},
}


def decode_hook(type_: type, value: Any) -> Any:
    """msgspec's ``dec_hook``: the custom request field types from their JSON values."""
    decode = _DECODERS.get(type_)
    if decode is None:
        raise NotImplementedError(f"no decoder for {type_!r}")
    return decode(value)


def schema_hook(type_: type) -> dict[str, Any]:
    """msgspec's ``schema_hook``: the JSON Schema of each custom request field type."""
    schema = _SCHEMAS.get(type_)
    if schema is None:
        raise NotImplementedError(f"no schema for {type_!r}")
    return schema


class RequestBody(Struct, forbid_unknown_fields=True):
    """A request body. ``rules`` holds, per field, the message a client gets when it is wrong."""

    rules: ClassVar[dict[str, str]] = {}


# --- requests ---------------------------------------------------------------------------------


class OrderRequest(RequestBody):
    """A market order."""

    symbol: Symbol
    side: Side
    qty: Quantity

    rules: ClassVar[dict[str, str]] = {
        "symbol": "symbol must be a symbol such as BTCUSD",
        "side": 'side must be "buy" or "sell"',
        "qty": f"qty must be a positive number up to {MAX_QTY_PLACES} decimal places",
    }


class TaskRequest(RequestBody):
    """A task for the sequential queue."""

    num: Int64
    timeout: Annotated[float, Meta(ge=0, description="Seconds, at most TICKHUB_TASK_TIMEOUT_MAX.")]

    rules: ClassVar[dict[str, str]] = {
        "num": "num must be a 64-bit integer",
        "timeout": "timeout must be a number >= 0",
    }
