"""pytest plugin (entry point ``pytest11``): fixtures for testing against a MockProvider.

Owns: the ``mock_provider``, ``mock_provider_url``, ``mock_provider_factory`` and
``mock_login`` fixtures.
Must not import at module level: starlette, uvicorn, httpx2, joserfc or the rest of
oauth2_broker_mw; this module is loaded in every pytest run of anyone who installs
oauth2-broker-mw, so it imports only pytest and the standard library and does nothing until one
of its fixtures is requested.

Fixtures:

``mock_provider``
    A fresh ``MockProvider`` per test (default client ``test-client`` / ``test-secret``).
    Configure it in the test (``mock_provider.quirks.scope_echo = "comma"``,
    ``mock_provider.faults.add(...)``) or override the fixture to pass constructor arguments.
``mock_provider_url``
    Serves ``mock_provider`` on ``http://127.0.0.1:<ephemeral port>`` for the test and returns
    that base URL (which is also the provider's issuer while the test runs).
``mock_login``
    ``mock_provider.login``: ``mock_login(client, user="alice")`` logs your app's test client
    in through the middleware and ``mock_provider`` (see ``MockProvider.login``).
``mock_provider_factory``
    A callable taking ``MockProvider`` arguments (or ``like="github"``) that returns a new
    provider, closed when the test ends; for tests that need several (mix-up, multi-tenant).
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Iterator
from typing import TYPE_CHECKING
from typing import Any

import pytest

if TYPE_CHECKING:
    from .mock_provider import MockProvider

__all__ = ["mock_login", "mock_provider", "mock_provider_factory", "mock_provider_url"]

_MISSING_EXTRA = (
    "the mock_provider fixtures need the optional dependencies of oauth2-broker-mw's "
    "MockProvider: pip install 'oauth2-broker-mw[starlette]' ({detail})"
)


def _import_provider() -> type[MockProvider]:
    try:
        from .mock_provider import MockProvider
    except ImportError as exc:
        pytest.fail(_MISSING_EXTRA.format(detail=exc), pytrace=False)
    return MockProvider


@pytest.fixture
def mock_provider() -> Iterator[MockProvider]:
    """A fresh in-memory OAuth 2.0 / OIDC MockProvider for one test."""
    provider_cls = _import_provider()
    provider = provider_cls()
    try:
        yield provider
    finally:
        provider.close()


@pytest.fixture
def mock_provider_url(mock_provider: MockProvider) -> Iterator[str]:
    """``mock_provider`` served on a loopback port; the value is its base URL (= issuer)."""
    import importlib.util

    if importlib.util.find_spec("uvicorn") is None:
        pytest.fail(
            "the mock_provider_url fixture serves MockProvider with uvicorn: pip install uvicorn",
            pytrace=False,
        )
    with mock_provider.serve() as base_url:
        yield base_url


@pytest.fixture
def mock_login(mock_provider: MockProvider) -> Callable[..., Any]:
    """Log a test client in to your app through ``mock_provider``, in one call::

    def test_profile(client, mock_login):
        mock_login(client, user="alice")
        assert client.get("/profile").status_code == 200
    """
    return mock_provider.login


@pytest.fixture
def mock_provider_factory() -> Iterator[Callable[..., MockProvider]]:
    """Make extra MockProviders (``like="github"`` or constructor arguments); all are closed
    when the test ends."""
    provider_cls = _import_provider()
    made: list[MockProvider] = []

    def make(*args: Any, like: str | None = None, **kwargs: Any) -> MockProvider:
        if like is not None:
            provider = provider_cls.like(like, **kwargs)
        else:
            provider = provider_cls(*args, **kwargs)
        made.append(provider)
        return provider

    try:
        yield make
    finally:
        for provider in made:
            provider.close()
