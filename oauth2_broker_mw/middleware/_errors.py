"""Error responses: what a refused request or a broker error becomes, in one table.

Owns: :class:`Reject` (a handler's refusal: status, machine code, a sentence for the user), the
tables that map broker errors to refusals (a login, a code exchange, a lookup of an unknown
tenant or provider), the refusals a new login mends (their page links back to the login
route), the log line for each mapped error, and the error response itself (an HTML page for
browsers, a JSON body for API clients).

Never puts a token, code, state, cookie value or an untrusted description unfiltered in a page,
a log line or an exception message (provider descriptions pass through :func:`denied`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Final
from typing import Literal

from .._core.errors import AuthorizationFlowError
from .._core.errors import BrokerError
from .._core.errors import ProviderError
from .._core.errors import ProviderNotEnabled
from .._core.errors import StorageError
from .._core.errors import TransientProviderError
from .._core.errors import TransportError
from .._core.errors import UnknownTenant
from ._http import SECURITY_HEADERS
from ._http import BrokerRequest
from ._http import Response
from ._pages import PAGE_HEADERS
from ._pages import error_page

__all__ = [
    "EXCHANGE_REFUSALS",
    "LOGIN_REFUSALS",
    "RETRYABLE",
    "Refusal",
    "Reject",
    "denied",
    "error_response",
    "not_found",
    "reason",
    "refuse",
    "store_down",
]

log = logging.getLogger("oauth2_broker_mw.middleware")

#: refusals that a fresh login mends: their error page links to the login route
RETRYABLE: Final = frozenset(
    {
        "state_missing",
        "state_mismatch",
        "state_expired",
        "authorization_denied",
        "exchange_failed",
        "provider_unavailable",
        "store_unavailable",
        "issuer_mismatch",
        "invalid_request",
        "duplicate_parameter",
    }
)


class Reject(Exception):
    """Internal: stop a handler with an error page (never leaves the middleware)."""

    def __init__(self, status: int, code: str, description: str) -> None:
        super().__init__(code)
        self.status = status
        self.code = code
        self.description = description
        #: where "Start the sign-in again" goes (a login route), for refusals a new login mends
        self.retry: str | None = None


def reason(exc: BrokerError) -> str:
    """The log line's reason: the error's type and message (BrokerError messages hold no
    secret), so an operator sees "cannot create the SQLite file '/x': ..." and not a bare
    class name."""
    return f"{type(exc).__name__}: {exc}"


_STORE_DOWN: Final = "The app's token store did not answer."
_UNREACHABLE: Final = "The provider could not be reached."
_NOT_COMPLETED: Final = "The login could not be completed."


def store_down() -> Reject:
    return Reject(503, "store_unavailable", _STORE_DOWN)


@dataclass(frozen=True, slots=True)
class Refusal:
    """One row: a broker error of ``errors`` becomes this refusal, logged as ``verb``.

    ``code`` ``None`` takes the code of the :class:`AuthorizationFlowError`; ``detail`` says
    what the log line names: the error's type and message (:func:`reason`), the provider's
    ``error`` field (with the error's hint of what to check, e.g. :class:`InvalidClient`), or
    ``None`` for no log line.
    """

    errors: tuple[type[BrokerError], ...]
    status: int
    code: str | None
    description: str
    verb: str = "failed"
    detail: Literal["reason", "error"] | None = "reason"

    def reject(self, exc: BrokerError) -> Reject:
        code = self.code
        if code is None:
            code = exc.code if isinstance(exc, AuthorizationFlowError) else "exchange_failed"
        return Reject(self.status, code, self.description)

    def describe(self, exc: BrokerError) -> str:
        if self.detail == "error" and isinstance(exc, ProviderError):
            # the provider's error code and, where the broker knows one, what to check
            return f"{exc.error} ({exc.hint})" if exc.hint else exc.error
        return reason(exc)


_TRANSPORT: Final = (TransportError, TransientProviderError)

#: A login (``Broker.start_authorization``); a broker error no row names propagates.
LOGIN_REFUSALS: Final = (
    Refusal(_TRANSPORT, 502, "provider_unavailable", _UNREACHABLE),
    Refusal((StorageError,), 503, "store_unavailable", _STORE_DOWN),
    # e.g. a pushed authorization request was refused
    Refusal(
        (ProviderError,),
        502,
        "provider_error",
        "The provider refused the login.",
        "refused",
        "error",
    ),
)

#: A code exchange at the callback: every broker error is a refusal.
EXCHANGE_REFUSALS: Final = (
    Refusal((AuthorizationFlowError,), 400, None, _NOT_COMPLETED, detail=None),
    Refusal(_TRANSPORT, 502, "provider_unavailable", _UNREACHABLE),
    Refusal(
        (ProviderError,),
        400,
        "exchange_failed",
        "The provider rejected the authorization code.",
        "rejected",
        "error",
    ),
    Refusal((StorageError,), 503, "store_unavailable", _STORE_DOWN),
    Refusal((BrokerError,), 400, "exchange_failed", _NOT_COMPLETED),
)


def refuse(table: tuple[Refusal, ...], what: str, provider: str, exc: BrokerError) -> Reject | None:
    """The refusal the first matching row of ``table`` makes of ``exc`` (its log line
    written), or ``None`` when no row matches."""
    for row in table:
        if isinstance(exc, row.errors):
            if row.detail is not None:
                log.warning(
                    "%s for provider=%s %s: %s", what, provider, row.verb, row.describe(exc)
                )
            return row.reject(exc)
    return None


#: An unknown tenant or provider, from a route's lookup or from the app's ``ctx.lease()``.
_NOT_FOUND: Final = {
    UnknownTenant: ("unknown_tenant", "No such tenant."),
    ProviderNotEnabled: ("unknown_provider", "This provider is not enabled for this tenant."),
}


def not_found(exc: UnknownTenant | ProviderNotEnabled) -> Reject:
    code, description = _NOT_FOUND[type(exc)]
    return Reject(404, code, description)


def denied(error: str, description: str) -> str:
    """ "The provider answered 'access_denied': The user denied access." (printable ASCII of
    the untrusted description only, capitalised, one sentence end)."""
    text = "".join(c for c in description if " " <= c <= "~").strip()
    if not text:
        return f"The provider answered {error!r}."
    text = text[0].upper() + text[1:]
    if text[-1] not in ".!?":
        text += "."
    return f"The provider answered {error!r}: {text}"


def error_response(request: BrokerRequest, reject: Reject, *, home: str) -> Response:
    """The page (or, for an API client asking for JSON, the body) of a refusal."""
    accept = request.header("accept") or ""
    headers = list(SECURITY_HEADERS)
    if "application/json" in accept and "text/html" not in accept:
        body = json.dumps(
            {"error": reject.code, "error_description": reject.description},
            separators=(",", ":"),
        ).encode()
        headers.insert(0, ("content-type", "application/json"))
    else:
        body = error_page(
            reject.status, reject.code, reject.description, home=home, retry=reject.retry
        )
        headers[:0] = PAGE_HEADERS
    if reject.status == 503:
        headers.append(("retry-after", "30"))
    return Response(reject.status, headers, body)
