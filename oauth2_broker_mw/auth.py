"""BrokerAuth: transparent outbound request signing for httpx, httpx2 and requests.

Owns: :class:`BrokerAuth` (one object that is an ``httpx2.Auth``, an ``httpx.Auth`` and a
``requests.auth.AuthBase``), origin binding of access tokens, the RFC 6750 §3 reaction to
401/403 responses, and :class:`InsufficientScopeEvent`.

The decisions live once: ``_signs`` (does a token go to this origin?), ``_signing`` (the
header, and required scopes once per lease) and ``_respond``, a sans-IO generator that judges a
401/403 (token problem or not, replayable body or not) and yields "need a replacement lease"
and "send this retry" steps.
Three thin shells drive them: ``sync_auth_flow`` (httpx/httpx2 ``Client``), ``async_auth_flow``
(``AsyncClient``) and ``__call__`` + a response hook (requests, the way its ``HTTPDigestAuth``
retries). Library differences (URL shapes, body replay, how a retry is built) sit in two
adapters that decide nothing.

Must not import: ``httpx`` or ``requests`` at module level (both are optional; they are
loaded guarded), stores, the middleware, asyncio or threading (the broker owns every lock and
every wait). Never logs, formats or raises with a token or an ``Authorization`` header.
"""

from __future__ import annotations

import functools
import importlib
import logging
from collections.abc import AsyncGenerator
from collections.abc import Callable
from collections.abc import Generator
from collections.abc import Hashable
from collections.abc import Iterable
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import TYPE_CHECKING
from typing import Any
from typing import Final
from typing import Protocol
from typing import TypeAlias
from typing import TypeVar
from typing import cast
from typing import overload
from urllib.parse import parse_qsl
from urllib.parse import urljoin
from urllib.parse import urlsplit

import httpx2

from . import _driver
from ._core.dpop import NonceCache
from ._core.errors import ConfigurationError
from ._core.errors import InsufficientScope
from ._core.errors import UnsafeRequest
from ._core.model import DEFAULT_TENANT
from ._core.model import SERVICE_PRINCIPAL
from ._core.model import Lease
from ._core.model import ScopeSet
from ._core.model import StoreKey
from ._core.oauth import parse_www_authenticate
from ._core.provider import is_allowed_endpoint

if TYPE_CHECKING:
    import httpx
    import requests
    from httpx import Auth as _HttpxAuth
    from requests.auth import AuthBase as _RequestsAuthBase
else:

    def _optional_base(module: str, name: str) -> type:
        """The class ``module.name`` if that library is installed, else an empty stand-in."""
        try:
            return cast(type, getattr(importlib.import_module(module), name))
        except ImportError:
            return type(f"_Missing{name}", (), {"__slots__": ()})

    _HttpxAuth = _optional_base("httpx", "Auth")
    _RequestsAuthBase = _optional_base("requests.auth", "AuthBase")

__all__ = ["BrokerAuth", "InsufficientScopeEvent", "LeaseSource", "UnsafeRequest"]

logger: Final = logging.getLogger("oauth2_broker_mw.auth")

_DEFAULT_PORTS: Final = {"http": 80, "https": 443}
_MARK_ATTR: Final = "_oauth2_broker_mw_body_mark"
_MEMO_SIZE: Final = 256

Origin: TypeAlias = tuple[str, str, int]
"""(scheme, lower-case host without brackets, port with the scheme's default filled in)."""


def _byte_stream_types() -> tuple[type, ...]:
    types: list[type] = [httpx2.ByteStream]
    try:
        import httpx
    except ImportError:  # pragma: no cover - httpx is optional
        pass
    else:
        types.append(httpx.ByteStream)
    return tuple(types)


_REPLAYABLE_STREAMS: Final = _byte_stream_types()


# -- what the broker must offer ------------------------------------------------------------
class _Descriptor(Protocol):
    @property
    def id(self) -> str: ...

    @property
    def allowed_origins(self) -> tuple[str, ...]: ...


class LeaseSource(Protocol):
    """The part of :class:`~oauth2_broker_mw.Broker` that :class:`BrokerAuth` uses."""

    @property
    def provider(self) -> _Descriptor: ...

    def key(
        self, *, tenant: str, principal: str, scopes: ScopeSet | str | Iterable[str] | None = None
    ) -> StoreKey: ...

    def cached_lease(self, key: StoreKey) -> Lease | None: ...

    def lease_for_key(
        self,
        key: StoreKey,
        *,
        scopes: ScopeSet | str | Iterable[str] | None = None,
        required_scopes: Iterable[str] | None = None,
    ) -> Lease: ...

    async def alease_for_key(
        self,
        key: StoreKey,
        *,
        scopes: ScopeSet | str | Iterable[str] | None = None,
        required_scopes: Iterable[str] | None = None,
    ) -> Lease: ...

    def replace_lease(self, stale: Lease) -> Lease: ...

    async def areplace_lease(self, stale: Lease) -> Lease: ...


class _DPoPSigner(Protocol):
    """What a broker with DPoP offers (:meth:`~oauth2_broker_mw.Broker.dpop_proof`)."""

    def dpop_proof(
        self, *, htm: str, htu: str, access_token: str | None = None, nonce: str | None = None
    ) -> str: ...


_HttpxItem: TypeAlias = tuple[bytes, bytes, bytes]
"""A header as ``httpx.Headers._list`` holds it: (name, lower-case name, value)."""

_RequestsItem: TypeAlias = tuple[str, str]
"""A header as requests' ``CaseInsensitiveDict._store`` holds it: (name, value)."""


@dataclass(frozen=True, slots=True, repr=False)
class _Signing:
    """What signing with one lease puts on a request, built once per lease and swapped as one
    object, so threads never see a header of one lease with the hook of another. Its ``repr``
    hides the header (a frame holding it is recorded by error reporters that keep traceback
    locals)."""

    lease: Lease | None
    header: str
    """The Authorization header."""
    hook: Callable[..., requests.Response] | None
    """The requests response hook of a request signed with ``lease``."""
    dpop: bool
    httpx_item: _HttpxItem | None
    """``header`` as ``Headers.__setitem__`` stores it (in any ASCII-compatible header
    encoding); ``None`` when it is not ASCII."""
    requests_item: _RequestsItem
    """``header`` as ``CaseInsensitiveDict.__setitem__`` stores it."""

    def __repr__(self) -> str:
        return f"_Signing(lease={self.lease!r}, header='<redacted>', dpop={self.dpop!r})"


# -- the insufficient-scope report -----------------------------------------------------------
@dataclass(frozen=True, slots=True)
class InsufficientScopeEvent:
    """A resource server answered 403 ``insufficient_scope`` to a request we signed.

    The request is not retried and the token is not refreshed or revoked: more scope needs a new
    grant (a login with the scopes below). ``url`` has no query string or fragment.
    """

    tenant: str
    principal: str
    provider: str
    required_scopes: tuple[str, ...]
    granted_scopes: tuple[str, ...]
    url: str
    status_code: int = 403


# -- the step the response flow yields -------------------------------------------------------
@dataclass(frozen=True, slots=True, repr=False)
class _NeedReplacement:
    """Step: "this lease was rejected by the resource server; give me its replacement".

    The shells answer it by asking the broker (``replace_lease``), through the one driver."""

    stale: Lease

    def __repr__(self) -> str:
        return f"NeedReplacement(version={self.stale.version})"


class _Message(Protocol):
    @property
    def headers(self) -> MutableMapping[str, str]: ...


class _Response(_Message, Protocol):
    @property
    def status_code(self) -> int: ...


_Req = TypeVar("_Req", bound=_Message)
_Resp = TypeVar("_Resp", bound=_Response)
_RespIn = TypeVar("_RespIn", bound=_Response, contravariant=True)


class _Adapter(Protocol[_Req, _RespIn]):
    """What differs between the client libraries; no decisions are made here."""

    def is_https(self, request: _Req) -> bool: ...

    def origin_key(self, request: _Req) -> Hashable | None: ...

    def origin(self, request: _Req) -> Origin | None: ...

    def response_origin(self, response: _RespIn) -> Origin | None: ...

    def body_mark(self, request: _Req) -> object: ...

    def replayable(self, request: _Req, mark: object) -> bool: ...

    def retry_request(self, request: _Req, response: _RespIn, mark: object) -> _Req: ...

    def public_url(self, request: _Req) -> str: ...

    def query(self, request: _Req) -> str: ...

    def has_authorization(self, request: _Req) -> bool: ...

    def authorize(self, request: _Req, value: str) -> None: ...

    def proved(self, request: _Req) -> None:
        """A DPoP proof was just added to ``request``."""

    def method(self, request: _Req) -> str: ...


def _normalise_origin(scheme: str, host: str | None, port: int | None) -> Origin | None:
    if not host:
        return None
    scheme = scheme.lower()
    if port is None:
        default = _DEFAULT_PORTS.get(scheme)
        if default is None:
            return None
        port = default
    return (scheme, host.lower().strip("[]"), port)


def _origin_of_url(url: str) -> Origin | None:
    try:
        parts = urlsplit(url)
        return _normalise_origin(parts.scheme, parts.hostname, parts.port)
    except ValueError:
        return None


def _without_query(url: str) -> str:
    return url.split("#", 1)[0].split("?", 1)[0]


class _HttpxLike(_Message, Protocol):
    """httpx.Request and httpx2.Request, as far as the adapter reads them."""

    @property
    def method(self) -> str: ...

    @property
    def stream(self) -> object: ...

    @property
    def url(self) -> _HttpxURL: ...

    @property
    def extensions(self) -> dict[str, Any]: ...


class _HttpxURL(Protocol):
    @property
    def scheme(self) -> str: ...

    @property
    def host(self) -> str: ...

    @property
    def port(self) -> int | None: ...

    @property
    def query(self) -> bytes: ...


class _HttpxResponseLike(_Response, Protocol):
    @property
    def request(self) -> _HttpxLike: ...


class _HttpxAdapter:
    """httpx and httpx2 (same shapes). The client follows redirects inside one flow step."""

    __slots__ = ("asynchronous",)

    def __init__(self, asynchronous: bool) -> None:
        self.asynchronous = asynchronous  # an AsyncClient's flow (the trace hook is awaited)

    def is_https(self, request: _HttpxLike) -> bool:
        return request.url.scheme == "https"

    def origin_key(self, request: _HttpxLike) -> Hashable | None:
        url = request.url
        return (url.scheme, url.host, url.port)

    def origin(self, request: _HttpxLike) -> Origin | None:
        url = request.url
        return _normalise_origin(url.scheme, url.host, url.port)

    def response_origin(self, response: _HttpxResponseLike) -> Origin | None:
        # After redirects, response.request is the last request the client sent.
        return self.origin(response.request)

    def body_mark(self, request: _HttpxLike) -> object:
        # Judged before sending: some transports buffer a stream while sending it, and a
        # stream the caller handed us must never be sent twice, buffered or not.
        # Bytes, text, form and JSON bodies (and streams the caller already read) are held
        # in a ByteStream and can be sent again; generators, files and multipart cannot.
        return isinstance(request.stream, _REPLAYABLE_STREAMS)

    def replayable(self, request: _HttpxLike, mark: object) -> bool:
        return mark is True

    def retry_request(
        self, request: _HttpxLike, response: _HttpxResponseLike, mark: object
    ) -> _HttpxLike:
        return request  # httpx resends the same Request object (as its DigestAuth does)

    def public_url(self, request: _HttpxLike) -> str:
        return _without_query(str(request.url))

    def query(self, request: _HttpxLike) -> str:
        return request.url.query.decode("ascii", "replace")

    def has_authorization(self, request: _HttpxLike) -> bool:
        return "Authorization" in request.headers

    def authorize(self, request: _HttpxLike, value: str) -> None:
        request.headers["Authorization"] = value

    def proved(self, request: _HttpxLike) -> None:
        _one_hop_proof(request, self.asynchronous)

    def method(self, request: _HttpxLike) -> str:
        return request.method


def _one_hop_proof(request: _HttpxLike, asynchronous: bool) -> None:
    """The DPoP proof goes to the URL it was made for, never to a redirect target.

    httpx and httpx2 follow redirects inside one auth-flow step, copying every header but
    ``Authorization`` (and that one only across origins) into the next request. The proof is
    bound to this method and URL (RFC 9449 §4.2), so it is dropped from the request as soon as
    the response headers arrive, through httpcore's ``trace`` extension (sync or async, as the
    client is; a caller's own trace callback still runs). A transport that is not httpcore's
    (a ``MockTransport``) never calls it: there the proof stays.
    """
    previous = request.extensions.get("trace")
    if "DPoP" not in request.headers or getattr(previous, "_o2bm_one_hop", False):
        return
    headers = request.headers

    def spend(event: str) -> None:
        if event.endswith(".receive_response_headers.complete"):
            headers.pop("DPoP", None)

    if asynchronous:

        async def atrace(event: str, info: dict[str, Any]) -> None:
            spend(event)
            if previous is not None:
                await previous(event, info)

        hook: Any = atrace
    else:

        def trace(event: str, info: dict[str, Any]) -> None:
            spend(event)
            if previous is not None:
                previous(event, info)

        hook = trace
    hook._o2bm_one_hop = True
    request.extensions["trace"] = hook


def _plain_httpx(request: _HttpxLike, signing: _Signing) -> bool:
    """The per-request case of :meth:`BrokerAuth._preflight`, decided and signed in a few
    instructions: no ``access_token`` in the query and no ``Authorization`` header yet (the
    current signing's header is appended, as ``Headers.__setitem__`` would store it) or only
    that one (a request signed before and sent again: left as it is). ``False``: ask
    _preflight.

    httpx and httpx2 keep the lowercased raw header names and values in ``Headers._list``, so
    nothing is encoded or decoded (the query is read as the parsed URL's text: ``in`` on
    ``url.query``'s bytes costs five times more). A function of its own: its frame, which
    holds the URL and the headers, is gone before anything that may raise runs (error
    reporters record traceback locals).
    """
    url: Any = request.url
    headers: Any = request.headers
    try:
        query = url._uri_reference.query
        items = headers._list
    except AttributeError:  # an unknown layout: ask _preflight
        return False
    item = signing.httpx_item
    if item is None or (query is not None and ("%" in query or "access_token" in query)):
        return False  # not ASCII; or a token named, maybe percent-encoded (access%5Ftoken)
    mine = True  # no Authorization header, or only ours
    present = False
    for entry in items:  # (name, lower-case name, value)
        if entry[1] == b"authorization":
            mine = not present and entry == item
            present = True
    if mine and not present:
        items.append(item)
    return mine


def _plain_requests(request: requests.PreparedRequest, signing: _Signing) -> bool:
    """:func:`_plain_httpx` for requests: its ``CaseInsensitiveDict`` keeps (name, value)
    under the lowercased name in ``_store`` (``in headers`` would raise and catch a KeyError
    every time). The URL test is on the whole URL."""
    url = request.url or ""
    if "%" in url or "access_token" in url:
        return False  # named, or maybe percent-encoded (access%5Ftoken): parse it
    headers: Any = request.headers
    try:
        store: dict[str, _RequestsItem] = headers._store
    except AttributeError:  # an unknown layout: ask _preflight
        return False
    if "authorization" not in store:
        store["authorization"] = signing.requests_item
        return True
    return store["authorization"] == signing.requests_item


class _RequestsAdapter:
    """requests: one hop per response hook; redirects are resolved by the Session afterwards."""

    __slots__ = ()

    def is_https(self, request: requests.PreparedRequest) -> bool:
        return (request.url or "")[:8] == "https://"

    def origin_key(self, request: requests.PreparedRequest) -> Hashable | None:
        url = request.url or ""
        end = url.find("/", 8)  # prepared URLs always have a path: "scheme://authority/..."
        return url[:end] if end > 0 else None

    def origin(self, request: requests.PreparedRequest) -> Origin | None:
        return _origin_of_url(request.url or "")

    def response_origin(self, response: requests.Response) -> Origin | None:
        return _origin_of_url(response.url or "")

    def body_mark(self, request: requests.PreparedRequest) -> object:
        """The position of a file body (to rewind for a retry); ``None`` for anything else."""
        body: object = request.body
        if body is None or isinstance(body, bytes | str):
            return None
        tell = getattr(body, "tell", None)
        if tell is None:
            return None
        try:
            return int(tell())
        except (OSError, ValueError):
            return None

    def replayable(self, request: requests.PreparedRequest, mark: object) -> bool:
        body: object = request.body
        if body is None or isinstance(body, bytes | str):
            return True
        return isinstance(mark, int) and callable(getattr(body, "seek", None))

    def retry_request(
        self, request: requests.PreparedRequest, response: requests.Response, mark: object
    ) -> requests.PreparedRequest:
        from requests.cookies import extract_cookies_to_jar

        if isinstance(mark, int):
            request.body.seek(mark)  # type: ignore[union-attr]
        _ = response.content  # release the connection so the retry can reuse it
        response.close()
        retry = request.copy()
        jar = retry._cookies  # type: ignore[attr-defined]
        extract_cookies_to_jar(jar, request, response.raw)  # type: ignore[no-untyped-call]
        retry.prepare_cookies(jar)
        return retry

    def public_url(self, request: requests.PreparedRequest) -> str:
        return _without_query(request.url or "")

    def query(self, request: requests.PreparedRequest) -> str:
        url = (request.url or "").split("#", 1)[0]
        return url.split("?", 1)[1] if "?" in url else ""

    def has_authorization(self, request: requests.PreparedRequest) -> bool:
        return "Authorization" in request.headers

    def authorize(self, request: requests.PreparedRequest, value: str) -> None:
        headers: Any = request.headers
        if isinstance(headers, _bound_headers_type()):
            headers.bind(value)
        else:
            headers["Authorization"] = value

    def keep_on_redirect(self, request: requests.PreparedRequest) -> None:
        """Our token stays on the Session's next (same-origin) hop, whatever rebuilds it.

        ``Session.rebuild_auth`` applies a ``.netrc`` entry (``trust_env``) to every redirect
        hop, replacing an explicit auth's header, which requests itself never does on the
        first hop. The hop is a ``copy()`` of this request, so its headers keep the binding.
        """
        bound = _bound_headers_type()
        headers: Any = request.headers
        if not isinstance(headers, bound):
            headers = bound(headers)
            request.headers = headers
        headers.bind(headers["Authorization"])

    def proved(self, request: requests.PreparedRequest) -> None:
        pass  # one hop per response hook: the Session's redirects are new requests

    def method(self, request: requests.PreparedRequest) -> str:
        return request.method or "GET"


_HTTPX: Final = _HttpxAdapter(asynchronous=False)
_AHTTPX: Final = _HttpxAdapter(asynchronous=True)
_REQUESTS: Final = _RequestsAdapter()


class BrokerAuth(httpx2.Auth, _HttpxAuth, _RequestsAuthBase):
    """Sign outgoing requests with a lease from a :class:`~oauth2_broker_mw.Broker`.

    One instance serves ``httpx2.Client``/``AsyncClient``, ``httpx.Client``/``AsyncClient`` and
    ``requests`` (``requests.get(url, auth=auth)``, ``Session.auth = auth``) at once, from any
    number of threads and tasks::

        auth = BrokerAuth(broker, tenant="acme", principal="alice", scopes=["email.read"])
        httpx2.Client(auth=auth); httpx.AsyncClient(auth=auth); requests.get(url, auth=auth)

    A single service calling an API as itself (client credentials) needs no tenant or
    principal: ``httpx.Client(auth=BrokerAuth.for_service(broker, scopes=["read"]))``, the same
    as ``BrokerAuth(broker, scopes=["read"])``; its token is stored under tenant
    ``"default"`` and the reserved principal ``"@app"`` (``Broker.service_lease``).

    * With a valid cached token the per-request work is a cache lookup and one header; a miss
      asks the broker (``lease_for_key`` on the calling thread, ``alease_for_key`` on the event
      loop), which runs at most one provider call per key however many requests wait.
    * Origin binding: only requests to ``allowed_origins`` (default: the provider descriptor's
      ``allowed_origins``) are signed; with neither, every ``https`` origin and loopback ``http``
      is signed, never plain ``http`` elsewhere. The token never follows a redirect to another
      origin (scheme, host or port change).
    * 401 from the signed origin with ``error="invalid_token"``, a bare ``Bearer`` challenge, or
      no challenge at all: the rejected token is replaced (one refresh shared by all callers,
      none if another caller already replaced it) and the request is sent once more, only when
      its body can be replayed. The second answer is returned as it is. 400 and 403 are never
      retried; a 403 ``insufficient_scope`` is reported to ``on_insufficient_scope``.
    * :class:`~oauth2_broker_mw.AuthorizationRequired` from the broker reaches the caller as is.
    """

    requires_request_body = False
    requires_response_body = False

    def __init__(
        self,
        broker: LeaseSource,
        *,
        tenant: str | None = None,
        principal: str = SERVICE_PRINCIPAL,
        scopes: ScopeSet | str | Iterable[str] | None = None,
        required_scopes: Iterable[str] | None = None,
        allowed_origins: Iterable[str] | None = None,
        on_insufficient_scope: Callable[[InsufficientScopeEvent], object] | None = None,
    ) -> None:
        if scopes is not None and not isinstance(scopes, str | ScopeSet):
            scopes = tuple(scopes)  # read a one-shot iterable once
        self._broker = broker
        self._cached = broker.cached_lease  # the hot path: bound once
        self._scopes = scopes
        if tenant is None:  # a Registry broker's own tenant, else the documented default
            tenant = getattr(broker, "tenant", None) or DEFAULT_TENANT
        self._key = broker.key(tenant=tenant, principal=principal, scopes=scopes)
        self._provider_id = str(broker.provider.id)
        self._required: frozenset[str] | None = (
            frozenset(required_scopes) if required_scopes else None
        )
        if isinstance(allowed_origins, str):
            allowed_origins = (allowed_origins,)
        if allowed_origins is not None:
            configured = tuple(allowed_origins)
            if not configured:
                raise ConfigurationError(
                    "allowed_origins must name at least one origin (or be None for the default)"
                )
        else:
            configured = tuple(broker.provider.allowed_origins)
        self._origins: frozenset[Origin] | None = (
            frozenset(_parse_allowed_origin(o) for o in configured) if configured else None
        )
        # origin_key(request) -> should sign; bounded, rebuilt on overflow. Values come only
        # from _should_sign, so a stale or racing entry is still a correct answer.
        self._https_anywhere = self._origins is None
        self._memo: dict[Hashable, bool] = {}
        # The current lease's signing (none yet: the per-request case needs a lease first).
        self._sign_cache = _Signing(None, "", None, False, None, ("Authorization", ""))
        self._on_insufficient_scope = on_insufficient_scope
        # DPoP (RFC 9449): the latest DPoP-Nonce each resource origin asked for.
        self._dpop_nonces = NonceCache()

    @classmethod
    def for_service(
        cls,
        broker: LeaseSource,
        scopes: ScopeSet | str | Iterable[str] | None = None,
        *,
        tenant: str | None = None,
        **options: Any,
    ) -> BrokerAuth:
        """Sign as the application itself (client credentials), not as any user.

        ``tenant`` is only needed when one app serves several tenants with its own identity.
        """
        return cls(broker, tenant=tenant, principal=SERVICE_PRINCIPAL, scopes=scopes, **options)

    # -- introspection -------------------------------------------------------------------------
    @property
    def key(self) -> StoreKey:
        """The store key every request is signed for."""
        return self._key

    @property
    def allowed_origins(self) -> frozenset[str] | None:
        """The origins this auth signs for, or ``None`` for "https anywhere, http on loopback"."""
        if self._origins is None:
            return None
        return frozenset(_format_origin(o) for o in self._origins)

    def __repr__(self) -> str:
        return (
            f"BrokerAuth(tenant={self._key.tenant!r}, principal={self._key.principal!r}, "
            f"provider={self._provider_id!r})"
        )

    # -- the decisions (one source for every client) ------------------------------------------
    def _should_sign(self, origin: Origin | None) -> bool:
        """Does a token for this key go to ``origin``? (SECURITY F2, F3: allowlist, no cleartext)"""
        if origin is None:
            return False
        if self._origins is not None:
            return origin in self._origins
        return origin[0] == "https" or (origin[0] == "http" and _is_loopback(origin[1]))

    def _signs(self, a: _Adapter[_Req, _RespIn], request: _Req) -> bool:
        if self._https_anywhere and a.is_https(request):
            return True  # the common case needs no URL parsing
        key = a.origin_key(request)
        if key is not None:
            decision = self._memo.get(key)
            if decision is not None:
                return decision
        decision = self._should_sign(a.origin(request))
        if key is not None:
            if len(self._memo) >= _MEMO_SIZE:
                self._memo = {}
            self._memo[key] = decision
        return decision

    def _preflight(self, a: _Adapter[_Req, _RespIn], request: _Req) -> bool:
        """Checks before signing a request bound for a signed origin; ``False``: leave it alone.

        * A token in the URL (``access_token=`` in the query) is refused (SECURITY F1): URLs
          end up in logs, proxies and ``Referer`` headers.
        * An ``Authorization`` header the caller set is kept and the request is not signed (no
          token, no DPoP proof, no 401 handling): BrokerAuth never overwrites it silently.
          The header of our own current lease (a redirect re-sent by hand) is ours to renew.
        """
        if any(
            name == "access_token"
            for name, _ in parse_qsl(a.query(request), keep_blank_values=True)
        ):
            raise UnsafeRequest(
                f"refusing to sign a request to {a.public_url(request)} whose URL carries an "
                "access_token query parameter: tokens go only in the Authorization header "
                "(RFC 6750 §2.3); remove the parameter from the URL"
            )
        if not a.has_authorization(request):  # the per-request case: one membership test
            return True
        existing = request.headers.get("Authorization")
        signing = self._sign_cache
        if signing.lease is not None and existing == signing.header:
            return True
        logger.debug(
            "request to %s already has an Authorization header: kept, not signed "
            "(tenant=%r principal=%r provider=%r)",
            a.public_url(request),
            self._key.tenant,
            self._key.principal,
            self._provider_id,
        )
        return False

    def _signing(self, lease: Lease) -> _Signing:
        """The header and requests hook for ``lease``, built once per lease (not per request).

        This is also where ``required_scopes`` is enforced, once per lease: a lease from the
        cache may have been fetched by another caller that required less.
        """
        cached = self._sign_cache
        if cached.lease is lease:
            return cached
        if self._required is not None:
            missing = lease.scopes.missing(self._required)
            if missing:
                raise InsufficientScope(missing=missing, granted=lease.scopes.scopes)
        dpop = lease.token_type == "DPoP"
        if dpop and not callable(getattr(self._broker, "dpop_proof", None)):
            raise ConfigurationError("a DPoP token needs a broker that creates DPoP proofs")
        hook = self._on_dpop_response if dpop else self._on_response
        header = lease.authorization_header
        fresh = _Signing(
            lease,
            header,
            functools.partial(hook, lease),
            dpop,
            (b"Authorization", b"authorization", header.encode()) if header.isascii() else None,
            ("Authorization", header),
        )
        self._sign_cache = fresh
        return fresh

    def _prove(
        self, a: _Adapter[_Req, _RespIn], request: _Req, lease: Lease, nonce: str | None = None
    ) -> None:
        """Add a fresh DPoP proof (method, URL, token) to the request's headers (SECURITY F6)."""
        if nonce is None:
            nonce = self._dpop_nonces.get(a.origin(request))
        signer = cast(_DPoPSigner, self._broker)
        request.headers["DPoP"] = signer.dpop_proof(
            htm=a.method(request),
            htu=a.public_url(request),
            access_token=lease.access_token.get_secret_value(),
            nonce=nonce,
        )
        a.proved(request)

    def _learn_nonce(self, a: _Adapter[_Req, _RespIn], request: _Req, response: _RespIn) -> None:
        nonce = response.headers.get("dpop-nonce")
        if nonce and a.response_origin(response) == a.origin(request):
            self._dpop_nonces.put(a.origin(request), nonce)

    def _respond(
        self,
        a: _Adapter[_Req, _Resp],
        request: _Req,
        lease: Lease,
        mark: object,
        response: _Resp,
    ) -> Generator[_NeedReplacement, Lease, _Req | None]:
        """What to do about a 401/403 to a request signed with ``lease`` (RFC 6750 §3).

        A flow run by the one driver (:mod:`._driver`): it yields broker steps (answered with
        a Lease) and returns at most one retry request, whose answer is final.
        """
        status = response.status_code
        if status != 401 and status != 403:
            return None
        if a.response_origin(response) != a.origin(request):
            return None  # redirected elsewhere: that origin never saw our token
        header = response.headers.get("www-authenticate") or ""
        challenge = parse_www_authenticate(header)
        error = challenge.get("error")
        url = a.public_url(request)
        if status == 403:
            if error == "insufficient_scope":
                self._report_scope(challenge.get("scope"), lease, url)
            return None
        if error == "use_dpop_nonce" and lease.token_type == "DPoP":
            # RFC 9449 §9: the resource server wants its nonce in the proof. The token is
            # fine: no refresh; one retry with the nonce (when the body can be replayed).
            nonce = response.headers.get("dpop-nonce")
            if not nonce or challenge.get("scheme") != "DPoP":
                return None
            self._dpop_nonces.put(a.origin(request), nonce)
            if not a.replayable(request, mark):
                return None
            retry = a.retry_request(request, response, mark)
            self._prove(a, retry, lease, nonce)
            return retry  # its answer is final, like the refresh retry below
        if error is not None and error != "invalid_token":
            return None  # e.g. invalid_request: a new token would not help (SECURITY F5)
        if header and not challenge:
            return None  # a challenge for another scheme (Basic, Negotiate): not about our token
        replay = a.replayable(request, mark)
        logger.debug(
            "401 from %s for tenant=%r principal=%r provider=%r: replacing the token%s",
            url,
            self._key.tenant,
            self._key.principal,
            self._provider_id,
            "" if replay else " (body cannot be replayed: no retry)",
        )
        fresh = yield _NeedReplacement(lease)
        if not replay or fresh.access_token == lease.access_token:
            return None
        retry = a.retry_request(request, response, mark)
        signing = self._signing(fresh)
        a.authorize(retry, signing.header)
        if signing.dpop:
            self._prove(a, retry, fresh)
        return retry  # its answer is final: one refresh and one retry per request, never a loop

    def _report_scope(self, scope: str | None, lease: Lease, url: str) -> None:
        event = InsufficientScopeEvent(
            tenant=self._key.tenant,
            principal=self._key.principal,
            provider=self._provider_id,
            required_scopes=tuple(sorted(set((scope or "").split()))),
            granted_scopes=lease.scopes.scopes,
            url=url,
        )
        logger.info(
            "403 insufficient_scope from %s for tenant=%r principal=%r provider=%r; required=%r",
            url,
            event.tenant,
            event.principal,
            event.provider,
            " ".join(event.required_scopes),
        )
        if self._on_insufficient_scope is not None:
            self._on_insufficient_scope(event)

    # -- the per-request steps every shell takes ---------------------------------------------
    def _sign_httpx(self, a: _HttpxAdapter, request: _HttpxLike) -> Lease | bool:
        """Both httpx flows' first step: sign ``request`` with the cached lease if it gets one.

        ``False``: not ours to sign (:meth:`_signs`, :meth:`_preflight`); a Lease: signed with
        it; ``True``: ours, but no lease is cached (the flow asks the broker, then
        :meth:`_sign`). The per-request case (the cached lease is the current signing and
        :func:`_plain_httpx` put its header on) takes no further check.
        """
        # `_https_anywhere and https` is _signs' own first test, inlined for speed.
        if not (self._https_anywhere and request.url.scheme == "https") and not self._signs(
            a, request
        ):
            return False
        lease = self._cached(self._key)
        signing = self._sign_cache
        if lease is not None and signing.lease is lease and _plain_httpx(request, signing):
            if signing.dpop:
                self._prove(a, request, lease)
            return lease
        if not self._preflight(a, request):
            return False
        if lease is None:
            return True
        self._sign(a, request, lease)
        return lease

    def _sign(self, a: _Adapter[_Req, _RespIn], request: _Req, lease: Lease) -> _Signing:
        """Put ``lease``'s Authorization header (and DPoP proof) on a request; its signing."""
        signing = self._signing(lease)
        request.headers["Authorization"] = signing.header
        if signing.dpop:
            self._prove(a, request, lease)
        return signing

    def _answer(
        self, a: _Adapter[_Req, _Resp], request: _Req, lease: Lease, mark: object, response: _Resp
    ) -> Generator[_NeedReplacement, Lease, _Req | None] | None:
        """What to do about the response to a signed request: ``None``, or the 401/403 flow."""
        if lease.token_type == "DPoP":
            self._learn_nonce(a, request, response)
        if response.status_code != 401 and response.status_code != 403:
            return None
        return self._respond(a, request, lease, mark, response)

    # -- httpx / httpx2 shells -----------------------------------------------------------------
    @overload
    def sync_auth_flow(
        self, request: httpx2.Request
    ) -> Generator[httpx2.Request, httpx2.Response, None]: ...

    @overload
    def sync_auth_flow(
        self, request: httpx.Request
    ) -> Generator[httpx.Request, httpx.Response, None]: ...

    def sync_auth_flow(self, request: _HttpxLike) -> Generator[_HttpxLike, Any, None]:
        """``Client``: broker calls run on the calling thread."""
        lease = self._sign_httpx(_HTTPX, request)
        if lease is False:
            yield request
            return
        if lease is True:
            lease = self._broker.lease_for_key(
                self._key, scopes=self._scopes, required_scopes=self._required
            )
            self._sign(_HTTPX, request, lease)
        mark = _HTTPX.body_mark(request)  # judged before sending
        respond = self._answer(_HTTPX, request, lease, mark, (yield request))
        if respond is not None:
            retry = _driver.run(respond, lambda step: self._broker.replace_lease(step.stale))
            if retry is not None:
                yield retry

    @overload
    def async_auth_flow(
        self, request: httpx2.Request
    ) -> AsyncGenerator[httpx2.Request, httpx2.Response]: ...

    @overload
    def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]: ...

    async def async_auth_flow(self, request: _HttpxLike) -> AsyncGenerator[_HttpxLike, Any]:
        """``AsyncClient``: broker calls are awaited; the event loop is never blocked."""
        lease = self._sign_httpx(_AHTTPX, request)
        if lease is False:
            yield request
            return
        if lease is True:
            lease = await self._broker.alease_for_key(
                self._key, scopes=self._scopes, required_scopes=self._required
            )
            self._sign(_AHTTPX, request, lease)
        mark = _AHTTPX.body_mark(request)  # judged before sending
        respond = self._answer(_AHTTPX, request, lease, mark, (yield request))
        if respond is not None:
            retry = await _driver.arun(
                respond, lambda step: self._broker.areplace_lease(step.stale)
            )
            if retry is not None:
                yield retry

    auth_flow = sync_auth_flow
    """Same as :meth:`sync_auth_flow` (clients call the sync or async variant directly)."""

    # -- requests shell ------------------------------------------------------------------------
    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        """Sign a prepared request; its response hook handles 401 and redirects."""
        # `_https_anywhere and https://` is _signs' own first test, inlined for speed.
        if not (self._https_anywhere and (r.url or "")[:8] == "https://") and not self._signs(
            _REQUESTS, r
        ):
            return r
        lease = self._cached(self._key)
        signing = self._sign_cache
        if lease is not None and signing.lease is lease and _plain_requests(r, signing):
            if signing.dpop:
                self._prove(_REQUESTS, r, lease)
        elif self._preflight(_REQUESTS, r):
            if lease is None:
                lease = self._broker.lease_for_key(
                    self._key, scopes=self._scopes, required_scopes=self._required
                )
            signing = self._sign(_REQUESTS, r, lease)
        else:
            return r
        if r.body is not None:
            r.__dict__[_MARK_ATTR] = _REQUESTS.body_mark(r)
        r.hooks["response"].append(signing.hook)
        return r

    def _on_dpop_response(
        self, lease: Lease, r: requests.Response, **kwargs: Any
    ) -> requests.Response:
        """requests response hook of a DPoP request: remember the server's nonce first."""
        self._learn_nonce(_REQUESTS, r.request, r)
        return self._on_response(lease, r, **kwargs)

    def _on_response(self, lease: Lease, r: requests.Response, **kwargs: Any) -> requests.Response:
        """requests response hook of a request signed with ``lease`` (also runs for each
        redirect hop, whose request is a copy of the previous one)."""
        original = r.request
        final = r
        if (r.status_code == 401 or r.status_code == 403) and original.headers.get(
            "Authorization"
        ) == lease.authorization_header:
            # This hop carried our token (not stripped by a cross-origin redirect).
            mark = original.__dict__.get(_MARK_ATTR)
            broker = self._broker
            retry = _driver.run(
                self._respond(_REQUESTS, original, lease, mark, r),
                lambda step: broker.replace_lease(step.stale),
            )
            if retry is not None:
                final = r.connection.send(retry, **kwargs)
                final.history.append(r)
                final.request = retry
                # Redirects after the retry are built from `original`: give it the new token.
                _REQUESTS.authorize(original, retry.headers["Authorization"])
                if "DPoP" in retry.headers:
                    original.headers["DPoP"] = retry.headers["DPoP"]
        if final.is_redirect and "Authorization" in original.headers:
            location = final.headers.get("location") or ""
            here = final.url or ""
            if not _same_origin_redirect(here, location):
                # The Session copies `original` for the next hop: no token goes (SECURITY F3).
                del original.headers["Authorization"]
                final.request.headers.pop("Authorization", None)
                original.headers.pop("DPoP", None)
                final.request.headers.pop("DPoP", None)
            else:
                _REQUESTS.keep_on_redirect(original)
        return final


# -- helpers -------------------------------------------------------------------------------
@functools.cache
def _bound_headers_type() -> type[Any]:
    """requests' header dict, with an ``Authorization`` value only BrokerAuth may replace."""
    from requests.structures import CaseInsensitiveDict

    class BoundHeaders(CaseInsensitiveDict[str]):
        _bound: str | None = None

        def bind(self, value: str) -> None:
            self._bound = value
            super().__setitem__("Authorization", value)

        def __setitem__(self, key: str, value: str) -> None:
            if self._bound is not None and key.lower() == "authorization":
                logger.debug("kept BrokerAuth's Authorization on a redirect (netrc not applied)")
                return
            super().__setitem__(key, value)

        def __delitem__(self, key: str) -> None:
            if key.lower() == "authorization":
                self._bound = None  # stripped (another origin): rebuild_auth may apply netrc
            super().__delitem__(key)

        def copy(self) -> BoundHeaders:
            twin = BoundHeaders(self)
            twin._bound = self._bound
            return twin

    return BoundHeaders


def _same_origin_redirect(url: str, location: str) -> bool:
    """Is ``location`` (absolute, scheme-relative or relative) on the origin of ``url``?"""
    target = urljoin(url, location)
    origin = _origin_of_url(url)
    return origin is not None and _origin_of_url(target) == origin


def _is_loopback(host: str) -> bool:
    return is_allowed_endpoint(f"http://{_bracket(host)}/")


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _format_origin(origin: Origin) -> str:
    scheme, host, port = origin
    suffix = "" if _DEFAULT_PORTS.get(scheme) == port else f":{port}"
    return f"{scheme}://{_bracket(host)}{suffix}"


def _parse_allowed_origin(value: str) -> Origin:
    if not isinstance(value, str) or not is_allowed_endpoint(value):
        raise ConfigurationError(
            f"allowed_origins entries must be https origins (http only on loopback): "
            f"{str(value)[:200]!r}"
        )
    parts = urlsplit(value)
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ConfigurationError(
            f"allowed_origins entries must be scheme://host[:port]: {value[:200]!r}"
        )
    origin = _normalise_origin(parts.scheme, parts.hostname, parts.port)
    if origin is None:
        raise ConfigurationError(f"allowed_origins entry has no host: {value[:200]!r}")
    return origin
