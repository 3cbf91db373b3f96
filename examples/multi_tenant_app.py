"""Multi-tenant: one Registry, two tenants, two providers, one tenant with its own OAuth app,
one tenant's users signing in on its own subdomain through the middleware; then off-boarding
one user and one whole tenant.

Runs as is, with no network: two MockProviders (in-memory OAuth 2.0 servers shipped for tests
and demos) on loopback ports play the providers. Against real providers, build the
``Registration`` objects from your own database (or ``Registry(resolver=...)``).

    .venv/bin/python examples/multi_tenant_app.py
"""

from __future__ import annotations

import secrets
import tempfile
import urllib.parse
from pathlib import Path

import httpx2
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from oauth2_broker_mw import Broker
from oauth2_broker_mw import Registration
from oauth2_broker_mw import Registry
from oauth2_broker_mw import SQLiteStore
from oauth2_broker_mw.middleware import BrokerMiddleware
from oauth2_broker_mw.middleware import subdomain_tenant
from oauth2_broker_mw.testing import MockProvider


def login(broker: Broker, provider: MockProvider, tenant: str, principal: str) -> None:
    """What the middleware does for a browser: authorize, callback, exchange the code."""
    request = broker.start_authorization(
        tenant=tenant, principal=principal, scopes=["openid"], redirect_uri="https://app/cb"
    )
    location = provider.client().get(request.url).headers["location"]  # auto-approved
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(location).query))
    broker.exchange_code(state=query["state"], code=query["code"], iss=query.get("iss"))


def subdomain_app(registry: Registry) -> Starlette:
    """An app where each tenant lives on its own host: ``globex.example.test`` is globex.
    Each tenant's login and callback stay on its host (``tenant_base_url``)."""

    async def whoami(request: Request) -> JSONResponse:
        ctx = request.state.oauth2_broker
        return JSONResponse({"tenant": ctx.tenant, "principal": ctx.principal})

    app = Starlette(routes=[Route("/whoami", whoami)])
    app.add_middleware(
        BrokerMiddleware,
        registry=registry,
        scopes={"crm": ["openid"]},
        secret_key=secrets.token_urlsafe(32),  # in production: one secret from your vault
        base_url="https://example.test",
        tenant_base_url="https://{tenant}.example.test",
        tenant_resolver=subdomain_tenant("example.test"),
    )
    return app


def main() -> None:
    crm, mail = MockProvider(), MockProvider()
    crm.register_client("globex-own-app", "globex-secret")  # globex brings its own OAuth app
    with crm.serve(), mail.serve(), tempfile.TemporaryDirectory() as tmp:
        crm_desc, mail_desc = crm.descriptor(id="crm"), mail.descriptor(id="mail")
        registry = Registry(
            store=SQLiteStore(Path(tmp) / "tokens.db"),
            registrations={
                ("acme", "crm"): Registration("crm", crm_desc, "test-client", "test-secret"),
                ("acme", "mail"): Registration("mail", mail_desc, "test-client", "test-secret"),
                ("globex", "crm"): Registration("crm", crm_desc, "globex-own-app", "globex-secret"),
            },
        )
        for tenant, provider, mock, user in [
            ("acme", "crm", crm, "alice"),
            ("acme", "mail", mail, "alice"),
            ("acme", "crm", crm, "bob"),
            ("globex", "crm", crm, "gina"),
        ]:
            login(registry.broker(tenant=tenant, provider=provider), mock, tenant, user)
        lease = registry.broker(tenant="acme", provider="crm").lease(
            tenant="acme", principal="alice", scopes=["openid"]
        )
        print("lease:", lease)  # the token is redacted in every repr

        # globex's users sign in on globex's own subdomain, through the middleware.
        host = "https://globex.example.test"
        with TestClient(subdomain_app(registry), base_url=host, follow_redirects=False) as web:
            start = web.get("/oauth2/crm/login", params={"return_to": "/whoami"})
            approved = httpx2.get(start.headers["location"] + "&login_hint=gus")  # at the IdP
            assert approved.headers["location"].startswith(host + "/oauth2/crm/callback")
            web.get(approved.headers["location"])  # back on globex's host: signed in
            print("globex.example.test:", web.get("/whoami").json())

        # Off-boarding one user (GDPR erasure): revoked at both providers, then deleted.
        report = registry.forget_principal("acme", "alice")
        print(f"forget alice: revoked {len(report.revoked)}, deleted {report.deleted}")

        # Off-boarding a tenant: its tokens revoked with its own OAuth app, rows and pending
        # logins deleted, its registration dropped; acme keeps bob.
        offboard = registry.offboard_tenant("globex")
        print(
            f"offboard globex: revoked {len(offboard.tokens.revoked)}, "
            f"deleted {offboard.tokens.deleted}, registrations removed "
            f"{offboard.registrations_removed}"
        )
        print("acme still has:", [k.principal for k in registry.store.list_keys("acme")])  # type: ignore[arg-type]
        registry.close()


if __name__ == "__main__":
    main()
