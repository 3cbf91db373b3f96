"""Quick start: a client-credentials lease and outbound calls signed by ``BrokerAuth``.

Runs as is, with no network: the MockProvider (an in-memory OAuth 2.0 server shipped for tests
and demos) plays the provider, reached in-process through its httpx2 transport. Against a real
provider, drop the MockProvider lines, describe the provider with ``ProviderDescriptor(...)``
(or ``ProviderDescriptor.from_metadata(...)``) and leave ``http_client`` out.

    .venv/bin/python examples/quickstart.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import httpx2

from oauth2_broker_mw import Broker
from oauth2_broker_mw import BrokerAuth
from oauth2_broker_mw import SQLiteStore
from oauth2_broker_mw.testing import MockProvider


# --8<-- [start:main]
def main() -> None:
    provider = MockProvider()  # issuer https://mock-idp.test, client test-client / test-secret
    descriptor = provider.descriptor(grants=["client_credentials"])

    with tempfile.TemporaryDirectory() as tmp:
        store = SQLiteStore(Path(tmp) / "tokens.db")
        broker = Broker(
            descriptor,
            client_id="test-client",
            client_secret="test-secret",
            store=store,
            http_client=provider.client(),  # only because the provider is in-process here
        )

        # 1. A lease: a valid access token for (tenant, principal, scopes). The first call runs
        #    the client-credentials grant; the next ones reuse the cached token.
        lease = broker.lease(tenant="acme", principal="svc-router", scopes=["email.read"])
        print("lease:", lease)  # the token is redacted in every repr
        print("token type:", lease.token_type, "scopes:", sorted(lease.scopes))
        again = broker.lease(tenant="acme", principal="svc-router", scopes=["email.read"])
        print("cached:", again.version == lease.version)

        # 2. BrokerAuth signs outbound requests (httpx2, httpx or requests) and refreshes on 401.
        auth = BrokerAuth(broker, tenant="acme", principal="svc-router", scopes=["email.read"])
        with httpx2.Client(auth=auth, transport=provider.transport()) as client:
            response = client.get(provider.resource_url)
            print("GET /resource ->", response.status_code, response.json())

            # The provider forgets the token (as after a restart): BrokerAuth gets a 401,
            # fetches a new token once and retries the request.
            provider.expire_access_tokens()
            response = client.get(provider.resource_url)
            print("after the token expired ->", response.status_code)

        print("token calls at the provider:", provider.counters["token"])
        broker.close()
        store.close()
    provider.close()


# --8<-- [end:main]


if __name__ == "__main__":
    main()
