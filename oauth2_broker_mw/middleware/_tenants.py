"""The one strict rule every tenant id passes in the middleware (SECURITY J3).

Owns: :func:`validate_tenant`, applied by the core to whatever any tenant resolver returns
(the ready-made ones and yours). Must not import: the broker, any web framework, httpx.

A tenant id is what :class:`~oauth2_broker_mw.TenantId` accepts (non-empty, at most 128
characters, no whitespace or control characters), and also:

* only ASCII letters, digits, ``.``, ``_`` and ``-``, starting with a letter or a digit, so no
  ``/``, ``\\``, ``%`` (percent-escapes), zero-width, full-width, or look-alike characters
  (a Cyrillic ``\\u0430`` for a Latin ``a``) can make two spellings of one tenant, or a path;
* no ``..`` anywhere;
* Unicode NFC (implied by ASCII, checked anyway so the rule still holds if the alphabet grows).

Non-ASCII tenant names are not ids: map them to a slug or a UUID in your resolver.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Final

from .._core.model import TenantId

__all__ = ["validate_tenant"]

_TENANT: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def validate_tenant(value: object) -> TenantId:
    """``value`` as a :class:`TenantId` if it passes the strict rule, else ``ValueError``."""
    if not isinstance(value, str):
        raise ValueError(f"a tenant id must be a str, not {type(value).__name__}")
    checked = TenantId(value)  # InvalidIdentifier is a ValueError
    if unicodedata.normalize("NFC", checked) != checked:
        raise ValueError("a tenant id must be in Unicode NFC")
    if not _TENANT.fullmatch(checked):
        raise ValueError(
            "a tenant id may hold only ASCII letters, digits, '.', '_' and '-', starting with a "
            "letter or a digit (no '/', '%', or non-ASCII characters)"
        )
    if ".." in checked:
        raise ValueError("a tenant id must not contain '..'")
    return checked
