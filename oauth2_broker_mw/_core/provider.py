"""Provider descriptors and client configuration.

Owns: :class:`ProviderDescriptor` (endpoints, grants, client-auth method and every per-provider
quirk flag), its validation (HTTPS endpoints, grants, templates), loading it from a dict, JSON,
TOML or an RFC 8414 / OIDC discovery document, and :class:`ClientConfig` (client credentials,
never shown in a repr).
Must not import: httpx/httpx2, asyncio, threading, any store driver (sans-IO core). It does not
fetch discovery documents; the caller fetches and passes the parsed document in.
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
import math
import re
import tomllib
from collections.abc import Iterable
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field
from typing import Any
from typing import Final
from urllib.parse import urlsplit

from . import jsonsafe
from .dpop import DPOP_ALGS
from .errors import ConfigurationError
from .errors import InvalidIdentifier
from .model import PRESENCE_ONLY
from .model import JSONValue
from .model import ProviderId
from .model import ScopeSet
from .model import Secret
from .model import redacted_repr

__all__ = [
    "BodyFormat",
    "ClientAuthMethod",
    "ClientConfig",
    "ExpiryPolicy",
    "GrantType",
    "PkceMode",
    "ProviderDescriptor",
    "is_allowed_endpoint",
    "parse_metadata",
]


class GrantType(enum.StrEnum):
    """OAuth 2.0 grants the broker can run (no implicit, no password grant: SECURITY A1)."""

    AUTHORIZATION_CODE = "authorization_code"
    REFRESH_TOKEN = "refresh_token"
    CLIENT_CREDENTIALS = "client_credentials"


class ClientAuthMethod(enum.StrEnum):
    """How the client authenticates at the token and revocation endpoints (RFC 8414 names)."""

    CLIENT_SECRET_BASIC = "client_secret_basic"
    CLIENT_SECRET_POST = "client_secret_post"
    NONE = "none"
    CLIENT_SECRET_JWT = "client_secret_jwt"
    PRIVATE_KEY_JWT = "private_key_jwt"


class PkceMode(enum.StrEnum):
    """PKCE support of the provider. ``optional`` still sends S256 (SECURITY A2)."""

    REQUIRED = "required"
    OPTIONAL = "optional"
    UNSUPPORTED = "unsupported"


class ExpiryPolicy(enum.StrEnum):
    """What to assume when a token response has no ``expires_in`` (quirk 5)."""

    DEFAULT_TTL = "default_ttl"
    UNKNOWN = "unknown"


class BodyFormat(enum.StrEnum):
    """Encoding of token-request bodies (quirk 15)."""

    FORM = "form"
    JSON = "json"


_LOOPBACK_HOSTS: Final = frozenset({"127.0.0.1", "::1", "localhost"})
_PLACEHOLDER: Final = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_ENDPOINT_FIELDS: Final = (
    "token_endpoint",
    "authorization_endpoint",
    "revocation_endpoint",
    "introspection_endpoint",
    "userinfo_endpoint",
    "jwks_uri",
    "refresh_endpoint",
    "pushed_authorization_request_endpoint",
)
_METADATA_ENDPOINTS: Final = tuple(n for n in _ENDPOINT_FIELDS if n != "refresh_endpoint")
_JWT_ALGS: Final = frozenset(
    {
        "HS256",
        "HS384",
        "HS512",
        "RS256",
        "RS384",
        "RS512",
        "PS256",
        "PS384",
        "PS512",
        "ES256",
        "ES384",
        "ES512",
    }
)
_MAX_TTL: Final = 10 * 365 * 24 * 3600.0


def is_allowed_endpoint(url: str) -> bool:
    """True for an absolute ``https`` URL, or ``http`` on a loopback host (dev and tests).

    User info (``user:pass@``), fragments, whitespace and control characters are refused.
    """
    if not isinstance(url, str) or not url:
        return False
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in url):
        return False
    try:
        parts = urlsplit(url)
        host = parts.hostname
        _ = parts.port  # raises ValueError on a bad port
    except ValueError:
        return False
    if not host or parts.username is not None or parts.password is not None or parts.fragment:
        return False
    if "\\" in parts.netloc:
        return False
    scheme = parts.scheme.lower()
    if scheme == "https":
        return True
    if scheme == "http":
        if host in _LOOPBACK_HOSTS:
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False
    return False


def _template_fields(url: str | None) -> set[str]:
    return set() if url is None else set(_PLACEHOLDER.findall(url))


def _check_endpoint(name: str, url: object, *, allow_template: bool = True) -> str:
    if not isinstance(url, str) or not url:
        raise ConfigurationError(f"{name} must be a non-empty URL string")
    probe = _PLACEHOLDER.sub("placeholder", url) if allow_template else url
    if not is_allowed_endpoint(probe):
        raise ConfigurationError(
            f"{name} must be an absolute https URL (http only on 127.0.0.1, [::1] or "
            f"localhost), without user info or fragment: {url[:200]!r}"
        )
    if "{" in probe or "}" in probe:
        raise ConfigurationError(f"{name} has a malformed template placeholder: {url[:200]!r}")
    return url


def _enum(enum_cls: type[enum.Enum], name: str, value: object) -> Any:
    if isinstance(value, enum_cls):
        return value
    try:
        return enum_cls(value)
    except ValueError:
        allowed = ", ".join(str(m.value) for m in enum_cls)
        raise ConfigurationError(f"{name} must be one of {allowed}; got {value!r}") from None


class FrozenMap(dict[str, str]):
    """A read-only ``dict`` (JSON-serialisable, picklable) for descriptor mapping fields."""

    __slots__ = ()

    def _read_only(self, *args: object, **kwargs: object) -> None:
        raise TypeError("provider descriptor mappings are read-only; use replace()")

    __setitem__ = _read_only
    __delitem__ = _read_only
    __ior__ = _read_only  # type: ignore[assignment]
    clear = _read_only
    pop = _read_only  # type: ignore[assignment]
    popitem = _read_only  # type: ignore[assignment]
    setdefault = _read_only  # type: ignore[assignment]
    update = _read_only

    def __reduce__(self) -> tuple[type[FrozenMap], tuple[dict[str, str]]]:
        return (FrozenMap, (dict(self),))

    def __copy__(self) -> FrozenMap:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> FrozenMap:
        return self


def _str_map(name: str, value: object) -> FrozenMap:
    if value is None:
        return FrozenMap()
    if not isinstance(value, Mapping):
        raise ConfigurationError(f"{name} must be a mapping of strings to strings")
    out: dict[str, str] = {}
    for key, item in value.items():
        if not isinstance(key, str) or not key:
            raise ConfigurationError(f"{name} keys must be non-empty strings")
        if isinstance(item, bool):
            item = "true" if item else "false"
        elif isinstance(item, int | float):
            item = str(item)
        if not isinstance(item, str):
            raise ConfigurationError(f"{name}[{key!r}] must be a string")
        out[key] = item
    return FrozenMap(out)


def _str_tuple(name: str, value: object, *, split: str | None = None) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        if split is None:
            items: Iterable[object] = (value,) if value else ()
        elif split == " ":
            items = value.split()
        else:
            items = [p for p in value.split(split) if p]
    elif isinstance(value, Iterable):
        items = value
    else:
        raise ConfigurationError(f"{name} must be a string or a list of strings")
    out: list[str] = []
    for item in items:
        if not isinstance(item, str) or not item:
            raise ConfigurationError(f"{name} must contain only non-empty strings")
        out.append(item)
    return tuple(out)


def _number(name: str, value: object, *, minimum: float, strict: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ConfigurationError(f"{name} must be a number")
    try:
        number = float(value)
    except (ValueError, OverflowError):
        raise ConfigurationError(f"{name} must be a number; got {str(value)[:40]!r}") from None
    if math.isnan(number) or math.isinf(number):
        raise ConfigurationError(f"{name} must be finite")
    if number < minimum or (strict and number == minimum):
        op = ">" if strict else ">="
        raise ConfigurationError(f"{name} must be {op} {minimum:g}; got {number:g}")
    return number


def _origin(name: str, value: str) -> str:
    probe = _PLACEHOLDER.sub("placeholder", value)
    if not is_allowed_endpoint(probe):
        raise ConfigurationError(
            f"{name} entries must be https origins (http only on loopback): {value[:200]!r}"
        )
    parts = urlsplit(probe)
    if parts.path not in ("", "/") or parts.query:
        raise ConfigurationError(
            f"{name} entries must be origins (scheme://host[:port]) without path or query: "
            f"{value[:200]!r}"
        )
    return value.rstrip("/")


@dataclass(frozen=True, slots=True, repr=False)
class ProviderDescriptor:
    """Everything the broker must know about one authorization server, quirks included.

    Build it directly, from a dict / JSON / TOML (:meth:`from_dict`, :meth:`from_json`,
    :meth:`from_toml`), from a discovery document (:meth:`from_metadata`), or from a preset
    (:mod:`oauth2_broker_mw.presets`). It is validated when built: endpoints are HTTPS (plain
    HTTP only on loopback, for development), there is at least one grant, and the
    authorization-code grant has an authorization endpoint.

    Endpoints may contain ``{name}`` placeholders (quirk 10); fill them with
    :meth:`with_template` before use.
    """

    id: str
    token_endpoint: str
    authorization_endpoint: str | None = None
    revocation_endpoint: str | None = None
    introspection_endpoint: str | None = None
    userinfo_endpoint: str | None = None
    issuer: str | None = None
    jwks_uri: str | None = None
    refresh_endpoint: str | None = None
    grants: tuple[GrantType, ...] = (GrantType.AUTHORIZATION_CODE, GrantType.REFRESH_TOKEN)
    client_auth_method: ClientAuthMethod = ClientAuthMethod.CLIENT_SECRET_BASIC
    scope_delimiter: str = " "
    pkce: PkceMode = PkceMode.OPTIONAL
    scope_on_refresh: bool = False
    expiry_policy: ExpiryPolicy = ExpiryPolicy.DEFAULT_TTL
    default_ttl: float = 3600.0
    expires_in_unit: float = 1.0
    refresh_margin: float | None = None
    authorize_params: Mapping[str, str] = field(default_factory=dict)
    token_params: Mapping[str, str] = field(default_factory=dict)
    param_renames: Mapping[str, str] = field(default_factory=dict)
    body_format: BodyFormat = BodyFormat.FORM
    errors_with_200: bool = True
    token_path: tuple[str, ...] = ()
    expires_in_path: tuple[str, ...] = ()
    callback_params: tuple[str, ...] = ()
    code_param: str = "code"
    authorization_response_iss_parameter_supported: bool = False
    token_endpoint_auth_signing_alg: str | None = None
    default_scopes: tuple[str, ...] = ()
    allowed_origins: tuple[str, ...] = ()
    # --- additions beyond the first contract (all optional) ---
    token_type_aliases: Mapping[str, str] = field(default_factory=dict)
    """Provider-specific ``token_type`` values to map, e.g. Slack ``{"bot": "Bearer"}``."""
    display_name: str | None = None
    error_aliases: Mapping[str, str] = field(default_factory=dict)
    """Provider error codes mapped to RFC 6749 codes: ``{"bad_refresh_token": "invalid_grant"}``."""
    pushed_authorization_request_endpoint: str | None = None
    """RFC 9126 PAR endpoint; with it, :func:`~oauth2_broker_mw._core.oauth` can push params."""
    require_pushed_authorization_requests: bool = False
    dpop: bool = False
    """RFC 9449: send DPoP proofs and accept ``token_type=DPoP`` (sender-constrained tokens)."""
    dpop_signing_alg: str = "ES256"
    """The JWS algorithm of the DPoP proofs (asymmetric only)."""
    refresh_idle_limit: float | None = None
    """Seconds a refresh token may go unused before the provider expires it (Google: about six
    months, Xero: 60 days); ``None`` when the provider has no such limit or does not say. The
    :class:`~oauth2_broker_mw.refresher.Refresher` refreshes idle tokens before they reach it."""
    scope_aliases: Mapping[str, str] = field(default_factory=dict)
    """A requested scope -> the name the provider echoes when it grants it (Google grants
    ``email`` as ``https://www.googleapis.com/auth/userinfo.email``). Used to tell a narrower
    grant from a renamed one."""
    missing_token_type: str | None = None
    """The ``token_type`` to assume when a token response has none (LinkedIn, Shopify and
    Figma leave it out). ``None``, the default, refuses such a response as
    :class:`~oauth2_broker_mw.MalformedResponse` (RFC 6749 §5.1, SECURITY C3)."""

    def __post_init__(self) -> None:
        try:
            ProviderId(self.id)
        except InvalidIdentifier as exc:
            raise ConfigurationError(f"provider {exc}") from None
        set_ = object.__setattr__
        _check_endpoint("token_endpoint", self.token_endpoint)
        for name in _ENDPOINT_FIELDS[1:]:
            value = getattr(self, name)
            if value is not None:
                _check_endpoint(name, value)
        if self.issuer is not None and (not isinstance(self.issuer, str) or not self.issuer):
            raise ConfigurationError("issuer must be a non-empty string")

        raw_grants: object = self.grants
        if isinstance(raw_grants, str | GrantType):
            raw_grants = (raw_grants,)
        if not isinstance(raw_grants, Iterable):
            raise ConfigurationError("grants must be a list of grant types")
        grants: list[GrantType] = []
        for grant in raw_grants:
            g = _enum(GrantType, "grants", grant)
            if g not in grants:
                grants.append(g)
        if not grants:
            raise ConfigurationError(f"provider {self.id!r} must support at least one grant")
        set_(self, "grants", tuple(grants))
        if GrantType.AUTHORIZATION_CODE in grants and self.authorization_endpoint is None:
            raise ConfigurationError(
                f"provider {self.id!r}: the authorization_code grant needs an "
                "authorization_endpoint"
            )

        set_(
            self,
            "client_auth_method",
            _enum(ClientAuthMethod, "client_auth_method", self.client_auth_method),
        )
        set_(self, "pkce", _enum(PkceMode, "pkce", self.pkce))
        set_(self, "expiry_policy", _enum(ExpiryPolicy, "expiry_policy", self.expiry_policy))
        set_(self, "body_format", _enum(BodyFormat, "body_format", self.body_format))

        delim = self.scope_delimiter
        if not isinstance(delim, str) or not delim or delim.isalnum() or "\n" in delim:
            raise ConfigurationError("scope_delimiter must be a non-empty separator such as ' '")
        for flag in (
            "scope_on_refresh",
            "errors_with_200",
            "authorization_response_iss_parameter_supported",
            "require_pushed_authorization_requests",
            "dpop",
        ):
            if not isinstance(getattr(self, flag), bool):
                raise ConfigurationError(f"{flag} must be true or false")

        set_(self, "default_ttl", _number("default_ttl", self.default_ttl, minimum=0, strict=True))
        set_(
            self,
            "expires_in_unit",
            _number("expires_in_unit", self.expires_in_unit, minimum=0, strict=True),
        )
        if self.refresh_margin is not None:
            set_(
                self,
                "refresh_margin",
                _number("refresh_margin", self.refresh_margin, minimum=0, strict=False),
            )
        if self.refresh_idle_limit is not None:
            set_(
                self,
                "refresh_idle_limit",
                _number("refresh_idle_limit", self.refresh_idle_limit, minimum=0, strict=True),
            )

        missing = self.missing_token_type
        if missing is not None and (not isinstance(missing, str) or not missing.strip()):
            raise ConfigurationError("missing_token_type must be a token type such as 'Bearer'")
        for name in (
            "authorize_params",
            "token_params",
            "param_renames",
            "token_type_aliases",
            "error_aliases",
            "scope_aliases",
        ):
            set_(self, name, _str_map(name, getattr(self, name)))
        set_(self, "token_path", _str_tuple("token_path", self.token_path, split="."))
        set_(
            self,
            "expires_in_path",
            _str_tuple("expires_in_path", self.expires_in_path, split="."),
        )
        set_(self, "callback_params", _str_tuple("callback_params", self.callback_params))
        set_(self, "default_scopes", _str_tuple("default_scopes", self.default_scopes, split=" "))
        try:
            ScopeSet(self.default_scopes)
        except InvalidIdentifier as exc:
            raise ConfigurationError(f"default_scopes: {exc}") from None
        origins = _str_tuple("allowed_origins", self.allowed_origins)
        set_(self, "allowed_origins", tuple(_origin("allowed_origins", o) for o in origins))
        if not isinstance(self.code_param, str) or not self.code_param:
            raise ConfigurationError("code_param must be a non-empty string")
        alg = self.token_endpoint_auth_signing_alg
        if alg is not None and alg not in _JWT_ALGS:
            raise ConfigurationError(
                f"token_endpoint_auth_signing_alg must be one of {sorted(_JWT_ALGS)}; got {alg!r}"
            )
        if self.dpop_signing_alg not in DPOP_ALGS:
            raise ConfigurationError(
                f"dpop_signing_alg must be one of {sorted(DPOP_ALGS)}; "
                f"got {str(self.dpop_signing_alg)[:40]!r}"
            )
        if self.display_name is not None and not isinstance(self.display_name, str):
            raise ConfigurationError("display_name must be a string")
        if (
            self.require_pushed_authorization_requests
            and self.pushed_authorization_request_endpoint is None
        ):
            raise ConfigurationError(
                "require_pushed_authorization_requests needs a "
                "pushed_authorization_request_endpoint"
            )

    def __repr__(self) -> str:
        # Only the fields that differ from their defaults: short enough for a log line.
        parts = [f"id={self.id!r}", f"token_endpoint={self.token_endpoint!r}"]
        for f in dataclasses.fields(self):
            if f.name in ("id", "token_endpoint"):
                continue
            value = getattr(self, f.name)
            if f.default is not dataclasses.MISSING:
                default: object = f.default
            elif f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
            else:  # pragma: no cover - every other field has a default
                default = None
            if value != default:
                shown = value.value if isinstance(value, enum.Enum) else value
                if isinstance(value, tuple):
                    shown = tuple(v.value if isinstance(v, enum.Enum) else v for v in value)
                parts.append(f"{f.name}={shown!r}")
        return f"ProviderDescriptor({', '.join(parts)})"

    def __hash__(self) -> int:
        return hash((self.id, self.token_endpoint, self.authorization_endpoint))

    # -- queries -----------------------------------------------------------------------------
    def supports(self, grant: GrantType | str) -> bool:
        """True when ``grant`` (an enum or its string value) is enabled for this provider."""
        try:
            return GrantType(grant) in self.grants
        except ValueError:
            return False

    @property
    def refresh_url(self) -> str:
        """Where refresh-token requests go (quirk 17): ``refresh_endpoint`` or the token URL."""
        return self.refresh_endpoint or self.token_endpoint

    @property
    def template_fields(self) -> frozenset[str]:
        """Placeholders still unfilled in the endpoints and origins (empty when ready to use)."""
        names: set[str] = set()
        for name in _ENDPOINT_FIELDS:
            names |= _template_fields(getattr(self, name))
        for origin in self.allowed_origins:
            names |= _template_fields(origin)
        names |= _template_fields(self.issuer)
        return frozenset(names)

    @property
    def is_oidc(self) -> bool:
        """True when an issuer is configured (ID tokens and RFC 9207 ``iss`` can be checked)."""
        return self.issuer is not None

    # -- builders ----------------------------------------------------------------------------
    def with_template(self, **values: str) -> ProviderDescriptor:
        """Fill ``{name}`` placeholders in endpoints, issuer and origins (quirk 10).

        Each value must be a plain host or path segment (no ``/``, ``?``, ``#``, ``@``, ``\\``
        or whitespace); the results are validated as HTTPS again. A placeholder without a
        value raises :class:`ConfigurationError`. Values never come from an untrusted callback
        unless the caller has checked them against an allowlist.
        """
        for key, value in values.items():
            if not isinstance(value, str) or not value:
                raise ConfigurationError(f"template value {key!r} must be a non-empty string")
            if (
                value in (".", "..")
                or any(ch in value for ch in "/?#@\\{}%")
                or any(ch.isspace() or ord(ch) < 0x20 for ch in value)
            ):
                raise ConfigurationError(
                    f"template value {key!r} must be a plain host or path segment: {value[:80]!r}"
                )
        missing = sorted(self.template_fields - set(values))
        if missing:
            raise ConfigurationError(
                f"provider {self.id!r} needs template values for: {', '.join(missing)}"
            )

        def fill(text: str | None) -> str | None:
            if text is None:
                return None
            return _PLACEHOLDER.sub(lambda m: values[m.group(1)], text)

        changes: dict[str, Any] = {name: fill(getattr(self, name)) for name in _ENDPOINT_FIELDS}
        changes["issuer"] = fill(self.issuer)
        changes["allowed_origins"] = tuple(fill(o) or "" for o in self.allowed_origins)
        filled = dataclasses.replace(self, **changes)
        for name in _ENDPOINT_FIELDS:
            url = getattr(filled, name)
            if url is not None:
                _check_endpoint(name, url, allow_template=False)
        return filled

    def replace(self, **changes: Any) -> ProviderDescriptor:
        """A copy with ``changes`` applied and validated (``dataclasses.replace``)."""
        unknown = sorted(set(changes) - _field_names())
        if unknown:
            raise ConfigurationError(f"unknown provider descriptor fields: {', '.join(unknown)}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, JSONValue]:
        """A JSON/TOML-able dict that :meth:`from_dict` turns back into an equal descriptor."""
        out: dict[str, JSONValue] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, enum.Enum):
                value = value.value
            elif isinstance(value, tuple):
                value = [v.value if isinstance(v, enum.Enum) else v for v in value]
            elif isinstance(value, Mapping):
                value = dict(value)
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> ProviderDescriptor:
        """Build from a mapping of field names; unknown keys raise :class:`ConfigurationError`."""
        if not isinstance(data, Mapping):
            raise ConfigurationError("a provider descriptor must be a mapping")
        unknown = sorted(str(k) for k in data if k not in _field_names())
        if unknown:
            raise ConfigurationError(f"unknown provider descriptor fields: {', '.join(unknown)}")
        missing = [name for name in ("id", "token_endpoint") if name not in data]
        if missing:
            raise ConfigurationError(f"provider descriptor is missing: {', '.join(missing)}")
        try:
            kwargs: dict[str, Any] = {str(k): v for k, v in data.items()}
            return cls(**kwargs)
        except TypeError as exc:
            raise ConfigurationError(f"invalid provider descriptor: {exc}") from None

    @classmethod
    def from_json(cls, text: str | bytes) -> ProviderDescriptor:
        """Build from a JSON object (see :meth:`from_dict`)."""
        try:
            data = jsonsafe.loads(text)
        except jsonsafe.JSONRejected as exc:
            raise ConfigurationError(f"provider descriptor is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigurationError("provider descriptor JSON must be an object")
        return cls.from_dict(data)

    @classmethod
    def from_toml(cls, text: str, *, table: str | None = None) -> ProviderDescriptor:
        """Build from TOML; ``table`` (dotted, e.g. ``"providers.acme"``) selects a sub-table."""
        try:
            data: Any = tomllib.loads(text)
            jsonsafe.check_tree(data)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigurationError(f"provider descriptor is not valid TOML: {exc}") from None
        except RecursionError:
            raise ConfigurationError(
                f"provider descriptor TOML is nested deeper than {jsonsafe.MAX_DEPTH} levels"
            ) from None
        except jsonsafe.JSONRejected as exc:
            raise ConfigurationError(f"provider descriptor TOML refused: {exc}") from None
        if table:
            for part in table.split("."):
                if not isinstance(data, dict) or part not in data:
                    raise ConfigurationError(f"TOML has no table {table!r}")
                data = data[part]
            if not isinstance(data, dict):
                raise ConfigurationError(f"TOML {table!r} is not a table")
        return cls.from_dict(data)

    @classmethod
    def from_metadata(
        cls,
        id: str,
        metadata: Mapping[str, object] | bytes | str,
        *,
        expected_issuer: str,
        **overrides: Any,
    ) -> ProviderDescriptor:
        """Build from an RFC 8414 / OpenID discovery document (SECURITY A10).

        ``metadata["issuer"]`` must equal ``expected_issuer`` exactly (the issuer used to build
        the metadata URL), or :class:`ConfigurationError` is raised. Picks the endpoints,
        ``authorization_response_iss_parameter_supported`` and the client
        authentication method (``client_secret_basic`` if offered, else
        ``client_secret_post``, else the JWT methods, else ``none``). ``overrides`` win.
        PKCE stays on with ``S256`` whatever ``code_challenge_methods_supported`` says (a
        ``["plain"]`` or ``[]`` list is a downgrade, SECURITY A3); pass ``pkce="unsupported"``
        to opt out for a server that breaks on it.
        DPoP is only enabled when the caller passes ``dpop=True`` and the document lists
        ``dpop_signing_alg_values_supported`` (``ES256`` preferred).
        """
        doc = parse_metadata(metadata)
        issuer = doc.get("issuer")
        if not isinstance(issuer, str) or issuer != expected_issuer:
            raise ConfigurationError(
                f"discovery document issuer {str(issuer)[:200]!r} does not equal the expected "
                f"issuer {expected_issuer[:200]!r} (RFC 8414 §3.3)"
            )
        values: dict[str, Any] = {"id": id, "issuer": issuer}
        for name in _METADATA_ENDPOINTS:
            value = doc.get(name)
            if value is not None:
                values[name] = value
        if "token_endpoint" not in values:
            raise ConfigurationError("discovery document has no token_endpoint")

        supported = doc.get("grant_types_supported")
        grant_names: list[str] = []
        has_auth = "authorization_endpoint" in values
        if isinstance(supported, list):
            if has_auth and "authorization_code" in supported:
                grant_names.append("authorization_code")
            if "refresh_token" in supported:
                grant_names.append("refresh_token")
            if "client_credentials" in supported:
                grant_names.append("client_credentials")
        elif has_auth:  # RFC 8414 default: authorization_code (and implicit, which we ignore)
            grant_names = ["authorization_code", "refresh_token"]
        if not grant_names:
            grant_names = ["client_credentials"]
        values["grants"] = grant_names

        # code_challenge_methods_supported never turns PKCE off (SECURITY A2, A3): a document
        # that lists only "plain", or nothing, still gets S256, which a server that ignores
        # PKCE ignores too. Only the caller opts out, with pkce="unsupported".
        values["authorization_response_iss_parameter_supported"] = (
            doc.get("authorization_response_iss_parameter_supported") is True
        )
        if doc.get("require_pushed_authorization_requests") is True:
            values["require_pushed_authorization_requests"] = True

        auth_methods = doc.get("token_endpoint_auth_methods_supported")
        if isinstance(auth_methods, list) and auth_methods:
            for candidate in (
                ClientAuthMethod.CLIENT_SECRET_BASIC,
                ClientAuthMethod.CLIENT_SECRET_POST,
                ClientAuthMethod.CLIENT_SECRET_JWT,
                ClientAuthMethod.PRIVATE_KEY_JWT,
                ClientAuthMethod.NONE,
            ):
                if candidate.value in auth_methods:
                    values["client_auth_method"] = candidate
                    break
        algs = doc.get("token_endpoint_auth_signing_alg_values_supported")
        if isinstance(algs, list):
            values["_algs"] = [a for a in algs if isinstance(a, str) and a in _JWT_ALGS]

        unknown = sorted(set(overrides) - _field_names())
        if unknown:
            raise ConfigurationError(f"unknown provider descriptor fields: {', '.join(unknown)}")
        # DPoP is never switched on by the document alone: the caller asks with dpop=True,
        # and the server must advertise dpop_signing_alg_values_supported.
        if overrides.get("dpop") is True:
            dpop_algs = doc.get("dpop_signing_alg_values_supported")
            if not isinstance(dpop_algs, list) or not dpop_algs:
                raise ConfigurationError(
                    "dpop=True but the discovery document has no "
                    "dpop_signing_alg_values_supported (RFC 9449 §5.1)"
                )
            if "dpop_signing_alg" not in overrides:
                usable = [a for a in dpop_algs if isinstance(a, str) and a in DPOP_ALGS]
                if not usable:
                    raise ConfigurationError("the server offers no DPoP algorithm we can use")
                values["dpop_signing_alg"] = "ES256" if "ES256" in usable else usable[0]
        values.update(overrides)
        algs_ok: list[str] = values.pop("_algs", [])
        method = values.get("client_auth_method")
        if "token_endpoint_auth_signing_alg" not in values and algs_ok and method is not None:
            wanted = ClientAuthMethod(method)
            family = ("HS",) if wanted is ClientAuthMethod.CLIENT_SECRET_JWT else ("RS", "ES", "PS")
            if wanted in (ClientAuthMethod.CLIENT_SECRET_JWT, ClientAuthMethod.PRIVATE_KEY_JWT):
                for alg in algs_ok:
                    if alg.startswith(family):
                        values["token_endpoint_auth_signing_alg"] = alg
                        break
        return cls.from_dict(values)


_FIELD_NAMES: frozenset[str] | None = None


def _field_names() -> frozenset[str]:
    global _FIELD_NAMES
    if _FIELD_NAMES is None:
        _FIELD_NAMES = frozenset(f.name for f in dataclasses.fields(ProviderDescriptor))
    return _FIELD_NAMES


#: The discovery members we use, by the type each must have: (names, type, what it must be).
_METADATA_MEMBERS: Final[tuple[tuple[tuple[str, ...], type, str], ...]] = (
    (("issuer", *_METADATA_ENDPOINTS), str, "a string"),
    (
        (
            "grant_types_supported",
            "code_challenge_methods_supported",
            "token_endpoint_auth_methods_supported",
            "token_endpoint_auth_signing_alg_values_supported",
            "scopes_supported",
            "response_types_supported",
            "id_token_signing_alg_values_supported",
        ),
        list,
        "a list",
    ),
    (
        ("authorization_response_iss_parameter_supported", "require_pushed_authorization_requests"),
        bool,
        "a boolean",
    ),
)


def parse_metadata(document: bytes | str | Mapping[str, object]) -> dict[str, JSONValue]:
    """Parse an RFC 8414 / OIDC discovery document and type-check the members we use.

    Endpoint members must be strings, list members lists, flags booleans; anything else
    raises :class:`ConfigurationError`. Unknown members are kept.
    """
    if isinstance(document, bytes | str):
        try:
            data: Any = jsonsafe.loads(document)
        except jsonsafe.JSONRejected as exc:
            raise ConfigurationError(f"discovery document is not valid JSON: {exc}") from None
    else:
        data = document
    if not isinstance(data, Mapping):
        raise ConfigurationError("discovery document must be a JSON object")
    out: dict[str, JSONValue] = {str(k): v for k, v in data.items()}
    for names, kind, what in _METADATA_MEMBERS:
        for name in names:
            value = out.get(name)
            if value is not None and not isinstance(value, kind):
                raise ConfigurationError(f"discovery document member {name} must be {what}")
    return out


@dataclass(frozen=True, slots=True, repr=False)
class ClientConfig:
    """The client's registration: id and credentials. ``repr`` never shows a credential.

    ``private_key`` is a JWK dict or a PEM string, used for ``private_key_jwt``.
    """

    client_id: str
    client_secret: Secret | None = field(default=None, metadata=PRESENCE_ONLY)
    private_key: Mapping[str, object] | str | None = field(default=None, metadata=PRESENCE_ONLY)
    private_key_id: str | None = None

    def __post_init__(self) -> None:
        cid = self.client_id
        if not isinstance(cid, str) or not cid:
            raise ConfigurationError("client_id must be a non-empty string")
        if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in cid):
            raise ConfigurationError("client_id must not contain control characters")
        secret: object = self.client_secret
        if isinstance(secret, str):
            object.__setattr__(self, "client_secret", Secret(secret))
        elif secret is not None and not isinstance(secret, Secret):
            raise ConfigurationError("client_secret must be a string or Secret")
        key = self.private_key
        if isinstance(key, Mapping):
            object.__setattr__(self, "private_key", dict(key))
        elif key is not None and not isinstance(key, str):
            raise ConfigurationError("private_key must be a JWK dict or a PEM string")
        if self.private_key_id is not None and not isinstance(self.private_key_id, str):
            raise ConfigurationError("private_key_id must be a string")

    @classmethod
    def create(
        cls,
        client_id: str,
        client_secret: str | Secret | None = None,
        private_key: Mapping[str, object] | str | None = None,
        private_key_id: str | None = None,
    ) -> ClientConfig:
        """Build from plain strings (the secret is wrapped in :class:`Secret`)."""
        return cls(
            client_id=client_id,
            client_secret=None if client_secret is None else Secret(client_secret),
            private_key=private_key,
            private_key_id=private_key_id,
        )

    __repr__ = redacted_repr

    def __hash__(self) -> int:
        return hash((self.client_id, self.client_secret, self.private_key_id))


def check_client_auth(provider: ProviderDescriptor, client: ClientConfig) -> None:
    """Refuse a registration that cannot authenticate the way ``provider`` requires.

    Checked when a ``Broker`` is built, so a forgotten secret shows at start-up and not as an
    ``exchange_failed`` after the user has logged in at the provider. Names the provider and
    the parameter, never a value.
    """
    method = provider.client_auth_method
    where = f"provider {provider.id!r} authenticates with {method.value}"
    if method in (
        ClientAuthMethod.CLIENT_SECRET_BASIC,
        ClientAuthMethod.CLIENT_SECRET_POST,
        ClientAuthMethod.CLIENT_SECRET_JWT,
    ):
        secret = client.client_secret
        if secret is None:
            raise ConfigurationError(
                f"{where} but no client_secret was given: pass client_secret=... (from the "
                "provider's app registration, e.g. an environment variable), or set "
                "client_auth_method='none' for a public client"
            )
        if not secret.get_secret_value().strip():
            raise ConfigurationError(
                f"{where} but client_secret is empty: check the variable it is read from"
            )
    elif method is ClientAuthMethod.PRIVATE_KEY_JWT:
        key = client.private_key
        if key is None or (isinstance(key, str) and not key.strip()) or key == {}:
            raise ConfigurationError(
                f"{where} but no private_key was given: pass private_key=... (a JWK dict or "
                "a PEM string of the key registered with the provider)"
            )


def check_service_grant(provider: ProviderDescriptor, client: ClientConfig) -> None:
    """Refuse ``service_lease()`` (the app's own token) where it cannot work, saying why.

    The client-credentials grant needs the grant in the descriptor and a confidential client
    (a secret or a private key); a public client or a descriptor without the grant is a
    configuration mistake, not a missing user login. Names the provider, never a value.
    """
    if client.client_secret is None and client.private_key is None:
        raise ConfigurationError(
            f"service_lease() needs a confidential client, but provider {provider.id!r} is "
            f"configured as a public client (client_auth_method="
            f"{provider.client_auth_method.value!r}, no client_secret or private_key): the "
            "client_credentials grant authenticates the app itself. Pass client_secret=... "
            "(or private_key=...) with the client_auth_method the provider registered"
        )
    if not provider.supports(GrantType.CLIENT_CREDENTIALS):
        grants = ", ".join(sorted(g.value for g in provider.grants))
        raise ConfigurationError(
            f"service_lease() needs the client_credentials grant, which provider "
            f"{provider.id!r} does not enable (grants: {grants}). If the provider offers it "
            "for this client, add 'client_credentials' to the descriptor's grants; for a "
            "user's token, use lease(tenant=..., principal=...) after the user logged in"
        )
