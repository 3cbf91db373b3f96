"""MockProvider: a real OAuth 2.0 / OpenID Connect authorization server for tests and demos.

Owns: the in-memory authorization server (codes, token families, rotation and reuse detection,
revocation, introspection, discovery, JWKS, userinfo, a protected resource), its counters and
request log, fault injection and provider quirks, and the clients that reach it in-process or
over loopback.
Must not import: the broker core at module level (``descriptor()`` imports it lazily), store
drivers, or uvicorn (imported by ``serve()`` only). Needs the ``starlette`` extra.

Tokens are random (``secrets.token_urlsafe``), never logged, and never put in an exception
message or a repr.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import parse_qsl, unquote_plus, urlencode, urlsplit, urlunsplit

try:
    import httpx2
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
    from starlette.routing import Route
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "oauth2_broker_mw.testing.MockProvider needs Starlette: "
        "pip install 'oauth2-broker-mw[starlette]'"
    ) from exc

from joserfc import jws, jwt
from joserfc.errors import JoseError
from joserfc.jwk import RSAKey

from ._mock_config import Fault, FaultQueue, MockClient, MockQuirks, RecordedRequest
from ._mock_dpop import DPOP_PROOF_ALGS, DPoPProofError, verify_proof
from ._mock_login import async_login, login_flow, sync_login
from ._mock_records import (
    ASYMMETRIC_ALGS,
    CHALLENGE_RE,
    CLIENT_AUTH_PARAMS,
    FORM,
    GRANTS,
    JWT_BEARER,
    NO_STORE,
    VERIFIER_RE,
    AuthorizeParams,
    CodeGrant,
    Family,
    OAuthError,
    RedirectError,
    TokenState,
    assertion_signature_ok,
    b64url_sha256,
    basic_challenge,
    error_page,
    form_action,
    login_page,
    scope_token_ok,
    unsigned_jwt,
)
from ._mock_transport import SHARED_LOOP, AsyncASGITransport, SyncASGITransport, serve_app

if TYPE_CHECKING:
    from oauth2_broker_mw._core.provider import ProviderDescriptor

# MockClient, MockQuirks, Fault and RecordedRequest are re-exported for
# ``from oauth2_broker_mw.testing.mock_provider import ...``.
__all__ = [
    "LIKE_NAMES",
    "Fault",
    "FaultQueue",
    "MockClient",
    "MockProvider",
    "MockQuirks",
    "RecordedRequest",
]

_MAX_RECORDED = 10_000  # requests kept for ``provider.requests`` (a long-lived demo stays small)
_CODE_SWEEP = 1_000  # sweep spent and expired codes when this many are held


class MockProvider:
    """An OAuth 2.0 / OIDC authorization server with in-memory state, as a Starlette app.

    ``provider.app`` is the ASGI app; ``client()`` / ``async_client()`` reach it in-process;
    ``serve()`` runs it on a loopback port. All state is guarded by one lock, so the app may be
    driven from many threads, tasks and (when served) processes at once.
    """

    def __init__(
        self,
        issuer: str = "https://mock-idp.test",
        clients: Iterable[MockClient] | None = None,
        *,
        rotation: bool = True,
        reuse_detection: bool = True,
        reuse_interval: float = 0.0,
        access_ttl: int | None = 3600,
        refresh_ttl: int | None = None,
        code_ttl: int = 60,
        issue_refresh_tokens: bool = True,
        oidc: bool = True,
        pkce: Literal["required", "optional", "unsupported"] = "optional",
        send_iss: bool = False,
        par: Literal["off", "optional", "required"] = "optional",
        auto_approve: bool = True,
        default_subject: str = "user-1",
        users: Mapping[str, str] | None = None,
        user_claims: Mapping[str, Mapping[str, Any]] | None = None,
        scopes_supported: Iterable[str] | None = None,
        quirks: MockQuirks | None = None,
        latency: Mapping[str, float] | None = None,
        clock: Callable[[], float] | None = None,
        dpop: Literal["off", "optional", "required"] = "off",
        dpop_nonce: bool = False,
    ) -> None:
        self.issuer = issuer
        #: RFC 9449: ``"off"`` (proofs ignored, Bearer only), ``"optional"`` (a valid proof at
        #: the token endpoint gets a DPoP-bound token) or ``"required"`` (no proof, no token).
        self.dpop = dpop
        #: demand a server nonce (``use_dpop_nonce`` + ``DPoP-Nonce``) at /token and /resource.
        self.dpop_nonce = dpop_nonce
        self._dpop_jtis: dict[str, float] = {}
        self._dpop_nonces = {
            "token": secrets.token_urlsafe(16),
            "resource": secrets.token_urlsafe(16),
        }
        self.rotation = rotation
        self.reuse_detection = reuse_detection
        #: seconds after a rotation during which the previous refresh token is still accepted
        #: (Auth0 "reuse interval", Okta grace period); 0 disables it.
        self.reuse_interval = reuse_interval
        self.access_ttl = access_ttl
        self.refresh_ttl = refresh_ttl
        self.code_ttl = code_ttl
        self.issue_refresh_tokens = issue_refresh_tokens
        self.oidc = oidc
        self.pkce = pkce
        self.send_iss = send_iss
        #: RFC 9126 pushed authorization requests at ``POST /par``: ``"off"`` (404),
        #: ``"optional"`` or ``"required"`` (``/authorize`` then refuses plain requests).
        self.par = par
        self.par_ttl = 60
        self._pushed: dict[str, tuple[str, dict[str, str], float]] = {}
        self.auto_approve = auto_approve
        self.default_subject = default_subject
        self.users = dict(users) if users is not None else None
        self.user_claims = {k: dict(v) for k, v in (user_claims or {}).items()}
        self.scopes_supported = tuple(scopes_supported) if scopes_supported is not None else None
        self.quirks = quirks if quirks is not None else MockQuirks()
        self.latency: dict[str, float] = dict(latency or {})
        self.faults = FaultQueue()
        #: claims forced into every ID token (``None`` removes one): ``{"nonce": "x"}``,
        #: ``{"aud": "someone-else"}``, ``{"exp": 0}``... for testing ID token validation.
        self.id_token_overrides: dict[str, Any] = {}
        #: ``"valid"``; ``"foreign_key"`` (signed by a key not in the JWKS, same ``kid``);
        #: ``"none"`` (``alg: none``, no signature).
        self.id_token_signing: Literal["valid", "foreign_key", "none"] = "valid"
        #: an ``iss`` value to put on every authorization redirect instead of the issuer
        #: (RFC 9207 mix-up tests); sent even when ``send_iss`` is off.
        self.iss_override: str | None = None
        self._jtis: dict[str, float] = {}
        self._consented: set[tuple[str, str]] = set()
        self._clock = clock or time.time
        self._offset = 0.0
        self._lock = threading.RLock()
        self._clients: dict[str, MockClient] = {}
        for client in clients if clients is not None else (MockClient(),):
            self._clients[client.client_id] = client
        self._codes: dict[str, CodeGrant] = {}
        self._tokens: dict[str, TokenState] = {}
        self._counters: Counter[str] = Counter()
        self._requests: deque[RecordedRequest] = deque(maxlen=_MAX_RECORDED)
        self._generation = 0  # bumped by close() and at the end of serve(): cuts latency short
        self._signing_key = RSAKey.generate_key(
            2048, parameters={"use": "sig", "alg": "RS256"}, auto_kid=True
        )
        self.app = self._build_app()

    # ------------------------------------------------------------------ configuration

    @classmethod
    def like(cls, name: str, **kwargs: Any) -> MockProvider:
        """A MockProvider that behaves like a well-known provider: its quirks, rotation, PKCE
        and client-auth habits. Keyword arguments override. Names: see ``LIKE_NAMES``."""
        settings = _like_settings(name.lower())
        settings.update(kwargs)
        return cls(**settings)

    def __repr__(self) -> str:
        return f"MockProvider(issuer={self.issuer!r}, clients={sorted(self._clients)!r})"

    def register_client(
        self,
        client_id: str,
        client_secret: str | None = None,
        *,
        redirect_uris: Iterable[str] | None = None,
        auth_methods: Iterable[str] | None = None,
        grant_types: Iterable[str] | None = None,
        allowed_scopes: Iterable[str] | None = None,
        jwks: Mapping[str, Any] | None = None,
    ) -> MockClient:
        """Register (or replace) a client; ``client_secret=None`` makes it public (unless it
        authenticates with ``private_key_jwt`` and its public keys in ``jwks``)."""
        kwargs: dict[str, Any] = {"client_id": client_id, "client_secret": client_secret}
        if redirect_uris is not None:
            kwargs["redirect_uris"] = tuple(redirect_uris)
        if auth_methods is not None:
            kwargs["auth_methods"] = frozenset(auth_methods)
        if grant_types is not None:
            kwargs["grant_types"] = frozenset(grant_types)
        if allowed_scopes is not None:
            kwargs["allowed_scopes"] = frozenset(allowed_scopes)
        if jwks is not None:
            kwargs["jwks"] = jwks
        client = MockClient(**kwargs)
        return self.add_client(client)

    def add_client(self, client: MockClient) -> MockClient:
        """Register (or replace) a client built with ``MockClient(...)``."""
        with self._lock:
            self._clients[client.client_id] = client
        return client

    @property
    def clients(self) -> dict[str, MockClient]:
        """A snapshot of the registered clients by ``client_id``."""
        with self._lock:
            return dict(self._clients)

    @property
    def default_client(self) -> MockClient:
        """The first registered client (``test-client`` / ``test-secret`` by default)."""
        with self._lock:
            return next(iter(self._clients.values()))

    def now(self) -> float:
        """The provider's clock: ``clock()`` plus everything passed to ``advance_time``."""
        return self._clock() + self._offset

    def advance_time(self, seconds: float) -> None:
        """Move the provider's clock forward, e.g. to expire access tokens server-side."""
        with self._lock:
            self._offset += seconds

    def url(self, path: str) -> str:
        """``path`` under the current issuer (``/token`` -> ``<issuer>/token``)."""
        return self.issuer.rstrip("/") + path

    @property
    def token_endpoint(self) -> str:
        return self.url("/token")

    @property
    def authorization_endpoint(self) -> str:
        return self.url("/authorize")

    @property
    def par_endpoint(self) -> str:
        return self.url("/par")

    @property
    def revocation_endpoint(self) -> str:
        return self.url("/revoke")

    @property
    def introspection_endpoint(self) -> str:
        return self.url("/introspect")

    @property
    def userinfo_endpoint(self) -> str:
        return self.url("/userinfo")

    @property
    def jwks_uri(self) -> str:
        return self.url("/jwks")

    @property
    def resource_url(self) -> str:
        return self.url("/resource")

    @property
    def public_jwks(self) -> dict[str, Any]:
        """The JWK set served at ``/jwks`` (public key only)."""
        return {"keys": [self._signing_key.as_dict(private=False)]}

    @property
    def signing_key(self) -> RSAKey:
        """The private RSA key that signs ID tokens (to forge tokens in tests)."""
        return self._signing_key

    # ------------------------------------------------------------------ observation

    @property
    def counters(self) -> Counter[str]:
        """A snapshot of call counts: ``token``, ``token:<grant>``, ``resource``, ``revoke``,
        ``family_revoked``, ``refresh_reuse``, ``code_reuse``, ``refresh_redeemed``, ...
        Missing keys read as 0."""
        with self._lock:
            return Counter(self._counters)

    def reset_counters(self) -> None:
        with self._lock:
            self._counters.clear()
            self._requests.clear()

    @property
    def refresh_tokens_redeemed(self) -> int:
        """How many refresh tokens were successfully exchanged."""
        with self._lock:
            return self._counters["refresh_redeemed"]

    @property
    def requests(self) -> list[RecordedRequest]:
        """Requests seen since construction or ``reset_counters()`` (the last 10 000), oldest
        first."""
        with self._lock:
            return list(self._requests)

    def requests_to(self, endpoint: str, grant_type: str | None = None) -> list[RecordedRequest]:
        """The recorded requests to one endpoint (and grant type), oldest first."""
        return [
            r
            for r in self.requests
            if r.endpoint == endpoint and (grant_type is None or r.grant_type == grant_type)
        ]

    def live_tokens(
        self, *, kind: Literal["access", "refresh"] | None = None, subject: str | None = None
    ) -> list[dict[str, Any]]:
        """Summaries of tokens that are currently valid (no token values)."""
        now = self.now()
        with self._lock:
            return [
                {
                    "kind": t.kind,
                    "client_id": t.family.client_id,
                    "subject": t.family.subject,
                    "scopes": t.scopes,
                    "family": t.family.id,
                    "expires_at": t.expires_at,
                }
                for t in self._tokens.values()
                if t.alive(now)
                and (kind is None or t.kind == kind)
                and (subject is None or t.family.subject == subject)
            ]

    def token_info(self, token_value: str) -> dict[str, Any] | None:
        """What the server knows about one token (no token values), or ``None`` if unknown."""
        now = self.now()
        with self._lock:
            rec = self._tokens.get(token_value)
            if rec is None:
                return None
            return {
                "kind": rec.kind,
                "active": rec.alive(now),
                "status": "revoked" if rec.family.revoked else rec.status,
                "client_id": rec.family.client_id,
                "subject": rec.family.subject,
                "scopes": rec.scopes,
                "family": rec.family.id,
                "expires_at": rec.expires_at,
            }

    # ------------------------------------------------------------------ server-side actions

    def issue_tokens(
        self,
        client_id: str | None = None,
        subject: str | None = None,
        scopes: Iterable[str] = (),
        *,
        refresh: bool = True,
        access_ttl: int | Literal["default"] | None = "default",
        nonce: str | None = None,
    ) -> dict[str, Any]:
        """Mint a token pair directly, as if an authorization had just completed.

        Returns a standard JSON token response (``access_token``, ``token_type``,
        ``expires_in``, ``refresh_token``, ``scope``, ``id_token`` for ``openid``).
        """
        cid = client_id if client_id is not None else self.default_client.client_id
        if cid not in self.clients:
            raise ValueError(f"unknown client {cid!r}")
        scope_tuple = tuple(dict.fromkeys(scopes))
        with self._lock:
            family = self._new_family(cid, subject or self.default_subject, scope_tuple, nonce)
            access, refresh_token, ttl = self._mint_pair(
                family, scope_tuple, with_refresh=refresh, access_ttl=access_ttl
            )
        payload: dict[str, Any] = {"access_token": access, "token_type": "Bearer"}
        if ttl is not None:
            payload["expires_in"] = ttl
        if refresh_token is not None:
            payload["refresh_token"] = refresh_token
        payload["scope"] = " ".join(scope_tuple)
        if self.oidc and "openid" in scope_tuple:
            payload["id_token"] = self._id_token(family, access)
        return payload

    def invalidate_access_token(self, access_token: str) -> bool:
        """Kill one access token before it expires (quirk 21). True if it was alive."""
        with self._lock:
            rec = self._tokens.get(access_token)
            if rec is None or rec.kind != "access" or not rec.alive(self.now()):
                return False
            rec.status = "revoked"
            self._counters["access_invalidated"] += 1
            return True

    def revoke_all(self, *, subject: str | None = None, client_id: str | None = None) -> int:
        """Revoke every token family of a subject and/or client; returns how many."""
        with self._lock:
            families = {
                t.family
                for t in self._tokens.values()
                if not t.family.revoked
                and (subject is None or t.family.subject == subject)
                and (client_id is None or t.family.client_id == client_id)
            }
            for family in families:
                family.revoked = True
            return len(families)

    def login(
        self,
        client: Any,
        *,
        user: str | None = None,
        provider: str = "mock",
        prefix: str = "/oauth2",
        return_to: str = "/",
    ) -> Any:
        """Log ``client`` in to your app as ``user``, as a browser would; returns the callback's
        ``303`` response (the client then holds the session cookie).

        ``client`` is your app's test client: Starlette's ``TestClient``, an ``httpx`` /
        ``httpx2`` client over an ASGI or WSGI transport, or Flask's ``app.test_client()``.
        ``provider`` is the middleware's name for this provider (the ``brokers=`` key) and
        ``prefix`` its route prefix. With ``auto_approve`` (the default) the provider approves
        at once with ``user`` as the subject (``default_subject`` when not given); otherwise
        its login form is filled in with ``user``'s password from ``users``. The broker must
        reach this provider through :meth:`client` / :meth:`async_client`. Raises
        ``AssertionError`` naming the step and the error code when a step does not redirect::

            mock_provider.login(client, user="alice")
            assert client.get("/me").json()["principal"] == "alice"
        """
        return sync_login(self, client, login_flow(self, user, provider, prefix, return_to))

    async def alogin(
        self,
        client: Any,
        *,
        user: str | None = None,
        provider: str = "mock",
        prefix: str = "/oauth2",
        return_to: str = "/",
    ) -> Any:
        """:meth:`login` for an async client (``httpx.AsyncClient`` / ``httpx2.AsyncClient``
        over an ASGI transport)."""
        flow = login_flow(self, user, provider, prefix, return_to)
        return await async_login(self, client, flow)

    def expire_access_tokens(self) -> int:
        """Make every live access token expired now; returns how many."""
        now = self.now()
        with self._lock:
            count = 0
            for rec in self._tokens.values():
                if rec.kind == "access" and rec.alive(now):
                    rec.expires_at = now - 1
                    count += 1
            return count

    # ------------------------------------------------------------------ clients

    def transport(self) -> httpx2.BaseTransport:
        """A sync httpx2 transport into the app (shared background loop; thread-safe)."""
        return SyncASGITransport(self.app, SHARED_LOOP)

    def async_transport(self) -> httpx2.AsyncBaseTransport:
        """An async httpx2 transport into the app (runs on the caller's event loop)."""
        return AsyncASGITransport(app=self.app)

    def client(self, **kwargs: Any) -> httpx2.Client:
        """An in-process sync ``httpx2.Client`` (base URL = issuer); usable from many threads."""
        kwargs.setdefault("base_url", self.issuer)
        return httpx2.Client(transport=self.transport(), **kwargs)

    def async_client(self, **kwargs: Any) -> httpx2.AsyncClient:
        """An in-process ``httpx2.AsyncClient`` (base URL = issuer)."""
        kwargs.setdefault("base_url", self.issuer)
        return httpx2.AsyncClient(transport=self.async_transport(), **kwargs)

    @contextmanager
    def serve(self, port: int = 0) -> Iterator[str]:
        """Serve on ``http://127.0.0.1:<port>`` (default: an ephemeral port); yields that base
        URL. Only the loopback interface is bound.

        While serving, the issuer (and so every advertised endpoint) is that base URL; the
        previous issuer comes back on exit. One ``serve()`` at a time per provider.
        """
        previous = self.issuer

        def set_issuer(port: int) -> None:
            self.issuer = f"http://127.0.0.1:{port}"

        try:
            with serve_app(self.app, port=port, on_port=set_issuer):
                try:
                    yield self.issuer
                finally:
                    self._generation += 1  # cut injected latency short so shutdown is quick
        finally:
            self.issuer = previous

    def close(self) -> None:
        """End injected latency that is still waiting (idempotent). The provider stays usable;
        sync clients share one background loop per process, so there is no thread to stop."""
        self._generation += 1

    def __enter__(self) -> MockProvider:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def descriptor(self, **overrides: Any) -> ProviderDescriptor:
        """A ``ProviderDescriptor`` pointing at this server; keyword arguments override fields.

        It mirrors the provider's current settings (issuer and endpoints, so call it inside
        ``serve()`` for a loopback descriptor; scope delimiter, PKCE mode, scope on refresh,
        ``iss`` on the redirect, the Slack token path, an unknown expiry when ``expires_in`` is
        not sent). Fields the descriptor class does not know are dropped, overrides never.
        """
        import inspect

        from oauth2_broker_mw._core.provider import ProviderDescriptor

        fields: dict[str, Any] = {
            "id": "mock",
            "issuer": self.issuer,
            "authorization_endpoint": self.authorization_endpoint,
            "token_endpoint": self.token_endpoint,
            "revocation_endpoint": self.revocation_endpoint,
            "introspection_endpoint": self.introspection_endpoint,
            "userinfo_endpoint": self.userinfo_endpoint,
            "jwks_uri": self.jwks_uri,
            "grants": list(GRANTS),
            "client_auth_method": "client_secret_basic",
            "scope_delimiter": self.quirks.scope_delimiter,
            "pkce": self.pkce,
            "scope_on_refresh": self.quirks.require_scope_on_refresh,
        }
        if self.access_ttl is None or self.quirks.expires_in == "omit":
            fields["expiry_policy"] = "unknown"
        if self.send_iss:
            fields["authorization_response_iss_parameter_supported"] = True
        if self.quirks.response_shape == "slack":
            fields["token_path"] = ("authed_user",)
        if self.quirks.response_shape == "slack_bot":
            fields["token_type_aliases"] = {"bot": "Bearer"}
        if self.quirks.param_renames:
            fields["param_renames"] = dict(self.quirks.param_renames)
        if self.quirks.expires_in_path:
            fields["expires_in_path"] = tuple(self.quirks.expires_in_path)
        if self.quirks.separate_refresh_endpoint:
            fields["refresh_endpoint"] = self.url("/refresh")
        if self.par == "required":
            fields["pushed_authorization_request_endpoint"] = self.par_endpoint
            fields["require_pushed_authorization_requests"] = True
        if self.quirks.code_param != "code":
            fields["code_param"] = self.quirks.code_param
        if self.quirks.expires_in == "ms":
            fields["expires_in_unit"] = 0.001
        if self.quirks.token_body_format == "json":
            fields["body_format"] = "json"
        if self.dpop != "off":
            fields["dpop"] = True
        try:
            params: Mapping[str, inspect.Parameter] = inspect.signature(
                ProviderDescriptor
            ).parameters
        except (TypeError, ValueError):  # pragma: no cover
            params = {}
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        if params and not takes_any:
            fields = {k: v for k, v in fields.items() if k in params}
        fields.update(overrides)
        return ProviderDescriptor(**fields)

    def retarget(self, descriptor: ProviderDescriptor) -> ProviderDescriptor:
        """``descriptor`` (e.g. a preset) with its endpoints pointed at this server.

        Its quirks stay as they are; endpoints it does not have stay absent (a preset without a
        revocation endpoint does not gain one), and ``allowed_origins`` is cleared so the signer
        may send tokens to this server.
        """

        def ours(current: str | None, url: str) -> str | None:
            return url if current else None

        changes: dict[str, Any] = {
            "token_endpoint": self.token_endpoint,
            "authorization_endpoint": ours(
                descriptor.authorization_endpoint, self.authorization_endpoint
            ),
            "revocation_endpoint": ours(descriptor.revocation_endpoint, self.revocation_endpoint),
            "introspection_endpoint": ours(
                descriptor.introspection_endpoint, self.introspection_endpoint
            ),
            "userinfo_endpoint": ours(descriptor.userinfo_endpoint, self.userinfo_endpoint),
            "issuer": ours(descriptor.issuer, self.issuer),
            "jwks_uri": ours(descriptor.jwks_uri, self.jwks_uri),
            "refresh_endpoint": ours(descriptor.refresh_endpoint, self.url("/refresh")),
            "pushed_authorization_request_endpoint": ours(
                descriptor.pushed_authorization_request_endpoint, self.par_endpoint
            ),
            "allowed_origins": (),
        }
        return descriptor.replace(**changes)

    # ------------------------------------------------------------------ state helpers (locked)

    def _new_family(
        self, client_id: str, subject: str, scopes: tuple[str, ...], nonce: str | None
    ) -> Family:
        return Family(
            id=secrets.token_hex(8),
            client_id=client_id,
            subject=subject,
            scopes=scopes,
            nonce=nonce,
            auth_time=int(self.now()),
        )

    def _mint(
        self,
        kind: Literal["access", "refresh"],
        family: Family,
        scopes: tuple[str, ...],
        ttl: int | None,
        jkt: str | None = None,
    ) -> str:
        prefix = "mock-at-" if kind == "access" else "mock-rt-"
        value = prefix + secrets.token_urlsafe(32)
        now = self.now()
        self._tokens[value] = TokenState(
            kind=kind,
            family=family,
            scopes=scopes,
            issued_at=now,
            expires_at=None if ttl is None else now + ttl,
            jkt=jkt,
        )
        family.tokens.add(value)
        return value

    def _mint_pair(
        self,
        family: Family,
        scopes: tuple[str, ...],
        *,
        with_refresh: bool,
        access_ttl: int | Literal["default"] | None = "default",
        jkt: str | None = None,
    ) -> tuple[str, str | None, int | None]:
        ttl = self.access_ttl if access_ttl == "default" else access_ttl
        access = self._mint("access", family, scopes, ttl, jkt)
        refresh = (
            self._mint("refresh", family, scopes, self.refresh_ttl, jkt) if with_refresh else None
        )
        return access, refresh, ttl

    def _revoke_family(self, family: Family, *, reuse: bool = True) -> None:
        """Revoke every token of a grant. ``family_revoked`` counts the revocations caused by a
        reused code or refresh token; an RFC 7009 revocation is counted as ``revoked``."""
        if not family.revoked:
            family.revoked = True
            if reuse:
                self._counters["family_revoked"] += 1

    def _alive_access(self, value: str) -> TokenState | None:
        rec = self._tokens.get(value)
        if rec is None or rec.kind != "access" or not rec.alive(self.now()):
            return None
        return rec

    def _id_token(self, family: Family, access_token: str | None) -> str:
        now = int(self.now())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": family.subject,
            "aud": family.client_id,
            "iat": now,
            "exp": now + (self.access_ttl or 3600),
            "auth_time": family.auth_time,
        }
        if family.nonce is not None:
            claims["nonce"] = family.nonce
        if access_token is not None:
            digest = hashlib.sha256(access_token.encode("ascii")).digest()
            claims["at_hash"] = base64.urlsafe_b64encode(digest[:16]).rstrip(b"=").decode()
        claims.update(self.user_claims.get(family.subject, {}))
        for name, value in self.id_token_overrides.items():
            if value is None:
                claims.pop(name, None)
            else:
                claims[name] = value
        if self.id_token_signing == "none":
            return unsigned_jwt(claims)
        key = self._signing_key
        if self.id_token_signing == "foreign_key":
            # Same kid as the published key, different private key: the signature fails.
            key = RSAKey.generate_key(2048, parameters={"kid": key.kid or "", "use": "sig"})
        header = {"alg": "RS256", "kid": self._signing_key.kid, "typ": "JWT"}
        return jwt.encode(header, claims, key)

    # ------------------------------------------------------------------ request plumbing

    def _build_app(self) -> Starlette:
        routes = [
            Route("/authorize", self._authorize, methods=["GET", "POST"]),
            Route("/token", self._token, methods=["POST"]),
            Route("/refresh", self._refresh_endpoint, methods=["POST"]),
            Route("/par", self._par_endpoint, methods=["POST"]),
            Route("/revoke", self._revoke, methods=["POST"]),
            Route("/introspect", self._introspect, methods=["POST"]),
            Route("/userinfo", self._userinfo, methods=["GET", "POST"]),
            Route("/jwks", self._jwks, methods=["GET"]),
            Route("/resource", self._resource, methods=["GET", "POST"]),
            Route("/.well-known/openid-configuration", self._openid_configuration),
            Route("/.well-known/oauth-authorization-server", self._as_metadata),
        ]
        return Starlette(routes=routes)

    async def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        generation = self._generation
        while generation == self._generation:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            await asyncio.sleep(min(remaining, 0.05))

    async def _read_form(self, request: Request, *, token_body: bool = False) -> dict[str, str]:
        if request.method != "POST":
            return {}
        body = await request.body()
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if not body:
            return {}
        accepted = self.quirks.token_body_format if token_body else "form"
        if ctype == "application/json" and accepted in ("json", "any"):
            try:
                data = json.loads(body)
            except ValueError:
                raise OAuthError("invalid_request", "malformed JSON body") from None
            if not isinstance(data, dict):
                raise OAuthError("invalid_request", "JSON body must be an object")
            return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in data.items()}
        if ctype != "application/x-www-form-urlencoded" or accepted == "json":
            expected = "application/json" if accepted == "json" else FORM
            raise OAuthError("invalid_request", f"body must be {expected}")
        pairs = parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)
        form: dict[str, str] = {}
        for key, value in pairs:
            if key in form:
                # RFC 6749 §3.2: parameters MUST NOT be included more than once.
                raise OAuthError("invalid_request", f"parameter {key!r} repeated")
            form[key] = value
        return form

    def _standard_names(self, params: Mapping[str, str]) -> dict[str, str]:
        """Undo ``quirks.param_renames`` (standard name -> this provider's name): the provider's
        names are read as the standard ones, and the standard names it renamed are ignored."""
        renames = self.quirks.param_renames
        if not renames:
            return dict(params)
        reverse = {theirs: ours for ours, theirs in renames.items()}
        return {
            reverse.get(key, key): value
            for key, value in params.items()
            if key in reverse or key not in renames
        }

    async def _enter(
        self,
        endpoint: str,
        request: Request,
        form: Mapping[str, str],
        *,
        grant_type: str | None = None,
        client_id: str | None = None,
        auth_method: str | None = None,
    ) -> Fault | None:
        """Count and record the request, apply configured latency; return a matching fault."""
        record = RecordedRequest(
            endpoint=endpoint,
            method=request.method,
            path=request.url.path,
            query=dict(request.query_params),
            form=dict(form),
            headers={k.lower(): v for k, v in request.headers.items()},
            grant_type=grant_type,
            client_id=client_id,
            auth_method=auth_method,
        )
        with self._lock:
            self._counters[endpoint] += 1
            if grant_type:
                self._counters[f"{endpoint}:{grant_type}"] += 1
            self._requests.append(record)
        delay = self.latency.get(endpoint, 0.0)
        fault = self.faults.take(endpoint, grant_type)
        if fault is not None:
            with self._lock:
                self._counters[f"fault:{endpoint}"] += 1
            delay += fault.latency
        if delay > 0:
            await self._sleep(delay)
        if fault is not None and fault.kind == "latency":
            return None
        return fault

    def _fault_response(self, fault: Fault, endpoint: str) -> Response:
        headers: dict[str, str] = {}
        if fault.retry_after is not None:
            headers["Retry-After"] = str(fault.retry_after)
        if fault.kind == "html":
            status = fault.status or 502
            page = (
                f"<!DOCTYPE html><html><head><title>{status} Error</title></head>"
                f"<body><h1>{status} Server Error</h1><p>The server encountered a temporary "
                "error and could not complete your request.</p></body></html>"
            )
            return HTMLResponse(page, status_code=status, headers=headers)
        if fault.kind == "redirect":
            location = fault.location or self.url("/moved")
            return RedirectResponse(location, status_code=fault.status or 307, headers=headers)
        if fault.kind == "lost_response":
            status = fault.status or 504
            page = f"<html><body><h1>{status} Gateway Timeout</h1></body></html>"
            return HTMLResponse(page, status_code=status, headers=headers)
        if fault.kind == "malformed_json":
            return Response(
                '{"access_token": "mock-at-trunc',
                status_code=fault.status or 200,
                media_type="application/json",
                headers=headers,
            )
        if fault.kind == "raw":
            return Response(
                fault.body or "",
                status_code=fault.status or 200,
                media_type=fault.content_type or "text/plain",
                headers=headers,
            )
        if fault.kind == "slack_error":
            return JSONResponse(
                {"ok": False, "error": fault.error or "invalid_refresh_token"},
                status_code=fault.status or 200,
                headers=headers,
            )
        if fault.kind == "error_200":
            err = OAuthError(fault.error or "bad_verification_code", fault.error_description)
            return JSONResponse(err.body(), status_code=fault.status or 200, headers=headers)
        status = fault.status or 503
        default_error = "temporarily_unavailable" if status >= 429 else "invalid_request"
        if endpoint in ("resource", "userinfo") and status == 401:
            headers["WWW-Authenticate"] = 'Bearer error="invalid_token"'
            default_error = "invalid_token"
        err = OAuthError(fault.error or default_error, fault.error_description)
        return JSONResponse(err.body(), status_code=status, headers={**headers, **NO_STORE})

    def _authenticate_client(
        self, request: Request, form: Mapping[str, str]
    ) -> tuple[MockClient, str]:
        """RFC 6749 §2.3.1 (basic with form-decoding, or post), RFC 7523 JWT assertions
        (``client_secret_jwt``, ``private_key_jwt``) and public clients (``none``)."""
        header = request.headers.get("authorization")
        if "client_assertion" in form or "client_assertion_type" in form:
            if header is not None or "client_secret" in form:
                raise OAuthError("invalid_request", "more than one client authentication method")
            return self._authenticate_assertion(request, form)
        basic: tuple[str, str] | None = None
        if header is not None:
            scheme, _, param = header.partition(" ")
            if scheme.lower() != "basic":
                raise OAuthError("invalid_client", "unsupported authorization scheme", 401)
            try:
                decoded = base64.b64decode(param.strip(), validate=True).decode("utf-8")
            except (ValueError, UnicodeDecodeError):
                raise OAuthError(
                    "invalid_client", "malformed basic credentials", 401, basic_challenge()
                ) from None
            user, sep, password = decoded.partition(":")
            if not sep:
                raise OAuthError(
                    "invalid_client", "malformed basic credentials", 401, basic_challenge()
                )
            basic = (unquote_plus(user), unquote_plus(password))
        if basic is not None and "client_secret" in form:
            raise OAuthError("invalid_request", "more than one client authentication method")
        if basic is not None:
            client_id, secret = basic
            method = "client_secret_basic"
            if "client_id" in form and form["client_id"] != client_id:
                raise OAuthError("invalid_request", "client_id does not match credentials")
        elif "client_secret" in form:
            client_id, secret, method = (
                form.get("client_id", ""),
                form["client_secret"],
                ("client_secret_post"),
            )
        else:
            client_id, secret, method = form.get("client_id", ""), "", "none"
        with self._lock:
            client = self._clients.get(client_id)
        challenge = basic_challenge() if basic is not None else {}
        if client is None:
            raise OAuthError("invalid_client", "unknown client", 401, challenge)
        if method not in client.auth_methods:
            raise OAuthError(
                "invalid_client", f"client may not authenticate with {method}", 401, challenge
            )
        if method != "none":
            expected = client.client_secret or ""
            if not hmac.compare_digest(secret.encode(), expected.encode()):
                raise OAuthError("invalid_client", "client authentication failed", 401, challenge)
        return client, method

    def _authenticate_assertion(
        self, request: Request, form: Mapping[str, str]
    ) -> tuple[MockClient, str]:
        if form.get("client_assertion_type") != JWT_BEARER:
            raise OAuthError("invalid_client", "unsupported client_assertion_type", 401)
        assertion = form.get("client_assertion", "")
        try:
            compact = jws.extract_compact(assertion.encode("ascii"))
            claims = json.loads(compact.payload)
        except (ValueError, JoseError):
            raise OAuthError("invalid_client", "malformed client assertion", 401) from None
        if not isinstance(claims, dict):
            raise OAuthError("invalid_client", "malformed client assertion", 401)
        alg = compact.protected.get("alg")
        client_id = claims.get("sub")
        if not isinstance(client_id, str) or claims.get("iss") != client_id:
            raise OAuthError("invalid_client", "assertion iss and sub must be the client", 401)
        if form.get("client_id", client_id) != client_id:
            raise OAuthError("invalid_client", "client_id does not match the assertion", 401)
        with self._lock:
            client = self._clients.get(client_id)
        if client is None:
            raise OAuthError("invalid_client", "unknown client", 401)
        if alg == "HS256" and client.client_secret is not None:
            method = "client_secret_jwt"
        elif alg in ASYMMETRIC_ALGS and client.jwks:
            method = "private_key_jwt"
        else:
            raise OAuthError("invalid_client", "unsupported assertion algorithm", 401)
        if method not in client.auth_methods:
            raise OAuthError("invalid_client", f"client may not authenticate with {method}", 401)
        if not assertion_signature_ok(assertion, str(alg), client):
            raise OAuthError("invalid_client", "client assertion signature invalid", 401)
        audience = claims.get("aud")
        audiences = {audience} if isinstance(audience, str) else set(audience or ())
        accepted = {self.issuer, self.token_endpoint, self.url(request.url.path)}
        if not audiences & accepted:
            raise OAuthError("invalid_client", "client assertion audience mismatch", 401)
        now = self.now()
        exp = claims.get("exp")
        if not isinstance(exp, int | float) or exp <= now:
            raise OAuthError("invalid_client", "client assertion expired", 401)
        nbf = claims.get("nbf")
        if isinstance(nbf, int | float) and nbf > now + 60:
            raise OAuthError("invalid_client", "client assertion not yet valid", 401)
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti:
            raise OAuthError("invalid_client", "client assertion needs a jti", 401)
        with self._lock:
            for seen, expiry in list(self._jtis.items()):
                if expiry <= now:
                    del self._jtis[seen]
            if f"{client_id}\x00{jti}" in self._jtis:
                raise OAuthError("invalid_client", "client assertion replayed", 401)
            self._jtis[f"{client_id}\x00{jti}"] = float(exp)
        return client, method

    def _parse_scopes(self, raw: str | None, client: MockClient) -> tuple[str, ...]:
        if raw is None:
            return ()
        delimiter = self.quirks.scope_delimiter
        parts = raw.split() if delimiter == " " else raw.split(delimiter)
        scopes = tuple(dict.fromkeys(p for p in parts if p != ""))
        for scope in scopes:
            if not scope_token_ok(scope):
                raise OAuthError("invalid_scope", "malformed scope")
        allowed: set[str] | None = None
        if self.scopes_supported is not None:
            allowed = set(self.scopes_supported)
        if client.allowed_scopes is not None:
            own = set(client.allowed_scopes)
            allowed = own if allowed is None else own & allowed
        if allowed is not None:
            unknown = [s for s in scopes if s not in allowed]
            if unknown:
                raise OAuthError("invalid_scope", f"scope not allowed: {' '.join(unknown)}")
        return scopes

    def _grant_scopes(self, requested: tuple[str, ...]) -> tuple[str, ...]:
        granted = [s for s in requested if s not in self.quirks.narrow_scopes]
        granted.extend(s for s in self.quirks.widen_scopes if s not in granted)
        return tuple(granted)

    # ------------------------------------------------------------------ token responses

    def _token_payload(
        self,
        access: str,
        refresh: str | None,
        ttl: int | None,
        scopes: tuple[str, ...],
        id_token: str | None,
        jkt: str | None = None,
    ) -> dict[str, Any]:
        q = self.quirks
        payload: dict[str, Any] = {
            "access_token": access,
            "token_type": "DPoP" if jkt is not None else q.token_type,
        }
        if ttl is not None and q.expires_in != "omit":
            if q.expires_in == "string":
                payload["expires_in"] = str(ttl)
            elif q.expires_in == "ms":
                payload["expires_in"] = ttl * 1000
            else:
                payload["expires_in"] = ttl
        if refresh is not None:
            payload["refresh_token"] = refresh
            if q.refresh_expires_in_field and self.refresh_ttl is not None:
                payload[q.refresh_expires_in_field] = self.refresh_ttl
        echoed = [s for s in scopes if s not in q.echo_hidden_scopes]
        if q.scope_echo == "array":
            payload["scope"] = echoed
        elif q.scope_echo != "omit":
            delimiter = {"space": " ", "comma": ",", "plus": "+"}[q.scope_echo]
            payload["scope"] = delimiter.join(echoed)
        if id_token is not None:
            payload["id_token"] = id_token
        if q.expires_in_path and "expires_in" in payload:
            node = payload
            for part in q.expires_in_path[:-1]:
                node = node.setdefault(part, {})
            node[q.expires_in_path[-1]] = payload.pop("expires_in")
        payload.update(q.extra_token_fields)
        return payload

    def _render_token(self, request: Request, payload: dict[str, Any], subject: str) -> Response:
        if self.quirks.response_shape == "slack_bot":
            payload = {
                "ok": True,
                **payload,
                "token_type": "bot",
                "bot_user_id": "U0MOCKBOT",
                "app_id": "A0MOCK",
                "team": {"id": "T0MOCK", "name": "Mock Team"},
                "authed_user": {"id": subject},
            }
        elif self.quirks.response_shape == "slack":
            payload = {
                "ok": True,
                "app_id": "A0MOCK",
                "team": {"id": "T0MOCK", "name": "Mock Team"},
                "authed_user": {"id": subject, **payload},
            }
        return self._render_body(request, payload, 200)

    def _render_body(
        self,
        request: Request,
        payload: dict[str, Any],
        status: int,
        headers: Mapping[str, str] | None = None,
    ) -> Response:
        all_headers = {**NO_STORE, **(headers or {})}
        accept = request.headers.get("accept", "")
        if self.quirks.form_unless_accept_json and "application/json" not in accept.lower():
            flat = {
                k: json.dumps(v) if isinstance(v, dict | list) else str(v)
                for k, v in payload.items()
            }
            return Response(
                urlencode(flat),
                status_code=status,
                media_type="application/x-www-form-urlencoded",
                headers=all_headers,
            )
        return JSONResponse(payload, status_code=status, headers=all_headers)

    def _render_token_error(
        self, request: Request, err: OAuthError, grant_type: str | None = None
    ) -> Response:
        with self._lock:
            self._counters["token:error"] += 1
            self._counters[f"token:error:{err.error}"] += 1
        renames = self.quirks.error_renames
        code = renames.get(f"{grant_type}:{err.error}", renames.get(err.error, err.error))
        if code != err.error:
            err = OAuthError(code, err.description, err.status, err.headers)
        mode = self.quirks.errors_with_200
        if mode == "slack":
            return JSONResponse({"ok": False, "error": err.error}, headers=NO_STORE)
        if mode == "github":
            return self._render_body(request, err.body(), 200)
        return self._render_body(request, err.body(), err.status, err.headers)

    # ------------------------------------------------------------------ /token

    async def _token(self, request: Request) -> Response:
        return await self._token_like(request, "token")

    async def _refresh_endpoint(self, request: Request) -> Response:
        if not self.quirks.separate_refresh_endpoint:
            return JSONResponse({"error": "not_found"}, status_code=404)
        return await self._token_like(request, "refresh")

    async def _token_like(self, request: Request, endpoint: str) -> Response:
        try:
            form = self._standard_names(await self._read_form(request, token_body=True))
        except OAuthError as err:
            await self._enter(endpoint, request, {})
            return self._render_token_error(request, err)
        grant_type = form.get("grant_type", "")
        client_id: str | None = None
        method: str | None = None
        try:
            client, method = self._authenticate_client(request, form)
            client_id = client.client_id
        except OAuthError as err:
            fault = await self._enter(endpoint, request, form, grant_type=grant_type or None)
            if fault is not None and fault.kind != "lost_response":
                return self._fault_response(fault, endpoint)
            return self._render_token_error(request, err, grant_type)
        fault = await self._enter(
            endpoint,
            request,
            form,
            grant_type=grant_type or None,
            client_id=client_id,
            auth_method=method,
        )
        if fault is not None and fault.kind != "lost_response":
            return self._fault_response(fault, endpoint)
        try:
            # DPoP is judged before the grant: a refused proof consumes no code or token.
            jkt = self._token_dpop(request)
            response = self._dispatch_grant(request, endpoint, client, grant_type, form, jkt)
        except OAuthError as err:
            response = self._render_token_error(request, err, grant_type)
        if fault is not None:  # lost_response: the work is done, the answer never arrives
            return self._fault_response(fault, endpoint)
        return response

    def _token_dpop(self, request: Request) -> str | None:
        """The thumbprint a new token is bound to (RFC 9449 §5), or ``None`` for Bearer."""
        if self.dpop == "off":
            return None
        proofs = request.headers.getlist("dpop")
        if not proofs:
            if self.dpop == "required":
                raise OAuthError("invalid_dpop_proof", "a DPoP proof is required")
            return None
        if len(proofs) != 1:
            raise OAuthError("invalid_dpop_proof", "exactly one DPoP header is allowed")
        try:
            with self._lock:
                proof = verify_proof(
                    proofs[0],
                    htm=request.method,
                    htu=str(request.url),
                    now=self._clock(),
                    seen_jtis=self._dpop_jtis,
                )
        except DPoPProofError as exc:
            with self._lock:
                self._counters["dpop:invalid_proof"] += 1
            raise OAuthError("invalid_dpop_proof", str(exc)) from None
        if self.dpop_nonce:
            expected = self._dpop_nonces["token"]
            if proof.nonce is None or not hmac.compare_digest(proof.nonce, expected):
                with self._lock:
                    self._counters["dpop:nonce_demanded:token"] += 1
                raise OAuthError(
                    "use_dpop_nonce",
                    "Authorization server requires nonce in DPoP proof",
                    400,
                    {"DPoP-Nonce": expected},
                )
        with self._lock:
            self._counters["dpop:proof_ok:token"] += 1
        return proof.jkt

    def rotate_dpop_nonces(self) -> None:
        """Issue new server nonces: proofs carrying the old ones get ``use_dpop_nonce``."""
        with self._lock:
            self._dpop_nonces = {k: secrets.token_urlsafe(16) for k in self._dpop_nonces}

    def _dispatch_grant(
        self,
        request: Request,
        endpoint: str,
        client: MockClient,
        grant_type: str,
        form: Mapping[str, str],
        jkt: str | None = None,
    ) -> Response:
        if not grant_type:
            raise OAuthError("invalid_request", "missing grant_type")
        if grant_type not in GRANTS:
            raise OAuthError("unsupported_grant_type", "unsupported grant_type")
        if self.quirks.separate_refresh_endpoint and (
            (endpoint == "refresh") != (grant_type == "refresh_token")
        ):
            where = "/refresh" if grant_type == "refresh_token" else "/token"
            raise OAuthError("unsupported_grant_type", f"use {where} for {grant_type}")
        if grant_type not in client.grant_types:
            raise OAuthError("unauthorized_client", f"client may not use {grant_type}")
        if grant_type == "authorization_code":
            return self._grant_code(request, client, form, jkt)
        if grant_type == "refresh_token":
            return self._grant_refresh(request, client, form, jkt)
        return self._grant_client_credentials(request, client, form, jkt)

    def _grant_code(
        self, request: Request, client: MockClient, form: Mapping[str, str], jkt: str | None = None
    ) -> Response:
        code_value = form.get("code")
        if not code_value:
            raise OAuthError("invalid_request", "missing code")
        verifier = form.get("code_verifier")
        with self._lock:
            code = self._codes.get(code_value)
            if code is None or code.client_id != client.client_id:
                raise OAuthError("invalid_grant", "unknown authorization code")
            if code.used:
                # RFC 6749 §4.1.2: a reused code revokes what was issued from it.
                self._counters["code_reuse"] += 1
                if code.family is not None:
                    self._revoke_family(code.family)
                raise OAuthError("invalid_grant", "authorization code already used")
            if self.now() >= code.expires_at:
                raise OAuthError("invalid_grant", "authorization code expired")
            if code.redirect_uri is not None and form.get("redirect_uri") != code.redirect_uri:
                raise OAuthError("invalid_grant", "redirect_uri does not match")
            if self.pkce != "unsupported":
                if code.challenge is not None:
                    if verifier is None:
                        raise OAuthError("invalid_grant", "missing code_verifier")
                    if not VERIFIER_RE.match(verifier) or not hmac.compare_digest(
                        b64url_sha256(verifier), code.challenge
                    ):
                        raise OAuthError("invalid_grant", "PKCE verification failed")
                elif verifier is not None:
                    raise OAuthError("invalid_grant", "code_verifier sent but no code_challenge")
            code.used = True
            granted = self._grant_scopes(code.scopes)
            family = self._new_family(client.client_id, code.subject, granted, code.nonce)
            code.family = family
            with_refresh = (
                self.issue_refresh_tokens and "refresh_token" in client.grant_types and code.offline
            )
            access, refresh, ttl = self._mint_pair(
                family, granted, with_refresh=with_refresh, jkt=jkt
            )
            id_token = self._id_token(family, access) if self.oidc and "openid" in granted else None
            self._counters["code_redeemed"] += 1
        payload = self._token_payload(access, refresh, ttl, granted, id_token, jkt)
        return self._render_token(request, payload, family.subject)

    def _grant_refresh(
        self, request: Request, client: MockClient, form: Mapping[str, str], jkt: str | None = None
    ) -> Response:
        presented = form.get("refresh_token")
        if not presented:
            raise OAuthError("invalid_request", "missing refresh_token")
        if self.quirks.require_scope_on_refresh and not form.get("scope"):
            raise OAuthError(
                "invalid_request",
                "AADSTS90014: The required field 'scope' is missing from the credential.",
            )
        requested = self._parse_scopes(form.get("scope"), client) if "scope" in form else None
        with self._lock:
            rec = self._tokens.get(presented)
            if rec is None or rec.kind != "refresh" or rec.family.client_id != client.client_id:
                raise OAuthError("invalid_grant", "unknown refresh token")
            family = rec.family
            now = self.now()
            in_grace = (
                self.reuse_interval > 0
                and rec.status == "rotated"
                and rec.rotated_at is not None
                and now - rec.rotated_at <= self.reuse_interval
            )
            if in_grace:
                self._counters["refresh_grace"] += 1
            elif rec.status == "rotated":
                self._counters["refresh_reuse"] += 1
                if self.reuse_detection:
                    self._revoke_family(family)
                raise OAuthError("invalid_grant", "refresh token already used")
            if family.revoked or rec.status == "revoked":
                raise OAuthError("invalid_grant", "refresh token revoked")
            if rec.expires_at is not None and now >= rec.expires_at:
                raise OAuthError("invalid_grant", "refresh token expired")
            if rec.jkt is not None and rec.jkt != jkt:
                # RFC 9449 §5: a bound refresh token needs a proof from the same key.
                raise OAuthError("invalid_dpop_proof", "the refresh token is bound to another key")
            scopes = family.scopes
            if requested:
                extra = [s for s in requested if s not in family.scopes]
                if extra:
                    raise OAuthError("invalid_scope", f"scope exceeds the grant: {' '.join(extra)}")
                scopes = requested
            access = self._mint("access", family, scopes, self.access_ttl, jkt)
            new_refresh: str | None = None
            if not self.quirks.refresh_token_in_refresh_response:
                pass  # Google style: nothing rotates, the presented token stays valid
            elif self.rotation:
                if rec.status == "active":
                    rec.status, rec.rotated_at = "rotated", now
                new_refresh = self._mint(
                    "refresh", family, family.scopes, self.refresh_ttl, rec.jkt or jkt
                )
            else:
                new_refresh = presented
            id_token = self._id_token(family, access) if self.oidc and "openid" in scopes else None
            self._counters["refresh_redeemed"] += 1
        payload = self._token_payload(access, new_refresh, self.access_ttl, scopes, id_token, jkt)
        return self._render_token(request, payload, family.subject)

    def _grant_client_credentials(
        self, request: Request, client: MockClient, form: Mapping[str, str], jkt: str | None = None
    ) -> Response:
        if client.is_public:
            raise OAuthError("unauthorized_client", "public clients may not use this grant")
        scopes = self._grant_scopes(self._parse_scopes(form.get("scope"), client))
        with self._lock:
            family = self._new_family(client.client_id, client.client_id, scopes, None)
            access = self._mint("access", family, scopes, self.access_ttl, jkt)
        payload = self._token_payload(access, None, self.access_ttl, scopes, None, jkt)
        return self._render_token(request, payload, client.client_id)

    # ------------------------------------------------------------------ /authorize

    def _check_authorize(self, params: Mapping[str, str]) -> AuthorizeParams:
        """Validate an authorization request; raises OAuthError (no redirect possible) or
        RedirectError (send the error back to the client's redirect URI)."""
        client_id = params.get("client_id", "")
        with self._lock:
            client = self._clients.get(client_id)
        if client is None:
            raise OAuthError("invalid_client", "unknown client_id")
        sent = params.get("redirect_uri")
        if sent is None:
            if client.redirect_uris is None or len(client.redirect_uris) != 1:
                raise OAuthError("invalid_request", "missing redirect_uri")
            redirect_uri = client.redirect_uris[0]
        else:
            if client.redirect_uris is None:
                parts = urlsplit(sent)
                if parts.scheme not in ("http", "https") or not parts.netloc or parts.fragment:
                    raise OAuthError("invalid_request", "redirect_uri is not an http(s) URL")
            elif sent not in client.redirect_uris:
                raise OAuthError("invalid_request", "redirect_uri is not registered")
            redirect_uri = sent
        partial = AuthorizeParams(
            client=client,
            redirect_uri=redirect_uri,
            redirect_uri_sent=sent is not None,
            state=params.get("state"),
            scopes=(),
            challenge=None,
            nonce=params.get("nonce"),
            raw=dict(params),
        )
        if params.get("response_type") != "code":
            raise RedirectError(partial, "unsupported_response_type", "only code is supported")
        if "authorization_code" not in client.grant_types:
            raise RedirectError(partial, "unauthorized_client", "client may not use code")
        try:
            scopes = self._parse_scopes(params.get("scope"), client)
        except OAuthError as err:
            raise RedirectError(partial, err.error, err.description or "") from None
        challenge = params.get("code_challenge")
        if self.pkce == "unsupported":
            challenge = None
        elif challenge is not None:
            method = params.get("code_challenge_method", "plain")
            if method != "S256":
                raise RedirectError(partial, "invalid_request", "code_challenge_method not S256")
            if not CHALLENGE_RE.match(challenge):
                raise RedirectError(partial, "invalid_request", "malformed code_challenge")
        elif self.pkce == "required":
            raise RedirectError(partial, "invalid_request", "code_challenge required")
        return AuthorizeParams(
            client=client,
            redirect_uri=redirect_uri,
            redirect_uri_sent=sent is not None,
            state=partial.state,
            scopes=scopes,
            challenge=challenge,
            nonce=partial.nonce,
            raw=partial.raw,
        )

    def _redirect(self, params: AuthorizeParams, values: Mapping[str, str]) -> Response:
        query = dict(values)
        if params.state is not None:
            query["state"] = params.state
        if self.iss_override is not None:
            query["iss"] = self.iss_override
        elif self.send_iss:
            query["iss"] = self.issuer
        parts = urlsplit(params.redirect_uri)
        merged = f"{parts.query}&{urlencode(query)}" if parts.query else urlencode(query)
        location = urlunsplit((parts.scheme, parts.netloc, parts.path, merged, ""))
        return RedirectResponse(location, status_code=302)

    def _approve(self, params: AuthorizeParams, subject: str) -> Response:
        code_value = secrets.token_urlsafe(32)
        with self._lock:
            if len(self._codes) >= _CODE_SWEEP:
                now = self.now()
                for stale in [k for k, c in self._codes.items() if now >= c.expires_at + 600]:
                    del self._codes[stale]
            self._codes[code_value] = CodeGrant(
                client_id=params.client.client_id,
                redirect_uri=params.redirect_uri if params.redirect_uri_sent else None,
                scopes=params.scopes,
                challenge=params.challenge,
                subject=subject,
                nonce=params.nonce,
                expires_at=self.now() + self.code_ttl,
                offline=self._offline_granted(params, subject),
            )
            self._counters["authorize:approved"] += 1
        values = {self.quirks.code_param: code_value, **self.quirks.redirect_extra_params}
        return self._redirect(params, values)

    def _offline_granted(self, params: AuthorizeParams, subject: str) -> bool:
        """Quirk 18: does this authorization earn a refresh token? (Called under the lock.)"""
        q = self.quirks
        raw = params.raw
        offline = all(
            raw.get(name) == value for name, value in q.refresh_token_requires_params.items()
        )
        if q.refresh_token_requires_scope is not None:
            offline = offline and q.refresh_token_requires_scope in params.scopes
        if offline and q.refresh_token_first_consent_only:
            consent = (params.client.client_id, subject)
            prompted = "consent" in raw.get("prompt", "").split()
            if consent in self._consented and not prompted:
                offline = False
            self._consented.add(consent)
        return offline

    async def _authorize(self, request: Request) -> Response:
        params: dict[str, str] = dict(request.query_params)
        form: dict[str, str] = {}
        if request.method == "POST":
            try:
                form = await self._read_form(request)
            except OAuthError as err:
                await self._enter("authorize", request, {})
                return error_page(err.error, err.description or "", 400)
            params = {k: v for k, v in form.items() if k not in ("username", "password", "action")}
        fault = await self._enter("authorize", request, form)
        login_params = params  # what the login form carries back (request_uri stays opaque)
        params = self._standard_names(params)
        pushed = "request_uri" in params
        try:
            if pushed:
                consume = request.method == "POST" or self.auto_approve
                params = self._resolve_pushed(params, consume=consume)
            checked = self._check_authorize(params)
            if self.par == "required" and not pushed:
                raise RedirectError(
                    checked, "invalid_request", "pushed authorization request required"
                )
            if fault is not None and fault.kind == "error" and fault.status is None:
                raise RedirectError(
                    checked, fault.error or "access_denied", fault.error_description or ""
                )
            if fault is not None:
                return self._fault_response(fault, "authorize")
            if request.method == "GET":
                if self.auto_approve:
                    return self._approve(checked, params.get("login_hint") or self.default_subject)
                if "none" in params.get("prompt", "").split():
                    raise RedirectError(checked, "login_required", "the user must sign in")
                return login_page(login_params, None, action=form_action(request))
            if form.get("action") == "deny":
                raise RedirectError(checked, "access_denied", "the user denied access")
            username = form.get("username", "")
            password = form.get("password", "")
            if not username or (
                self.users is not None
                and not hmac.compare_digest(
                    self.users.get(username, "\x00").encode(), password.encode()
                )
            ):
                with self._lock:
                    self._counters["authorize:login_failed"] += 1
                return login_page(
                    login_params,
                    "Invalid username or password.",
                    status=401,
                    action=form_action(request),
                )
            return self._approve(checked, username)
        except RedirectError as err:
            values = {"error": err.error}
            if err.description:
                values["error_description"] = err.description
            return self._redirect(err.params, values)
        except OAuthError as err:
            return error_page(err.error, err.description or "", 400)

    # ------------------------------------------------------------------ /par (RFC 9126)

    async def _par_endpoint(self, request: Request) -> Response:
        if self.par == "off":
            return JSONResponse({"error": "not_found"}, status_code=404)
        try:
            form = await self._read_form(request)
            client, method = self._authenticate_client(request, form)
        except OAuthError as err:
            await self._enter("par", request, {})
            return JSONResponse(err.body(), status_code=err.status, headers=err.headers)
        fault = await self._enter(
            "par", request, form, client_id=client.client_id, auth_method=method
        )
        if fault is not None:
            return self._fault_response(fault, "par")
        params = self._standard_names(
            {k: v for k, v in form.items() if k not in CLIENT_AUTH_PARAMS}
        )
        try:
            if "request_uri" in params:
                raise OAuthError("invalid_request", "request_uri must not be pushed")
            if params.setdefault("client_id", client.client_id) != client.client_id:
                raise OAuthError("invalid_request", "client_id does not match the client")
            self._check_authorize(params)
        except OAuthError as err:
            return JSONResponse(err.body(), status_code=400, headers=NO_STORE)
        except RedirectError as err:
            body = OAuthError(err.error, err.description).body()
            return JSONResponse(body, status_code=400, headers=NO_STORE)
        request_uri = "urn:ietf:params:oauth:request_uri:" + secrets.token_urlsafe(32)
        with self._lock:
            now = self.now()
            for stale in [k for k, v in self._pushed.items() if v[2] <= now]:
                del self._pushed[stale]
            self._pushed[request_uri] = (client.client_id, params, now + self.par_ttl)
        return JSONResponse(
            {"request_uri": request_uri, "expires_in": self.par_ttl},
            status_code=201,
            headers=NO_STORE,
        )

    def _resolve_pushed(self, params: Mapping[str, str], *, consume: bool) -> dict[str, str]:
        """The parameters pushed for ``request_uri`` (single use, bound to the client)."""
        request_uri = params.get("request_uri", "")
        with self._lock:
            entry = self._pushed.get(request_uri)
            if entry is None or entry[2] <= self.now():
                self._pushed.pop(request_uri, None)
                raise OAuthError("invalid_request_uri", "unknown or expired request_uri")
            if params.get("client_id") != entry[0]:
                raise OAuthError("invalid_request", "client_id does not match the request_uri")
            if consume:
                del self._pushed[request_uri]
        return dict(entry[1])

    # ------------------------------------------------------------------ /revoke, /introspect

    async def _revoke(self, request: Request) -> Response:
        try:
            form = await self._read_form(request)
            client, method = self._authenticate_client(request, form)
        except OAuthError as err:
            await self._enter("revoke", request, {})
            return JSONResponse(err.body(), status_code=err.status, headers=err.headers)
        fault = await self._enter(
            "revoke", request, form, client_id=client.client_id, auth_method=method
        )
        if fault is not None and fault.kind != "lost_response":
            return self._fault_response(fault, "revoke")
        value = form.get("token")
        if not value:
            return JSONResponse({"error": "invalid_request"}, status_code=400)
        with self._lock:
            rec = self._tokens.get(value)
            if rec is not None and rec.family.client_id == client.client_id:
                if rec.kind == "refresh":
                    # RFC 7009 §2.1: revoking a refresh token revokes its whole grant.
                    self._revoke_family(rec.family, reuse=False)
                else:
                    rec.status = "revoked"
                self._counters["revoked"] += 1
        if fault is not None:  # lost_response: revoked, but the client never hears so
            return self._fault_response(fault, "revoke")
        return Response(status_code=200, headers=NO_STORE)

    async def _introspect(self, request: Request) -> Response:
        try:
            form = await self._read_form(request)
            client, method = self._authenticate_client(request, form)
            if method == "none":  # RFC 7662 §2.1: the caller must be authorized
                raise OAuthError("invalid_client", "introspection needs client authentication", 401)
        except OAuthError as err:
            await self._enter("introspect", request, {})
            return JSONResponse(err.body(), status_code=err.status, headers=err.headers)
        fault = await self._enter(
            "introspect", request, form, client_id=client.client_id, auth_method=method
        )
        if fault is not None:
            return self._fault_response(fault, "introspect")
        value = form.get("token")
        if not value:
            return JSONResponse({"error": "invalid_request"}, status_code=400)
        now = self.now()
        with self._lock:
            rec = self._tokens.get(value)
            if rec is None or not rec.alive(now):
                return JSONResponse({"active": False}, headers=NO_STORE)
            body: dict[str, Any] = {
                "active": True,
                "scope": " ".join(rec.scopes),
                "client_id": rec.family.client_id,
                "sub": rec.family.subject,
                "username": rec.family.subject,
                "token_type": ("DPoP" if rec.jkt else "Bearer")
                if rec.kind == "access"
                else "refresh_token",
                "iat": int(rec.issued_at),
                "iss": self.issuer,
            }
            if rec.jkt is not None:
                body["cnf"] = {"jkt": rec.jkt}
            if rec.expires_at is not None:
                body["exp"] = int(rec.expires_at)
        return JSONResponse(body, headers=NO_STORE)

    # ------------------------------------------------------------------ resource, userinfo

    def _bearer(self, request: Request) -> str | None:
        header = request.headers.get("authorization")
        if header is None:
            return None
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            return ""
        return value.strip()

    def _dpop_rejection(self, description: str, error: str = "invalid_token") -> Response:
        with self._lock:
            self._counters[f"dpop:resource:{error}"] += 1
        return JSONResponse(
            {"error": error},
            status_code=401,
            headers={
                "WWW-Authenticate": f'DPoP error="{error}", error_description="{description}", '
                f'algs="{" ".join(DPOP_PROOF_ALGS)}"'
            },
        )

    def _check_access(self, request: Request) -> TokenState | Response:
        """``Authorization: Bearer`` or, with DPoP on, ``Authorization: DPoP`` + a proof."""
        header = request.headers.get("authorization") or ""
        scheme, _, value = header.partition(" ")
        value = value.strip()
        if self.dpop == "off" or scheme.lower() != "dpop":
            rec = self._check_bearer(request)
            if isinstance(rec, TokenState) and rec.jkt is not None:
                # A DPoP-bound token presented as a bearer token (RFC 9449 §7.2).
                return self._dpop_rejection("a DPoP-bound token needs the DPoP scheme")
            return rec
        proofs = request.headers.getlist("dpop")
        if len(proofs) != 1 or not value:
            return self._dpop_rejection("exactly one DPoP proof is required")
        try:
            with self._lock:
                proof = verify_proof(
                    proofs[0],
                    htm=request.method,
                    htu=str(request.url),
                    now=self._clock(),
                    seen_jtis=self._dpop_jtis,
                    access_token=value,
                )
        except DPoPProofError as exc:
            return self._dpop_rejection(str(exc))
        if self.dpop_nonce:
            expected = self._dpop_nonces["resource"]
            if proof.nonce is None or not hmac.compare_digest(proof.nonce, expected):
                with self._lock:
                    self._counters["dpop:nonce_demanded:resource"] += 1
                return JSONResponse(
                    {"error": "use_dpop_nonce"},
                    status_code=401,
                    headers={
                        "WWW-Authenticate": 'DPoP error="use_dpop_nonce", '
                        'error_description="Resource server requires nonce in DPoP proof"',
                        "DPoP-Nonce": expected,
                    },
                )
        with self._lock:
            bound = self._alive_access(value)
        if bound is None:
            return self._dpop_rejection("The access token is invalid, expired or revoked")
        if bound.jkt is None or not hmac.compare_digest(bound.jkt, proof.jkt):
            return self._dpop_rejection("the token is not bound to the proof key")
        with self._lock:
            self._counters["dpop:resource:ok"] += 1
        return bound

    def _check_bearer(self, request: Request) -> TokenState | Response:
        value = self._bearer(request)
        if value is None:
            return JSONResponse(
                {"error": "unauthorized"},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        with self._lock:
            rec = self._alive_access(value) if value else None
        if rec is None:
            return JSONResponse(
                {"error": "invalid_token"},
                status_code=401,
                headers={
                    "WWW-Authenticate": 'Bearer error="invalid_token", '
                    'error_description="The access token is invalid, expired or revoked"'
                },
            )
        return rec

    async def _resource(self, request: Request) -> Response:
        body = await request.body()
        fault = await self._enter("resource", request, {})
        if fault is not None:
            return self._fault_response(fault, "resource")
        rec = self._check_access(request)
        if isinstance(rec, Response):
            return rec
        required: list[str] = []
        for value in request.query_params.getlist("required_scope"):
            required.extend(value.split())
        missing = [s for s in required if s not in rec.scopes]
        if missing:
            return JSONResponse(
                {"error": "insufficient_scope", "missing": missing},
                status_code=403,
                headers={
                    "WWW-Authenticate": f'Bearer error="insufficient_scope", '
                    f'scope="{" ".join(required)}"'
                },
            )
        with self._lock:
            self._counters["resource:ok"] += 1
        return JSONResponse(
            {
                "sub": rec.family.subject,
                "scope": " ".join(rec.scopes),
                "client_id": rec.family.client_id,
                "method": request.method,
                "body_len": len(body),
            }
        )

    async def _userinfo(self, request: Request) -> Response:
        fault = await self._enter("userinfo", request, {})
        if fault is not None:
            return self._fault_response(fault, "userinfo")
        rec = self._check_access(request)
        if isinstance(rec, Response):
            return rec
        if "openid" not in rec.scopes:
            return JSONResponse(
                {"error": "insufficient_scope"},
                status_code=403,
                headers={"WWW-Authenticate": 'Bearer error="insufficient_scope", scope="openid"'},
            )
        claims: dict[str, Any] = {"sub": rec.family.subject}
        claims.update(self.user_claims.get(rec.family.subject, {}))
        return JSONResponse(claims)

    # ------------------------------------------------------------------ discovery, jwks

    def metadata(self) -> dict[str, Any]:
        """RFC 8414 / OIDC Discovery metadata for the current issuer."""
        doc: dict[str, Any] = {
            "issuer": self.issuer,
            "authorization_endpoint": self.authorization_endpoint,
            "token_endpoint": self.token_endpoint,
            "revocation_endpoint": self.revocation_endpoint,
            "introspection_endpoint": self.introspection_endpoint,
            "jwks_uri": self.jwks_uri,
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "grant_types_supported": list(GRANTS),
            "token_endpoint_auth_methods_supported": [
                "client_secret_basic",
                "client_secret_post",
                "client_secret_jwt",
                "private_key_jwt",
                "none",
            ],
            "token_endpoint_auth_signing_alg_values_supported": [
                "HS256",
                *sorted(ASYMMETRIC_ALGS),
            ],
            "revocation_endpoint_auth_methods_supported": [
                "client_secret_basic",
                "client_secret_post",
                "none",
            ],
            "introspection_endpoint_auth_methods_supported": [
                "client_secret_basic",
                "client_secret_post",
            ],
            "authorization_response_iss_parameter_supported": self.send_iss,
        }
        if self.pkce != "unsupported":
            doc["code_challenge_methods_supported"] = ["S256"]
        if self.dpop != "off":
            doc["dpop_signing_alg_values_supported"] = list(DPOP_PROOF_ALGS)
        if self.par != "off":
            doc["pushed_authorization_request_endpoint"] = self.par_endpoint
            doc["require_pushed_authorization_requests"] = self.par == "required"
        if self.scopes_supported is not None:
            doc["scopes_supported"] = list(self.scopes_supported)
        if self.oidc:
            doc.update(
                {
                    "userinfo_endpoint": self.userinfo_endpoint,
                    "subject_types_supported": ["public"],
                    "id_token_signing_alg_values_supported": ["RS256"],
                    "claims_supported": ["sub", "iss", "aud", "exp", "iat", "nonce"],
                }
            )
        return doc

    async def _openid_configuration(self, request: Request) -> Response:
        fault = await self._enter("discovery", request, {})
        if fault is not None:
            return self._fault_response(fault, "discovery")
        if not self.oidc:
            return JSONResponse({"error": "not_found"}, status_code=404)
        return JSONResponse(self.metadata())

    async def _as_metadata(self, request: Request) -> Response:
        fault = await self._enter("discovery", request, {})
        if fault is not None:
            return self._fault_response(fault, "discovery")
        return JSONResponse(self.metadata())

    async def _jwks(self, request: Request) -> Response:
        fault = await self._enter("jwks", request, {})
        if fault is not None:
            return self._fault_response(fault, "jwks")
        return JSONResponse(self.public_jwks)


LIKE_NAMES: tuple[str, ...] = (
    "auth0",
    "entra",
    "figma",
    "github",
    "google",
    "microsoft",
    "notion",
    "okta",
    "paypal",
    "quickbooks",
    "salesforce",
    "slack",
    "slack-user",
    "twitch",
    "twitter",
    "x",
)


_SLACK_ERRORS = {
    "authorization_code:invalid_grant": "invalid_code",
    "refresh_token:invalid_grant": "invalid_refresh_token",
    "invalid_client": "invalid_client_id",
    "unsupported_grant_type": "invalid_grant_type",
}
_GITHUB_ERRORS = {
    "authorization_code:invalid_grant": "bad_verification_code",
    "refresh_token:invalid_grant": "bad_refresh_token",
    "invalid_client": "incorrect_client_credentials",
}


def _like_settings(name: str) -> dict[str, Any]:
    """Constructor arguments that make a MockProvider behave like ``name`` (quirk numbers from
    the project's provider-quirks table)."""
    if name == "github":  # 1, 5: form unless Accept JSON, errors 200, non-expiring tokens
        quirks = MockQuirks.github()
        quirks.error_renames = dict(_GITHUB_ERRORS)
        quirks.scope_delimiter = " "  # GitHub documents spaces on authorize; it echoes commas
        return {
            "quirks": quirks,
            "oidc": False,
            "access_ttl": None,
            "issue_refresh_tokens": False,
        }
    if name == "google":  # 7, 18: no rotation; refresh token only offline, on first consent
        quirks = MockQuirks.google()
        quirks.refresh_token_requires_params = {"access_type": "offline"}
        quirks.refresh_token_first_consent_only = True
        return {"quirks": quirks, "rotation": False}
    if name in ("microsoft", "entra"):  # 9, 18, 22: scope on refresh, offline_access
        quirks = MockQuirks.entra()
        quirks.refresh_token_requires_scope = "offline_access"
        quirks.echo_hidden_scopes = frozenset({"openid", "offline_access"})
        return {
            "quirks": quirks,
            "reuse_detection": False,
            "reuse_interval": 86_400.0,
        }
    if name in ("slack", "slack-user"):  # 2, 4, 19: ok envelope, comma scopes, no PKCE
        quirks = MockQuirks.slack()
        quirks.error_renames = dict(_SLACK_ERRORS)
        if name == "slack":  # a bot token at the top level, token_type "bot"
            quirks.response_shape = "slack_bot"
        else:  # a user token under authed_user, asked for with user_scope
            quirks.token_type = "user"
            quirks.param_renames = {"scope": "user_scope"}
        return {"quirks": quirks, "oidc": False, "pkce": "unsupported", "access_ttl": 43_200}
    if name == "salesforce":  # 5, 7, 11: no expires_in, no rotation, instance_url
        return {"quirks": MockQuirks.salesforce(), "rotation": False}
    if name in ("x", "twitter"):  # 8, 13, 18, 19: rotation, Basic only, PKCE required
        return {
            "quirks": MockQuirks(refresh_token_requires_scope="offline.access"),
            "oidc": False,
            "pkce": "required",
            "access_ttl": 7_200,
            "clients": [MockClient(auth_methods=frozenset({"client_secret_basic"}))],
        }
    if name == "twitch":  # 3: scope echoed as a JSON array
        return {"quirks": MockQuirks(scope_echo="array")}
    if name == "notion":  # 5, 15: JSON request bodies, no expiry
        return {
            "quirks": MockQuirks(token_body_format="json", expires_in="omit"),
            "oidc": False,
            "access_ttl": None,
        }
    if name == "figma":  # 4, 17, 19: comma scopes, /refresh endpoint, no PKCE
        return {
            "quirks": MockQuirks(
                separate_refresh_endpoint=True, scope_delimiter=",", scope_echo="comma"
            ),
            "oidc": False,
            "pkce": "unsupported",
        }
    if name == "quickbooks":  # 12, 23: realmId on the redirect, refresh-token lifetime field
        return {
            "quirks": MockQuirks(
                refresh_expires_in_field="x_refresh_token_expires_in",
                redirect_extra_params={"realmId": "9130350000000000"},
            ),
            "refresh_ttl": 8_726_400,
            "reuse_interval": 86_400.0,
        }
    if name == "paypal":  # 6: expires_in as a string
        return {"quirks": MockQuirks(expires_in="string"), "oidc": False}
    if name == "okta":  # 8: rotation with a 30 s grace period
        return {"reuse_interval": 30.0}
    if name == "auth0":  # 8: rotation with reuse detection
        return {"rotation": True, "reuse_detection": True}
    raise ValueError(f"unknown provider {name!r}; one of {', '.join(LIKE_NAMES)}")
