"""ASGI and WSGI middleware: login / callback / logout routes and a per-request broker context.

``BrokerMiddleware`` (pure ASGI: Starlette, FastAPI) and ``BrokerWSGIMiddleware`` (Flask,
Django) share one implementation (``_core`` and the modules beside it); they differ only in how
they call the broker (``await broker.a…()`` or ``broker.…()``).

Every module here but the two shells (``asgi``, ``wsgi``) and this one, which exports them, is
shared by both, and must not import asyncio, httpx/httpx2, any web framework or the shells
(docs/architecture.md's layer table; tests/test_layering.py checks it).
"""

from __future__ import annotations

from ._context import BrokerContext
from ._http import BrokerRequest
from ._http import PrincipalResolver
from ._http import TenantResolver
from ._logfilter import RedactOAuthQuery
from ._redirects import safe_return_to
from ._tenants import validate_tenant
from .asgi import BrokerMiddleware
from .resolvers import header_tenant
from .resolvers import path_prefix_tenant
from .resolvers import subdomain_tenant
from .wsgi import BrokerWSGIMiddleware

__all__ = [
    "BrokerContext",
    "BrokerMiddleware",
    "BrokerRequest",
    "BrokerWSGIMiddleware",
    "PrincipalResolver",
    "RedactOAuthQuery",
    "TenantResolver",
    "header_tenant",
    "path_prefix_tenant",
    "safe_return_to",
    "subdomain_tenant",
    "validate_tenant",
]
