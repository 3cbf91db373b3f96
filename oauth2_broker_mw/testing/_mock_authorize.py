"""MockProvider layer: ``/authorize`` (checks, consent, the login form, the redirect back)
and ``POST /par`` (RFC 9126).
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Mapping
from urllib.parse import urlencode
from urllib.parse import urlsplit
from urllib.parse import urlunsplit

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.responses import RedirectResponse
from starlette.responses import Response
from starlette.routing import Route

from ._mock_records import CHALLENGE_RE
from ._mock_records import CLIENT_AUTH_PARAMS
from ._mock_records import NO_STORE
from ._mock_records import AuthorizeParams
from ._mock_records import CodeGrant
from ._mock_records import OAuthError
from ._mock_records import RedirectError
from ._mock_records import error_page
from ._mock_records import form_action
from ._mock_records import login_page
from ._mock_tokens import TokenEndpoint

_CODE_SWEEP = 1_000  # sweep spent and expired codes when this many are held


class AuthorizeEndpoint(TokenEndpoint):
    """MockProvider's authorization endpoint and pushed authorization requests."""

    def _routes(self) -> list[Route]:
        return [
            *super()._routes(),
            Route("/authorize", self._authorize, methods=["GET", "POST"]),
            Route("/par", self._par_endpoint, methods=["POST"]),
        ]

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
            return self._redirect(err.params, err.body())
        except OAuthError as err:
            return error_page(err.error, err.description or "", 400)

    # ------------------------------------------------------------------ /par (RFC 9126)

    async def _par_endpoint(self, request: Request) -> Response:
        if self.par == "off":
            return JSONResponse({"error": "not_found"}, status_code=404)
        entered = await self._enter_as_client("par", request)
        if isinstance(entered, Response):
            return entered
        form, client, fault = entered
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
        except OAuthError as err:  # a RedirectError too: PAR answers every error in its body
            return JSONResponse(err.body(), status_code=400, headers=NO_STORE)
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
