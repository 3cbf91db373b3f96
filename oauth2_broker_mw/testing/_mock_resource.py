"""MockProvider layer: ``POST /revoke`` (RFC 7009), ``POST /introspect`` (RFC 7662),
``/userinfo`` and the protected ``/resource``, with Bearer and DPoP-bound access checks.
"""

from __future__ import annotations

import hmac
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.responses import Response
from starlette.routing import Route

from ._mock_authorize import AuthorizeEndpoint
from ._mock_dpop import DPOP_PROOF_ALGS
from ._mock_dpop import DPoPProofError
from ._mock_records import NO_STORE
from ._mock_records import TokenState


class ResourceEndpoints(AuthorizeEndpoint):
    """MockProvider's revocation, introspection, userinfo and protected resource."""

    def _routes(self) -> list[Route]:
        return [
            *super()._routes(),
            Route("/revoke", self._revoke, methods=["POST"]),
            Route("/introspect", self._introspect, methods=["POST"]),
            Route("/userinfo", self._userinfo, methods=["GET", "POST"]),
            Route("/resource", self._resource, methods=["GET", "POST"]),
        ]

    # ------------------------------------------------------------------ /revoke, /introspect

    async def _revoke(self, request: Request) -> Response:
        entered = await self._enter_as_client("revoke", request)
        if isinstance(entered, Response):
            return entered
        form, client, fault = entered
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
        # RFC 7662 §2.1: the caller must be authorized, so a public client is refused.
        refusal = "introspection needs client authentication"
        entered = await self._enter_as_client("introspect", request, refuse_public=refusal)
        if isinstance(entered, Response):
            return entered
        form, _, fault = entered
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
            proof, demand = self._dpop_proof(request, proofs[0], "resource", access_token=value)
        except DPoPProofError as exc:
            return self._dpop_rejection(str(exc))
        if demand is not None:
            return JSONResponse(
                {"error": "use_dpop_nonce"},
                status_code=401,
                headers={
                    "WWW-Authenticate": 'DPoP error="use_dpop_nonce", '
                    'error_description="Resource server requires nonce in DPoP proof"',
                    "DPoP-Nonce": demand,
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

    async def _enter_with_access(self, endpoint: str, request: Request) -> TokenState | Response:
        """Count a request to a protected endpoint; answer its fault, else check its access."""
        faulted = await self._enter_or_fault(endpoint, request)
        return faulted if faulted is not None else self._check_access(request)

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
        rec = await self._enter_with_access("resource", request)
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
        rec = await self._enter_with_access("userinfo", request)
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
