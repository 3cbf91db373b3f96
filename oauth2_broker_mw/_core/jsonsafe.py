"""Strict, bounded JSON parsing for everything that comes from outside the process.

One parser for token responses, metadata, JWKS, ID-token segments and stored rows, so every
value the broker accepts can also be stored (PostgreSQL ``jsonb`` refuses NUL, lone
surrogates and ``NaN``/``Infinity``) and no input can raise anything but :class:`JSONRejected`
(a :class:`ValueError`):

- duplicate object members are refused (a provider's ``{"access_token": a, "access_token": b}``
  is ambiguous; RFC 8259 §4 leaves it undefined, so we refuse rather than take the last);
- ``NaN``, ``Infinity``, ``-Infinity`` and floats that overflow are refused, and so are
  numbers that PostgreSQL would print back unreadably (magnitude 1e64 and beyond, below
  1e-300, more than 40 significant digits);
- integers longer than :data:`MAX_INT_DIGITS` digits are refused (before Python's own 4,300
  digit limit raises a bare ``ValueError``);
- nesting deeper than :data:`MAX_DEPTH` is refused (never ``RecursionError``);
- strings (and member names) with NUL or a lone surrogate are refused.
"""

from __future__ import annotations

import decimal
import json
import math
from typing import Any, Final

__all__ = ["MAX_DEPTH", "MAX_INT_DIGITS", "JSONRejected", "check_tree", "loads"]

MAX_DEPTH: Final = 32
MAX_INT_DIGITS: Final = 64
_MAX_FLOAT_CHARS: Final = 400
_MIN_EXPONENT: Final = 300
_MAX_SIGNIFICANT: Final = 40


class JSONRejected(ValueError):
    """The document is not JSON the broker accepts; the message names the defect, not values."""


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise JSONRejected(f"duplicate member {key[:40]!r}")
        out[key] = value
    return out


def _constant(name: str) -> Any:
    raise JSONRejected(f"{name} is not a JSON number")


def _int(text: str) -> int:
    if len(text) > MAX_INT_DIGITS + 1:
        raise JSONRejected(f"integer longer than {MAX_INT_DIGITS} digits")
    return int(text)


def _float(text: str) -> float:
    if len(text) > _MAX_FLOAT_CHARS:
        raise JSONRejected("number too long")
    value = float(text)
    if not math.isfinite(value):
        raise JSONRejected("number out of range")
    # PostgreSQL jsonb keeps the exact decimal and prints it without an exponent: 1e300 comes
    # back as a 301-digit integer, 1e-500 as 500 zeros. Only numbers that come back readable
    # are accepted, so a stored row is never unreadable (issue 10).
    number = decimal.Decimal(text)
    if number and not (
        -_MIN_EXPONENT <= number.adjusted() < MAX_INT_DIGITS
        and len(number.as_tuple().digits) <= _MAX_SIGNIFICANT
    ):
        raise JSONRejected("number out of range")
    return value


def _check_string(value: str) -> None:
    if "\x00" in value:
        raise JSONRejected("string contains NUL")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise JSONRejected("string contains a lone surrogate") from None


def check_tree(value: object, *, max_depth: int = MAX_DEPTH) -> None:
    """Refuse a parsed tree (JSON or TOML) deeper than ``max_depth`` or with unstorable strings."""
    stack: list[tuple[object, int]] = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, str):
            _check_string(node)
        elif isinstance(node, float):
            if not math.isfinite(node):
                raise JSONRejected("number out of range")
        elif isinstance(node, dict | list):
            if depth >= max_depth:
                raise JSONRejected(f"nested deeper than {max_depth} levels")
            if isinstance(node, dict):
                for key, item in node.items():
                    if isinstance(key, str):
                        _check_string(key)
                    stack.append((item, depth + 1))
            else:
                stack.extend((item, depth + 1) for item in node)


def loads(text: str | bytes, *, max_depth: int = MAX_DEPTH) -> Any:
    """Parse ``text`` strictly (see the module docstring); raise :class:`JSONRejected`."""
    try:
        if isinstance(text, bytes | bytearray):
            text = bytes(text).decode("utf-8")
        value = json.loads(
            text,
            object_pairs_hook=_pairs,
            parse_constant=_constant,
            parse_int=_int,
            parse_float=_float,
        )
    except JSONRejected:
        raise
    except RecursionError:
        raise JSONRejected(f"nested deeper than {max_depth} levels") from None
    except (ValueError, TypeError) as exc:  # JSONDecodeError, UnicodeDecodeError
        raise JSONRejected(f"not valid JSON: {type(exc).__name__}") from None
    check_tree(value, max_depth=max_depth)
    return value
