"""The state and plumbing every MockProvider endpoint shares (the base of its layers).

Owns: the provider's configuration and in-memory state (clients, codes, token families,
counters, the request log), its clock and URLs, minting and revoking tokens, ID tokens, reading
request bodies, counting requests and applying latency and faults, scope parsing, and the route
table that each endpoint layer extends (``_routes``).
Must not import: the broker core, store drivers, or uvicorn. The endpoint layers stack on it in
one line (client auth, token endpoint, authorize/PAR, revocation/introspection/resource,
discovery); ``MockProvider`` is the last and adds the public API.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import secrets
import threading
import time
from collections import Counter
from collections import deque
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Mapping
from typing import Any
from typing import Literal
from typing import Never
from typing import overload
from urllib.parse import parse_qsl

from joserfc import jwt
from joserfc.jwk import RSAKey
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.responses import JSONResponse
from starlette.responses import RedirectResponse
from starlette.responses import Response
from starlette.routing import Route

from ._mock_config import Fault
from ._mock_config import FaultQueue
from ._mock_config import MockClient
from ._mock_config import MockQuirks
from ._mock_config import RecordedRequest
from ._mock_dpop import ProofClaims
from ._mock_dpop import verify_proof
from ._mock_records import FORM
from ._mock_records import NO_STORE
from ._mock_records import CodeGrant
from ._mock_records import Family
from ._mock_records import OAuthError
from ._mock_records import TokenState
from ._mock_records import b64url
from ._mock_records import scope_token_ok
from ._mock_records import unsigned_jwt

_MAX_RECORDED = 10_000  # requests kept for ``provider.requests`` (a long-lived demo stays small)


class _Endpoint:
    """A read-only attribute of a :class:`MockCore`: the URL of ``path`` under its issuer at the
    time it is read (``provider.token_endpoint`` is ``provider.url("/token")``)."""

    __slots__ = ("name", "path")

    def __init__(self, path: str) -> None:
        self.path = path
        self.name = ""

    def __set_name__(self, owner: type[MockCore], name: str) -> None:
        self.name = name

    @overload
    def __get__(self, obj: None, owner: type[MockCore]) -> _Endpoint: ...
    @overload
    def __get__(self, obj: MockCore, owner: type[MockCore]) -> str: ...
    def __get__(self, obj: MockCore | None, owner: type[MockCore]) -> str | _Endpoint:
        return self if obj is None else obj.url(self.path)

    def __set__(self, obj: MockCore, value: Never) -> None:  # mypy: no value fits
        raise AttributeError(f"{self.name} is read-only: it follows the issuer")


class MockCore:
    """The shared state of a MockProvider; see :class:`MockProvider` for the arguments."""

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

    # Where each endpoint is, under the current issuer (so they follow ``serve()``).
    token_endpoint = _Endpoint("/token")
    authorization_endpoint = _Endpoint("/authorize")
    par_endpoint = _Endpoint("/par")
    revocation_endpoint = _Endpoint("/revoke")
    introspection_endpoint = _Endpoint("/introspect")
    userinfo_endpoint = _Endpoint("/userinfo")
    jwks_uri = _Endpoint("/jwks")
    resource_url = _Endpoint("/resource")

    def _endpoint_urls(self) -> dict[str, str]:
        """The endpoints every document of this server names (discovery metadata, the
        descriptor), by their RFC 8414 / ``ProviderDescriptor`` field names."""
        return {
            "authorization_endpoint": self.authorization_endpoint,
            "token_endpoint": self.token_endpoint,
            "revocation_endpoint": self.revocation_endpoint,
            "introspection_endpoint": self.introspection_endpoint,
            "jwks_uri": self.jwks_uri,
        }

    @property
    def public_jwks(self) -> dict[str, Any]:
        """The JWK set served at ``/jwks`` (public key only)."""
        return {"keys": [self._signing_key.as_dict(private=False)]}

    @property
    def signing_key(self) -> RSAKey:
        """The private RSA key that signs ID tokens (to forge tokens in tests)."""
        return self._signing_key

    def _dpop_proof(
        self, request: Request, proof: str, endpoint: str, access_token: str | None = None
    ) -> tuple[ProofClaims, str | None]:
        """Verify one DPoP proof for ``request`` (RFC 9449 §4.3; its ``jti`` is recorded); return
        its claims and, when this provider demands nonces and the proof lacks the current one for
        ``endpoint`` (``"token"`` / ``"resource"``), the nonce to demand. Raises
        ``DPoPProofError``."""
        with self._lock:
            claims = verify_proof(
                proof,
                htm=request.method,
                htu=str(request.url),
                now=self._clock(),
                seen_jtis=self._dpop_jtis,
                access_token=access_token,
            )
        if self.dpop_nonce:
            expected = self._dpop_nonces[endpoint]
            if claims.nonce is None or not hmac.compare_digest(claims.nonce, expected):
                with self._lock:
                    self._counters[f"dpop:nonce_demanded:{endpoint}"] += 1
                return claims, expected
        return claims, None

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
            claims["at_hash"] = b64url(digest[:16])  # OIDC Core §3.1.3.6: the left half
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

    def _routes(self) -> list[Route]:
        """The routes of this layer and the ones below it (each layer adds its own)."""
        return []

    def _build_app(self) -> Starlette:
        return Starlette(routes=self._routes())

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

    async def _enter_or_fault(self, endpoint: str, request: Request) -> Response | None:
        """Count a request whose form is not read (``_enter``); the response of the fault it
        draws, or ``None`` to go on."""
        fault = await self._enter(endpoint, request, {})
        return None if fault is None else self._fault_response(fault, endpoint)

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
