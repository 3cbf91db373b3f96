"""Configuration value objects of the MockProvider: clients, quirks, one-shot faults, records.

Owns: ``MockClient`` (a registered client), ``MockQuirks`` (how the server bends the RFCs the
way real providers do), ``Fault`` / ``FaultQueue`` (one-shot or repeated injected failures) and
``RecordedRequest`` (what the server saw, with secrets redacted from its repr).
Must not import: starlette, uvicorn, httpx2 or anything from the broker core; these are plain data
so that the pytest plugin and users' conftest files can build them cheaply.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field
from typing import Any
from typing import Literal
from typing import TypeAlias

__all__ = [
    "AUTH_METHODS",
    "AUTH_METHOD_ORDER",
    "ENDPOINTS",
    "Fault",
    "FaultKind",
    "FaultQueue",
    "MockClient",
    "MockQuirks",
    "RecordedRequest",
]

FaultKind: TypeAlias = Literal[
    "error",
    "html",
    "malformed_json",
    "error_200",
    "slack_error",
    "raw",
    "latency",
    "redirect",
    "lost_response",
]
ScopeEcho: TypeAlias = Literal["space", "comma", "plus", "array", "omit"]
ExpiresInFormat: TypeAlias = Literal["int", "string", "ms", "omit"]

ENDPOINTS: frozenset[str] = frozenset(
    {
        "authorize",
        "token",
        "refresh",
        "par",
        "revoke",
        "introspect",
        "userinfo",
        "jwks",
        "discovery",
        "resource",
    }
)
#: the client authentication methods the provider implements, in the order its metadata lists them
AUTH_METHOD_ORDER: tuple[str, ...] = (
    "client_secret_basic",
    "client_secret_post",
    "client_secret_jwt",
    "private_key_jwt",
    "none",
)
AUTH_METHODS: frozenset[str] = frozenset(AUTH_METHOD_ORDER)
_ALL_GRANTS = frozenset({"authorization_code", "refresh_token", "client_credentials"})
_SECRET_FIELDS = frozenset(
    {
        "client_secret",
        "code",
        "code_verifier",
        "refresh_token",
        "access_token",
        "token",
        "password",
        "assertion",
        "client_assertion",
        "authorization",
        "cookie",
    }
)


@dataclass(frozen=True, slots=True)
class MockClient:
    """A client registered at the MockProvider.

    ``redirect_uris=None`` accepts any ``http``/``https`` redirect URI (handy in tests); a tuple
    requires an exact match. A client without ``client_secret`` is public: it authenticates with
    ``none`` (``client_id`` in the body) and may not use ``client_credentials``.

    JWT client authentication (RFC 7523): add ``client_secret_jwt`` to ``auth_methods`` to accept
    an HS256 assertion signed with ``client_secret``, or ``private_key_jwt`` with the client's
    public keys in ``jwks`` (a JWK set dict).
    """

    client_id: str = "test-client"
    client_secret: str | None = field(default="test-secret", repr=False)
    redirect_uris: tuple[str, ...] | None = None
    auth_methods: frozenset[str] = frozenset({"client_secret_basic", "client_secret_post"})
    grant_types: frozenset[str] = _ALL_GRANTS
    allowed_scopes: frozenset[str] | None = None
    jwks: Mapping[str, Any] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not self.client_id:
            raise ValueError("client_id must not be empty")
        if self.redirect_uris is not None:
            object.__setattr__(self, "redirect_uris", tuple(self.redirect_uris))
        methods = frozenset(self.auth_methods)
        if self.client_secret is None:
            methods = (methods & {"private_key_jwt"}) | {"none"}
        if "private_key_jwt" in methods and not self.jwks:
            raise ValueError("private_key_jwt needs the client's public keys in jwks")
        unknown = methods - AUTH_METHODS
        if unknown:
            raise ValueError(f"unknown client auth methods: {sorted(unknown)}")
        object.__setattr__(self, "auth_methods", methods)
        grants = frozenset(self.grant_types)
        if self.client_secret is None and "private_key_jwt" not in methods:
            grants -= {"client_credentials"}
        object.__setattr__(self, "grant_types", grants)
        if self.allowed_scopes is not None:
            object.__setattr__(self, "allowed_scopes", frozenset(self.allowed_scopes))

    @property
    def is_public(self) -> bool:
        return self.client_secret is None and "private_key_jwt" not in self.auth_methods


@dataclass(slots=True)
class MockQuirks:
    """Ways the token endpoint (and the redirect) bend the RFCs, as real providers do.

    Every field is independent and may be changed at run time (``provider.quirks.x = ...``).
    Numbers are the quirk rows of ``docs/quirks.md``.
    """

    #: GitHub (1): the token response is form-encoded unless ``Accept: application/json``.
    form_unless_accept_json: bool = False
    #: GitHub (1) ``"github"``: token errors come with HTTP 200 and ``error`` in the body;
    #: Slack (2) ``"slack"``: HTTP 200 with ``{"ok": false, "error": ...}``.
    errors_with_200: Literal["github", "slack"] | None = None
    #: Slack (2) ``"slack"``: ``{"ok": true, "team": ..., "authed_user": {<token fields>}}``;
    #: ``"slack_bot"``: the bot token at the top level with ``token_type: "bot"``.
    response_shape: Literal["standard", "slack", "slack_bot"] = "standard"
    #: (5, 6) ``expires_in`` as a number, as a string (PayPal), in milliseconds (Fiserv), or
    #: left out (GitHub, Salesforce).
    expires_in: ExpiresInFormat = "int"
    #: (1, 3, 22) how the granted scope is echoed: space string, comma string (GitHub),
    #: plus string, JSON array (Twitch) or not at all.
    scope_echo: ScopeEcho = "space"
    #: (22) scopes the server silently drops from what was asked (granted = asked - these).
    narrow_scopes: frozenset[str] = frozenset()
    #: (22) scopes the server adds to what was asked (Google's incremental union).
    widen_scopes: tuple[str, ...] = ()
    #: (4) the delimiter the server splits ``scope`` request parameters on (" ", ",", "+").
    scope_delimiter: str = " "
    #: (7) ``False``: refresh responses carry no ``refresh_token`` (Google); the old one stays.
    refresh_token_in_refresh_response: bool = True
    #: (11) extra fields added to every token response, e.g. ``{"instance_url": ...}``.
    extra_token_fields: dict[str, Any] = field(default_factory=dict)
    #: (9) Entra ID: a refresh request without ``scope`` fails with ``invalid_request``.
    require_scope_on_refresh: bool = False
    #: (12) extra query parameters put on the authorization redirect (``realmId``...).
    redirect_extra_params: dict[str, str] = field(default_factory=dict)
    #: ``token_type`` in token responses (GitHub sends ``bearer``).
    token_type: str = "Bearer"
    #: (23) name of a field carrying the refresh token lifetime (``x_refresh_token_expires_in``
    #: for QuickBooks, ``refresh_token_expires_in`` for others); needs ``refresh_ttl``.
    refresh_expires_in_field: str | None = None
    #: (15) token request bodies accepted: form (RFC 6749), JSON only (Notion), or either.
    token_body_format: Literal["form", "json", "any"] = "form"
    #: (17) refresh only at ``POST /refresh`` (Figma); ``/token`` then refuses refresh_token.
    separate_refresh_endpoint: bool = False
    #: (12) name of the code parameter on the redirect (``spapi_oauth_code`` for Amazon SP-API).
    code_param: str = "code"
    #: (16) standard request parameter name -> the name this provider wants instead, applied to
    #: authorize, token and PAR requests (TikTok: ``{"client_id": "client_key"}``).
    param_renames: dict[str, str] = field(default_factory=dict)
    #: (18) a refresh token is issued only when the authorization request carried these
    #: parameters (Google ``{"access_type": "offline"}``, Dropbox ``token_access_type``).
    refresh_token_requires_params: dict[str, str] = field(default_factory=dict)
    #: (18) ... or this scope (``offline_access`` for Microsoft, ``offline.access`` for X).
    refresh_token_requires_scope: str | None = None
    #: (18) Google: a refresh token only on a subject's first consent to the client, unless
    #: the request says ``prompt=consent``.
    refresh_token_first_consent_only: bool = False
    #: (22) granted scopes left out of the echoed ``scope`` (Microsoft drops ``openid`` and
    #: ``offline_access``); unlike ``narrow_scopes`` the token still carries them.
    echo_hidden_scopes: frozenset[str] = frozenset()
    #: (1, 2) provider error codes for token-endpoint errors: ``{"invalid_grant": "..."}`` or,
    #: per grant, ``{"refresh_token:invalid_grant": "invalid_refresh_token"}`` (Slack, GitHub).
    error_renames: dict[str, str] = field(default_factory=dict)
    #: (6) put the access-token lifetime at this path instead of ``expires_in``
    #: (Leapsome ``("expiresIn",)``, N-able ``("tokens", "access", "expirySeconds")``).
    expires_in_path: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.narrow_scopes = frozenset(self.narrow_scopes)
        self.echo_hidden_scopes = frozenset(self.echo_hidden_scopes)
        self.widen_scopes = tuple(self.widen_scopes)
        self.expires_in_path = tuple(self.expires_in_path)
        if not self.scope_delimiter:
            raise ValueError("scope_delimiter must not be empty")

    @classmethod
    def github(cls) -> MockQuirks:
        """GitHub OAuth apps: form unless Accept JSON, errors with 200, comma scope, no expiry."""
        return cls(
            form_unless_accept_json=True,
            errors_with_200="github",
            scope_echo="comma",
            scope_delimiter=",",
            expires_in="omit",
            token_type="bearer",
        )

    @classmethod
    def slack(cls) -> MockQuirks:
        """Slack v2: ``ok`` envelope, token under ``authed_user``, comma scopes, errors 200."""
        return cls(
            errors_with_200="slack",
            response_shape="slack",
            scope_echo="comma",
            scope_delimiter=",",
        )

    @classmethod
    def google(cls) -> MockQuirks:
        """Google: no refresh token in refresh responses."""
        return cls(refresh_token_in_refresh_response=False)

    @classmethod
    def entra(cls) -> MockQuirks:
        """Microsoft Entra ID: ``scope`` required on refresh."""
        return cls(require_scope_on_refresh=True)

    @classmethod
    def salesforce(cls) -> MockQuirks:
        """Salesforce: no ``expires_in``, ``instance_url`` metadata, no scope echo."""
        return cls(
            expires_in="omit",
            scope_echo="omit",
            refresh_token_in_refresh_response=False,
            extra_token_fields={"instance_url": "https://na1.salesforce.test"},
        )


@dataclass(slots=True)
class Fault:
    """An injected failure for one endpoint, used ``times`` times (``None``: until cleared).

    Kinds: ``error`` (JSON OAuth error, default status 503 or, at ``authorize``, an error
    redirect), ``html`` (an HTML error page, default 502), ``malformed_json`` (a cut-off JSON
    body, default 200), ``error_200`` (GitHub style error with HTTP 200), ``slack_error``
    (``{"ok": false}`` with HTTP 200), ``raw`` (``body`` / ``content_type`` / ``status`` as given)
    ``latency`` (only waits ``latency`` seconds, then the request is served normally),
    ``redirect`` (a 307 to ``location``, default ``<issuer>/moved``: a client must not re-POST
    credentials there) and ``lost_response`` (the request is fully processed, e.g. a refresh
    token rotated, but the client gets a 504 page instead: the "lost response" of FAPI 2.0).
    Every kind honours ``latency`` and ``retry_after`` (sent as ``Retry-After``).
    """

    endpoint: str
    kind: FaultKind = "error"
    status: int | None = None
    error: str | None = None
    error_description: str | None = None
    retry_after: int | str | None = None
    latency: float = 0.0
    times: int | None = 1
    grant_type: str | None = None
    body: str | None = field(default=None, repr=False)
    content_type: str | None = None
    location: str | None = None

    def __post_init__(self) -> None:
        if self.endpoint not in ENDPOINTS and self.endpoint != "*":
            raise ValueError(f"unknown endpoint {self.endpoint!r}; one of {sorted(ENDPOINTS)}")
        if self.times is not None and self.times < 1:
            raise ValueError("times must be >= 1 or None")

    def matches(self, endpoint: str, grant_type: str | None) -> bool:
        if self.endpoint not in (endpoint, "*"):
            return False
        return self.grant_type is None or self.grant_type == grant_type


class FaultQueue:
    """Thread-safe list of pending faults; the first match for a request is used."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = []

    def add(
        self,
        endpoint: str,
        kind: FaultKind = "error",
        *,
        status: int | None = None,
        error: str | None = None,
        error_description: str | None = None,
        retry_after: int | str | None = None,
        latency: float = 0.0,
        times: int | None = 1,
        grant_type: str | None = None,
        body: str | None = None,
        content_type: str | None = None,
        location: str | None = None,
    ) -> Fault:
        fault = Fault(
            endpoint=endpoint,
            kind=kind,
            status=status,
            error=error,
            error_description=error_description,
            retry_after=retry_after,
            latency=latency,
            times=times,
            grant_type=grant_type,
            body=body,
            content_type=content_type,
            location=location,
        )
        with self._lock:
            self._faults.append(fault)
        return fault

    def take(self, endpoint: str, grant_type: str | None = None) -> Fault | None:
        """Return (and use up one use of) the first fault matching this request."""
        with self._lock:
            for index, fault in enumerate(self._faults):
                if fault.matches(endpoint, grant_type):
                    if fault.times is not None:
                        fault.times -= 1
                        if fault.times == 0:
                            del self._faults[index]
                    return fault
        return None

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    @property
    def pending(self) -> list[Fault]:
        with self._lock:
            return list(self._faults)

    def __len__(self) -> int:
        with self._lock:
            return len(self._faults)


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One request as the MockProvider saw it. ``repr`` shows parameter names, never values."""

    endpoint: str
    method: str
    path: str
    query: Mapping[str, str]
    form: Mapping[str, str]
    headers: Mapping[str, str]
    grant_type: str | None = None
    client_id: str | None = None
    auth_method: str | None = None

    def __repr__(self) -> str:
        return (
            f"RecordedRequest(endpoint={self.endpoint!r}, method={self.method!r}, "
            f"grant_type={self.grant_type!r}, client_id={self.client_id!r}, "
            f"auth_method={self.auth_method!r}, form_keys={sorted(self.form)!r}, "
            f"query_keys={sorted(self.query)!r})"
        )

    @property
    def scope(self) -> str | None:
        """The raw ``scope`` parameter of the request (form or query), if any."""
        return self.form.get("scope", self.query.get("scope"))

    def redacted_form(self) -> dict[str, str]:
        return {k: ("<redacted>" if k in _SECRET_FIELDS else v) for k, v in self.form.items()}
