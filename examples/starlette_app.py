"""Starlette: ``BrokerMiddleware`` added with ``Middleware(...)``, a route that takes a lease.

    .venv/bin/uvicorn examples.starlette_app:app --port 8000
    # open http://127.0.0.1:8000/oauth2/acme/login?return_to=/api/profile

Without ``OAUTH2_ISSUER`` / ``OAUTH2_CLIENT_ID`` / ``OAUTH2_CLIENT_SECRET`` a MockProvider on a
loopback port plays the provider (see ``examples/_provider.py``).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx2
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from oauth2_broker_mw import Broker
from oauth2_broker_mw import SQLiteStore
from oauth2_broker_mw.middleware import BrokerMiddleware

try:
    from ._provider import provider_config
except ImportError:  # run as a script: python examples/starlette_app.py
    from _provider import provider_config  # type: ignore[no-redef]

BASE_URL = os.environ.get("APP_BASE_URL", "http://127.0.0.1:8000")
config = provider_config("acme")
store = SQLiteStore(os.environ.get("TOKENS_DB", "tokens.db"))
broker = Broker(
    config.descriptor,
    client_id=config.client_id,
    client_secret=config.client_secret,
    store=store,
)


async def profile(request: Request) -> JSONResponse:
    ctx = request.state.oauth2_broker
    lease = await ctx.alease("acme")  # AuthorizationRequired -> login redirect or JSON 401
    async with httpx2.AsyncClient(auth=ctx.auth("acme")) as client:
        response = await client.get(config.api_url)
    return JSONResponse(
        {
            "principal": ctx.principal,
            "scopes": sorted(lease.scopes),
            "status": response.status_code,
            "body": response.json(),
        }
    )


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    yield
    await broker.aclose()
    store.close()


app = Starlette(
    routes=[Route("/api/profile", profile)],
    middleware=[
        Middleware(
            BrokerMiddleware,
            brokers={"acme": broker},
            scopes={"acme": ["openid", "email"]},
            secret_key=os.environ.get("SECRET_KEY") or os.urandom(32).hex(),
            base_url=BASE_URL,
        )
    ],
    lifespan=lifespan,
)
