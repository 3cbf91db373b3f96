"""FastAPI: log users in with ``BrokerMiddleware`` and call an API on their behalf.

    .venv/bin/uvicorn examples.fastapi_app:app --port 8000
    # open http://127.0.0.1:8000/ and follow "Log in"

Without ``OAUTH2_ISSUER`` / ``OAUTH2_CLIENT_ID`` / ``OAUTH2_CLIENT_SECRET`` a MockProvider on a
loopback port plays the provider (see ``examples/_provider.py``). Tokens stay on the server, in
``SQLiteStore("tokens.db")``; the browser gets only the middleware's opaque session cookie.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from html import escape
from typing import Any

import httpx2
from fastapi import FastAPI
from fastapi import Request
from fastapi.responses import HTMLResponse

from oauth2_broker_mw import Broker
from oauth2_broker_mw import SQLiteStore
from oauth2_broker_mw.middleware import BrokerMiddleware

try:
    from ._provider import provider_config
except ImportError:  # run as a script: python examples/fastapi_app.py
    from _provider import provider_config  # type: ignore[no-redef]

# --8<-- [start:app]
BASE_URL = os.environ.get("APP_BASE_URL", "http://127.0.0.1:8000")
config = provider_config("acme")
store = SQLiteStore(os.environ.get("TOKENS_DB", "tokens.db"))
broker = Broker(
    config.descriptor,
    client_id=config.client_id,
    client_secret=config.client_secret,
    store=store,
)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    yield
    await broker.aclose()  # the HTTP client the broker opened for token calls
    store.close()


app = FastAPI(lifespan=lifespan)
app.add_middleware(
    BrokerMiddleware,
    brokers={"acme": broker},
    scopes={"acme": ["openid", "email"]},
    secret_key=os.environ.get("SECRET_KEY") or os.urandom(32).hex(),
    base_url=BASE_URL,
)


@app.get("/", response_class=HTMLResponse)
async def home(request: Request) -> str:
    ctx = request.state.oauth2_broker
    if "acme" not in ctx.connections:
        return '<a href="/oauth2/acme/login?return_to=/">Log in</a>'
    return (
        f"<p>tenant {escape(str(ctx.tenant))}, principal {escape(str(ctx.principal))}</p>"
        '<p><a href="/api/profile">call the API</a></p>'
        '<form method="post" action="/oauth2/logout"><button>Log out</button></form>'
    )


@app.get("/api/profile")
async def profile(request: Request) -> dict[str, Any]:
    ctx = request.state.oauth2_broker
    # A ready BrokerAuth for this tenant and user: it adds the token, refreshes on 401, and
    # raises AuthorizationRequired when the user must log in (the middleware turns that into
    # a redirect to the login route for browsers, a 401 problem document for API clients).
    async with httpx2.AsyncClient(auth=ctx.auth("acme")) as client:
        response = await client.get(config.api_url)
    return {"status": response.status_code, "body": response.json()}


# --8<-- [end:app]
