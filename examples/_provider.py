"""Shared by the FastAPI and Flask examples: the provider to log in with.

With ``OAUTH2_ISSUER``, ``OAUTH2_CLIENT_ID`` and ``OAUTH2_CLIENT_SECRET`` set, the provider is
described from its discovery document (``{issuer}/.well-known/openid-configuration``). Without
them, a MockProvider is served on a loopback port in the background (auto-approving logins), so
the examples run with nothing else installed.
"""

from __future__ import annotations

import atexit
import contextlib
import os
from dataclasses import dataclass

import httpx2

from oauth2_broker_mw import ProviderDescriptor


@dataclass(frozen=True)
class ProviderConfig:
    descriptor: ProviderDescriptor
    client_id: str
    client_secret: str
    api_url: str
    """A protected API of the provider to call on the user's behalf."""


def provider_config(name: str = "acme") -> ProviderConfig:
    issuer = os.environ.get("OAUTH2_ISSUER")
    if issuer:
        metadata = httpx2.get(f"{issuer}/.well-known/openid-configuration", timeout=10).json()
        descriptor = ProviderDescriptor.from_metadata(name, metadata, expected_issuer=issuer)
        return ProviderConfig(
            descriptor,
            os.environ["OAUTH2_CLIENT_ID"],
            os.environ["OAUTH2_CLIENT_SECRET"],
            str(metadata.get("userinfo_endpoint") or ""),
        )

    from oauth2_broker_mw.testing import MockProvider

    provider = MockProvider(auto_approve=True)
    stack = contextlib.ExitStack()
    stack.enter_context(provider.serve())  # http://127.0.0.1:<port>, until the process exits
    atexit.register(stack.close)
    return ProviderConfig(
        provider.descriptor(id=name, grants=["authorization_code", "refresh_token"]),
        "test-client",
        "test-secret",
        provider.resource_url,
    )
