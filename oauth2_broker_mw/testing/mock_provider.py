"""MockProvider: a real OAuth 2.0 / OpenID Connect authorization server for tests and demos.

Owns: the in-memory authorization server (codes, token families, rotation and reuse detection,
revocation, introspection, discovery, JWKS, userinfo, a protected resource), its counters and
request log, fault injection and provider quirks, and the clients that reach it in-process or
over loopback.
Must not import: the broker core at module level (``descriptor()`` imports it lazily; the DPoP
checker takes only ``_core.dpop``'s algorithm names and ``htu``), store drivers, or uvicorn
(imported by ``serve()`` only). Needs the ``starlette`` extra.

Tokens are random (``secrets.token_urlsafe``), never logged, and never put in an exception
message or a repr.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from collections.abc import Iterator
from collections.abc import Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING
from typing import Any
from typing import Literal
from typing import Unpack

try:
    import httpx2
    import starlette  # noqa: F401  (every MockProvider layer needs it: refuse here, once)
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "oauth2_broker_mw.testing.MockProvider needs Starlette: "
        "pip install 'oauth2-broker-mw[starlette]'"
    ) from exc


from . import __all__ as __all__
from ._mock_config import Fault as Fault
from ._mock_config import FaultQueue as FaultQueue
from ._mock_config import MockClient
from ._mock_config import MockQuirks as MockQuirks
from ._mock_config import RecordedRequest
from ._mock_discovery import DiscoveryEndpoints
from ._mock_login import LoginOptions
from ._mock_login import async_login
from ._mock_login import login_flow
from ._mock_login import sync_login
from ._mock_lookalikes import LIKE_NAMES
from ._mock_lookalikes import _like_settings
from ._mock_records import GRANTS
from ._mock_transport import SHARED_LOOP
from ._mock_transport import AsyncASGITransport
from ._mock_transport import SyncASGITransport
from ._mock_transport import serve_app

if TYPE_CHECKING:
    from oauth2_broker_mw._core.provider import ProviderDescriptor

# The testing package's names (MockProvider, MockClient, MockQuirks, Fault, ...), listed once in
# its __init__, are re-exported for ``from oauth2_broker_mw.testing.mock_provider import ...``.
# ``from . import __all__ as __all__`` is the form mypy reads as "export that module's names";
# the new list keeps the package's own list as it is.
__all__ = [*__all__, "LIKE_NAMES"]


class MockProvider(DiscoveryEndpoints):
    """An OAuth 2.0 / OIDC authorization server with in-memory state, as a Starlette app.

    ``provider.app`` is the ASGI app; ``client()`` / ``async_client()`` reach it in-process;
    ``serve()`` runs it on a loopback port. All state is guarded by one lock, so the app may be
    driven from many threads, tasks and (when served) processes at once.
    """

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

    def login(self, client: Any, **options: Unpack[LoginOptions]) -> Any:
        """Log ``client`` in to your app as ``user``, as a browser would; returns the callback's
        ``303`` response (the client then holds the session cookie).

        ``client`` is your app's test client: Starlette's ``TestClient``, an ``httpx`` /
        ``httpx2`` client over an ASGI or WSGI transport, or Flask's ``app.test_client()``.
        Keywords (:class:`LoginOptions`, all optional): ``user=None``; ``provider="mock"``,
        the middleware's name for this provider (the ``brokers=`` key); ``prefix="/oauth2"``,
        its route prefix; ``return_to="/"``. With ``auto_approve`` (the default) the provider
        approves at once with ``user`` as the subject (``default_subject`` when not given);
        otherwise its login form is filled in with ``user``'s password from ``users``. The
        broker must reach this provider through :meth:`client` / :meth:`async_client`. Raises
        ``AssertionError`` naming the step and the error code when a step does not redirect::

            mock_provider.login(client, user="alice")
            assert client.get("/me").json()["principal"] == "alice"
        """
        return sync_login(self, client, login_flow(self, **options))

    async def alogin(self, client: Any, **options: Unpack[LoginOptions]) -> Any:
        """:meth:`login` for an async client (``httpx.AsyncClient`` / ``httpx2.AsyncClient``
        over an ASGI transport)."""
        return await async_login(self, client, login_flow(self, **options))

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
            **self._endpoint_urls(),
            "userinfo_endpoint": self.userinfo_endpoint,
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

        ours: dict[str, str] = {
            **self._endpoint_urls(),
            "userinfo_endpoint": self.userinfo_endpoint,
            "issuer": self.issuer,
            "refresh_endpoint": self.url("/refresh"),
            "pushed_authorization_request_endpoint": self.par_endpoint,
        }
        changes: dict[str, Any] = {
            name: url if getattr(descriptor, name) else None for name, url in ours.items()
        }
        changes["token_endpoint"] = self.token_endpoint  # every descriptor has one
        changes["allowed_origins"] = ()
        return descriptor.replace(**changes)
