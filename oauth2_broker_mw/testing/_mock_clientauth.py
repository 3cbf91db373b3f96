"""MockProvider layer: client authentication (secret basic/post, none, and RFC 7523 JWT
assertions with their replay check). The layers are described in ``_mock_core``.
"""

from __future__ import annotations

import base64
import hmac
import json
from collections.abc import Mapping
from urllib.parse import unquote_plus

from joserfc import jws
from joserfc.errors import JoseError
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.responses import Response

from ._mock_config import Fault
from ._mock_config import MockClient
from ._mock_core import MockCore
from ._mock_records import ASYMMETRIC_ALGS
from ._mock_records import JWT_BEARER
from ._mock_records import OAuthError
from ._mock_records import assertion_signature_ok
from ._mock_records import basic_challenge


class ClientAuth(MockCore):
    """MockProvider client authentication at its endpoints."""

    async def _enter_as_client(
        self, endpoint: str, request: Request, *, refuse_public: str | None = None
    ) -> tuple[dict[str, str], MockClient, Fault | None] | Response:
        """Read the form of a request to a client-authenticated endpoint (revocation,
        introspection, PAR), authenticate its client and count it with that client (``_enter``);
        return the form, the client and the fault to apply. A request that fails is counted
        with no form and answered with the JSON error, the ``Response`` returned.
        ``refuse_public``: the description to refuse a public client (method ``none``) with."""
        try:
            form = await self._read_form(request)
            client, method = self._authenticate_client(request, form)
            if refuse_public is not None and method == "none":
                raise OAuthError("invalid_client", refuse_public, 401)
        except OAuthError as err:
            await self._enter(endpoint, request, {})
            return JSONResponse(err.body(), status_code=err.status, headers=err.headers)
        fault = await self._enter(
            endpoint, request, form, client_id=client.client_id, auth_method=method
        )
        return form, client, fault

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
