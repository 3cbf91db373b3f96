"""Validation of post-login and post-logout targets (``return_to``): no open redirector.

Owns: :func:`safe_return_to`, the one validator every redirect target of the middleware goes
through (login ``return_to``, logout target, the login redirect built for
``AuthorizationRequired``). Only same-site relative paths survive; anything else falls back to
the default. Must not import: the broker, any web framework, httpx.

The rules, strictest first (SECURITY B6, G3):

* well-formed percent-encoding only (no ``%u002f``, no lone ``%``);
* printable ASCII only (no spaces, tabs, CR/LF, other controls, no non-ASCII look-alikes);
* no backslash anywhere (browsers treat ``\\`` as ``/``);
* must start with ``/`` but not ``//`` (``//host`` is a network-path reference);
* no ``@`` in the path (userinfo tricks);
* the same checks again on every percent-decoded and NFKC-normalised form, so
  ``/%2f%2fevil`` or ``/%5cevil`` or a full-width solidus do not slip through a component
  that decodes the path once more;
* no empty segment (``//`` anywhere in the path) and no ``.``/``..`` segment;
* an absolute URL is accepted only when its origin is exactly the configured ``base_url``'s,
  and then only its path, query and fragment are kept (re-validated).
"""

from __future__ import annotations

import re
import unicodedata
from typing import Final
from urllib.parse import unquote

__all__ = ["safe_return_to"]

_MAX_LEN: Final = 2048
_MAX_DECODE_ROUNDS: Final = 4
_FORBIDDEN_IN_PATH: Final = frozenset("\\@")
_BAD_PERCENT: Final = re.compile(r"%(?![0-9A-Fa-f]{2})")


def _plain_ascii(value: str) -> bool:
    return all(0x21 <= ord(ch) <= 0x7E for ch in value)


def _path_ok(path: str) -> bool:
    """``path`` (no query, no fragment) is a single-slash absolute path without tricks."""
    if not path.startswith("/") or path.startswith("//"):
        return False
    if "//" in path or any(ch in _FORBIDDEN_IN_PATH for ch in path):
        return False
    # No dot segments: "/./", "/../" never appear in a target we issue ourselves.
    return all(segment not in (".", "..") for segment in path.split("/"))


def _split(value: str) -> tuple[str, str]:
    """(path, rest) where rest is the query and/or fragment, with its leading ``?``/``#``."""
    cut = len(value)
    for sep in "?#":
        idx = value.find(sep)
        if idx != -1:
            cut = min(cut, idx)
    return value[:cut], value[cut:]


def _decoded_forms(value: str) -> list[str]:
    forms = [value]
    current = value
    for _ in range(_MAX_DECODE_ROUNDS):
        decoded = unquote(current, errors="replace")
        if decoded == current:
            break
        forms.append(decoded)
        current = decoded
    more = []
    for form in forms:
        nfkc = unicodedata.normalize("NFKC", form)
        if nfkc != form:
            more.append(nfkc)
    return forms + more


def _relative_ok(value: str) -> bool:
    if not _plain_ascii(value) or _BAD_PERCENT.search(value):
        return False
    path, rest = _split(value)
    if "\\" in rest:
        return False
    if not _path_ok(path):
        return False
    for form in _decoded_forms(value):
        if any(ord(ch) < 0x21 or ord(ch) == 0x7F for ch in form):
            return False
        form_path, form_rest = _split(form)
        if "\\" in form_rest:
            return False
        # A decoded path may legitimately gain "?"/"#"; what matters is its start.
        if not _path_ok(form_path if form_path else "/"):
            return False
    return True


def safe_return_to(value: str | None, *, default: str = "/", base_url: str | None = None) -> str:
    """Return ``value`` if it is a safe same-site target, else ``default``.

    ``base_url`` (scheme://host[:port][/path]) lets an absolute URL with exactly that origin
    through, reduced to its path, query and fragment. Everything else absolute is rejected.
    """
    if not value or not isinstance(value, str) or len(value) > _MAX_LEN:
        return default
    candidate = value
    if base_url is not None and not value.startswith("/"):
        origin = _origin(base_url)
        if origin and value.startswith(origin + "/"):
            candidate = value[len(origin) :]
        else:
            return default
    return candidate if _relative_ok(candidate) else default


def _origin(base_url: str) -> str:
    scheme, sep, remainder = base_url.partition("://")
    if not sep:
        return ""
    host = remainder.split("/", 1)[0]
    return f"{scheme.lower()}://{host.lower()}"
