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
import re
from typing import Any
from typing import Final

__all__ = ["MAX_DEPTH", "MAX_INT_DIGITS", "JSONRejected", "check_tree", "loads"]

MAX_DEPTH: Final = 32
MAX_INT_DIGITS: Final = 64
_MAX_FLOAT_CHARS: Final = 400
_MIN_EXPONENT: Final = 300
_MAX_SIGNIFICANT: Final = 40


class JSONRejected(ValueError):
    """The document is not JSON the broker accepts; the message names the defect, not values."""


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)  # built in C; a repeated member makes it shorter than the pairs
    if len(out) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise JSONRejected(f"duplicate member {key[:40]!r}")
            seen.add(key)
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


def check_tree(value: object, *, max_depth: int = MAX_DEPTH, strings: bool = True) -> None:
    """Refuse a parsed tree (JSON or TOML) deeper than ``max_depth`` or with unstorable strings.

    ``strings=False``: the caller knows no string can hold NUL or a lone surrogate (the text
    had neither, nor an escape of one), so only depth and floats are checked: integers,
    booleans and ``None`` are skipped without a look (a 1 MiB array of numbers is walked in
    milliseconds, not a second).
    """
    if isinstance(value, str):
        _check_string(value)
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise JSONRejected("number out of range")
    if not isinstance(value, dict | list):
        return
    stack: list[tuple[dict[Any, Any] | list[Any], int]] = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if depth >= max_depth:
            raise JSONRejected(f"nested deeper than {max_depth} levels")
        if isinstance(node, dict):
            if strings:
                for key in node:
                    if isinstance(key, str):
                        _check_string(key)
            items: Any = node.values()
        else:
            items = node
        for item in items:
            kind = type(item)
            if kind is int or kind is bool or item is None:
                continue
            if kind is str:
                if strings:
                    _check_string(item)
            elif kind is float:
                if not math.isfinite(item):
                    raise JSONRejected("number out of range")
            elif isinstance(item, dict | list):
                stack.append((item, depth + 1))
            elif isinstance(item, str):
                _check_string(item)


#: Numbers the C parser may not read on its own: an exponent, or a run of 41+ digits (too many
#: significant digits, 1e64 and beyond, below 1e-300, integers near Python's digit limit).
#: A match inside a string only costs the slow, exact path.
_STRICT_NUMBERS: Final = re.compile(r"[0-9](?:[eE]|[0-9]{40})")
#: An escaped NUL or UTF-16 surrogate (paired or not): the strings must be looked at.
_SUSPECT_ESCAPE: Final = re.compile(r"\\u(?:0000|[dD][89a-fA-F])")


def _suspect_strings(text: str) -> bool:
    if _SUSPECT_ESCAPE.search(text) is not None:
        return True
    if text.isascii():
        return False
    try:  # a str handed in directly may carry a lone surrogate without an escape
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def loads(text: str | bytes, *, max_depth: int = MAX_DEPTH) -> Any:
    """Parse ``text`` strictly (see the module docstring); raise :class:`JSONRejected`."""
    try:
        if isinstance(text, bytes | bytearray):
            text = bytes(text).decode("utf-8")
        if _STRICT_NUMBERS.search(text) is None:  # every number is one C can read exactly
            value = json.loads(text, object_pairs_hook=_pairs, parse_constant=_constant)
        else:
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
    check_tree(value, max_depth=max_depth, strings=_suspect_strings(text))
    return value
