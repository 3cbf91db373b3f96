"""MockProvider layer: the discovery documents (OIDC and RFC 8414) and ``/jwks``."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.responses import Response
from starlette.routing import Route

from ._mock_config import AUTH_METHOD_ORDER
from ._mock_dpop import DPOP_PROOF_ALGS
from ._mock_records import ASYMMETRIC_ALGS
from ._mock_records import GRANTS
from ._mock_resource import ResourceEndpoints


class DiscoveryEndpoints(ResourceEndpoints):
    """MockProvider's discovery documents and JWKS."""

    def _routes(self) -> list[Route]:
        return [
            *super()._routes(),
            Route("/jwks", self._jwks, methods=["GET"]),
            Route("/.well-known/openid-configuration", self._openid_configuration),
            Route("/.well-known/oauth-authorization-server", self._as_metadata),
        ]

    # ------------------------------------------------------------------ discovery, jwks

    def metadata(self) -> dict[str, Any]:
        """RFC 8414 / OIDC Discovery metadata for the current issuer."""
        doc: dict[str, Any] = {
            "issuer": self.issuer,
            **self._endpoint_urls(),
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "grant_types_supported": list(GRANTS),
            "token_endpoint_auth_methods_supported": list(AUTH_METHOD_ORDER),
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
        if (faulted := await self._enter_or_fault("discovery", request)) is not None:
            return faulted
        if not self.oidc:
            return JSONResponse({"error": "not_found"}, status_code=404)
        return JSONResponse(self.metadata())

    async def _as_metadata(self, request: Request) -> Response:
        if (faulted := await self._enter_or_fault("discovery", request)) is not None:
            return faulted
        return JSONResponse(self.metadata())

    async def _jwks(self, request: Request) -> Response:
        if (faulted := await self._enter_or_fault("jwks", request)) is not None:
            return faulted
        return JSONResponse(self.public_jwks)
