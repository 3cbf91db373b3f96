"""The OAuth 2.0 protocol, sans-IO: build requests, parse responses, classify errors.

Owns: state / nonce / PKCE generation, authorization URLs, token and revocation requests
(client authentication: basic, post, none, client_secret_jwt, private_key_jwt), token-response
parsing with the provider quirks of :class:`ProviderDescriptor`, error classification
(RFC 6749 §5.2 code, then body, then HTTP status; Retry-After), ``WWW-Authenticate`` parsing
(RFC 6750 §3) and ID-token verification (OIDC Core §3.1.3.7, with joserfc).
Must not import: httpx/httpx2, asyncio, threading, any store driver. It never performs I/O:
requests are :class:`HttpRequest` values, responses come in as :class:`HttpResponse`, and the
current time is an argument.
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import hashlib
import hmac
import json
import math
import re
import secrets
import string
import time
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from typing import Any
from typing import Final
from urllib.parse import parse_qsl
from urllib.parse import quote
from urllib.parse import quote_plus
from urllib.parse import urlencode
from urllib.parse import urlsplit
from urllib.parse import urlunsplit

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey
from joserfc.jwk import KeySet
from joserfc.jwk import OctKey
from joserfc.jwk import RSAKey

from . import jsonsafe
from .effects import HttpRequest
from .effects import HttpResponse
from .errors import AuthorizationFlowError
from .errors import BrokerError
from .errors import ConfigurationError
from .errors import InvalidClient
from .errors import InvalidGrant
from .errors import InvalidIdentifier
from .errors import InvalidScopeError
from .errors import MalformedResponse
from .errors import ProviderError
from .errors import TransientProviderError
from .errors import UnauthorizedClient
from .errors import UnsupportedTokenType
from .errors import sealed
from .errors import seals_errors
from .model import JSONValue
from .model import ScopeSet
from .model import Secret
from .model import redacted_repr
from .provider import BodyFormat
from .provider import ClientAuthMethod
from .provider import ClientConfig
from .provider import ExpiryPolicy
from .provider import GrantType
from .provider import PkceMode
from .provider import ProviderDescriptor
from .provider import is_allowed_endpoint
from .provider import parse_metadata

__all__ = [
    "UNECHOED_SCOPES",
    "Introspection",
    "TokenResponse",
    "authorization_code_params",
    "authorization_params",
    "authorization_url",
    "callback_metadata",
    "classify_error",
    "client_assertion",
    "client_credentials_params",
    "discovery_request",
    "effective_scopes",
    "introspection_request",
    "is_allowed_endpoint",
    "metadata_urls",
    "missing_scopes",
    "new_nonce",
    "new_pkce_pair",
    "new_state",
    "par_authorization_url",
    "parse_introspection_response",
    "parse_metadata",
    "parse_par_response",
    "parse_retry_after",
    "parse_token_response",
    "parse_www_authenticate",
    "pushed_authorization_request",
    "redact_preview",
    "refresh_params",
    "revocation_request",
    "s256_challenge",
    "token_request",
    "verify_id_token",
]

CLIENT_ASSERTION_TYPE: Final = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
MAX_TTL: Final = 10 * 365 * 24 * 3600.0
"""Expiry values further out than this (ten years) are clamped to it."""
ASSERTION_LIFETIME: Final = 300
_PREVIEW_LEN: Final = 200
_DESCRIPTION_LEN: Final = 300
_VERIFIER_RE: Final = re.compile(r"^[A-Za-z0-9\-._~]{43,128}$")
# An access token must fit in ``Authorization: Bearer <token>``: visible ASCII, no space.
# (RFC 6750's b64token is stricter, but real tokens carry "!" (Salesforce) and the like.)
_HEADER_TOKEN_RE: Final = re.compile(r"[\x21-\x7e]+")
# Long runs of token alphabet characters (opaque tokens, JWT segments, secrets) in a preview.
_TOKENISH_RE: Final = re.compile(r"[A-Za-z0-9\-._~+/=]{24,}")
_SECRET_PARAM_RE: Final = re.compile(
    r"(?i)((?:access|refresh|id)_token|client_secret|code_verifier|code|password|assertion)"
    r"([\"']?\s*[:=]\s*[\"']?)[^\s\"'&,;<>]+"
)

_STANDARD_FIELDS: Final = frozenset(
    {
        "access_token",
        "token_type",
        "refresh_token",
        "id_token",
        "expires_in",
        "scope",
        "refresh_token_expires_in",
        "x_refresh_token_expires_in",
        "refresh_expires_in",
        "ok",
        "client_secret",
        "code",
    }
)
_SECRET_FIELDS: Final = frozenset(
    {"access_token", "refresh_token", "id_token", "client_secret", "code"}
)
_REFRESH_EXPIRY_FIELDS: Final = (
    "refresh_token_expires_in",
    "x_refresh_token_expires_in",
    "refresh_expires_in",
)

# RFC 6749 §5.2 codes. Provider-specific codes map onto these through the descriptor's
# ``error_aliases`` (presets carry them: GitHub ``bad_verification_code``, Slack ``invalid_code``).
_ERROR_CLASSES: Final[Mapping[str, type[ProviderError]]] = {
    "invalid_grant": InvalidGrant,
    "invalid_client": InvalidClient,
    "invalid_scope": InvalidScopeError,
    "unauthorized_client": UnauthorizedClient,
    "temporarily_unavailable": TransientProviderError,
    "server_error": TransientProviderError,
    "slow_down": TransientProviderError,
}


# -- random values ---------------------------------------------------------------------------
def new_state() -> str:
    """A one-time ``state`` value: 256 random bits, URL-safe (SECURITY A5, A6)."""
    return secrets.token_urlsafe(32)


def new_nonce() -> str:
    """An OIDC ``nonce``: 256 random bits, URL-safe (SECURITY A7)."""
    return secrets.token_urlsafe(32)


def s256_challenge(verifier: str) -> str:
    """``BASE64URL(SHA256(ASCII(verifier)))`` without padding (RFC 7636 §4.2)."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def new_pkce_pair() -> tuple[str, str]:
    """A fresh ``(code_verifier, S256 code_challenge)`` pair (RFC 7636 §4.1, SECURITY A4).

    The verifier is 32 random octets, base64url-encoded: 43 characters of ``[A-Za-z0-9-_]``.
    """
    verifier = secrets.token_urlsafe(32)
    assert _VERIFIER_RE.match(verifier)
    return verifier, s256_challenge(verifier)


# -- authorization request -------------------------------------------------------------------
def _renamed(desc: ProviderDescriptor, params: Mapping[str, str]) -> dict[str, str]:
    renames = desc.param_renames
    if not renames:
        return dict(params)
    return {renames.get(key, key): value for key, value in params.items()}


def _require_ready(desc: ProviderDescriptor, url: str, name: str) -> None:
    if "{" in url or "}" in url:
        raise ConfigurationError(
            f"provider {desc.id!r}: {name} still has template placeholders; call "
            "with_template() first"
        )
    if not is_allowed_endpoint(url):
        raise ConfigurationError(f"provider {desc.id!r}: {name} is not an https URL")


def effective_scopes(desc: ProviderDescriptor, requested: ScopeSet | None) -> ScopeSet:
    """The requested scopes plus the descriptor's ``default_scopes`` (e.g. ``offline_access``)."""
    base = () if requested is None else requested.scopes
    return ScopeSet((*base, *desc.default_scopes))


# Scopes a provider may grant without echoing them (Microsoft leaves out both): never
# counted as missing from a grant.
UNECHOED_SCOPES: Final = frozenset({"openid", "offline_access"})


def missing_scopes(
    desc: ProviderDescriptor, requested: ScopeSet | Sequence[str], granted: ScopeSet
) -> frozenset[str]:
    """The requested scopes the grant lacks (RFC 6749 §3.3: the provider may narrow it).

    ``openid``, ``offline_access`` and the descriptor's ``default_scopes`` are not counted
    (providers grant them without echoing them), and ``desc.scope_aliases`` maps a requested
    name to the one the provider echoes.
    """
    have = frozenset(granted.scopes)
    wanted = requested.scopes if isinstance(requested, ScopeSet) else tuple(requested)
    exempt = UNECHOED_SCOPES | frozenset(desc.default_scopes)
    return frozenset(
        s
        for s in wanted
        if s not in exempt and s not in have and desc.scope_aliases.get(s) not in have
    )


def authorization_params(
    desc: ProviderDescriptor,
    client: ClientConfig,
    *,
    redirect_uri: str,
    scopes: ScopeSet,
    state: str,
    code_challenge: str | None,
    nonce: str | None,
    extra_params: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The authorization-request parameters (RFC 6749 §4.1.1, RFC 7636 §4.3, OIDC nonce),
    renames applied, for :func:`authorization_url` or a PAR body.

    ``code_challenge`` is sent with ``code_challenge_method=S256`` unless the provider's PKCE
    mode is ``unsupported``; a provider that requires PKCE refuses a missing challenge.
    """
    if not redirect_uri or "#" in redirect_uri:
        raise ConfigurationError("redirect_uri must be an absolute URI without a fragment")
    if not state:
        raise ConfigurationError("state must not be empty")
    params: dict[str, str] = {
        "response_type": "code",
        "client_id": client.client_id,
        "redirect_uri": redirect_uri,
    }
    if len(scopes):
        params["scope"] = scopes.join(desc.scope_delimiter)
    params["state"] = state
    if desc.pkce is not PkceMode.UNSUPPORTED:
        if code_challenge:
            params["code_challenge"] = code_challenge
            params["code_challenge_method"] = "S256"
        elif desc.pkce is PkceMode.REQUIRED:
            raise ConfigurationError(f"provider {desc.id!r} requires PKCE: pass code_challenge")
    if nonce:
        params["nonce"] = nonce
    params.update(desc.authorize_params)
    if extra_params:
        params.update(extra_params)
    return _renamed(desc, params)


def _authorize_endpoint(desc: ProviderDescriptor) -> str:
    if desc.authorization_endpoint is None:
        raise ConfigurationError(f"provider {desc.id!r} has no authorization_endpoint")
    _require_ready(desc, desc.authorization_endpoint, "authorization_endpoint")
    return desc.authorization_endpoint


def _with_query(endpoint: str, params: Mapping[str, str]) -> str:
    parts = urlsplit(endpoint)
    existing = [
        (k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in params
    ]
    query = urlencode([*existing, *params.items()], quote_via=quote, safe="")
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, ""))


def authorization_url(desc: ProviderDescriptor, params: Mapping[str, str]) -> str:
    """The URL to send the user agent to (RFC 6749 §4.1.1), carrying ``params`` (from
    :func:`authorization_params`).

    Query parameters already in the authorization endpoint are kept (unless ``params`` sets
    the same name). A provider that requires PAR (``require_pushed_authorization_requests``)
    refuses this: use :func:`pushed_authorization_request` and :func:`par_authorization_url`.
    """
    endpoint = _authorize_endpoint(desc)
    if desc.require_pushed_authorization_requests:
        raise ConfigurationError(
            f"provider {desc.id!r} requires pushed authorization requests (RFC 9126)"
        )
    return _with_query(endpoint, params)


def pushed_authorization_request(
    desc: ProviderDescriptor,
    client: ClientConfig,
    params: Mapping[str, str],
    *,
    now: float,
) -> HttpRequest:
    """POST the authorization parameters to the PAR endpoint (RFC 9126 §2), authenticated.

    ``params`` comes from :func:`authorization_params`. The response is read with
    :func:`parse_par_response`; then send the user to :func:`par_authorization_url`.
    """
    endpoint = desc.pushed_authorization_request_endpoint
    if endpoint is None:
        raise ConfigurationError(f"provider {desc.id!r} has no PAR endpoint")
    _require_ready(desc, endpoint, "pushed_authorization_request_endpoint")
    body = dict(params)
    return _authenticated_request(desc, client, body, url=endpoint, now=now, purpose="par")


@seals_errors
def parse_par_response(response: HttpResponse, *, now: float) -> tuple[str, float]:
    """``(request_uri, expires_at)`` from a PAR response (RFC 9126 §2.2), or raise."""
    if not 200 <= response.status_code < 300:
        raise classify_error(response, now=now)
    data = _decode_body(response)
    if data is None:
        raise MalformedResponse(
            "malformed_response",
            error_description="PAR response is not a JSON object",
            status_code=response.status_code,
        )
    failure = _error_from_data(data, response, None)
    if failure is not None:
        raise failure
    request_uri = data.get("request_uri")
    seconds = _coerce_seconds(data.get("expires_in"))
    if not isinstance(request_uri, str) or not request_uri or seconds is None or seconds <= 0:
        raise MalformedResponse(
            "malformed_response",
            error_description="PAR response needs request_uri and a positive expires_in",
            status_code=response.status_code,
        )
    return request_uri, now + min(seconds, MAX_TTL)


def par_authorization_url(
    desc: ProviderDescriptor, client: ClientConfig, *, request_uri: str
) -> str:
    """The authorization URL after PAR: only ``client_id`` and ``request_uri`` (RFC 9126 §4)."""
    endpoint = _authorize_endpoint(desc)
    params = _renamed(desc, {"client_id": client.client_id, "request_uri": request_uri})
    return _with_query(endpoint, params)


def callback_metadata(desc: ProviderDescriptor, query: Mapping[str, str]) -> dict[str, JSONValue]:
    """The callback query parameters the provider asks us to keep (quirk 12: ``realmId``)."""
    return {name: query[name] for name in desc.callback_params if name in query}


# -- token endpoint --------------------------------------------------------------------------
def authorization_code_params(
    *, code: str, redirect_uri: str, code_verifier: str | None
) -> dict[str, str]:
    """Grant parameters for the code exchange (RFC 6749 §4.1.3, RFC 7636 §4.5)."""
    params = {"code": code, "redirect_uri": redirect_uri}
    if code_verifier:
        params["code_verifier"] = code_verifier
    return params


def refresh_params(
    desc: ProviderDescriptor, *, refresh_token: str, scopes: ScopeSet | None
) -> dict[str, str]:
    """Grant parameters for a refresh (RFC 6749 §6); scope only if ``scope_on_refresh``."""
    params = {"refresh_token": refresh_token}
    if desc.scope_on_refresh and scopes is not None and len(scopes):
        params["scope"] = scopes.join(desc.scope_delimiter)
    return params


def client_credentials_params(desc: ProviderDescriptor, *, scopes: ScopeSet) -> dict[str, str]:
    """Grant parameters for client credentials (RFC 6749 §4.4.2)."""
    params: dict[str, str] = {}
    if len(scopes):
        params["scope"] = scopes.join(desc.scope_delimiter)
    return params


def _basic_authorization(client_id: str, client_secret: str) -> str:
    # RFC 6749 §2.3.1: form-urlencode id and secret, then HTTP Basic (RFC 7617).
    userpass = f"{quote_plus(client_id)}:{quote_plus(client_secret)}"
    return "Basic " + base64.b64encode(userpass.encode("ascii")).decode("ascii")


def _signing_key(
    desc: ProviderDescriptor, client: ClientConfig
) -> tuple[OctKey | RSAKey | ECKey, str]:
    method = desc.client_auth_method
    alg = desc.token_endpoint_auth_signing_alg
    if method is ClientAuthMethod.CLIENT_SECRET_JWT:
        if client.client_secret is None:
            raise ConfigurationError("client_secret_jwt needs a client_secret")
        alg = alg or "HS256"
        if not alg.startswith("HS"):
            raise ConfigurationError("client_secret_jwt signs with HS256, HS384 or HS512")
        try:
            key: OctKey | RSAKey | ECKey = OctKey.import_key(
                client.client_secret.get_secret_value().encode("utf-8")
            )
        except (ValueError, JoseError):
            raise ConfigurationError("client_secret cannot be used as an HMAC key") from None
        return key, alg
    raw = client.private_key
    if raw is None:
        raise ConfigurationError("private_key_jwt needs a private_key (JWK dict or PEM)")
    try:
        if isinstance(raw, Mapping):
            kty = raw.get("kty")
            if kty == "RSA":
                key = RSAKey.import_key(dict(raw))  # type: ignore[arg-type]
            elif kty == "EC":
                key = ECKey.import_key(dict(raw))  # type: ignore[arg-type]
            else:
                raise ConfigurationError("private_key JWK must have kty RSA or EC")
        else:
            try:
                key = RSAKey.import_key(raw)
            except (ValueError, JoseError, TypeError):
                key = ECKey.import_key(raw)
    except ConfigurationError:
        raise
    except (ValueError, JoseError, TypeError):
        raise ConfigurationError("private_key is not a usable RSA or EC private key") from None
    if not key.is_private:
        raise ConfigurationError("private_key must be a private key")
    if alg is None:
        if isinstance(key, RSAKey):
            alg = "RS256"
        else:
            crv = key.get("crv")
            alg = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}.get(str(crv), "ES256")
    if isinstance(key, RSAKey) != (alg[:2] in ("RS", "PS")):
        raise ConfigurationError(f"signing algorithm {alg} does not fit the private key type")
    return key, alg


def client_assertion(
    desc: ProviderDescriptor,
    client: ClientConfig,
    *,
    now: float,
    audience: str | None = None,
) -> str:
    """A signed JWT client assertion (RFC 7523 §3, OIDC Core §9).

    ``iss`` = ``sub`` = client id, ``aud`` = the token endpoint (or ``audience``), a random
    ``jti``, ``iat`` = now and ``exp`` = now + 5 minutes. HS* with the client secret for
    ``client_secret_jwt``; RS*/PS*/ES* with the private key for ``private_key_jwt``.
    """
    key, alg = _signing_key(desc, client)
    issued = int(now)
    claims: dict[str, Any] = {
        "iss": client.client_id,
        "sub": client.client_id,
        "aud": audience or desc.token_endpoint,
        "jti": secrets.token_urlsafe(32),
        "iat": issued,
        "exp": issued + ASSERTION_LIFETIME,
    }
    header: dict[str, Any] = {"alg": alg}
    kid = client.private_key_id or (key.kid if not isinstance(key, OctKey) else None)
    if kid:
        header["kid"] = kid
    try:
        return jwt.encode(header, claims, key, algorithms=[alg])
    except (JoseError, ValueError, TypeError) as exc:
        raise ConfigurationError(
            f"cannot sign the client assertion with {alg}: {type(exc).__name__}"
        ) from None


def _authenticated_request(
    desc: ProviderDescriptor,
    client: ClientConfig,
    body: dict[str, str],
    *,
    url: str,
    now: float,
    purpose: str,
) -> HttpRequest:
    headers: list[tuple[str, str]] = [("Accept", "application/json")]
    method = desc.client_auth_method
    secret = client.client_secret
    if method is ClientAuthMethod.CLIENT_SECRET_BASIC:
        if secret is None:
            raise ConfigurationError(f"provider {desc.id!r} uses client_secret_basic: no secret")
        headers.append(
            ("Authorization", _basic_authorization(client.client_id, secret.get_secret_value()))
        )
    elif method is ClientAuthMethod.CLIENT_SECRET_POST:
        if secret is None:
            raise ConfigurationError(f"provider {desc.id!r} uses client_secret_post: no secret")
        body["client_id"] = client.client_id
        body["client_secret"] = secret.get_secret_value()
    elif method is ClientAuthMethod.NONE:
        body["client_id"] = client.client_id
    else:
        body["client_assertion_type"] = CLIENT_ASSERTION_TYPE
        body["client_assertion"] = client_assertion(desc, client, now=now)
    body = _renamed(desc, body)
    if desc.body_format is BodyFormat.JSON:
        payload = json.dumps(body, separators=(",", ":")).encode("utf-8")
        headers.append(("Content-Type", "application/json"))
    else:
        payload = urlencode(body).encode("ascii")
        headers.append(("Content-Type", "application/x-www-form-urlencoded"))
    return HttpRequest(
        method="POST", url=url, headers=tuple(headers), body=payload, purpose=purpose
    )


def token_request(
    desc: ProviderDescriptor,
    client: ClientConfig,
    grant: GrantType,
    params: Mapping[str, str],
    *,
    now: float,
    url: str | None = None,
) -> HttpRequest:
    """A POST to the token endpoint for ``grant`` with ``params``, client authenticated.

    Always ``Accept: application/json`` (quirk 1); a form body, or JSON when the descriptor
    says so (quirk 15); ``desc.token_params`` added; parameter renames applied (quirk 16).
    Secrets go in the body or the ``Authorization`` header, never in the URL.
    """
    grant = GrantType(grant)
    target = url or desc.token_endpoint
    _require_ready(desc, target, "token endpoint")
    body: dict[str, str] = {"grant_type": grant.value}
    body.update(desc.token_params)
    body.update(params)
    body["grant_type"] = grant.value
    return _authenticated_request(desc, client, body, url=target, now=now, purpose="token")


def revocation_request(
    desc: ProviderDescriptor,
    client: ClientConfig,
    *,
    token: str,
    token_type_hint: str,
    now: float | None = None,
) -> HttpRequest:
    """An RFC 7009 revocation request, authenticated like the token endpoint.

    ``now`` is only used to sign JWT client assertions (it defaults to the wall clock).
    """
    url = desc.revocation_endpoint
    return _about_token(desc, client, "revocation", url, token, token_type_hint, now)


def introspection_request(
    desc: ProviderDescriptor,
    client: ClientConfig,
    *,
    token: str,
    token_type_hint: str | None = "access_token",
    now: float | None = None,
) -> HttpRequest:
    """An RFC 7662 introspection request, authenticated like the token endpoint.

    Useful where responses carry no ``expires_in`` (Salesforce). ``now`` only signs JWT
    client assertions (default: the wall clock).
    """
    url = desc.introspection_endpoint
    return _about_token(desc, client, "introspection", url, token, token_type_hint, now)


def _about_token(
    desc: ProviderDescriptor,
    client: ClientConfig,
    purpose: str,
    url: str | None,
    token: str,
    token_type_hint: str | None,
    now: float | None,
) -> HttpRequest:
    """A request about one token to ``{purpose}_endpoint`` (``url``), authenticated like the
    token endpoint: RFC 7009 revocation, RFC 7662 introspection."""
    name = f"{purpose}_endpoint"
    if url is None:
        raise ConfigurationError(f"provider {desc.id!r} has no {name}")
    _require_ready(desc, url, name)
    body = {"token": token}
    if token_type_hint:
        body["token_type_hint"] = token_type_hint
    now = time.time() if now is None else now
    return _authenticated_request(desc, client, body, url=url, now=now, purpose=purpose)


# -- responses -------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True, repr=False)
class TokenResponse:
    """A parsed, normalised token response. Secrets are :class:`Secret`; ``repr`` hides them."""

    access_token: Secret
    token_type: str
    refresh_token: Secret | None
    id_token: Secret | None
    expires_at: float | None
    refresh_token_expires_at: float | None
    scopes: ScopeSet | None
    metadata: dict[str, JSONValue] = field(default_factory=dict)

    __repr__ = redacted_repr


def _decode_body(response: HttpResponse, *, strict: bool = False) -> dict[str, Any] | None:
    """A JSON object, or a form-encoded body (GitHub's default), or ``None``.

    JSON goes through :func:`jsonsafe.loads` (no duplicate members, no NaN, bounded numbers
    and depth, only storable strings). With ``strict``, a JSON body it refuses raises
    :class:`MalformedResponse` naming the defect instead of returning ``None``.
    """
    raw = response.body or b""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    stripped = text.strip()
    if not stripped:
        return None
    ctype = response.content_type
    if stripped.startswith("{") or ctype.endswith("json"):
        try:
            data = jsonsafe.loads(stripped)
        except jsonsafe.JSONRejected as exc:
            if strict and stripped.startswith("{"):
                raise MalformedResponse(
                    "malformed_response",
                    error_description=f"JSON response refused: {exc}",
                    status_code=response.status_code,
                ) from None
            return None
        return data if isinstance(data, dict) else None
    if stripped.startswith("<") or ctype in ("text/html", "application/xhtml+xml"):
        return None
    if "=" not in stripped or any(ch.isspace() for ch in stripped):
        return None
    try:
        pairs = parse_qsl(stripped, keep_blank_values=True, strict_parsing=True)
    except ValueError:
        return None
    form: dict[str, Any] = {}
    for key, value in pairs:
        if key in form:  # a repeated parameter is ambiguous (RFC 6749 §3.1)
            return None
        form[key] = value
    try:
        jsonsafe.check_tree(form)
    except jsonsafe.JSONRejected as exc:
        if strict:
            raise MalformedResponse(
                "malformed_response",
                error_description=f"form response refused: {exc}",
                status_code=response.status_code,
            ) from None
        return None
    return form


def _success_body(
    desc: ProviderDescriptor,
    response: HttpResponse,
    now: float,
    what: str,
    *,
    preview: bool = False,
) -> dict[str, Any]:
    """The body of a 2xx answer, decoded strictly. A non-2xx answer raises what
    :func:`classify_error` makes of it; a body that is no object raises
    :class:`MalformedResponse` saying ``what`` (with a redacted preview if ``preview``)."""
    if not 200 <= response.status_code < 300:
        raise classify_error(response, now=now, aliases=desc.error_aliases)
    data = _decode_body(response, strict=True)
    if data is None:
        body = redact_preview(response.body.decode("utf-8", "replace")) if preview else None
        raise MalformedResponse(
            "malformed_response",
            error_description=what,
            status_code=response.status_code,
            body_preview=body,
        )
    return data


def redact_preview(text: str, limit: int = _PREVIEW_LEN) -> str:
    """Collapse whitespace, hide token-looking runs and ``secret=value`` pairs, truncate."""
    text = " ".join(text.split())
    text = _SECRET_PARAM_RE.sub(lambda m: f"{m.group(1)}{m.group(2)}[redacted]", text)
    text = _TOKENISH_RE.sub("[redacted]", text)
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text


def _clean_description(value: object) -> str | None:
    if value is None:
        return None
    return redact_preview(str(value), _DESCRIPTION_LEN)


def parse_retry_after(response: HttpResponse, *, now: float | None = None) -> float | None:
    """Seconds to wait from ``Retry-After`` (delta-seconds or HTTP-date, RFC 9110 §10.2.3).

    An HTTP-date is taken relative to the response's ``Date`` header when present, else to
    ``now`` (default: the wall clock). Never negative; ``None`` when absent or unreadable.
    """
    value = response.headers.get("retry-after")
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        # Bounded before int(): 4,301+ digits would raise ValueError (int max str digits).
        return float(min(int(value), 10**9)) if len(value) <= 10 else float(10**9)
    if len(value) > 64:  # an HTTP-date is 29 characters
        return None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    reference: float | None = None
    date_header = response.headers.get("date")
    if date_header:
        try:
            reference = email.utils.parsedate_to_datetime(date_header[:64]).timestamp()
        except (TypeError, ValueError, IndexError, OverflowError):
            reference = None
    if reference is None:
        reference = time.time() if now is None else now
    return max(0.0, when.timestamp() - reference)


def _error_from_data(
    data: Mapping[str, Any],
    response: HttpResponse,
    retry_after: float | None,
    aliases: Mapping[str, str] | None = None,
) -> ProviderError | None:
    error = data.get("error")
    if data.get("ok") is False and not error:
        error = "unknown_error"
    if isinstance(error, Mapping):  # {"error": {"code": ..., "message": ...}} (Google APIs)
        desc = error.get("message")
        status = error.get("status") or error.get("code") or "error"
        error, data = str(status), {"error_description": desc}
    if not error or not isinstance(error, str | int):
        return None
    code = str(error)[:100]
    standard = (aliases or {}).get(code, code)
    cls = _ERROR_CLASSES.get(standard.lower(), ProviderError)
    uri = data.get("error_uri")
    return cls(
        code,
        error_description=_clean_description(data.get("error_description")),
        error_uri=str(uri)[:300] if isinstance(uri, str) else None,
        status_code=response.status_code,
        retry_after=retry_after,
    )


def classify_error(
    response: HttpResponse,
    *,
    now: float | None = None,
    aliases: Mapping[str, str] | None = None,
) -> ProviderError:
    """Map an error response to the exception tree (SECURITY C5, quirk 24).

    1. An RFC 6749 §5.2 ``error`` member (or Slack ``ok: false``) decides the class;
       ``aliases`` (a descriptor's ``error_aliases``) first maps provider-specific codes to
       RFC codes. The exception's ``error`` keeps the provider's own code.
    2. Otherwise a non-OAuth body (HTML, unparseable, empty) gives
       ``error="non_oauth_response"`` with a truncated, redacted ``body_preview``.
    3. The HTTP status decides the class: 429 / 408 / 5xx (and 2xx/3xx) →
       :class:`TransientProviderError`; 401 → :class:`InvalidClient`; other 4xx →
       :class:`ProviderError`.

    ``retry_after`` comes from ``Retry-After``; ``status_code`` is always set.
    """
    retry_after = parse_retry_after(response, now=now)
    data = _decode_body(response)
    if data is not None:
        classified = _error_from_data(data, response, retry_after, aliases)
        if classified is not None:
            return classified
    status = response.status_code
    if data is None:
        error = "non_oauth_response"
        preview: str | None = redact_preview(response.body.decode("utf-8", "replace"))
    else:
        error = "http_error"
        preview = redact_preview(json.dumps(data)) if data else None
    kwargs: dict[str, Any] = {
        "status_code": status,
        "retry_after": retry_after,
        "body_preview": preview,
    }
    if status == 401:
        return InvalidClient(error, **kwargs)
    if 400 <= status < 500 and status not in (408, 429):
        return ProviderError(error, **kwargs)
    return TransientProviderError(error, **kwargs)


def _coerce_seconds(value: object) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        if isinstance(value, int | float):
            number = float(value)
        elif isinstance(value, str):
            number = float(value.strip())
        else:
            return None
    except (ValueError, OverflowError):
        return None
    if math.isnan(number) or math.isinf(number):
        return None
    return number


def _expiry(seconds: float | None, unit: float, now: float) -> float | None:
    if seconds is None or seconds <= 0:
        return None
    return now + min(seconds * unit, MAX_TTL)


def _walk(data: Mapping[str, Any], path: Sequence[str]) -> object:
    node: object = data
    for part in path:
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


_MAX_SCOPE_CHARS: Final = 64 * 1024
_MAX_SCOPE_ITEMS: Final = 1000


def _parse_scope(value: object, delimiter: str) -> ScopeSet | None:
    if value is None:
        return None
    size = len(value) if isinstance(value, str | list) else 0
    if size > (_MAX_SCOPE_CHARS if isinstance(value, str) else _MAX_SCOPE_ITEMS):
        # A 10 MB scope took 12.9 s to parse (blocking every task on the async path).
        raise MalformedResponse(
            "malformed_response",
            error_description=f"scope is longer than {_MAX_SCOPE_CHARS} characters or "
            f"{_MAX_SCOPE_ITEMS} items",
        )
    if isinstance(value, str):
        parts = value.split(delimiter) if delimiter != " " else [value]
        items: list[str] = []
        for part in parts:
            items.extend(re.split(r"[\s,]+", part))
        if delimiter != "+" and len(items) == 1 and "+" in items[0]:
            items = items[0].split("+")
    elif isinstance(value, list):
        items = [v for v in value if isinstance(v, str)]
    else:
        return None
    valid: list[str] = []
    for item in (i.strip() for i in items):
        if not item:
            continue
        try:
            ScopeSet((item,))
        except InvalidIdentifier:
            continue
        valid.append(item)
    return ScopeSet(tuple(valid))


def _normalise_token_type(desc: ProviderDescriptor, value: object, status: int) -> str:
    if value is None or value == "":
        if desc.missing_token_type is None:
            # RFC 6749 §5.1, SECURITY C3: token_type is REQUIRED; guessing Bearer would also
            # hide a DPoP downgrade.
            raise MalformedResponse(
                "malformed_response",
                error_description=f"token response from provider {desc.id!r} has no "
                "token_type; if this provider is known to leave it out, set "
                "missing_token_type='Bearer' on its descriptor",
                status_code=status,
            )
        value = desc.missing_token_type
    if not isinstance(value, str):
        raise UnsupportedTokenType(str(value))
    alias = desc.token_type_aliases.get(value) or desc.token_type_aliases.get(value.lower())
    name = (alias or value).strip()
    lowered = name.lower()
    if lowered == "bearer":
        if desc.dpop:
            # RFC 9449 §5: we sent a DPoP proof and asked for a bound token; a Bearer answer
            # is a downgrade (a stolen token would work without our key). Not stored.
            raise UnsupportedTokenType(
                name,
                reason=f"provider {desc.id!r} is configured with dpop=True but answered with "
                "a Bearer token (a downgrade); set dpop=False if the provider does not "
                "support DPoP",
            )
        return "Bearer"
    if lowered == "dpop" and desc.dpop:
        # RFC 9449: a sender-constrained token; BrokerAuth signs a proof for every request.
        return "DPoP"
    # RFC 6749 §7.1: never use a token type we do not understand. A DPoP-bound token
    # (RFC 9449) needs a proof per request, which is only created when the descriptor opts in
    # with ``dpop=True`` (and DPoP tokens are only issued to clients that send a proof).
    raise UnsupportedTokenType(name)


def _secret_field(value: object) -> Secret | None:
    if isinstance(value, str) and value:
        return Secret(value)
    return None


def _public(data: Mapping[str, Any]) -> dict[str, JSONValue]:
    """Non-standard top-level members, with secrets removed at every level."""
    return {
        str(k): _strip_secrets(v)
        for k, v in data.items()
        if k not in _STANDARD_FIELDS and not str(k).endswith("_token")
    }


@seals_errors
def parse_token_response(
    desc: ProviderDescriptor, response: HttpResponse, *, now: float
) -> TokenResponse:
    """Parse a token-endpoint response into a :class:`TokenResponse`, or raise.

    Accepts JSON and form-encoded / ``text/plain`` bodies (quirk 1). An ``error`` member or
    Slack's ``ok: false`` is an error even with HTTP 200 (quirks 1, 2). ``desc.token_path``
    selects a nested token object (Slack ``authed_user``); if it is absent but the top level
    holds an ``access_token``, the top level is used (Slack refresh responses). Non-2xx goes
    through :func:`classify_error`. A 2xx body without ``access_token`` raises
    :class:`MalformedResponse`; an unknown ``token_type`` raises
    :class:`~oauth2_broker_mw.UnsupportedTokenType` (SECURITY C4).
    """
    data = _success_body(
        desc, response, now, "token response is neither a JSON object nor a form body", preview=True
    )
    if desc.errors_with_200 or "access_token" not in data:
        failure = _error_from_data(
            data, response, parse_retry_after(response, now=now), desc.error_aliases
        )
        if failure is not None:
            raise failure

    token_obj: Mapping[str, Any] = data
    metadata: dict[str, JSONValue] = {}
    if desc.token_path:
        nested = _walk(data, desc.token_path)
        if isinstance(nested, Mapping) and "access_token" in nested:
            token_obj = nested
            metadata = _public(data)
            metadata.pop(desc.token_path[0], None)
            metadata[desc.token_path[0]] = _strip_secrets(data[desc.token_path[0]])
        elif "access_token" not in data:
            raise MalformedResponse(
                "malformed_response",
                error_description=f"no token object at {'.'.join(desc.token_path)}",
                status_code=response.status_code,
            )
        else:
            metadata = _public(data)
    else:
        metadata = _public(data)

    access_token = token_obj.get("access_token")
    if not isinstance(access_token, str) or not access_token:
        raise MalformedResponse(
            "malformed_response",
            error_description="token response has no access_token",
            status_code=response.status_code,
        )
    if not _HEADER_TOKEN_RE.fullmatch(access_token):
        # It goes into an Authorization header: CR, LF, spaces, non-ASCII or a lone surrogate
        # would make the HTTP library fail later, with the token in its message.
        raise MalformedResponse(
            "malformed_response",
            error_description="access_token is not a valid header value: only visible ASCII "
            "characters are allowed (RFC 6750 §2.1)",
            status_code=response.status_code,
        )
    token_type = _normalise_token_type(desc, token_obj.get("token_type"), response.status_code)

    raw_expiry: object = None
    if desc.expires_in_path:
        raw_expiry = _walk(token_obj, desc.expires_in_path)
        if raw_expiry is None:
            raw_expiry = _walk(data, desc.expires_in_path)
    if raw_expiry is None:
        raw_expiry = token_obj.get("expires_in")
    seconds = _coerce_seconds(raw_expiry)
    if seconds is not None and seconds <= 0:
        # ``expires_in: 0`` or negative: already expired. The caller gets it once (it was just
        # issued) and the next lease refreshes; never the 3600 s default (issue 10).
        expires_at: float | None = now
    else:
        expires_at = _expiry(seconds, desc.expires_in_unit, now)
    if expires_at is None and desc.expiry_policy is ExpiryPolicy.DEFAULT_TTL:
        expires_at = now + min(desc.default_ttl, MAX_TTL)

    refresh_expires_at: float | None = None
    for name in _REFRESH_EXPIRY_FIELDS:
        if name in token_obj:
            refresh_expires_at = _expiry(
                _coerce_seconds(token_obj[name]), desc.expires_in_unit, now
            )
            if refresh_expires_at is not None:
                break

    return TokenResponse(
        access_token=Secret(access_token),
        token_type=token_type,
        refresh_token=_secret_field(token_obj.get("refresh_token")),
        id_token=_secret_field(token_obj.get("id_token")),
        expires_at=expires_at,
        refresh_token_expires_at=refresh_expires_at,
        scopes=_parse_scope(token_obj.get("scope"), desc.scope_delimiter),
        metadata=metadata,
    )


_MAX_METADATA_DEPTH: Final = 16


def _strip_secrets(value: object, depth: int = 0) -> JSONValue:
    """A JSON copy without secret-named members (``*_token``, ``client_secret``...).

    Structures nested deeper than 16 levels are cut (``None``): metadata stays small and
    serialisable.
    """
    if depth >= _MAX_METADATA_DEPTH and isinstance(value, Mapping | list):
        return None
    if isinstance(value, Mapping):
        return {
            str(k): _strip_secrets(v, depth + 1)
            for k, v in value.items()
            if k not in _SECRET_FIELDS and not str(k).endswith("_token")
        }
    if isinstance(value, list):
        return [_strip_secrets(v, depth + 1) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


@dataclass(frozen=True, slots=True)
class Introspection:
    """An RFC 7662 introspection result. An inactive token has ``active=False`` and nothing else."""

    active: bool
    expires_at: float | None = None
    scopes: ScopeSet | None = None
    client_id: str | None = None
    subject: str | None = None
    token_type: str | None = None
    claims: dict[str, JSONValue] = field(default_factory=dict)


@seals_errors
def parse_introspection_response(
    desc: ProviderDescriptor, response: HttpResponse, *, now: float
) -> Introspection:
    """Read an RFC 7662 response; ``active`` must be the JSON ``true`` to count as active."""
    data = _success_body(desc, response, now, "introspection response is not a JSON object")
    failure = _error_from_data(data, response, None, desc.error_aliases)
    if failure is not None:
        raise failure
    if data.get("active") is not True:
        return Introspection(active=False)
    exp = _coerce_seconds(data.get("exp"))

    def opt_str(name: str) -> str | None:
        value = data.get(name)
        return value if isinstance(value, str) else None

    return Introspection(
        active=True,
        expires_at=None if exp is None or exp <= 0 else min(exp, now + MAX_TTL),
        scopes=_parse_scope(data.get("scope"), desc.scope_delimiter),
        client_id=opt_str("client_id"),
        subject=opt_str("sub"),
        token_type=opt_str("token_type"),
        claims=_strip_secrets(data),  # type: ignore[arg-type]
    )


# -- discovery -------------------------------------------------------------------------------
def metadata_urls(issuer: str) -> tuple[str, ...]:
    """Where an issuer's metadata may live, in the order to try them.

    OpenID Connect Discovery appends ``/.well-known/openid-configuration`` to the issuer;
    RFC 8414 §3.1 inserts ``/.well-known/oauth-authorization-server`` between host and path.
    For an issuer without a path, the RFC 8414 form of the OIDC document is offered too.
    """
    if not is_allowed_endpoint(issuer) or "?" in issuer:
        raise ConfigurationError(f"issuer must be an https URL without query: {issuer[:200]!r}")
    parts = urlsplit(issuer)
    path = parts.path.rstrip("/")
    base = f"{parts.scheme}://{parts.netloc}"
    urls = [
        f"{base}{path}/.well-known/openid-configuration",
        f"{base}/.well-known/oauth-authorization-server{path}",
    ]
    if path:
        urls.append(f"{base}/.well-known/openid-configuration{path}")
    return tuple(dict.fromkeys(urls))


def discovery_request(url: str) -> HttpRequest:
    """A GET for a metadata document (validate it with ``ProviderDescriptor.from_metadata``)."""
    if not is_allowed_endpoint(url):
        raise ConfigurationError(f"metadata URL must be https: {url[:200]!r}")
    return HttpRequest(
        method="GET", url=url, headers=(("Accept", "application/json"),), purpose="discovery"
    )


# -- WWW-Authenticate ------------------------------------------------------------------------
_TOKEN_CHARS: Final = frozenset("!#$%&'*+-.^_`|~" + string.ascii_letters + string.digits)


def _parse_challenges(header: str) -> list[tuple[str, dict[str, str]]]:
    """Split a ``WWW-Authenticate`` value into (scheme, params) challenges (RFC 9110 §11.6.1)."""
    challenges: list[tuple[str, dict[str, str]]] = []
    i, n = 0, len(header)

    def skip_ws(j: int) -> int:
        while j < n and header[j] in " \t":
            j += 1
        return j

    def read_token(j: int) -> tuple[str, int]:
        start = j
        while j < n and header[j] in _TOKEN_CHARS:
            j += 1
        return header[start:j], j

    while i < n:
        i = skip_ws(i)
        if i < n and header[i] == ",":
            i += 1
            continue
        scheme, i = read_token(i)
        if not scheme:
            i += 1
            continue
        params: dict[str, str] = {}
        challenges.append((scheme, params))
        while i < n:
            i = skip_ws(i)
            name, j = read_token(i)
            j = skip_ws(j)
            if not name or j >= n or header[j] != "=":
                break  # the next challenge's scheme, a token68, or the end
            j = skip_ws(j + 1)
            if j < n and header[j] == '"':
                j += 1
                chars: list[str] = []
                while j < n and header[j] != '"':
                    if header[j] == "\\" and j + 1 < n:
                        j += 1
                    chars.append(header[j])
                    j += 1
                value = "".join(chars)
                j += 1
            else:
                value, j = read_token(j)
            params.setdefault(name.lower(), value)
            j = skip_ws(j)
            if j < n and header[j] == ",":
                j += 1
            i = j
    return challenges


def parse_www_authenticate(header: str) -> dict[str, str]:
    """Parameters of the ``Bearer`` or ``DPoP`` challenge in ``WWW-Authenticate`` (RFC 6750 §3).

    Returns e.g. ``{"scheme": "Bearer", "realm": ..., "error": "invalid_token",
    "error_description": ..., "scope": ...}``; a challenge that carries ``error`` is preferred
    when several are present. Other schemes are ignored; an empty dict when none matches.
    """
    found: dict[str, str] | None = None
    for scheme, params in _parse_challenges(header or ""):
        if scheme.lower() not in ("bearer", "dpop"):
            continue
        result = dict(params)
        result["scheme"] = "DPoP" if scheme.lower() == "dpop" else "Bearer"
        if "error" in params:
            return result
        if found is None:
            found = result
    return found or {}


# -- ID tokens -------------------------------------------------------------------------------
def _id_token_error(message: str) -> AuthorizationFlowError:
    return AuthorizationFlowError("id_token_invalid", message)


_MAX_JOSE_HEADER: Final = 8192
_MAX_ID_TOKEN: Final = 64 * 1024


def _b64json(segment: str, part: str = "header", limit: int = _MAX_JOSE_HEADER) -> dict[str, Any]:
    """A JOSE segment through :func:`jsonsafe.loads` (no duplicate members, bounded)."""
    if len(segment) > limit:  # refused before decoding (a 14 MB header was decoded)
        raise _id_token_error(f"ID token {part} is longer than {limit} characters")
    padded = segment + "=" * (-len(segment) % 4)
    try:
        value = jsonsafe.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
    except (ValueError, binascii.Error, UnicodeEncodeError):
        # JSONRejected included: a duplicate "sub" would otherwise resolve to the last one
        raise _id_token_error(f"ID token {part} is not valid base64url JSON") from None
    if not isinstance(value, dict):
        raise _id_token_error(f"ID token {part} is not a JSON object")
    return value


def verify_id_token(
    id_token: str | Secret,
    *,
    jwks: Mapping[str, object],
    issuer: str,
    client_id: str,
    nonce: str | None,
    now: float,
    algorithms: Sequence[str] = ("RS256", "ES256", "PS256"),
    leeway: float = 60.0,
    access_token: str | None = None,
    trusted_audiences: Sequence[str] = (),
) -> dict[str, JSONValue]:
    """Verify an OIDC ID token and return its claims (OIDC Core §3.1.3.7, SECURITY E1-E4).

    The signature must verify with a key from ``jwks`` (``jku``, ``jwk`` and ``x5u`` headers
    are ignored), the ``alg`` must be one of ``algorithms`` (never ``none`` or an HMAC alg),
    ``iss`` must equal ``issuer`` exactly, ``aud`` must contain ``client_id`` and no other
    audience unless it is in ``trusted_audiences`` (``azp`` must equal ``client_id`` when
    present or when there are several audiences), ``exp`` and ``iat`` are
    checked with ``leeway``, and ``nonce`` must match when given. When ``access_token`` is
    given and the token has an ``at_hash`` claim, it must match (OIDC Core §3.1.3.8). Failures raise
    :class:`AuthorizationFlowError` with code ``id_token_invalid`` or ``nonce_mismatch``.
    An unknown ``kid`` also fails: the caller may refresh the JWKS (rate-limited) and retry.

    The token is held as a :class:`Secret` here, and a failure leaves :func:`sealed`: no
    frame or chained exception that an error reporter records holds it raw.
    """
    if not isinstance(id_token, str | Secret):  # a caller's JSON value, not a token
        raise _id_token_error("ID token is not a string")
    id_token = Secret(id_token)
    try:
        return _verified_claims(
            id_token,
            jwks=jwks,
            issuer=issuer,
            client_id=client_id,
            nonce=nonce,
            now=now,
            algorithms=algorithms,
            leeway=leeway,
            access_token=access_token,
            trusted_audiences=trusted_audiences,
        )
    except BrokerError as exc:
        raise sealed(exc) from None


def _verified_claims(
    secret: Secret,
    *,
    jwks: Mapping[str, object],
    issuer: str,
    client_id: str,
    nonce: str | None,
    now: float,
    algorithms: Sequence[str],
    leeway: float,
    access_token: str | None,
    trusted_audiences: Sequence[str],
) -> dict[str, JSONValue]:
    id_token = secret.get_secret_value()
    allowed = [a for a in algorithms if a != "none" and not a.upper().startswith("HS")]
    if not allowed:
        raise ConfigurationError("verify_id_token needs at least one asymmetric algorithm")
    if not isinstance(id_token, str) or len(id_token) > _MAX_ID_TOKEN:
        raise _id_token_error(f"ID token is not a string of at most {_MAX_ID_TOKEN} characters")
    if id_token.count(".") != 2:
        raise _id_token_error("ID token is not a compact JWS")
    header = _b64json(id_token.split(".", 1)[0])
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in allowed:
        raise _id_token_error(f"ID token algorithm {str(alg)[:20]!r} is not allowed")
    try:
        keyset = KeySet.import_key_set(dict(jwks))  # type: ignore[arg-type]
    except Exception:  # any defect in the provider's JWKS fails closed
        raise _id_token_error("the provider's JWKS cannot be read") from None
    family = "RSA" if alg[:2] in ("RS", "PS") else "EC"
    candidates = [
        k
        for k in keyset.keys
        if k.key_type == family
        and k.get("use") in (None, "sig")
        and k.get("alg") in (None, alg)
        and not isinstance(k, OctKey)
    ]
    kid = header.get("kid")
    if kid is not None:
        candidates = [k for k in candidates if k.kid == kid]
        if not candidates:
            raise _id_token_error("ID token key id is not in the provider's JWKS")
    if len(candidates) != 1:
        raise _id_token_error("no single key in the provider's JWKS matches the ID token")
    try:
        jwt.decode(id_token, candidates[0], algorithms=[alg])
    except Exception:  # any library error fails closed
        raise _id_token_error("ID token signature does not verify") from None
    # The claims come from our strict parser, not the library's json.loads (duplicates).
    claims = _b64json(id_token.split(".")[1], "payload", _MAX_ID_TOKEN)

    if claims.get("iss") != issuer:
        raise _id_token_error("ID token issuer does not match")
    aud = claims.get("aud")
    audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
    if client_id not in audiences:
        raise _id_token_error("ID token audience does not contain this client")
    untrusted = [a for a in audiences if a != client_id and a not in trusted_audiences]
    if untrusted:  # OIDC Core §3.1.3.7 (3): additional audiences not trusted by the client
        raise _id_token_error(
            f"ID token has {len(untrusted)} audience(s) besides this client that are not "
            "trusted (pass trusted_audiences to accept them)"
        )
    azp = claims.get("azp")
    if (len(audiences) > 1 or azp is not None) and azp != client_id:
        raise _id_token_error("ID token azp does not equal this client")
    if not isinstance(claims.get("sub"), str) or not claims["sub"]:
        raise _id_token_error("ID token has no subject")
    exp = claims.get("exp")
    if isinstance(exp, bool) or not isinstance(exp, int | float):
        raise _id_token_error("ID token has no exp")
    if exp <= now - leeway:
        raise _id_token_error("ID token has expired")
    iat = claims.get("iat")
    if isinstance(iat, bool) or not isinstance(iat, int | float):
        raise _id_token_error("ID token has no iat")
    if iat > now + leeway:
        raise _id_token_error("ID token was issued in the future")
    nbf = claims.get("nbf")
    if isinstance(nbf, int | float) and not isinstance(nbf, bool) and nbf > now + leeway:
        raise _id_token_error("ID token is not valid yet")
    if nonce is not None:
        claimed = claims.get("nonce")
        if not isinstance(claimed, str) or not hmac.compare_digest(
            claimed.encode("utf-8", "surrogatepass"), nonce.encode("utf-8", "surrogatepass")
        ):
            raise AuthorizationFlowError("nonce_mismatch", "ID token nonce does not match")
    at_hash = claims.get("at_hash")
    if (
        access_token is not None
        and at_hash is not None
        and (
            not isinstance(at_hash, str)
            or not hmac.compare_digest(at_hash.encode(), _token_hash(access_token, alg).encode())
        )
    ):
        raise _id_token_error("ID token at_hash does not match the access token")
    return claims


def _token_hash(value: str, alg: str) -> str:
    """OIDC ``at_hash`` / ``c_hash``: base64url of the left half of the alg's SHA digest."""
    bits = {"256": hashlib.sha256, "384": hashlib.sha384, "512": hashlib.sha512}[alg[-3:]]
    digest = bits(value.encode("utf-8")).digest()
    return base64.urlsafe_b64encode(digest[: len(digest) // 2]).rstrip(b"=").decode("ascii")
