"""The broker routes: login, callback and logout, each a generator of broker calls.

Owns: the order of the callback checks (SECURITY B1 the flow was started by this browser, for
this provider, recently; J2 in this tenant; B7 provider errors only after the state check; B2
the issuer; then the code exchange), a fresh principal and session id on every login (J10,
B8), and the logout's CSRF defence (G3: POST with an Origin check or a CSRF token; ``GET``
only asks). Each handler yields :mod:`._calls` and is run by ``drive`` / ``adrive``; a refusal
is a :class:`~._errors.Reject`, turned into a page by :meth:`MiddlewareCore.handle`.

Never puts a token, code, state, verifier, CSRF token or cookie value in a page, a log line, a
repr or an exception message.
"""

from __future__ import annotations

import hmac
import logging
import secrets
from collections import Counter
from collections.abc import Iterable
from collections.abc import Mapping
from typing import TYPE_CHECKING
from typing import Final
from urllib.parse import parse_qsl

from .._core.errors import BrokerError
from .._core.model import JSONValue
from .._core.model import Secret
from .._core.model import TokenRecord
from .._driver import call
from ._calls import Handler
from ._calls import Step
from ._cookies import parse_cookie_header
from ._errors import EXCHANGE_REFUSALS
from ._errors import LOGIN_REFUSALS
from ._errors import Refusal
from ._errors import Reject
from ._errors import denied
from ._errors import reason
from ._errors import refuse
from ._http import SECURITY_HEADERS
from ._http import BrokerRequest
from ._http import Response
from ._http import redirect
from ._pages import PAGE_HEADERS
from ._pages import logout_page
from ._redirects import safe_return_to
from ._session import Session

if TYPE_CHECKING:
    from ..broker import Broker
    from ._core import MiddlewareCore

__all__ = ["callback", "login", "logout"]

log = logging.getLogger("oauth2_broker_mw.middleware")

#: callback parameters that must not appear twice (RFC 6749 §3.1: a second value could
#: smuggle a code, and "last one wins" lets a proxy and the broker read different values);
#: the parameters a descriptor keeps (``callback_params``) are checked once its broker is known
_SINGLE_PARAMS: Final = frozenset(
    {"code", "state", "iss", "error", "error_description", "error_uri"}
)


def _call_refused(table: tuple[Refusal, ...], what: str, provider: str, exc: BrokerError) -> Reject:
    """The refusal ``table`` makes of ``exc``; ``exc`` itself when no row names it."""
    rejected = refuse(table, what, provider, exc)
    if rejected is None:
        raise exc
    return rejected


# -- login -----------------------------------------------------------------------------------
def login(core: MiddlewareCore, provider: str, request: BrokerRequest) -> Handler:
    if request.method not in ("GET", "HEAD"):
        raise Reject(405, "method_not_allowed", "Use GET for the login route.")
    now = core.now()
    params = dict(reversed(request.query_pairs()))  # the first value wins
    return_to = safe_return_to(params.get("return_to"), base_url=core.base_url)
    request.return_to = return_to
    tenant = core.resolve_tenant(request)
    if tenant is None:
        raise Reject(400, "tenant_required", "This login needs a tenant.")
    principal = core.resolve_principal(request)
    resolved = principal is not None
    cookies = parse_cookie_header(request.header("cookie"))
    broker = yield from core.route_broker(tenant, provider)
    if principal is None and not core.is_oidc_login(provider, broker):
        # J10: a fresh principal on every login, never one from a pre-login session (a
        # planted session must not receive the victim's token under the attacker's name).
        principal = "browser-" + secrets.token_urlsafe(18)
    try:
        auth_request = yield from call(
            broker.start_authorization,
            broker.astart_authorization,
            tenant=tenant,
            principal=principal,
            scopes=core.scopes_of(provider, broker),
            redirect_uri=core.redirect_uri(provider, tenant),
        )
    except BrokerError as exc:
        raise _call_refused(LOGIN_REFUSALS, "login", provider, exc) from None
    issuer = auth_request.issuer
    if issuer is None:
        issuer = broker.provider.issuer
    flow: dict[str, JSONValue] = {
        "p": provider,
        "t": tenant,
        "r": return_to,
        "i": issuer,
        "rp": resolved,
        "oidc": principal is None,
    }
    response = redirect(auth_request.url, 302)
    response.headers.extend(core.flows.start(auth_request.state, flow, cookies, now))
    return response


# -- callback --------------------------------------------------------------------------------
def callback(core: MiddlewareCore, provider: str, request: BrokerRequest) -> Handler:
    if request.method != "GET":  # HEAD (link prefetchers) must not spend the code
        raise Reject(405, "method_not_allowed", "Use GET for the callback route.")
    now = core.now()
    params = _callback_params(request)
    state = params.get("state")
    if not state:
        raise Reject(400, "state_missing", "The callback carries no state.")
    # B1: the flow must have been started by THIS browser, for THIS provider, recently.
    cookies = parse_cookie_header(request.header("cookie"))
    flow = core.flows.open(state, cookies, now)
    if flow is None:
        raise Reject(400, "state_mismatch", "This login was not started in this browser.")
    back = flow.get("r")
    back = back if isinstance(back, str) else "/"  # the login's own return_to, for a retry
    try:
        tenant, return_to, issuer = _check_flow(core, flow, provider, request, now)
        _check_provider_error(params)
        broker = yield from core.route_broker(tenant, provider)
        iss = _check_issuer(broker, params.get("iss"), issuer)
        record = yield from _exchange(broker, provider, state, iss, params)
        session = yield from _new_session(
            core, flow, record, cookies, now, tenant, provider, issuer
        )
        response = redirect(return_to, 303)
        response.headers.append(core.sessions.set_cookie(session, now))
    except Reject as reject:
        reject.retry = core.retry_url(provider, reject.code, back)
        response = core.error(request, reject)
    response.headers.append(core.flows.consume(state))
    return response


class _Params(dict[str, str]):
    """The callback's query parameters, and the names that appear more than once."""

    repeated: frozenset[str]

    def refuse_repeated(self, names: Iterable[str]) -> None:
        """A 400 ``duplicate_parameter`` when one of ``names`` appears more than once."""
        for key in sorted(self.repeated.intersection(names)):
            raise Reject(
                400, "duplicate_parameter", f"The parameter {key!r} appears more than once."
            )


def _callback_params(request: BrokerRequest) -> _Params:
    pairs = request.query_pairs()
    params = _Params(pairs)
    params.repeated = frozenset(k for k, n in Counter(k for k, _ in pairs).items() if n > 1)
    params.refuse_repeated(_SINGLE_PARAMS)
    return params


def _check_flow(
    core: MiddlewareCore,
    flow: Mapping[str, JSONValue],
    provider: str,
    request: BrokerRequest,
    now: float,
) -> tuple[str, str, str | None]:
    """(tenant, return_to, issuer) of a flow still in time, for this provider and tenant."""
    iat = flow.get("iat")
    if not isinstance(iat, int) or now - iat > core.flows.ttl:
        raise Reject(400, "state_expired", "This login took too long; start again.")
    if flow.get("p") != provider:
        raise Reject(400, "state_mismatch", "This login was started for another provider.")
    tenant, return_to, issuer = flow.get("t"), flow.get("r"), flow.get("i")
    if not isinstance(tenant, str) or not isinstance(return_to, str):
        raise Reject(400, "state_mismatch", "This login cannot be completed.")
    # J2: a callback that arrives in another tenant (a header, a host) is refused.
    here = core.resolve_tenant(request) if core.tenant_resolver is not None else None
    if here is not None and here != tenant:
        raise Reject(400, "tenant_mismatch", "This login was started in another tenant.")
    return tenant, return_to, None if issuer is None else str(issuer)


def _check_provider_error(params: Mapping[str, str]) -> None:
    """B7: the provider's ``error`` answer, only after the state check, and never trusted."""
    if "error" in params:
        error = params["error"]
        shown = error if error.replace("_", "").isalnum() and len(error) <= 64 else "error"
        description = params.get("error_description", "")[:300]
        raise Reject(400, "authorization_denied", denied(shown, description))


def _check_issuer(broker: Broker, iss: str | None, issuer: str | None) -> str | None:
    """B2: the RFC 9207 mix-up defence; ``iss`` when it is the issuer the login expects."""
    if iss is not None:
        if issuer is not None and not hmac.compare_digest(iss.encode(), issuer.encode()):
            raise Reject(400, "issuer_mismatch", "The response came from an unexpected issuer.")
    elif broker.provider.authorization_response_iss_parameter_supported:
        raise Reject(400, "issuer_missing", "The provider must identify itself (iss).")
    return iss


def _exchange(
    broker: Broker, provider: str, state: str, iss: str | None, params: _Params
) -> Step[TokenRecord]:
    code = params.get("code")
    if not code:
        raise Reject(400, "invalid_request", "The callback carries no code.")
    extra_names = set(broker.provider.callback_params)
    params.refuse_repeated(extra_names)
    extra = {k: v for k, v in params.items() if k in extra_names}
    try:
        return (
            yield from call(
                broker.exchange_code,
                broker.aexchange_code,
                state=Secret(state),
                code=Secret(code),
                iss=iss,
                callback_params=extra,
            )
        )
    except BrokerError as exc:
        raise _call_refused(EXCHANGE_REFUSALS, "code exchange", provider, exc) from None


def _new_session(
    core: MiddlewareCore,
    flow: Mapping[str, JSONValue],
    record: TokenRecord,
    cookies: Mapping[str, str],
    now: float,
    tenant: str,
    provider: str,
    issuer: str | None,
) -> Step[Session]:
    """The session of a completed login in ``tenant``; the browser's old session is revoked."""
    principal = str(record.key.principal)
    old = yield from core.sessions.open(cookies, now, tenant)
    connections: tuple[str, ...] = (provider,)
    # J10: nothing from a pre-login session carries into the new one, except the other
    # connections of a principal the app itself resolved (it vouches for the identity).
    if (
        flow.get("rp") is True
        and old is not None
        and old.tenant == tenant
        and old.principal == principal
    ):
        connections = tuple(dict.fromkeys((*old.connections, provider)))
    if old is not None:
        yield from core.sessions.forget(old, now)
    # B8: a new session id on every login (no fixation).
    return Session(
        sid=secrets.token_urlsafe(24),
        tenant=str(record.key.tenant),
        principal=principal,
        connections=connections,
        created_at=now,
        seen_at=now,
        # J1: the session records the issuer with a principal taken from an ID token.
        issuer=issuer if flow.get("oidc") is True else None,
    )


# -- logout ----------------------------------------------------------------------------------
def logout(core: MiddlewareCore, request: BrokerRequest, body: bytes) -> Handler:
    if request.method in ("GET", "HEAD") and "text/html" in (request.header("accept") or ""):
        return (yield from _logout_form(core, request))
    if request.method != "POST":
        response = core.error(
            request, Reject(405, "method_not_allowed", "Log out with a POST request.")
        )
        response.headers.append(("allow", "POST"))
        return response
    now = core.now()
    cookies = parse_cookie_header(request.header("cookie"))
    form: dict[str, str] = {}
    content_type = (request.header("content-type") or "").split(";")[0].strip().lower()
    if content_type == "application/x-www-form-urlencoded" and body:
        form = dict(reversed(parse_qsl(body.decode("latin-1"), keep_blank_values=True)))
    query = dict(reversed(request.query_pairs()))
    target = safe_return_to(form.get("return_to") or query.get("return_to"), base_url=core.base_url)
    # Logout ends the session of one tenant: the one this request (or return_to) names.
    request.return_to = target
    tenant = core.resolve_tenant(request)
    if tenant is None:
        raise Reject(400, "tenant_required", "This logout needs a tenant.")
    session = yield from core.sessions.open(cookies, now, tenant)
    _check_csrf(core, request, form, session, tenant)
    if session is not None and session.tenant is not None and session.principal is not None:
        yield from _revoke_connections(core, session, session.tenant, session.principal)
        yield from core.sessions.forget(session, now)
    response = redirect(target, 303)
    response.headers.append(core.sessions.delete_cookie(tenant))
    return response


def _check_csrf(
    core: MiddlewareCore,
    request: BrokerRequest,
    form: Mapping[str, str],
    session: Session | None,
    tenant: str,
) -> None:
    """G3: POST plus an Origin check, or a CSRF token when the client sends no Origin."""
    origin = request.header("origin")
    fetch_site = request.header("sec-fetch-site")
    if fetch_site is not None and fetch_site not in ("same-origin", "none"):
        raise Reject(403, "csrf_failed", "Cross-site logout requests are refused.")
    if origin == "null":
        # An opaque origin (Chromium sends it for forms on no-referrer pages): it proves
        # nothing either way, so the CSRF token must.
        origin = None
    if origin is not None:
        sent_origin = origin.lower().encode()
        if not hmac.compare_digest(
            sent_origin, core.origin_for(tenant).encode()
        ) and not hmac.compare_digest(sent_origin, core.origin.encode()):
            raise Reject(403, "csrf_failed", "The request came from another origin.")
        return
    sent = request.header("x-csrf-token") or form.get("csrf_token") or ""
    if session is None or not hmac.compare_digest(
        sent.encode(), core.sessions.csrf_for(session.sid).encode()
    ):
        raise Reject(403, "csrf_failed", "The CSRF token is missing or wrong.")


def _revoke_connections(
    core: MiddlewareCore, session: Session, tenant: str, principal: str
) -> Step[None]:
    """Revoke the grant of every provider the session connected (a failure is logged only)."""
    for provider in session.connections:
        try:
            broker = yield from core.broker_step(tenant, provider)
            yield from call(
                broker.revoke,
                broker.arevoke,
                tenant=tenant,
                principal=principal,
                scopes=core.scopes_of(provider, broker),
            )
        except BrokerError as exc:
            log.warning("revocation at logout failed for provider=%s: %s", provider, reason(exc))


def _logout_form(core: MiddlewareCore, request: BrokerRequest) -> Handler:
    """``GET /logout`` from a browser: ask, with a POST form (SECURITY G3: GET never logs
    out). The form carries the CSRF token and the validated ``return_to``."""
    query = dict(reversed(request.query_pairs()))
    target = safe_return_to(query.get("return_to"), base_url=core.base_url)
    request.return_to = target
    tenant = core.resolve_tenant(request)
    session = None
    if tenant is not None:
        cookies = parse_cookie_header(request.header("cookie"))
        session = yield from core.sessions.open(cookies, core.now(), tenant)
    body = logout_page(
        action=f"{core.base_path}{core.prefix}/logout",
        return_to=target,
        csrf_token=None if session is None else core.sessions.csrf_for(session.sid),
        signed_in=session is not None and bool(session.connections),
    )
    return Response(200, [*PAGE_HEADERS, *SECURITY_HEADERS], body)
