"""MockProvider layer: ``POST /token`` and ``/refresh``, the code, refresh (rotation, reuse
detection, grace period) and client-credentials grants, DPoP there, and the token and error
responses in each provider's dialect.
"""

from __future__ import annotations

import hmac
import json
import secrets
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.responses import Response
from starlette.routing import Route

from ._mock_clientauth import ClientAuth
from ._mock_config import MockClient
from ._mock_dpop import DPoPProofError
from ._mock_records import GRANTS
from ._mock_records import NO_STORE
from ._mock_records import VERIFIER_RE
from ._mock_records import OAuthError
from ._mock_records import b64url_sha256


def _required(form: Mapping[str, str], name: str) -> str:
    """The grant's parameter ``name``; ``invalid_request`` when it is missing or empty."""
    value = form.get(name)
    if not value:
        raise OAuthError("invalid_request", f"missing {name}")
    return value


class TokenEndpoint(ClientAuth):
    """MockProvider's token endpoint: the grants and the token responses."""

    def _routes(self) -> list[Route]:
        return [
            *super()._routes(),
            Route("/token", self._token, methods=["POST"]),
            Route("/refresh", self._refresh_endpoint, methods=["POST"]),
        ]

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
            proof, demand = self._dpop_proof(request, proofs[0], "token")
        except DPoPProofError as exc:
            with self._lock:
                self._counters["dpop:invalid_proof"] += 1
            raise OAuthError("invalid_dpop_proof", str(exc)) from None
        if demand is not None:
            raise OAuthError(
                "use_dpop_nonce",
                "Authorization server requires nonce in DPoP proof",
                400,
                {"DPoP-Nonce": demand},
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
        code_value = _required(form, "code")
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
        presented = _required(form, "refresh_token")
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
