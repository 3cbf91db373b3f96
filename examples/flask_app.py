"""Flask (WSGI): the same login and outbound calls with ``BrokerWSGIMiddleware``.

    .venv/bin/flask --app examples.flask_app run --port 8000
    # open http://127.0.0.1:8000/ and follow "Log in"

Without ``OAUTH2_ISSUER`` / ``OAUTH2_CLIENT_ID`` / ``OAUTH2_CLIENT_SECRET`` a MockProvider on a
loopback port plays the provider (see ``examples/_provider.py``).
"""

from __future__ import annotations

import os
from html import escape
from typing import Any

import httpx2
from flask import Flask
from flask import request

from oauth2_broker_mw import Broker
from oauth2_broker_mw import SQLiteStore
from oauth2_broker_mw.middleware import BrokerWSGIMiddleware

try:
    from ._provider import provider_config
except ImportError:  # run as a script: python examples/flask_app.py
    from _provider import provider_config  # type: ignore[no-redef]

BASE_URL = os.environ.get("APP_BASE_URL", "http://127.0.0.1:8000")
config = provider_config("acme")
broker = Broker(
    config.descriptor,
    client_id=config.client_id,
    client_secret=config.client_secret,
    store=SQLiteStore(os.environ.get("TOKENS_DB", "tokens.db")),
)

app = Flask(__name__)
app.wsgi_app = BrokerWSGIMiddleware(  # type: ignore[method-assign]
    app.wsgi_app,
    brokers={"acme": broker},
    scopes={"acme": ["openid", "email"]},
    secret_key=os.environ.get("SECRET_KEY") or os.urandom(32).hex(),
    base_url=BASE_URL,
)


@app.get("/")
def home() -> str:
    ctx = request.environ["oauth2_broker"]
    if "acme" not in ctx.connections:
        return '<a href="/oauth2/acme/login?return_to=/">Log in</a>'
    return (
        f"<p>tenant {escape(str(ctx.tenant))}, principal {escape(str(ctx.principal))}</p>"
        '<p><a href="/api/profile">call the API</a></p>'
        '<form method="post" action="/oauth2/logout"><button>Log out</button></form>'
    )


@app.get("/api/profile")
def profile() -> dict[str, Any]:
    ctx = request.environ["oauth2_broker"]
    with httpx2.Client(auth=ctx.auth("acme")) as client:
        response = client.get(config.api_url)
    return {"status": response.status_code, "body": response.json()}
